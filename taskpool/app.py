"""A Celery app configured from taskpool's settings: ``taskpool.create_app``."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.app import backends

from taskpool import (
    result_store,
    transport,  # noqa: F401 - loaded before kombu asks for it by name
)
from taskpool.celery_conf import celery_config
from taskpool.errors import ConfigError
from taskpool.fallback import FallbackTask, guard_send_task
from taskpool.settings import Settings, bind_settings, settings_of


class TaskpoolCelery(Celery):
    """A Celery app configured from taskpool settings when its configuration is first needed.

    Celery calls ``on_configure`` lazily, so creating the app reads nothing; a bad setting
    raises ConfigError there (a signal receiver would have its error swallowed and logged).
    """

    def __init__(self, main: str, *, settings: Settings | None = None, **kwargs: Any) -> None:
        # Every task publishes to the broker when it answers and runs on the local pool when not.
        # The class itself, not its dotted name: `celery -A tasks` from a checkout drops the
        # working directory from sys.path once the app is found, so a lazy import would fail.
        kwargs.setdefault("task_cls", FallbackTask)
        super().__init__(main, **kwargs)
        guard_send_task(self)  # before any task is bound, for apps that only send by name
        if settings is not None:
            bind_settings(self, settings)

    def _get_backend(self) -> Any:
        """The result backend Celery would make, as ``taskpool.result_store``'s class for a
        Redis one (results in one round trip, chords refused off the broker)."""
        backend, url = backends.by_url(self.backend_cls or self.conf.result_backend, self.loader)
        return result_store.store_class(backend)(app=self, url=url)

    def on_configure(self) -> None:
        try:
            settings = settings_of(self)
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


def create_app(
    main: str, *, settings: Settings | None = None, **celery_options: Any
) -> TaskpoolCelery:
    """A Celery app named ``main`` (the module ``celery -A`` finds it in), configured by taskpool.

    ``settings`` defaults to the environment's, read when the configuration is first needed.
    A worker of this app stops at once when the broker rejects its credentials
    (``taskpool.launch``). ``celery_options`` go to ``Celery`` (``include=[...]``, say).
    """
    from taskpool.launch import watch_worker_start

    watch_worker_start()
    return TaskpoolCelery(main, settings=settings, **celery_options)
