"""The Celery application; its configuration is read from the settings on first use."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import worker_init

from config import ConfigError, Settings, celery_config, current_settings
from workers import reliable_redis  # noqa: F401 - loaded before kombu asks for it by name
from workers.fallback import FallbackTask
from workers.launch import refuse_rejected_credentials


class TaskpoolCelery(Celery):  # type: ignore[misc]
    """A Celery app configured from taskpool settings when its configuration is first needed.

    Celery calls ``on_configure`` lazily, so importing the app reads nothing; a bad setting
    raises ConfigError there (a signal receiver would have its error swallowed and logged).
    """

    def __init__(
        self, main: str = "tasks", settings: Settings | None = None, **kwargs: Any
    ) -> None:
        # Every task publishes to the broker when it answers and runs on the local pool when not.
        # The class itself, not its dotted name: `celery -A tasks` from a checkout drops the
        # working directory from sys.path once the app is found, so a lazy import would fail.
        kwargs.setdefault("task_cls", FallbackTask)
        super().__init__(main, **kwargs)
        self.taskpool_settings = settings  # read by FallbackTask; None means the environment's

    def on_configure(self) -> None:
        try:
            settings = self.taskpool_settings or current_settings()
        except ConfigError as exc:
            if _in_celery_command():  # one clear line for the operator, not a traceback
                print(f"taskpool: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        self.config_from_object(celery_config(settings))


def _in_celery_command() -> bool:
    """True when this process is the ``celery`` command (console script or ``python -m celery``)."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "celery.__main__" in sys.modules or getattr(main_spec, "name", "") == "celery.__main__"


# The reliable Redis transport is configured by name (config.celery_config), but imported at the
# top: `celery -A tasks` from a checkout drops the working directory from sys.path, and kombu
# resolves the name only later.


def create_app(settings: Settings | None = None, main: str = "tasks") -> TaskpoolCelery:
    """Create a taskpool Celery app; ``settings`` defaults to the environment's, read lazily."""
    return TaskpoolCelery(main, settings=settings)


app = create_app()

# A worker whose password the broker rejects stops at once instead of retrying forever.
worker_init.connect(refuse_rejected_credentials, weak=False)
