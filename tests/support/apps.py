"""Client apps for tests: taskpool apps with the example tasks, each closed after its test
(conftest's autouse fixture calls ``close_made_since``), and the workers' fault-test settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from taskpool import Settings
from taskpool.testing.apps import close_app, example_app

#: Fault tests' workers: a dead worker's messages come back in seconds with the default
#: liveness timeout; only the hard limit is short, so a stuck task ends within a test.
FAST_REDELIVERY = {"TASKPOOL_TASK_TIME_LIMIT": "4"}

#: The apps client_app and settings_app made, oldest first.
_made: list[Celery] = []


def client_app(broker_url: str, **settings: Any) -> Celery:
    """A taskpool app pointed at ``broker_url``; the shipped tasks are on it by name."""
    return settings_app(Settings(broker_url=broker_url, result_backend=broker_url, **settings))


def settings_app(settings: Settings) -> Celery:
    """A taskpool app with ``settings``, closed after the test; the shipped tasks are on it."""
    app = example_app(settings)
    _made.append(app)
    return app


def made() -> int:
    """How many apps were made so far."""
    return len(_made)


def close_made_since(count: int) -> None:
    """Close the apps made after the first ``count``."""
    while len(_made) > count:
        close_app(_made.pop())
