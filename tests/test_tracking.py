"""Where MLflow runs land: one store per repository, whoever runs the stage."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run, run_queued_experiments
from cxr.tracking import artifact_root, tracking_uri


def test_explicit_uri_wins_and_the_default_is_the_repository_root(tmp_path):
    assert tracking_uri({"MLFLOW_TRACKING_URI": "http://mlflow.example.org:5000"}) == "http://mlflow.example.org:5000"
    assert tracking_uri({}, cwd=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert tracking_uri({"DVC_ROOT": str(tmp_path)}, cwd=copy) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    # A new experiment's files go beside a SQLite file whatever the working directory; a server decides itself.
    assert artifact_root(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}") == (tmp_path.resolve() / "store" / "mlruns").as_uri()
    assert artifact_root("http://mlflow.example.org:5000") is None


WHERE = """import os
from cxr.tracking import log_model_stage, run_tags, tracking_uri
name = run_tags()["dvc.exp_name"]
print(os.getcwd()); print(tracking_uri()); print(name)
print(log_model_stage("evaluate", name, "0" * 64, {"x": 1.0}, {}, artifacts=["params.yaml"]))
"""


@pytest.mark.pipeline   # runs `dvc exp` in a temporary repository
def test_temporary_and_queued_dvc_experiments_log_to_the_repository_store(tmp_path):
    """`dvc exp run --temp` and queued runs execute in a copy under .dvc/tmp/exps/; their runs and
    files must still reach the repository's mlflow.db and mlruns/, not the copy deleted afterwards
    (MLflow's default artifact root is the working directory of the run that creates the experiment)."""
    from mlflow import MlflowClient
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
           "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    (repo / "where.py").write_text(WHERE)
    (repo / "dvc.yaml").write_text("stages:\n  where:\n    cmd: python where.py > where.txt\n"
                                   "    params: [x]\n    outs:\n      - where.txt:\n          cache: false\n")
    (repo / "params.yaml").write_text("x: 1\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "exp", "run", "--temp", "-S", "x=2", "-n", "elsewhere"],
                ["dvc", "exp", "run", "--queue", "-S", "x=3", "-n", "queued"]):
        run(cmd, repo, env=env)
    run_queued_experiments(repo, env=env)
    store = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    for name, x in (("elsewhere", 2), ("queued", 3)):
        shown = subprocess.run(["git", "show", "refs/exps/" + _exp_ref(repo, env, name) + ":where.txt"], cwd=repo,
                               env=env, capture_output=True, text=True, check=True).stdout.splitlines()
        assert "/.dvc/tmp/exps/" in shown[0]                        # it ran in a copy
        assert shown[1] == f"sqlite:///{repo.resolve() / 'mlflow.db'}"  # and logs to the repository
        assert shown[2] == name                                     # its runs are tagged with the experiment
        artifacts = store.get_run(shown[3]).info.artifact_uri      # its files outlive the copy
        assert artifacts.startswith((repo.resolve() / "mlruns").as_uri() + "/")
        assert Path(artifacts.removeprefix("file://"), "evaluate", "params.yaml").read_text() == f"x: {x}\n"


def _exp_ref(repo: Path, env: dict, name: str) -> str:
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], cwd=repo, env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    [ref] = [r for r in refs if r.endswith(f"/{name}")]
    return ref.removeprefix("refs/exps/")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _started(server: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """The server's output lines up to the one containing ``marker`` (read as they come)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    seen = []
    while not seen or marker not in seen[-1]:
        try:
            seen.append(lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError("mlflow server did not start:\n" + "".join(seen)) from None
    return seen


def test_a_real_tracking_server_takes_the_training_run_and_its_model(tiny_copy, tmp_path):
    """`mlflow server` (SQLite backend, local artifact root) on 127.0.0.1; one training stage logs to it."""
    import mlflow

    project = tiny_copy
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _started(server, f"Uvicorn running on {uri}", timeout=120)
        trained = run(["python", "stages/train.py", "cnn"], project, env={"MLFLOW_TRACKING_URI": uri})
        assert "train@cnn: best epoch 1 of 1" in trained.stdout

        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("cxr-pipeline")
        [training] = client.search_runs([experiment.experiment_id], "tags.`cxr.stage` = 'train@cnn'")
        assert training.info.status == "FINISHED" and training.data.params["model.family"] == "cnn"
        assert {"loss", "val_auroc", "best_val_auroc"} <= set(training.data.metrics)
        [model] = training.outputs.model_outputs
        mlflow.set_tracking_uri(uri)   # models:/ URIs resolve against the global tracking URI
        files = mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp_path / "got"))
        assert (Path(files) / "MLmodel").is_file()
        assert any((tmp_path / "artifacts").rglob("MLmodel"))   # stored under the server's artifact root
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The server is down now: the stage stops before training, with one line.
    proc = run(["python", "stages/train.py", "cnn"], project, check=False, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"train: MLFLOW_TRACKING_URI={uri}: tracking server unreachable")


_START_TRAINING_RUN = """
import sys
from cxr.tracking import training_run
print("ready", flush=True)
sys.stdin.readline()   # both processes go on at the same moment
with training_run(sys.argv[2], "train@" + sys.argv[2], {"epochs": 1}, "data-sha", uri=sys.argv[1]) as run:
    pass
print("started", flush=True)
"""


def test_two_trainings_starting_together_on_a_new_sqlite_store_both_get_their_run(tmp_path):
    """`dvc queue start -j 2`: two train stages create the same new SQLite store at once. Without the
    lock around the first contact, MLflow's migrations collided here in 2 of 3 tries (one or both
    processes failing on 'table ... already exists')."""
    import mlflow
    from conftest import project_env
    from cxr.tracking import EXPERIMENT
    for attempt in range(3):   # the race is not certain in any one try; each try uses a new store
        uri = f"sqlite:///{tmp_path / f'mlflow{attempt}.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", _START_TRAINING_RUN, uri, variant], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=project_env(ROOT))
                 for variant in ("cnn", "mobilenet")]
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
        assert sorted(r.info.run_name for r in runs if r.info.run_name in ("cnn", "mobilenet")) == ["cnn", "mobilenet"]
