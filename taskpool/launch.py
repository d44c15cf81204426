"""Starting a worker: refuse at once when the broker rejects our credentials.

Celery treats a rejected password like a broker that is not up yet and retries forever, so a
typo in a deployment looks like a hang. A rejected password will not get better by waiting: the
worker stops within seconds, exit code 78 (EX_CONFIG), with one line saying so. A refused
connection is still retried (Redis may simply be starting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from amqp.exceptions import AccessRefused
from celery import Celery
from celery.signals import worker_init

from taskpool.health import probe_broker, probe_redis
from taskpool.urls import mask_url

log = logging.getLogger("taskpool.worker")

#: sysexits.h EX_CONFIG: a configuration error, not worth restarting for.
EXIT_BAD_CREDENTIALS = 78
#: How long the start-up check waits for the broker to answer at all.
CHECK_TIMEOUT = 5.0

REJECTED = (redis.exceptions.AuthenticationError, AccessRefused)


def credentials_rejected(app: Celery) -> str | None:
    """Why the broker or the Redis result store rejected our credentials, or None."""
    checks: list[tuple[str, str, Callable[[], None]]] = [
        ("broker", app.conf.broker_url, lambda: probe_broker(app, CHECK_TIMEOUT))
    ]
    backend = str(app.conf.result_backend or "")
    if backend.startswith(("redis://", "rediss://")):
        tls = app.conf.redis_backend_use_ssl
        checks.append(("result store", backend, lambda: probe_redis(backend, CHECK_TIMEOUT, tls)))
    for role, url, check in checks:
        try:
            check()
        except Exception as exc:  # only a rejection matters here; the rest is retried later
            if _is_rejection(exc):
                return f"{role} {mask_url(url)} rejected the credentials: authentication failed"
    return None


def refuse_rejected_credentials(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: stop the worker when its credentials are rejected."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    reason = credentials_rejected(app)
    if reason:
        log.critical("%s; check TASKPOOL_REDIS_PASSWORD or the broker URL. Stopping.", reason)
        raise SystemExit(EXIT_BAD_CREDENTIALS)


def _is_rejection(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, REJECTED) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def watch_worker_start() -> None:
    """Have every worker started in this process check its credentials first (idempotent)."""
    worker_init.connect(refuse_rejected_credentials, weak=False)
