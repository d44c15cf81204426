"""Whether this process may start the local pool, given how pool processes load the main script.

With the ``forkserver`` (and ``spawn``) start method, every pool process imports the caller's
main script again, as ``__mp_main__``. A script that calls tasks at top level, outside
``if __name__ == "__main__":``, would have each pool process run those calls again, and start
pools of its own, without end. So such calls run in the calling process instead (still correct,
not parallel), and taskpool says once where the guard is missing. (A pool started with ``fork``,
by default the choice for a caller with one thread and no open socket, imports nothing again
and needs no guard.)
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def importing_main_in_child() -> bool:
    """True while a pool process re-imports the main script (its top-level code runs now)."""
    mp_main = sys.modules.get("__mp_main__")
    return mp_main is not None and mp_main is not sys.modules.get("__main__")


def unguarded_main_call() -> str | None:
    """``path:line`` of the main script's top-level call that led here, if it is unguarded."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py"):
        return None  # python -c, a REPL, a notebook: there is no script to import again
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            break
        frame = frame.f_back
    if frame is None:
        return None
    line = frame.f_lineno
    if line in _guarded_lines(str(path)):
        return None
    log.warning(
        '%s:%d calls a task outside `if __name__ == "__main__":`; local pool processes would '
        "run that line again, so local runs happen in this process instead (not in parallel)",
        path,
        line,
    )
    return f"{path}:{line}"


@functools.cache
def _guarded_lines(path: str) -> frozenset[int]:
    """The lines of ``path`` inside an ``if __name__ == "__main__":`` block."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return frozenset(range(1, 1_000_000))  # unreadable: trust it, as multiprocessing does
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return frozenset(lines)


def _is_main_test(test: ast.expr) -> bool:
    if not (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
    ):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]
