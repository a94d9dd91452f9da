"""Where MLflow runs land: one store per repository, whoever runs the stage."""
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run
from cxr.tracking import tracking_uri


def test_explicit_uri_wins_and_the_default_is_the_repository_root(tmp_path):
    assert tracking_uri({"MLFLOW_TRACKING_URI": "http://mlflow.example.org:5000"}) == "http://mlflow.example.org:5000"
    assert tracking_uri({}, cwd=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert tracking_uri({"DVC_ROOT": str(tmp_path)}, cwd=copy) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_temporary_and_queued_dvc_experiments_log_to_the_repository_store(tmp_path):
    """`dvc exp run --temp` and queued runs execute in a copy under .dvc/tmp/exps/; their runs must
    still reach the repository's mlflow.db, not one in the copy that is deleted afterwards."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
           "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    (repo / "dvc.yaml").write_text(
        "stages:\n  where:\n    cmd: python -c \"import os; from cxr.tracking import run_tags, tracking_uri; "
        "print(os.getcwd()); print(tracking_uri()); print(run_tags()['dvc.exp_name'])\" > where.txt\n"
        "    params: [x]\n    outs:\n      - where.txt:\n          cache: false\n")
    (repo / "params.yaml").write_text("x: 1\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "exp", "run", "--temp", "-S", "x=2", "-n", "elsewhere"],
                ["dvc", "exp", "run", "--queue", "-S", "x=3", "-n", "queued"], ["dvc", "exp", "run", "--run-all"]):
        run(cmd, repo, env=env)
    for name in ("elsewhere", "queued"):
        shown = subprocess.run(["git", "show", "refs/exps/" + _exp_ref(repo, env, name) + ":where.txt"], cwd=repo,
                               env=env, capture_output=True, text=True, check=True).stdout.splitlines()
        assert "/.dvc/tmp/exps/" in shown[0]                        # it ran in a copy
        assert shown[1] == f"sqlite:///{repo.resolve() / 'mlflow.db'}"  # and logs to the repository
        assert shown[2] == name                                     # its runs are tagged with the experiment


def _exp_ref(repo: Path, env: dict, name: str) -> str:
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], cwd=repo, env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    [ref] = [r for r in refs if r.endswith(f"/{name}")]
    return ref.removeprefix("refs/exps/")
