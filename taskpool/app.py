"""A Celery app configured from taskpool's settings: ``taskpool.create_app``."""

from __future__ import annotations

import os
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
from taskpool.settings import (
    CELERY_KEYS,
    CELERY_VARIABLES,
    Settings,
    bind_settings,
    conf_value,
)
from taskpool.urls import mask_url


class TaskpoolCelery(Celery):
    """A Celery app configured by taskpool each time its configuration is loaded.

    The project's own configuration (``config_from_object``, ``conf.update``, Django settings
    with a namespace) is read with the ``TASKPOOL_*`` variables, in either order, and
    taskpool's Celery settings go under it (``taskpool_config``).
    """

    #: URIs (Flower's broker page, the worker's banner) name the broker by its URL's scheme.
    amqp_cls = "taskpool.amqp:AMQP"

    def __init__(self, main: str, *, settings: Settings | None = None, **kwargs: Any) -> None:
        # Every task publishes to the broker when it answers and runs on the local pool when not.
        # The class itself, not its dotted name: `celery -A tasks` from a checkout drops the
        # working directory from sys.path once the app is found, so a lazy import would fail.
        kwargs.setdefault("task_cls", FallbackTask)
        self._taskpool_settings = settings
        super().__init__(main, **kwargs)
        guard_send_task(self)  # before any task is bound, for apps that only send by name

    def _get_backend(self) -> Any:
        """The result backend Celery would make, as ``taskpool.result_store``'s class for a
        Redis one (results in one round trip, chords refused off the broker).

        Adapted from Celery 5.7.0 ``celery.app.base.Celery._get_backend``: the class is passed
        through ``result_store.store_class``.
        """
        backend, url = backends.by_url(self.backend_cls or self.conf.result_backend, self.loader)
        return result_store.store_class(backend)(app=self, url=url)

    def prepare_config(self, c: Any) -> Any:
        """Celery's hook for the loaded configuration source, before its defaults join it."""
        return taskpool_config(self, super().prepare_config(c), self._taskpool_settings)


def taskpool_config(app: Celery, source: Any, given: Settings | None = None) -> dict[str, Any]:
    """``source`` (what the app's ``config_from_object`` loaded) with taskpool's Celery
    settings under it, and the app's taskpool settings bound (``settings_of``).

    The settings are ``given``, else read from the environment and the project's configuration
    (``Settings.from_sources``). A Celery key that is a taskpool setting (``broker_url``,
    ``task_time_limit``, ...) takes the settings' value, in which a ``TASKPOOL_*`` variable
    wins; the project's other Celery keys win over taskpool's defaults, and its transport
    options are merged into taskpool's.
    """
    project = dict(source or {})
    # Settings given in code (conf.update before the load, Celery(broker=...)): Celery lays them
    # over everything, and keeps them in this private attribute until then.
    in_code = {k: v for k, v in vars(app).get("_preconf", {}).items() if v is not None}
    try:
        settings = given or Settings.from_sources(
            os.environ, {**project, **in_code}, namespace=app.namespace
        )
        _check_code_agrees(in_code, app.namespace)
    except ConfigError as exc:
        if _in_celery_command():  # one clear line for the operator, not a traceback
            print(f"taskpool: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    bind_settings(app, settings, given=given is not None)
    derived = celery_config(settings)
    merged = {**derived, **project}
    for key in CELERY_KEYS.values():  # the settings chose between a variable and the project
        merged.pop(_spelt(key, app.namespace), None)
        merged[key] = derived[key]
    for key in ("broker_transport_options", "result_backend_transport_options"):
        merged[key] = {**derived[key], **(merged.pop(_spelt(key, app.namespace), None) or {})}
    return merged


def configure(app: Celery) -> Celery:
    """Give a plain Celery app what ``create_app`` gives: taskpool's settings read from the
    environment and the app's configuration, its hardened Celery settings under the project's
    own, ``send_task`` with the broker-or-local decision, and a worker that stops on rejected
    credentials. Call it before the app's configuration is first read; returns ``app``.
    """
    if isinstance(app, TaskpoolCelery):
        return app
    if app.configured:
        raise ConfigError(
            "taskpool.configure(app)",
            app.main or "",
            "call it before the app's configuration is first read (app.conf's values, a task "
            "call or a worker start), e.g. right after Celery(...) or config_from_object",
        )
    from taskpool.launch import watch_worker_start

    if "amqp" not in vars(app):  # not made yet: Celery makes it on first use
        app.amqp_cls = TaskpoolCelery.amqp_cls
    prepare = app.prepare_config
    app.prepare_config = lambda source: taskpool_config(app, prepare(source))
    guard_send_task(app)
    watch_worker_start()
    return app


def _spelt(key: str, namespace: str | None) -> str:
    """How a Celery key is spelt in a configuration loaded with ``namespace`` (Django's)."""
    return f"{namespace.upper()}_{key.upper()}" if namespace else key


def _check_code_agrees(in_code: dict[str, Any], namespace: str | None) -> None:
    """Refuse a ``TASKPOOL_*`` variable that a Celery key set in code overrides: Celery lays
    such keys over everything, so the worker would use one value and taskpool the other."""
    for variable, key in CELERY_KEYS.items():
        given = conf_value(in_code, key, namespace)
        chosen = os.environ.get(variable, "").strip()
        if CELERY_VARIABLES.get(variable, "") in os.environ:
            continue  # Celery's own variable wins over code, as in Celery
        if given is not None and chosen and given != chosen:
            raise ConfigError(
                variable,
                mask_url(chosen),
                f"the app sets {key}={mask_url(given)!r} in code (Celery(...) or "
                "app.conf.update), which Celery would use instead: remove one of them",
            )


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
