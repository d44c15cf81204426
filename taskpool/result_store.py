"""taskpool's Redis result store: Celery's ``RedisBackend`` (and its Sentinel variant), with
the same keys, values and channels, so stock Celery clients, workers and Flower read it as
their own. What differs:

- A result is stored in one round trip (``store_result.lua``): Celery reads the stored state
  first, so as not to overwrite a success with a later run's outcome, then writes and
  publishes; the script applies the same rule in one step. Results that are not plain JSON
  (compressed, or another serializer) take Celery's own path.
- A client subscribes to a result's channel when it sends the task, as Celery's does, only while
  it holds fewer than a hundred subscriptions; past that, when it waits for a result not stored
  yet (``taskpool.result_consumer``): sending thousands of tasks builds no backlog to read.
- A client's read of a result also reads, in the same round trip, the successes of the next
  tasks it sent and still holds results for, and a wait that must subscribe also subscribes to
  theirs (``taskpool.read_ahead``): reading many results in turn costs a round trip for every
  few dozen, not for each, whether the workers have stored them or not yet.
- ``apply_chord`` first asks where calls go: a chord prepares the result store before its
  header's tasks are sent, and with no Redis that ends in Celery's "the Celery application must
  be restarted". Off the broker, the chord is refused at once, as groups and chains are.
- With TASKPOOL_REDIS_WAIT_REPLICAS, a result write waits for the replicas in its own round
  trip, as publishes do (``taskpool.replication``). A result the dying primary accepted but
  never passed on is otherwise lost for good: the worker that ran the task remembers it
  succeeded (``worker_deduplicate_successful_tasks``) and skips the redelivered message. Not
  confirmed in time, the write raises NotReplicated, which the worker retries
  (``WORKER_RESULT_RETRIES``).
- A result write that still fails after the worker's retries, for a reason worth retrying (a
  full Redis, maxmemory with noeviction, or a lost connection), does not lose the result: in a
  prefork pool process it raises Celery's ``Reject(requeue=True)``, so the worker gives the
  message back to its queue and the task runs again later (at least once, as late acks
  promise; past TASKPOOL_MAX_DELIVERIES it is quarantined). Other pools (solo, threads) cannot
  carry a Reject from there, and keep Celery's behaviour: the result is lost.

``taskpool.create_app`` apps use it for ``redis://``, ``rediss://`` and ``sentinel://``
result stores. Another Celery app names it in its setting:
``result_backend = "taskpool.result_store:RedisStore+redis://host:6379/0"``.

The Celery private names used here, and why, are in docs/PRIVATE_API.md (checked by
tests/unit/test_private_api.py); the methods adapted from Celery's say so ("Adapted from").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import current_task, signals, states
from celery._state import task_join_will_block
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError, Reject
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import NoScriptError

from taskpool import dispatch
from taskpool.errors import RedisFull, redis_full
from taskpool.fallback import refuse_canvas
from taskpool.kept_connection import KeptConnection
from taskpool.liveness import ACK, RUNNING, Running
from taskpool.read_ahead import LARGEST, ReadAhead
from taskpool.replication import ReplicaWait
from taskpool.result_consumer import ResultConsumer
from taskpool.settings import settings_of
from taskpool.urls import mask_url

STORE_RESULT = ACK + Path(__file__).with_name("store_result.lua").read_text()

log = logging.getLogger(__name__)

#: Whether this process is a prefork pool process, where a Reject raised while storing a
#: result reaches the worker as the task's outcome (set by ``worker_process_init``).
_in_pool_process = False


@signals.worker_process_init.connect(weak=False)
def _pool_process_started(**_: Any) -> None:
    global _in_pool_process
    _in_pool_process = True


#: What ``store_result.lua`` answers.
STORED, KEPT_SUCCESS, UNREADABLE = 1, 0, -1


_Base: Any = RedisBackend if TYPE_CHECKING else object

#: The largest string Redis holds (its proto-max-bulk-len default): a larger result is
#: refused, as Celery's own set refuses it.
MAX_REDIS_STRING = 512 * 1024 * 1024


class _Store(_Base):
    """What taskpool changes in a Celery Redis backend; mixed in before it."""

    ResultConsumer = ResultConsumer
    #: ``on_task_call`` subscribes on the result consumer's own connection and never uses the
    #: producer it is given (``taskpool.quick_publish`` then needs none).
    subscribes_without_producer = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = settings_of(self.app)
        self._wait = (
            ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout)
            if settings.redis_wait_replicas
            else None
        )
        # The script reads the stored state as JSON; other encodings keep Celery's read.
        self._one_step = self.serializer == "json" and not self.compression
        # A success acks its message in the same script when the messages are on this Redis.
        conf = self.app.conf
        self._acks = self._wait is None and str(conf.broker_url) == str(conf.result_backend)
        self._script: Any = None
        self._kept = KeptConnection()  # for result writes and reads (_commands)
        self.read_ahead = ReadAhead()

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Adapted from Celery 5.7.0 ``celery.backends.redis.RedisBackend.on_task_call``:
        ``subscribe_at_send``, bounded, in place of ``consume_from``; the task may be read
        ahead (``taskpool.read_ahead``)."""
        if not task_join_will_block():  # as Celery's: a task's own calls subscribe to nothing
            self.read_ahead.sent(task_id)
            self.result_consumer.subscribe_at_send(task_id)

    def remove_pending_result(self, result: Any) -> Any:
        # Celery calls it once a result is read, and from AsyncResult.__del__.
        self.read_ahead.forget(result.id)
        return super().remove_pending_result(result)

    def forget(self, task_id: str) -> None:
        self.read_ahead.forget(task_id)
        super().forget(task_id)

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        """Adapted from Celery 5.7.0
        ``celery.backends.base.BaseKeyValueStoreBackend._get_task_meta_for``: a success read
        ahead for the task is taken without a read; otherwise the read of its result also reads
        ahead the next tasks sent (``taskpool.read_ahead``), in the same round trip."""
        meta = self.read_ahead.take(task_id)
        if meta is not None:
            return meta
        key = self.get_key_for_task(task_id)
        ahead = self.read_ahead.next_ids(task_id)
        if ahead:
            ranges = [("GETRANGE", self.get_key_for_task(i), 0, LARGEST) for i in ahead]
            value, *found = self._commands([("GET", key), *ranges])
            self.read_ahead.found(ahead, found, self.decode_result)
            if isinstance(value, Exception):
                raise value
        else:
            value = self.get(key)
            if value:
                self.read_ahead.stored()
        if not value:
            return {"status": states.PENDING, "result": None}
        return self.decode_result(value)

    def apply_chord(self, header_result_args: Any, body: Any, **options: Any) -> Any:
        route = dispatch.route(self.app, None)
        if route.backend == "local":
            refuse_canvas(f"chord({body.name})", route, {"chord": body})
        return super().apply_chord(header_result_args, body, **options)

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's, except that a pool process whose write still failed, for a reason worth
        retrying (Redis full, a lost connection), after the retries gives the task's message
        back instead of losing the result (the module's docstring)."""
        try:
            return super().store_result(task_id, result, state, traceback, request, **kwargs)
        except BackendStoreError as exc:
            cause = exc.__context__
            if not (
                isinstance(cause, Exception)
                and self.exception_safe_to_retry(cause)
                and _running_here(task_id)
            ):
                raise
            why = (
                f"the {state} result of task {task_id} could not be stored: {cause}; "
                "its message goes back to the queue and the task will run again"
            )
            log.error("%s", why)
            raise Reject(why, requeue=True) from exc

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store a task's outcome unless a success is stored already, in one round trip.

        Adapted from Celery 5.7.0 ``celery.backends.base.BaseKeyValueStoreBackend._store_result``
        with ``celery.backends.redis.RedisBackend._set_with_state`` and ``.set``: the read of
        the stored state and the write and publish are one script (``store_result.lua``)
        instead of a GET, then a SET and a PUBLISH; the size check and the failure expiry are
        theirs. Results that are not plain JSON, or a stored one the script cannot read, take
        Celery's own path.
        """
        if not self._one_step:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > MAX_REDIS_STRING:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        acking = self._acking(task_id, state)
        stored = self.ensure(self._store_unless_succeeded, (key, value, expires, acking))
        if stored == UNREADABLE:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        if acking is not None:
            acking.acked(acking.tag)
        return result

    def _acking(self, task_id: str, state: str) -> Running | None:
        """The message a success acks as it is stored, if any: the task a fetching pool's
        process runs, whose message is on this Redis (Celery acks a success right after)."""
        running = RUNNING.get()
        if running is None or not self._acks or state != states.SUCCESS:
            return None
        return running if running.task_id == task_id else None

    def _store_unless_succeeded(
        self, key: Any, value: Any, expires: Any, acking: Running | None = None
    ) -> int:
        if self._script is None:
            self._script = self.client.register_script(STORE_RESULT)
        ttl = int(expires or 0)
        try:
            if self._wait is None:
                keys, args = [key], [value, ttl]
                if acking is not None:
                    keys += acking.ack_keys()
                    args.append(acking.tag)
                return self._run_script(keys, args)
            sha = self._script.sha
            return int(self._replicated(lambda pipe: pipe.evalsha(sha, 1, key, value, ttl)))
        except redis.exceptions.ResponseError as exc:
            if not redis_full(exc):
                raise
            raise RedisFull(
                f"Redis at {mask_url(str(self.url))} is full (used memory over maxmemory, "
                "policy noeviction): the result is not stored yet; retried with back-off"
            ) from exc

    def _run_script(self, keys: list[Any], args: list[Any]) -> int:
        """The result script's answer, run on the store's kept connection (``_command``).

        Adapted from redis-py 8.2.0 ``redis.commands.core.Script.__call__``: a script the
        server does not hold (a restart, a failover, a flush) is loaded and run again."""
        for _ in range(2):
            try:
                return int(self._command("EVALSHA", self._script.sha, len(keys), *keys, *args))
            except NoScriptError:
                self._script.sha = self.client.script_load(STORE_RESULT)
        raise NoScriptError("the result store lost the result script twice in a row")

    def get_key_for_task(self, task_id: Any, key: Any = "") -> Any:
        """Celery's key for a task's result, made at once for a task id string: a ``.get()``
        asks for it six times, and Celery's general join costs more than the rest of it."""
        if key or not task_id or type(task_id) is not str:
            return super().get_key_for_task(task_id, key)
        return self.task_keyprefix + task_id.encode()

    def _ensure_not_eager(self) -> None:
        # Celery reads task_always_eager through its configuration on every result read.
        if dispatch.always_eager(self.app):
            super()._ensure_not_eager()

    def get(self, key: Any) -> Any:
        """Adapted from Celery 5.7.0 ``celery.backends.redis.RedisBackend.get``: on the kept
        connection (``_command``), as every ``.get()`` of a result stored already reads it."""
        return self._command("GET", key)

    def _command(self, *command: Any) -> Any:
        """One command's reply (an error reply raised), on a connection the store keeps
        (``taskpool.kept_connection``) rather than one taken from the pool and given back."""
        pool = self.client.connection_pool
        (reply,) = self._kept.send(pool, lambda connection: connection.pack_command(*command), 1)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _commands(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to ``commands``, sent in one write on the kept connection, an error
        reply as its exception in its place."""
        pool = self.client.connection_pool
        return self._kept.send(
            pool, lambda connection: connection.pack_commands(commands), len(commands)
        )

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        # A full Redis may free memory soon (a consumer catching up, keys expiring): a worker
        # retries the write (WORKER_RESULT_RETRIES) rather than stop or lose the result.
        return redis_full(exc) or bool(super().exception_safe_to_retry(exc))

    def _set(self, key: Any, value: Any, expires: Any = None) -> None:
        """Adapted from Celery 5.7.0 ``celery.backends.redis.RedisBackend._set``: with
        replicas to wait for, the SET and the PUBLISH go in a pipeline without MULTI that ends
        with WAIT (``_replicated``); otherwise Celery's own."""
        if self._wait is None:
            super()._set(key, value, expires)
            return
        expires = self.expires if expires is None else expires

        def write(pipe: Any) -> None:
            pipe.set(key, value, ex=expires or None)
            pipe.publish(key, value)

        self._replicated(write)

    def _replicated(self, write: Any) -> Any:
        """Queue ``write`` then ``WAIT`` in one pipeline on one connection (what WAIT counts
        writes on); return the first reply. A script the server lost (a failover, a restart)
        is loaded again."""
        assert self._wait is not None
        for _ in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                write(pipe)
                replicas = self._wait.add(self.client, pipe)
                replies = pipe.execute(raise_on_error=False)
            if isinstance(replies[0], NoScriptError):
                self._script.sha = self.client.script_load(STORE_RESULT)
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            if replicas:
                self._wait.check(replicas, replies[-1], "a result")
            return replies[0]
        raise NoScriptError("the result store lost the result script twice in a row")


def _running_here(task_id: str) -> bool:
    """Whether ``task_id`` is the task a prefork pool process is running, from its message."""
    if not (_in_pool_process and current_task):
        return False
    request = current_task.request
    return bool(request.id == task_id and not request.is_eager)


class RedisStore(_Store, RedisBackend):
    """Celery's ``RedisBackend`` (``redis://``, ``rediss://``), as this module describes."""


class SentinelStore(_Store, SentinelBackend):
    """Celery's ``SentinelBackend`` (``sentinel://``), as this module describes."""


#: Celery's backend classes, and taskpool's in their place.
STORES: dict[type, type] = {RedisBackend: RedisStore, SentinelBackend: SentinelStore}


def store_class(backend_class: type) -> type:
    """taskpool's store for a Celery backend class; any other backend is kept as it is."""
    return STORES.get(backend_class, backend_class)
