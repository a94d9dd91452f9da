"""The project's error base, and how a command or a stage ends: a ``CxrError`` as one line, exit 1."""
from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


class CxrError(ValueError):
    """A problem the user can fix; ``str(e)`` is one line naming the file or key."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """A third-party exception as a short reason: its first line, or its type when it has no text."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def run_command(main: Callable[[], object], name: str):
    """Run ``main`` and return what it returns; a ``CxrError`` becomes ``name: message``
    on stderr and exit status 1."""
    try:
        return main()
    except CxrError as e:
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; outputs left as they were", file=sys.stderr)
        sys.exit(130)


def end_process(status: int) -> NoReturn:
    """End this process with ``status`` without freeing its objects.

    Python's teardown of a process that imported TensorFlow, Keras and MLflow costs ~1.5 s of CPU
    after the work is written (evaluate@cnn of a small project: 8.8 s -> 7.4 s; `cxr predict` of one
    image: 1.1 s of ~5.3). Every exit handler still runs (logging's, multiprocessing's, temporary
    files', MLflow's); only the teardown is skipped. A live non-daemon thread would be joined by a
    normal exit, so it gets one.
    """
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_stage(main: Callable[[], object], name: str) -> NoReturn:
    """A stage script's entry point: ``run_command``, then ``end_process(0)``."""
    run_command(main, name)
    end_process(0)
