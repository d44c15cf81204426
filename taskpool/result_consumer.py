"""Celery's Redis result consumer, with a bound on the subscriptions a client takes on by
sending.

Stock Celery subscribes to every task's channel when it sends the task, reads the result with
GET when ``.get()`` is called, and unsubscribes once it has it: a SUBSCRIBE and an UNSUBSCRIBE
for every task, even one whose result was stored long before it was asked for, and a client
that sent 20,000 tasks has 40,000 confirmations and 20,000 results to read on its next wait
(a second's stall). Here a task sent is subscribed to as stock Celery does while the client
holds fewer than ``SUBSCRIBED_AT_SEND`` subscriptions (Celery's own tests check that a task
just sent is). Past that, it is subscribed to only when a wait finds its result not stored
yet, so ``.get()`` of a stored result is one GET. Such a wait subscribes, confirms the
subscription (a PING answered on the same connection after it), then reads the result again:
a result stored before the subscription took effect is found by that read, one stored after is
published to it. Nothing is missed, and each result costs what stock Celery's does at most.
Such a wait also subscribes to the next tasks the client sent (``SUBSCRIBED_AHEAD``, within the
bound): a client reading faster than the workers store finds their results kept for it, by
that read or on the channel, in Celery's buffer of results no one waits for yet.

With a background drainer (gevent, eventlet) every wait relies on it draining all the time:
there the consumer subscribes when the task is sent, as stock Celery does.

A wait rides out a result store that stops answering (a restart, a failover, a flapping
network): Celery's consumer gives up after the result store's retry policy and raises
"the Celery application must be restarted", or a raw ConnectionError, for a task that may well
have run. Here the wait reconnects with back-off until the store answers, within its own
timeout and at most ``OUTAGE_PATIENCE``, then reads the result; past that it raises
ResultStoreUnavailable, which says the task may have run. After any reconnect, every key held
is subscribed, confirmed and read again as above: Celery's reconnect reads the results before
it subscribes again, and a result stored between the two reached nobody.

The Celery private names used here, and why, are in docs/PRIVATE_API.md (checked by
tests/unit/test_private_api.py); the methods adapted from Celery's say so ("Adapted from").
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

from celery import exceptions as celery_exceptions
from celery import states
from celery.backends import redis as celery_redis
from celery.backends.asynchronous import E_RETRY_LIMIT_EXCEEDED, greenletDrainer
from redis.utils import str_if_bytes

from taskpool.errors import ResultStoreUnavailable
from taskpool.urls import mask_url

#: What the confirming PING carries, to tell its answer from redis-py's health checks.
CONFIRM = "taskpool-subscribed"

#: Seconds one wait for the confirmation lasts at most; the next wait subscribes again.
CONFIRM_TIMEOUT = 5.0

#: Seconds a wait for the confirmation lasts at least, even within a drain that must not wait.
MIN_CONFIRM = 0.05

#: Subscriptions held below which sending a task subscribes to its result, as stock Celery
#: does: the backlog a client that sends without reading can build (about 50 µs each to read).
SUBSCRIBED_AT_SEND = 100

#: Tasks sent next that a wait subscribes to with the one it waits for, within
#: ``SUBSCRIBED_AT_SEND`` subscriptions held (``_ahead``).
SUBSCRIBED_AHEAD = 16

#: Seconds a wait without a timeout rides out a result store that stopped answering.
OUTAGE_PATIENCE = 30.0
#: Back-off between reconnects while riding one out: from the first to the longest.
RECONNECT_FIRST, RECONNECT_LONGEST = 0.05, 1.0


def gave_up(exc: BaseException) -> bool:
    """Celery's result consumer could not reconnect to the result store within its retry
    policy (RuntimeError: "the Celery application must be restarted")."""
    return isinstance(exc, RuntimeError) and E_RETRY_LIMIT_EXCEEDED.strip() in str(exc)


class ResultConsumer(celery_redis.ResultConsumer):
    """See the module's docstring."""

    _pubsub: Any = None
    on_message: Any  # Celery's: a waiter's callback for each state, or None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Whether to subscribe to every task when it is sent, as stock Celery does.
        self.eager = isinstance(self.drainer, greenletDrainer)
        #: Result keys waited for and not subscribed to yet.
        self._waited: set[bytes] = set()
        self._pings = itertools.count()

    def subscribe_at_send(self, task_id: str) -> None:
        """Subscribe to a task just sent, as stock Celery does, below ``SUBSCRIBED_AT_SEND``
        subscriptions held; above, its wait subscribes if it must (``consume_from``)."""
        with self._locked():
            if self.eager or len(self.subscribed_to) < SUBSCRIBED_AT_SEND:
                self._waited.discard(self.backend.get_key_for_task(task_id))
                super().consume_from(task_id)

    def consume_from(self, task_id: str) -> None:
        """Adapted from Celery 5.7.0 ``celery.backends.redis.ResultConsumer._consume_from``:
        the key is noted, and subscribed to only when a wait finds its result not stored
        (``_subscribe_waited``); with a background drainer, Celery's own."""
        if self.eager:
            super().consume_from(task_id)
            return
        key = self.backend.get_key_for_task(task_id)
        with self._locked():
            self._pending_unsubscribe.discard(key)
            if key not in self.subscribed_to:
                self._waited.add(key)

    def cancel_for(self, task_id: str) -> None:
        self._waited.discard(self.backend.get_key_for_task(task_id))
        super().cancel_for(task_id)

    def on_state_change(self, meta: dict[str, Any], message: Any) -> None:
        """Adapted from Celery 5.7.0
        ``celery.backends.asynchronous.BaseResultConsumer.on_state_change`` with
        ``celery.backends.redis.ResultConsumer.on_state_change``: the same hand-over of a
        state to the results waiting on it, without the ``sleep(0)`` that follows it there. That
        yields to other greenlets; in a thread it costs about 70 µs of wall time (the kernel's
        timer slack), once for every result a client reads: a fifth of reading a stored result,
        and, with the one after each drain in ``_wait_once``, about a tenth of a round trip
        (bench/README.md). With a background drainer (gevent, eventlet), Celery's own."""
        if self.eager:
            super().on_state_change(meta, message)
            return
        if self.on_message:
            self.on_message(meta)
        if meta["status"] not in states.READY_STATES:
            return
        task_id = meta["task_id"]
        waiting = self._waiting(task_id)
        if not waiting:
            # Kept for a result that is added to the pending ones after it arrived.
            self._pending_messages.put(task_id, meta)
        for result in waiting:
            result._maybe_set_cache(meta)
            bucket = self.buckets.pop(result, None)
            if bucket is not None:
                bucket.append(result)  # hands it to its waiter
        self.cancel_for(task_id)

    def on_wait_for_pending(self, result: Any, **kwargs: Any) -> None:
        """Celery's read of the result a wait begins with, without handing a success or
        failure that no ``on_message`` callback and no other result waits for to
        ``on_state_change``: Celery's ``on_state_change`` buffers such a state for a waiter yet
        to come, and Celery's read takes it back out at once. Any other state, or with a
        background drainer (gevent, eventlet), Celery's own, which finds the state read here
        in the result's cache and reads nothing again."""
        if self.eager or self.on_message:
            super().on_wait_for_pending(result, **kwargs)
            return
        if not all(map(self._settled, result._iter_meta(**kwargs))):
            super().on_wait_for_pending(result, **kwargs)

    def _settled(self, meta: dict[str, Any] | None) -> bool:
        """Whether ``on_state_change`` would hand ``meta`` to no one, no callback being set."""
        if meta is None or meta["status"] not in states.READY_STATES:
            return True
        if meta["status"] not in (states.SUCCESS, states.FAILURE):
            return False  # kept in the buffer by Celery's read (a revoke's waiters)
        return not self._waiting(meta["task_id"])

    def _waiting(self, task_id: str) -> list[Any]:
        """The results waiting on ``task_id``."""
        return [
            result
            for mapping in self._pending_results
            for result in list(mapping.get(task_id, {}).values())
        ]

    def _reconnect_pubsub(self) -> None:
        # Celery's reconnect drops the pubsub and the pool's connections (pool.reset()) without
        # closing their sockets, which are then left to the garbage collector, each with a
        # ResourceWarning; they are closed first here.
        with self._locked():
            if self._pubsub is not None:
                self._pubsub.close()
            self.backend.client.connection_pool.disconnect()
        super()._reconnect_pubsub()
        # Celery reads the results (MGET) before it subscribes again, without waiting for the
        # subscription: a result stored between the two is neither read nor received, and its
        # wait runs out. The next drain subscribes, confirms and reads each key again
        # (``_subscribe_waited``).
        with self._locked():
            self._waited.update(self.subscribed_to)

    def _wait_for_pending(
        self, result: Any, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                yield from self._wait_once(result, timeout=left, **kwargs)
                return
            except (RuntimeError, *self.backend.connection_errors) as exc:
                if isinstance(exc, RuntimeError) and not gave_up(exc):
                    raise
                self._ride_out(result.id, deadline, exc)

    def _wait_once(
        self,
        result: Any,
        timeout: float | None = None,
        on_interval: Any = None,
        on_message: Any = None,
        **kwargs: Any,
    ) -> Iterator[None]:
        """Adapted from Celery 5.7.0
        ``celery.backends.asynchronous.BaseResultConsumer._wait_for_pending``: without the
        ``sleep(0)`` after each drain (``on_state_change`` says why); with a background
        drainer, Celery's own."""
        if self.eager:
            yield from super()._wait_for_pending(
                result, timeout=timeout, on_interval=on_interval, on_message=on_message, **kwargs
            )
            return
        self.on_wait_for_pending(result, timeout=timeout, **kwargs)
        before, self.on_message = self.on_message, on_message
        try:
            yield from self.drain_events_until(
                result.on_ready, timeout=timeout, on_interval=on_interval
            )
        except TimeoutError:  # socket.timeout, as Celery's drainer raises it
            raise celery_exceptions.TimeoutError("The operation timed out.") from None
        finally:
            self.on_message = before

    def _ride_out(self, task_id: str, deadline: float | None, error: BaseException) -> None:
        """Reconnect with back-off until the result store answers; ResultStoreUnavailable
        once the wait's deadline, or OUTAGE_PATIENCE, has passed."""
        started = time.monotonic()
        give_up = started + OUTAGE_PATIENCE if deadline is None else deadline
        delay = RECONNECT_FIRST
        while True:
            try:
                self._reconnect_pubsub()
                return
            except self.backend.connection_errors as exc:
                error = exc
            if time.monotonic() + delay > give_up:
                url = mask_url(str(self.backend.url or self.app.conf.result_backend))
                raise ResultStoreUnavailable(
                    f"the result store {url} stopped answering ({type(error).__name__}) and "
                    f"did not come back within {time.monotonic() - started:.1f} s of waiting "
                    f"for task {task_id}: it may have run. Read its result again with "
                    f"AsyncResult({task_id!r}).get() once the store answers, rather than "
                    "sending it again"
                ) from error
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_LONGEST)

    def drain_events(self, timeout: float | None = None) -> None:
        # Returns early when a result came with the subscription (the caller checks before
        # waiting again) or the confirmation did not come in time (it is asked again).
        if self._waited and self._subscribe_waited(timeout):
            return
        super().drain_events(timeout)

    def _subscribe_waited(self, timeout: float | None) -> bool:
        """Subscribe to the waited-for keys, confirm, read them again. False when they are
        subscribed and confirmed and none was stored: then the caller waits on the channel.

        The read after subscribing is adapted from Celery 5.7.0
        ``celery.backends.redis.ResultConsumer._reconnect_pubsub`` (MGET, then
        ``on_state_change`` for each stored result): here only of the keys just subscribed to,
        retried by the backend's policy.
        """
        with self._locked():
            keys = list(self._waited)
            self._waited.difference_update(keys)
            if not keys:
                return False
            keys += self._ahead(len(keys))
            if self._pubsub is None:
                self._pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
            # Counted as subscribed first: a cancel_for from another thread meanwhile is left
            # to this lock's holder, which unsubscribes on the way out.
            self.subscribed_to.update(keys)
            with self.reconnect_on_error():
                self._pubsub.subscribe(*keys)
                if not self._confirm(self._pubsub, _bounded(timeout)):
                    self._waited.update(keys)  # subscribed again, and confirmed, next time
                    return True
            stored = self.backend.ensure(self.backend.client.mget, (keys,))
            found = [value for value in stored if value]
            for value in found:
                self.on_state_change(self.backend.decode_result(value), None)
            return bool(found)

    def _ahead(self, waited: int) -> list[bytes]:
        """Keys of the tasks sent next, to subscribe to with ``waited`` keys: a client that
        waits for results the workers have not stored yet finds those of the next tasks on
        the channel, or stored by the read after subscribing, and kept for their waits
        (Celery's buffer of results no one waits for yet), not read one by one
        (``taskpool.read_ahead``)."""
        room = min(SUBSCRIBED_AHEAD, SUBSCRIBED_AT_SEND - len(self.subscribed_to) - waited)
        if room <= 0:
            return []
        return [self.backend.get_key_for_task(i) for i in self.backend.read_ahead.pending(room)]

    def _confirm(self, pubsub: Any, timeout: float) -> bool:
        """Wait until Redis has applied the subscriptions sent so far, handling the messages
        that arrive before; False when that took longer than ``timeout``."""
        token = f"{CONFIRM}-{next(self._pings)}"  # an older PING's answer confirms less
        pubsub.ping(token)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message["type"] == "pong" and str_if_bytes(message["data"]) == token:
                return True
            if message["type"] == "message":
                self.on_state_change(self.backend.decode_result(message["data"]), message)
        return False


def _bounded(timeout: float | None) -> float:
    """How long to wait for a confirmation within a drain of ``timeout`` seconds: never 0,
    which would send a new subscription on every drain and confirm none."""
    return CONFIRM_TIMEOUT if timeout is None else min(max(timeout, MIN_CONFIRM), CONFIRM_TIMEOUT)
