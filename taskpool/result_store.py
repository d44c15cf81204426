"""What taskpool adds to an app's Celery result backend, set up when the app makes one.

- ``apply_chord`` first asks where calls go: a chord prepares the result store before its
  header's tasks are sent, and with no Redis that ends in Celery's "the Celery application must
  be restarted". Off the broker, the chord is refused at once, as groups and chains are.
- With TASKPOOL_REDIS_WAIT_REPLICAS, a result write waits for the replicas in its own round
  trip, as publishes do (``taskpool.replication``). A result the dying primary accepted but
  never passed on is otherwise lost for good: the worker that ran the task remembers it
  succeeded (``worker_deduplicate_successful_tasks``) and skips the redelivered message. Not
  confirmed in time, the write raises NotReplicated, which the worker retries
  (``WORKER_RESULT_RETRIES``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from taskpool import dispatch
from taskpool.fallback import refuse_canvas
from taskpool.replication import ReplicaWait
from taskpool.settings import settings_of


def adapt(app: Celery, backend: Any) -> Any:
    """``backend``, with the changes above, for ``app``."""
    apply_chord = backend.apply_chord

    def guarded_apply_chord(header_result_args: Any, body: Any, **options: Any) -> Any:
        route = dispatch.route(app, None)
        if route.backend != "broker":
            refuse_canvas(f"chord({body.name})", route, {"chord": body})
        return apply_chord(header_result_args, body, **options)

    backend.apply_chord = guarded_apply_chord
    settings = settings_of(app)
    if settings.redis_wait_replicas and hasattr(backend, "client"):  # Redis and Sentinel stores
        wait = ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout)
        backend._set = _replicated_set(backend, wait)
    return backend


def _replicated_set(backend: Any, wait: ReplicaWait) -> Any:
    """Celery's ``RedisBackend._set`` (store, then publish to waiting clients), then ``WAIT``
    on the same connection, which is what WAIT counts writes on."""

    def _set(key: Any, value: Any, expires: Any = None) -> None:
        expires = backend.expires if expires is None else expires
        with backend.client.pipeline(transaction=False) as pipe:
            pipe.set(key, value, ex=expires or None)
            pipe.publish(key, value)
            replicas = wait.add(backend.client, pipe)
            replies = pipe.execute()
        if replicas:
            wait.check(replicas, replies[-1], "a result")

    return _set
