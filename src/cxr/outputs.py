"""Writing outputs so that an interrupted stage leaves the old output or none.

Everything is written to a temporary sibling and renamed into place; a rename
within one directory is atomic on POSIX, so readers never see half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it onto ``dest`` on success.

    Works for files and directories (the caller creates what it needs at the
    yielded path). On an exception the temporary is removed and ``dest`` is
    untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(dest)
    # The suffix is kept: Keras and Core ML refuse to save under another extension.
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}{dest.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}{dest.suffix}")
            _remove(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    finally:
        _remove(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(dest: Path) -> None:
    """Temporaries of ``dest`` left by killed processes (SIGKILL cannot clean up)."""
    for kind in ("tmp", "old"):
        for path in dest.parent.glob(f".{dest.name}.{kind}-*"):
            pid = path.name.split(f".{kind}-", 1)[1].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    """Pretty, key-sorted JSON (stable bytes for the same content), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """CSV without the index, written atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def file_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """One sha256 over the bytes of several files, in order."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
