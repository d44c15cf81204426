"""Client apps for tests and benchmarks: a taskpool app with the example tasks, and closing it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

    from taskpool import Settings


def example_app(settings: Settings) -> Celery:
    """A taskpool app with ``settings``; the shipped tasks are on it by name."""
    from taskpool import create_app
    from taskpool.examples import register

    app = create_app("tasks", settings=settings)
    register(app)
    app.finalize()
    return app


def close_app(app: Celery) -> None:
    """Close ``app``'s broker pool and result-store connections, so none is left to GC."""
    backend = getattr(app._local, "backend", None)  # only if the app made one
    client = getattr(backend, "client", None)
    if client is not None:
        client.connection_pool.disconnect()
    app.close()
