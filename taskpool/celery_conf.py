"""The Celery configuration, derived from the settings in this one place."""

from __future__ import annotations

import ssl
from typing import Any

from taskpool.settings import Settings
from taskpool.urls import url_scheme

#: kombu's Redis transport with delivery that cannot lose a message to a killed worker
#: (taskpool/transport.py); a dotted path, so configuring imports nothing.
RELIABLE_REDIS_TRANSPORT = "taskpool.transport:Transport"


#: TASKPOOL_REDIS_TLS_VERIFY -> what Python's ssl module calls it.
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def redis_tls(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options for ``rediss://`` URLs, as Celery's ``*_use_ssl`` take them."""
    return {
        "ssl_cert_reqs": CERT_REQS[settings.redis_tls_verify],
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Map taskpool settings onto Celery's, with hardened defaults (each says why)."""
    redis_timeouts = {
        # No Redis read, write or connect may block forever on a server that stopped answering.
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.broker_timeout,
    }
    broker_scheme = url_scheme(settings.broker_url)
    reliable = broker_scheme in ("redis", "rediss")
    tls = redis_tls(settings)
    return {
        # rediss:// brokers and result stores: the CA, client certificate and check from the
        # settings (without them, redis-py refuses a rediss:// URL at first use).
        "broker_use_ssl": tls if broker_scheme == "rediss" else None,
        "redis_backend_use_ssl": tls if url_scheme(settings.result_backend) == "rediss" else None,
        "broker_url": settings.broker_url,
        # A message is popped and recorded as unacknowledged in one step, so a worker killed in
        # between cannot take the only copy with it (kombu's BRPOP path can).
        "broker_transport": RELIABLE_REDIS_TRANSPORT if reliable else None,
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
        "worker_pool": "prefork",
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
        "broker_transport_options": {
            # Unacked messages come back after this; longer than the task time limit (checked).
            "visibility_timeout": settings.visibility_timeout,
            # Every worker sweeps for messages of dead workers this often (throttle 1: each
            # interval really scans), so redelivery follows the visibility timeout closely.
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            **redis_timeouts,
        },
        # Publishing retries briefly, then fails, so .delay() cannot spin on a dead broker.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.2,
        },
        "redis_socket_timeout": settings.socket_timeout,
        "redis_socket_connect_timeout": settings.broker_timeout,
        "result_backend_transport_options": {
            # Celery's default retries a dead result store for about 19 s before failing.
            "retry_policy": {
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.1,
                "interval_max": 0.2,
            },
        },
    }
