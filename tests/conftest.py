"""Shared fixtures: the project root, the bundled real NIH data, temp project copies."""
from __future__ import annotations

import os
import shutil
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
PROJECT_FILES = ("dvc.yaml", "params.yaml", "src", "stages", "data/sample", ".dvc/config", ".dvcignore", ".gitignore")


@pytest.fixture(scope="session")
def full_metadata() -> pd.DataFrame:
    from cxr.data import read_metadata
    return read_metadata(FULL_METADATA)


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return sorted((BUNDLED / "images").glob("*.png"))


def project_env(project: Path) -> dict:
    """Environment for running stages in a temp project: its own src, the venv's tools."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(project / "src")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


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
