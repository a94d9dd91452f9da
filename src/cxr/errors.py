"""The project's error base, and how a command reports one: one line, exit 1."""
from __future__ import annotations

import sys
from collections.abc import Callable


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
