"""Run a stage script held at a known step, so a test can interrupt it there without timing.

    python tests/gate.py MODULE:ATTR N GATE_DIR SCRIPT [ARGS...]

Wraps ``MODULE.ATTR`` (a function, or ``Class.method``) so that its N-th call
creates ``GATE_DIR/reached`` and then blocks opening the FIFO ``GATE_DIR/gate``
for reading, which nobody writes: the stage can neither finish nor move on
until the test signals it. Then runs SCRIPT as ``__main__``.
"""
import functools
import importlib
import os
import runpy
import sys
from pathlib import Path


def hold(target: str, n: int, gate_dir: Path) -> None:
    module_name, attr = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def held(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            (gate_dir / "reached").touch()
            open(gate_dir / "gate").close()  # blocks: no writer ever comes
        return original(*args, **kwargs)

    setattr(owner, name, held)


if __name__ == "__main__":
    target, n, gate_dir, script, *args = sys.argv[1:]
    gate_dir = Path(gate_dir)
    os.mkfifo(gate_dir / "gate")
    hold(target, int(n), gate_dir)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
