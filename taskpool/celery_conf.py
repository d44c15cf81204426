"""The Celery configuration, derived from the settings in this one place."""

from __future__ import annotations

import ssl
from typing import Any

from taskpool.settings import WORKER_POOLS, Settings
from taskpool.urls import url_scheme

#: kombu's Redis transports with delivery that cannot lose a message to a killed worker
#: (taskpool/transport.py), by URL scheme; dotted paths, so configuring imports nothing.
RELIABLE_TRANSPORTS = {
    "redis": "taskpool.transport:Transport",
    "rediss": "taskpool.transport:Transport",
    "sentinel": "taskpool.transport:SentinelTransport",
}


#: How a client retries a publish or a result-store command: twice, within 0.3 s, then it
#: fails, so .delay() and .get() cannot spin on a dead broker (Celery's default policy retries
#: a dead result store for about 19 s).
QUICK_RETRIES = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.2}


#: TASKPOOL_REDIS_TLS_VERIFY -> what Python's ssl module calls it.
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def redis_tls(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for ``rediss://`` URLs (and ``sentinel://`` ones with
    TASKPOOL_SENTINEL_TLS), as Celery's ``*_use_ssl`` take them."""
    return {
        "ssl_cert_reqs": CERT_REQS[settings.redis_tls_verify],
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """What kombu's and Celery's Sentinel support read from the transport options.

    The sentinels' clients get the same timeouts as Redis's (given ``sentinel_kwargs``, redis-py
    copies none), and no retries of their own: redis-py's default retries each sentinel three
    times with backoff, about 12 s when none answers, while kombu and Celery retry anyway.
    """
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.broker_timeout,
        "retry": None,
    }
    if settings.sentinel_password:
        sentinel_kwargs["password"] = settings.sentinel_password
    if settings.sentinel_tls:
        sentinel_kwargs.update(ssl=True, **redis_tls(settings))
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": sentinel_kwargs}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Map taskpool settings onto Celery's, with hardened defaults (each says why)."""
    redis_timeouts = {
        # No Redis read, write or connect may block forever on a server that stopped answering.
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.broker_timeout,
    }
    broker_scheme = url_scheme(settings.broker_url)
    backend_scheme = url_scheme(settings.result_backend)
    tls = redis_tls(settings)
    sentinel = sentinel_options(settings)
    tls_schemes = ("rediss", "sentinel") if settings.sentinel_tls else ("rediss",)
    return {
        # rediss:// brokers and result stores: the CA, client certificate and check from the
        # settings (without them, redis-py refuses a rediss:// URL at first use). For
        # sentinel:// ones with TASKPOOL_SENTINEL_TLS, kombu and Celery connect to the primary
        # the sentinels name over TLS (their SentinelManagedSSLConnection) with the same.
        "broker_use_ssl": tls if broker_scheme in tls_schemes else None,
        "redis_backend_use_ssl": tls if backend_scheme in tls_schemes else None,
        "broker_url": settings.broker_url,
        # A message is popped and recorded as unacknowledged in one step, so a worker killed in
        # between cannot take the only copy with it (kombu's BRPOP path can).
        "broker_transport": RELIABLE_TRANSPORTS.get(broker_scheme),
        "result_backend": settings.result_backend,
        # JSON only, both ways: a pickle message from the broker would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the task ran, and requeue if its process died: a killed child loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # At least once, but a redelivered message whose task already succeeded (its worker died
        # or shut down between storing the result and the ack) is not run again.
        "worker_deduplicate_successful_tasks": True,
        # With late acks a lost connection would redeliver running tasks anyway; cancel the doubles.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Measured in bench/prefetch.py (see taskpool.settings): busy processes, little hoarding.
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        # Celery's prefork, or processes that each fetch their own messages (fetching.py).
        "worker_pool": WORKER_POOLS[settings.worker_pool],
        # None lets Celery start one process per CPU.
        "worker_concurrency": settings.concurrency,
        # A task over its hard limit has its process replaced; the soft limit warns it first.
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        # A pool process left large by one task is replaced after it (Celery counts KiB).
        "worker_max_memory_per_child": settings.max_memory_per_child_mb * 1024,
        "worker_max_tasks_per_child": settings.max_tasks_per_child,
        "result_expires": settings.result_expires,
        # Named queues: a worker started with -Q consumes only those it names.
        "task_routes": {task: {"queue": queue} for task, queue in settings.routes},
        # Connecting to the broker gives up after this, instead of Celery's 4 s default.
        "broker_connection_timeout": settings.broker_timeout,
        # A worker that starts before Redis keeps retrying, with kombu's bounded back-off.
        "broker_connection_retry_on_startup": True,
        # A full Redis (maxmemory, noeviction) refuses the worker's queue declarations with a
        # channel error, which Celery would take as unrecoverable: it retries them instead.
        "broker_channel_error_retry": True,
        "broker_transport_options": {
            # Read by taskpool's transport: a consumer silent this long is dead, and what it
            # held goes back to its queues (taskpool.liveness).
            "liveness_timeout": settings.liveness_timeout,
            # Only for messages stock workers took (kombu's unacked hash): they come back after
            # this, swept this often (throttle 1: each interval really scans).
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            **redis_timeouts,
            **(sentinel if broker_scheme == "sentinel" else {}),
            # Read by taskpool's transport: publishes wait for replicas (Redis WAIT).
            "wait_replicas": settings.redis_wait_replicas,
            "wait_timeout": settings.redis_wait_timeout,
            # Read by taskpool's transport: a message taken this often without an outcome, or
            # whose compressed body inflates past the largest arguments, is quarantined.
            "max_deliveries": settings.max_deliveries,
            "max_inflated": settings.max_message_bytes,
        },
        "task_publish_retry_policy": QUICK_RETRIES,
        "redis_socket_timeout": settings.socket_timeout,
        "redis_socket_connect_timeout": settings.broker_timeout,
        "result_backend_transport_options": {
            "retry_policy": QUICK_RETRIES,
            **(sentinel if backend_scheme == "sentinel" else {}),
        },
    }


#: What a worker adds to celery_config: a result write that fails on a lost connection is
#: retried with backoff (up to about 10 s, random full jitter, each wait at most 1 s) rather
#: than after the client's two quick retries; a Redis failover takes a few seconds. Past them, a
#: pool process sends the message back to its queue (``taskpool.result_store``). Clients keep
#: the short policy, so ``.get()`` and ``.state`` fail within their bounds.
WORKER_RESULT_RETRIES = {
    "result_backend_always_retry": True,
    "result_backend_max_retries": 30,
    "result_backend_base_sleep_between_retries_ms": 10,
    "result_backend_max_sleep_between_retries_ms": 1000,
}
