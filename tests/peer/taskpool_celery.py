"""A pytest plugin for Celery's integration suite: its test apps' tasks are ``FallbackTask``.

Loaded with ``-p tests.peer.taskpool_celery`` after ``-p celery.contrib.pytest`` (see
tests/peer/suites.py); it also aliases ``redis://`` to taskpool's transport and result store.
The route in is
``celery_parameters``, the fixture celery.contrib.pytest documents for the test app's
constructor arguments: the suite's own config, worker, tasks and fixtures stay as they are, and
every task made by the app (``@shared_task`` and Celery's built-ins alike) is built on
``task_cls``. A plugin's fixture overrides one of a plugin registered before it, hence the order.
Tasks given their own ``base=`` keep it, as they would in an app of taskpool's.

The session checks that the app's task class really is a FallbackTask subclass and its result
backend taskpool's (it stops the run otherwise: a silent stock run would compare stock with
stock) and prints one line, ``taskpool task_cls: ...``, naming the registered tasks that are
not, the transport and the result backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskpool
from taskpool import FallbackTask
from taskpool.result_store import RedisStore
from tests.peer import taskpool_transport  # noqa: F401 - redis:// is taskpool's transport and store

_verdict: list[str] = []


@pytest.fixture(scope="session")
def celery_parameters() -> dict[str, Any]:
    return {"task_cls": FallbackTask}


@pytest.fixture(scope="session", autouse=True)
def taskpool_task_cls(celery_session_app: Any) -> Iterator[None]:
    if not issubclass(celery_session_app.Task, FallbackTask):
        pytest.exit(f"the test app's task class is {celery_session_app.Task.__mro__}", 3)
    if not isinstance(celery_session_app.backend, RedisStore):
        pytest.exit(f"the test app's result backend is {type(celery_session_app.backend)}", 3)
    yield
    # At the end every task module of the suite is imported, so the registry is complete.
    tasks = dict(celery_session_app.tasks)
    others = sorted(name for name, task in tasks.items() if not isinstance(task, FallbackTask))
    with celery_session_app.connection_for_write() as connection:  # made, not connected
        transport = type(connection.transport)
    _verdict.append(
        f"{len(tasks) - len(others)} of {len(tasks)} tasks are FallbackTask; not: {others}; "
        f"broker transport: {transport.__module__}.{transport.__qualname__}; "
        f"result backend: {type(celery_session_app.backend).__qualname__}; "
        f"taskpool from {Path(taskpool.__file__).parent}"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _verdict:
        terminalreporter.write_line(f"taskpool task_cls: {line}")
