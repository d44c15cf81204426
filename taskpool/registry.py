"""The user's tasks on an app, and finding one by name, for the command and the test runner.

Celery's own tasks (``celery.*``) and taskpool's (``taskpool.*``, the chunk runner) are not a
user's to call by name.
"""

from __future__ import annotations

from typing import Any

#: Name prefixes of the tasks an app has that its user did not write.
BUILT_IN = ("celery.", "taskpool.")


def user_tasks(app: Any) -> list[str]:
    """The names of the tasks the user registered on ``app``, sorted."""
    return sorted(name for name in app.tasks if not name.startswith(BUILT_IN))


def find_task(app: Any, name: str) -> Any:
    """The user's task named ``name``, or by its last part (``square`` for ``proj.tasks.square``)
    when exactly one task has it; LookupError naming the known tasks otherwise."""
    names = user_tasks(app)
    if name in names:
        return app.tasks[name]
    matches = [full for full in names if full.rpartition(".")[2] == name]
    if len(matches) == 1:
        return app.tasks[matches[0]]
    if matches:
        raise LookupError(f"{name!r} names more than one task: {', '.join(matches)}")
    raise LookupError(f"no task named {name!r}; known tasks: {', '.join(names) or 'none'}")
