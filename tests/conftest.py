"""Shared fixtures: the project root, the bundled real NIH data, temp project copies."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "sample"
FULL_METADATA = BUNDLED / "meta" / "Data_Entry_2017_v2020.csv.gz"
LOWRES = ROOT / "tests" / "data" / "lowres"
# What a temp copy of the project needs; generated outputs are left behind.
PROJECT_FILES = ("dvc.yaml", "params.yaml", "src", "stages", "recipes", "data/sample", "reports/seeds.json", ".dvc/config", ".dvcignore",
                 ".gitignore")


@pytest.fixture(scope="session")
def full_metadata() -> pd.DataFrame:
    from cxr.data import read_metadata
    return read_metadata(FULL_METADATA)


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return sorted((BUNDLED / "images").glob("*.png"))


# A test using one of these runs stages, trains, or serves: the `pipeline` tier.
PIPELINE_FIXTURES = {"project", "tiny_project", "tiny_copy", "small_data_dir", "small_dataset", "predictor", "client",
                     "server", "held_stages"}


# The long files first, longest first (make test passes --no-loadscope-reorder), so the two test
# processes end together: one starts on the recipes (their queued test first: no tiny project), the
# other builds the tiny project at once for test_export_predict; every later test finds it built.
# Every file of over ~5 s of CPU is listed: one left to the alphabetical tail (test_models, 19 s) ran
# there alone while the other process had finished.
FIRST = ("test_recipes.py", "test_export_predict.py", "test_pipeline.py", "test_hardening.py", "test_train.py",
         "test_tracking.py", "test_features.py", "test_heatmaps.py", "test_models.py", "test_serve.py",
         "test_labels.py")


def pytest_collection_modifyitems(items):
    """Tiers by what a test needs (`make test-fast` runs `-m unit`); a tier marked by hand stays."""
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))
    for item in items:
        if any(item.get_closest_marker(tier) for tier in ("unit", "pipeline", "browser")):
            continue
        tier = "pipeline" if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())) else "unit"
        item.add_marker(getattr(pytest.mark, tier))


def project_env(project: Path) -> dict:
    """Environment for running stages in a temp project: its own src, the venv's tools."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(project / "src")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    # The project's config turns DVC's usage reports off, a repository made by `dvc init` does not:
    # each command would start a daemon that posts one (offline: leaves its report in /tmp).
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env={**project_env(cwd), **(env or {})}, capture_output=True, text=True,
                          **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def predict_in_process(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`cxr predict` in this test process, from the project's folder: its exit status, stdout and stderr.
    TensorFlow loads once per test process, not once per call (~4 s of CPU each); the installed command
    runs as a process of its own in test_pipeline and test_hardening."""
    from cxr.cli import main
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.chdir(project), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["predict", *args])
    except SystemExit as e:   # main always ends so
        status = e.code
    return subprocess.CompletedProcess(["cxr", "predict", *args], status, out.getvalue(), err.getvalue())


def run_queued_experiments(project: Path, jobs: int = 1, env: dict | None = None) -> None:
    """`dvc exp run --run-all -j N` (what `dvc queue start -j N` does, in the foreground), then the queue's
    workers are stopped.

    Its output goes to a file, not a pipe: the process that launches each queue worker inherits DVC's
    stdout and lives as long as the worker, so a pipe stays open until every worker has exited, ~10 s
    after the last experiment, or never when a worker does not exit (treeverse/dvc#10398, seen here
    once, after both experiments had succeeded). The experiments are done when DVC returns, and
    DVC has deleted their temporary copies: one still there was written after its deletion (it was
    so while MLflow's artifact root lay in the first experiment's copy).
    """
    log = project / ".dvc" / "tmp" / "run-all.log"
    with open(log, "w") as out:
        proc = subprocess.run(["dvc", "exp", "run", "--run-all", "-j", str(jobs)], cwd=project,
                              env={**project_env(project), **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    for info in (project / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        try:   # a worker runs in its launcher's process group: end both
            os.killpg(os.getpgid(json.loads(info.read_text())["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass   # it had shut down by itself
    if proc.returncode != 0:
        raise AssertionError(f"dvc exp run --run-all failed ({proc.returncode}):\n{log.read_text()}")
    left = sorted(p.name for p in (project / ".dvc" / "tmp" / "exps").glob("tmp*"))
    assert not left, f"written after DVC deleted them: .dvc/tmp/exps/{left}"


def make_project(dest: Path) -> Path:
    """A fresh copy of the project (code, params, bundled data) in its own git repo."""
    for rel in PROJECT_FILES:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "ci@example.invalid"], dest)
    run(["git", "config", "user.name", "CI"], dest)
    return dest


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "project")


def edit_params(project: Path, edit) -> None:
    """Apply ``edit`` to the temp project's params.yaml mapping."""
    import yaml
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_params(params: dict) -> None:
    """Small and quick: 32 px, two variants, one epoch each."""
    params["image"]["size"] = 32
    params["train"]["batch_size"] = 64
    params["models"] = {"cnn": {**params["models"]["cnn"], "epochs": 1},
                        "mobilenet": {**params["models"]["mobilenet"], "epochs": 1}}
    params["evaluate"].update(bootstrap=50, heatmaps=2)
    params["export"].update(representative_images=16, latency_images=4)


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, full_metadata) -> Path:
    """labels.csv, splits.csv and cache/ for the bundled real images at 32 px, made by the real code."""
    from cxr.data.cache import build_cache
    from cxr.data.labels import build_labels
    from cxr.data.split import patient_split
    from cxr.outputs import write_csv

    root = tmp_path_factory.mktemp("small")
    images = sorted((BUNDLED / "images").glob("*.png"))
    table, _ = build_labels(full_metadata, ["PA", "AP"], [p.name for p in images])
    split = patient_split(table, seed=0)
    write_csv(root / "labels.csv", table)
    write_csv(root / "splits.csv", table[["Image Index", "Patient ID"]].assign(split=split))
    build_cache(images, 32, 2, root / "cache", progress=False)
    return root


@pytest.fixture(scope="session")
def small_dataset(small_data_dir):
    from cxr.data import FINDINGS
    from cxr.data.dataset import load_dataset
    root = small_data_dir
    return load_dataset(root / "cache", root / "labels.csv", root / "splits.csv", FINDINGS)


def _session_dir(tmp_path_factory) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (each has its own basetemp in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _build_tiny(project: Path) -> None:
    make_project(project)
    edit_params(project, tiny_params)
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """The whole pipeline run once, small (32 px, 1 epoch, 2 variants), committed in git; read only.

    Built once per session however many test processes there are (the first to ask builds it under a
    lock; ~100 s here); each process gets its own copy. A test that changes it takes `tiny_copy`.
    """
    shared = _session_dir(tmp_path_factory)
    built = shared / "tiny-built" / "project"
    with open(shared / "tiny-built.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built.parent / "done").exists():
            shutil.rmtree(built.parent, ignore_errors=True)   # a build that failed in another process
            _build_tiny(built)
            (built.parent / "done").touch()
    project = tmp_path_factory.mktemp("tiny") / "project"
    shutil.copytree(built, project, symlinks=True)
    return project


@pytest.fixture
def tiny_copy(tiny_project, tmp_path) -> Path:
    """A copy of the tiny project of the test's own, to change: tests stay independent of their order."""
    project = tmp_path / "tiny"
    shutil.copytree(tiny_project, project, symlinks=True)
    return project
