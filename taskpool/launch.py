"""Starting a worker: stop at once when the broker refuses us, retry result writes through a
broker failover, fail the tasks whose messages it quarantines, and keep passwords out of its
stats.

Celery treats a rejected password (or a database the server lacks) like a broker that is not
up yet and retries forever, so a typo in a deployment looks like a hang. A refusal will not get
better by waiting: the worker stops within seconds, exit code 78 (EX_CONFIG), with one line
saying why (``health.refusal``). A refused connection is still retried (Redis may simply be
starting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import task_failure, worker_init

from taskpool.celery_conf import WORKER_RESULT_RETRIES
from taskpool.health import probe_broker, probe_redis, refusal
from taskpool.ledger import record_failure
from taskpool.quarantine import Entry, fail_task_of, message_quarantined
from taskpool.urls import is_redis, mask_url, masked

log = logging.getLogger(__name__)

#: sysexits.h EX_CONFIG: a configuration error, not worth restarting for.
EXIT_CONFIG = 78
#: How long the start-up check waits for the broker to answer at all.
CHECK_TIMEOUT = 5.0


def configuration_refused(app: Celery) -> str | None:
    """Why the broker or the Redis result store refused us (``health.refusal``), or None."""
    checks: list[tuple[str, str, Callable[[], None]]] = [
        ("broker", app.conf.broker_url, lambda: probe_broker(app, CHECK_TIMEOUT))
    ]
    backend = str(app.conf.result_backend or "")
    if is_redis(backend):
        tls, options = app.conf.redis_backend_use_ssl, app.conf.result_backend_transport_options
        checks.append(
            ("result store", backend, lambda: probe_redis(backend, CHECK_TIMEOUT, tls, options))
        )
    for role, url, check in checks:
        try:
            check()
        except Exception as exc:  # only a refusal matters here; the rest is retried later
            why = refusal(exc)
            if why is not None:
                return f"{role} {mask_url(url)} {why}"
    return None


def stop_when_refused(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: stop the worker when its broker or result store refuses it."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    reason = configuration_refused(app)
    if reason:
        log.critical("%s; fix the URL (or TASKPOOL_REDIS_PASSWORD). Stopping.", reason)
        raise SystemExit(EXIT_CONFIG)


def retry_result_writes(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: the worker's result writes retry longer (WORKER_RESULT_RETRIES).

    Set before the worker makes its first result backend, which reads them once.
    """
    app = getattr(sender, "app", None)
    if app is not None:
        app.conf.update(WORKER_RESULT_RETRIES)


def fail_quarantined_tasks(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: each task whose message this worker quarantines is marked
    failed in the result store (MessageQuarantined), so no ``.get()`` waits for it for ever."""
    app = getattr(sender, "app", None)
    if app is None:
        return

    def fail(sender: Any = None, entry: Entry | None = None, **_: Any) -> None:
        if entry is not None:
            fail_task_of(app, entry)

    message_quarantined.connect(fail, weak=False)


def mask_worker_stats(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: the worker's stats (``celery inspect stats``, Flower's worker
    page) show its broker's transport options, where Celery removes the URL's password but not
    the sentinels' (``sentinel_kwargs``) nor one in a query string: those are masked too."""
    stats = getattr(sender, "stats", None)
    if stats is None:
        return

    def masked_stats() -> Any:
        info = stats()
        if isinstance(info, dict) and "broker" in info:  # not "total": task names, by count
            info["broker"] = masked(info["broker"])
        return info

    sender.stats = masked_stats


def record_failures(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: the worker's pool processes (forked from it) keep each task's
    last failure in the result store, for ``taskpool failed`` (``taskpool.ledger``)."""
    task_failure.connect(record_failure, weak=False)


def watch_worker_start() -> None:
    """Have every worker started in this process check its credentials first, retry its
    result writes longer, fail the tasks it quarantines, record its failures, and mask its
    stats (idempotent)."""
    worker_init.connect(stop_when_refused, weak=False)
    worker_init.connect(record_failures, weak=False)
    worker_init.connect(retry_result_writes, weak=False)
    worker_init.connect(fail_quarantined_tasks, weak=False)
    worker_init.connect(mask_worker_stats, weak=False)
