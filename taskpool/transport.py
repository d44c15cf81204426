"""A Redis transport that never holds the only copy of a message.

kombu's Redis transport takes a message off the queue with BRPOP and only afterwards records it
as unacknowledged; a worker killed between the two takes the only copy with it. The soak test
(tests/faults/test_soak.py) lost one task in 3,000 that way in about a third of its runs.

Here one Lua script (``pop_and_record.lua``, registered once and called by its SHA) pops the
next message in priority order *and* records it as held by the channel's consumer, atomically.
It takes as many as the consumer's prefetch still allows (at most ``POP_BATCH``; one for a
consumer without a prefetch count, as kombu's BRPOP), in one round trip, and the channel
delivers them in order. Once the worker begins stopping, those not delivered yet go back to
the front of their queues, uncounted.
Who holds what, and the heartbeats that hand a dead consumer's messages back within seconds,
are ``taskpool.liveness``'s.

A big message (over ``PARK_ABOVE``) is not handed to the script: Redis copies a value it hands a
script several times, and serves no other client meanwhile. The script copies it with ``SORT
... STORE`` into the consumer's landing list and records that; the worker reads it there with a
plain LINDEX, then claims it under its delivery tag (``liveness.lua``), which moves it to a list
of its own that its record points at. Redis is then held no longer than by stock kombu's RPOP
(``python -m bench big-message``). Redis 6.2's SORT walks a list from the head, so there a queue
longer than ``SEEK_LIMIT_6`` is popped into the script as before.

An idle consumer must wait without taking a message, and a blocking pop takes one. So each
publish also pushes a token onto the queue's wake list (``<queue>\x06\x16wake``, capped at
``WAKE_CAP``), and an idle consumer waits with ``BRPOP`` on the wake lists of all its queues:
Redis hands each token to one waiter, so one message wakes one consumer, whatever its queue or
priority. The wait is sent with the script after it, in one write: Redis runs the script as
soon as the wait ends, woken or timed out, and the consumer reads both replies at once, one
round trip for a message that arrives while it waits. The script pops from all its lists;
each message popped after the first also takes one token (the first's woke the wait), so
tokens track the messages waiting. A token is only a hint: a
message published without one (by stock kombu) is found when the consumer's wait times out, and
the waits grow while nothing arrives (``IDLE_WAITS``, up to a second, as kombu's BRPOP timeout).
A wait whose pop finds nothing sends the next wait before it returns: an idle channel always has
its wait pending, as kombu's has its BRPOP (Celery's teardown of a half-open connection relies
on it). A pop's empty reply that kombu held while the channel could take no more (it pauses a
pending reply until credit returns) may be stale by then. Credit returns with an ack or a
reject, so an empty pop reply read after one is run again.

A channel's consuming loop, by what it sent and awaits the reply to (``Pending``; kombu's event
loop reads each reply with ``_brpop_read``, and ``_brpop_start`` sends the next command):

==========  ==========================  ==============================================
state       sent                        its reply, and what follows
==========  ==========================  ==============================================
KOMBU       kombu's BRPOP (a queue with  kombu's path
            a no-ack consumer), or none
POP         EVALSHA of the pop script   a message: delivered (or quarantined), then POP;
                                        nothing: WAIT; taken for dead: a new consumer,
                                        then POP
POP_AFTER_  the same, and the channel   as POP, but nothing may be stale: the pop runs
ACK         acked or rejected a         again at once if the channel may take a message
            message since
WAIT        BRPOP of the wake lists     a token, or none after ``IDLE_WAITS[i]`` s (the
            for ``IDLE_WAITS[i]`` s,    next wait is longer), and the pop's reply: a
            and EVALSHA of the pop      message: delivered (given back if the channel may
            script in the same write    no longer take it), then POP; nothing: WAIT, sent
                                        before the read returns
==========  ==========================  ==============================================

``SentinelTransport`` does the same behind Redis Sentinel (``sentinel://`` URLs). With
``wait_replicas`` (TASKPOOL_REDIS_WAIT_REPLICAS) a publish also waits, in the same round trip,
until that many replicas hold the message (``WAIT``), so a failover right after it cannot lose
it (``taskpool.replication``: the replicas connected, at most the number asked for); one not
confirmed in time raises NotReplicated, a connection error to kombu, which retries.

An ack, a requeue and the give-back of what a closing channel holds are each one script
(``liveness.lua``) on the consumer's own records, done before kombu's call returns; a full
Redis runs them (kombu's MULTI it refuses). A channel that closes with its connection lost
cannot give back what it holds: its consumer stops beating, and a live one hands it out one
liveness timeout later.

No message can stop the worker: each popped one is read by ``taskpool.messages`` before kombu
sees it, and one that cannot be read goes to the quarantine (``taskpool.quarantine``) with the
reason, out of the queue and the held records at once. The script also counts each message's
deliveries (``unacked_deliveries``; an ack or a final reject clears the count, a message given
back unrun at close is not counted): one taken more than ``max_deliveries`` times without an
outcome, as a task that kills its process is under late acks, is quarantined too.

A message whose delivery tag the script cannot read is recorded by kombu, in its ``unacked``
hash, as are the messages stock workers on the same Redis take: kombu's own restore hands those
out after the visibility timeout. Consumers that do not ack (``no_ack``, e.g. remote-control
replies) keep kombu's path. Needs Redis 6.2, checked when a consumer starts. The kombu private
names used here, and why, are in docs/PRIVATE_API.md, which tests/unit/test_private_api.py holds
to this code and to the installed kombu; kombu is pinned to the minor version tested. The
methods adapted from kombu's say so ("Adapted from").
"""

from __future__ import annotations

import copy
import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import TYPE_CHECKING, Any

import redis
from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from taskpool import liveness, messages
from taskpool.errors import BrokerUnsupported, UnreadableMessage, redis_full
from taskpool.kept_connection import KeptConnection
from taskpool.liveness import Heart
from taskpool.quarantine import Entry, Quarantine, Recorded, message_quarantined
from taskpool.replication import ReplicaWait
from taskpool.settings import (
    DEFAULT_LIVENESS_TIMEOUT,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_MESSAGE_BYTES,
)
from taskpool.urls import mask_url

log = logging.getLogger(__name__)

#: The scripts' text, read once; Redis runs them by their SHA1 (EVALSHA).
POP_AND_RECORD = Path(__file__).with_name("pop_and_record.lua").read_text()
#: The oldest Redis tested; the transport refuses older ones rather than guess.
MINIMUM_REDIS = (6, 2)
#: While idle, the waits on the wake lists, longest last: a message published without a token
#: waits at most the current one, and a long-idle consumer sends about two commands a second
#: (stock kombu: one BRPOP a second).
IDLE_WAITS = (0.05, 0.1, 0.2, 0.5, 1.0)
#: The pop script's answer to a consumer taken for dead (``taskpool.liveness``).
TAKEN_FOR_DEAD = -1
#: A message bigger than this (bytes, as Redis counts its memory) is parked by the pop script
#: rather than handed to it, and read with a plain LINDEX: Redis copies a value it hands a
#: script several times, and serves no one meanwhile (bench/big_message.py).
PARK_ABOVE = 64 * 1024
#: The longest queue list whose last message Redis 6.2's SORT reaches in a few microseconds (it
#: walks the list from the head; Redis 7 seeks from the nearer end). On 6.2 a longer one is
#: popped into the script, big message or not.
SEEK_LIMIT_6 = 4096
#: The most messages one pop takes, within the consumer's prefetch room: a worker with
#: Celery's default prefetch (4 per process) takes what it may hold in one round trip.
POP_BATCH = 8
#: The most tokens a wake list holds: as many idle consumers as a burst can wake at once. Tokens
#: left by messages that stock consumers took cost a woken consumer one empty pop each.
WAKE_CAP = 100
#: Replies to a publish in one write: the message's LPUSH, the wake token's LPUSH and LTRIM.
PUBLISH_REPLIES = 3


class _Pipeline:
    """kombu's publish batch interface (``add``) over a redis-py pipeline."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def add(self, name: str, *args: Any) -> None:
        getattr(self.pipeline, name)(*args)


def _sent(queue: str, replies: list[Any]) -> None:
    """Judge a publish's replies: the message's own (first), then its wake token's, trim's and
    expiry's. An error on the message is raised. Once the message is in its queue, an error on
    the rest (an out-of-memory Redis, an ACL) is logged, not raised: a raise would have the
    caller (kombu's retry, Celery's publish) send the message a second time, and a consumer
    finds it without a token when its wait times out."""
    if isinstance(replies[0], Exception):
        raise replies[0]
    refused = next((reply for reply in replies[1:] if isinstance(reply, Exception)), None)
    if refused is not None:
        log.warning(
            "A message to %r is in its queue; Redis refused its wake token, trim or expiry: %s",
            queue,
            refused,
        )


def seek_limit(version: str) -> int:
    """The pop script's seek limit on a Redis of ``version`` (-1: none)."""
    return -1 if _version(version) >= (7, 0) else SEEK_LIMIT_6


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def require_redis(version: str, url: str) -> None:
    """Raise BrokerUnsupported, naming the server, for a Redis older than MINIMUM_REDIS."""
    found = _version(version)
    if found < MINIMUM_REDIS:
        raise BrokerUnsupported(
            f"Redis {version} at {mask_url(url)} is too old for taskpool's transport, which "
            f"needs {'.'.join(map(str, MINIMUM_REDIS))} or newer (the oldest tested): upgrade Redis"
        )


class Pending(enum.Enum):
    """What a channel sent for its queues and awaits the reply to (the module's table)."""

    KOMBU = enum.auto()
    POP = enum.auto()
    POP_AFTER_ACK = enum.auto()
    WAIT = enum.auto()

    @property
    def command(self) -> str:
        """The Redis command sent, as redis-py parses its reply."""
        return "BRPOP" if self is Pending.WAIT else "EVALSHA"


class QoS(kombu_redis.QoS):
    """kombu's QoS over the messages this channel's consumer holds (``taskpool.liveness``);
    messages kombu itself recorded (those the pop script could not read a tag in) keep kombu's
    ``unacked`` records and its restore by the visibility timeout."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.channel.held:
            virtual.QoS.append(self, message, delivery_tag)  # in-memory bookkeeping only
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self.channel.credit_returned()
        heart = self.channel.held.pop(delivery_tag, None)
        if heart is None:
            super().ack(delivery_tag)
            return
        if delivery_tag in self.channel.acked_by_result:  # in Redis already (liveness.Running)
            self.channel.acked_by_result.discard(delivery_tag)
        elif not self._settle(
            delivery_tag, lambda: heart.ack(delivery_tag, self.channel.deliveries_key)
        ):
            log.warning(
                "Acknowledged message %s after this consumer was taken for dead: it went back "
                "to its queue meanwhile and may run twice",
                delivery_tag,
            )
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not requeue:  # a final reject: an outcome, as an ack is
            self.ack(delivery_tag)
            return
        self.channel.credit_returned()
        heart = self.channel.held.pop(delivery_tag, None)
        if heart is None:
            super().reject(delivery_tag, requeue=True)
            return
        # kombu's requeue: to the back of the queue, and the delivery counts.
        deliveries = self.channel.deliveries_key
        self._settle(delivery_tag, lambda: heart.give_back(delivery_tag, deliveries, True, False))
        virtual.QoS.ack(self, delivery_tag)

    def _settle(self, tag: str, step: Callable[[], bool]) -> bool:
        """Run an ack or a requeue of ``tag``; one that raised (its connection lost, Redis
        refusing it) is remembered, so that closing the channel counts the message as delivered
        when it puts it back (``Heart.stop``)."""
        try:
            return step()
        except BaseException:
            self.channel.outcome_lost.add(tag)
            raise

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().restore_visible(*args, **kwargs)
        except redis.exceptions.ResponseError as exc:
            if not redis_full(exc):
                raise
            # kombu's sweep takes a lock (SET NX) first, which a full Redis refuses.
            log.warning("Redis is full (maxmemory): a dead worker's messages are not restored now")

    def restore_unacked(self, client: Any = None) -> None:
        """At close: messages taken and not run go back to the front, uncounted.

        Adapted from kombu 5.7.0 ``kombu.transport.redis.QoS.restore_unacked``: a message this
        channel's consumer holds goes back through ``liveness.lua`` instead of kombu's restore,
        and each tag leaves the delivered dict as it is given back, not all at the end.
        """
        held = self.channel.held
        delivered: dict[str, Any] = self._delivered or {}
        for tag in list(delivered):
            heart = held.pop(tag, None)
            if heart is None:
                self.restore_by_tag(tag, client=client)
            else:
                heart.give_back(tag, self.channel.deliveries_key, counted=False, front=True)
            del delivered[tag]


#: Transport options of taskpool's own (TASKPOOL_REDIS_WAIT_REPLICAS and _TIMEOUT,
#: TASKPOOL_MAX_DELIVERIES, TASKPOOL_MAX_MESSAGE_BYTES, TASKPOOL_LIVENESS_TIMEOUT).
OWN_OPTIONS = (
    "wait_replicas",
    "wait_timeout",
    "max_deliveries",
    "max_inflated",
    "liveness_timeout",
)


def _options(channel: type[kombu_redis.Channel]) -> tuple[str, ...]:
    """The transport options a kombu channel reads, and taskpool's."""
    return tuple(channel.from_transport_options) + OWN_OPTIONS


#: While set (``capturing_publishes``), each message ``basic_publish`` is given is kept here,
#: as it was given, with where it goes (``taskpool.quick_publish`` makes templates of them).
_captured: ContextVar[list[tuple[Any, ...]] | None] = ContextVar("taskpool_captured", default=None)


@contextmanager
def capturing_publishes() -> Iterator[list[tuple[Any, ...]]]:
    """Keep what this context publishes: (message, exchange, routing key, options) each."""
    kept: list[tuple[Any, ...]] = []
    token = _captured.set(kept)
    try:
        yield kept
    finally:
        _captured.reset(token)


class Channel(kombu_redis.Channel):
    """Delivers through POP_AND_RECORD; see the module docstring."""

    QoS = QoS
    # kombu's tuple is typed by its exact length, which any addition changes.
    from_transport_options = _options(kombu_redis.Channel)  # type: ignore[assignment]
    #: Replicas (of those connected) that must hold each published message before the publish
    #: returns; None: no wait.
    wait_replicas: int | None = None
    wait_timeout = 1.0
    #: TASKPOOL_MAX_DELIVERIES and TASKPOOL_MAX_MESSAGE_BYTES (a compressed body's inflated
    #: size), for apps that name this transport without taskpool's settings.
    max_deliveries = DEFAULT_MAX_DELIVERIES
    max_inflated = DEFAULT_MAX_MESSAGE_BYTES
    liveness_timeout = DEFAULT_LIVENESS_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: The messages popped and not yet acked, rejected or given back, by who holds them:
        #: this channel's consumer when it popped them (a new one after it was taken for dead).
        self.held: dict[str, Heart] = {}
        #: The tag and stored text of the message handed on last: a fetching pool's process
        #: copies the text into its slot as the task starts, within that delivery
        #: (``taskpool.fetching_process.copied``), rather than encode the message again.
        self.last_text: tuple[str, bytes] | None = None
        #: Held messages whose task's stored success acked them in Redis (liveness.Running).
        self.acked_by_result: set[str] = set()
        #: Held messages whose ack or requeue raised (QoS._settle).
        self.outcome_lost: set[str] = set()
        self._heart: Heart | None = None
        self._acking_queues: dict[str, int] = {}
        self._pending = Pending.KOMBU
        self._waiting = False  # the last pop found nothing: wait before popping again
        self._wait_index = 0  # into IDLE_WAITS: grows while waits time out
        self._client_of_pool: Any = None
        self._script: Any = None  # POP_AND_RECORD registered on _client_of_pool
        self._seek_limit: int | None = None  # known once the server is checked
        self._wait: ReplicaWait | None = None  # made on first publish, if asked for
        self._pop: tuple[list[str], list[Any], Heart | None] = ([], [], None)  # the pop in flight
        self._publishing = KeptConnection()
        #: Per queue: the pool and its packed wake-token commands (_packed_wake).
        self._wake_packs: dict[str, tuple[Any, bytes]] = {}
        self._queues: list[str] = []  # those of the command in flight
        super().__init__(*args, **kwargs)
        self._uri = self.connection.client.as_uri(include_password=False)  # for messages

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """One redis client per connection pool, where kombu builds one per command.

        A redis-py client is a thread-safe handle on the pool, but building one copies about
        170 response callbacks: a tenth of a millisecond on every publish.

        Adapted from kombu 5.7.0 ``kombu.transport.redis.Channel.conn_or_acquire``: the client
        built is kept for its pool (``_pool_client``) instead of built again on each call.
        """
        if client is not None:
            yield client
            return
        yield self._pool_client()

    def _pool_client(self) -> Any:
        try:
            pool = self.pool
        except AttributeError as exc:
            # kombu #582, #970: a channel closed after its connection was collected (as a
            # worker does when the broker is lost) has no URL left to build a pool from.
            # kombu's close lets connection errors pass, and the messages it meant to give back
            # stay held until its consumer is found silent: the worker goes on.
            # An AttributeError instead ends the worker ("Unrecoverable error").
            raise redis.exceptions.ConnectionError(
                "the broker connection was closed; nothing to restore through it"
            ) from exc
        if self._client_of_pool is None or self._client_of_pool.connection_pool is not pool:
            self._client_of_pool = self._create_client()
            # A plain client on the same pool: the keys below carry their prefix already.
            plain = redis.Redis(connection_pool=pool)
            self._script = plain.register_script(POP_AND_RECORD)
        return self._client_of_pool

    # -- which consumers take the reliable path ------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if not no_ack:
            self._check_server()
            # Counted: a queue stays on the reliable path while any consumer of it acks.
            self._acking_queues[queue] = self._acking_queues.get(queue, 0) + 1
            self._consumer().nudge()  # its beats name the queues it consumes (no_worker)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue in self._acking_queues:
            self._acking_queues[queue] -= 1
            if not self._acking_queues[queue]:
                del self._acking_queues[queue]
                if self._heart is not None:
                    self._heart.nudge()
        return super().basic_cancel(consumer_tag)

    def _consumer(self) -> Heart:
        """This channel's consumer, beating; a new one if the last was taken for dead."""
        heart = self._heart
        if heart is None or not heart.alive:
            if heart is not None:
                heart.stop(leave=False)
            # A plain client: the keys carry their prefix already.
            plain = redis.Redis(connection_pool=self._pool_client().connection_pool)
            keys = liveness.Keys(self.global_keyprefix or "")
            self._heart = heart = Heart(
                plain, keys, self.liveness_timeout, WAKE_CAP, lambda: list(self._acking_queues)
            ).start()
        return heart

    def heart_of(self, consumer: str) -> Heart:
        """A handle on another process's consumer on this Redis, never started: the parent of
        a fetching pool settles with it what its dead process held (``taskpool.fetching``)."""
        plain = redis.Redis(connection_pool=self._pool_client().connection_pool)
        keys = liveness.Keys(self.global_keyprefix or "")
        return Heart(plain, keys, self.liveness_timeout, WAKE_CAP, consumer=consumer)

    def close(self) -> None:
        try:
            super().close()  # gives back what was taken and not run (QoS.restore_unacked)
        finally:
            self._publishing.close()
            heart, self._heart = self._heart, None
            if heart is not None:
                try:
                    heart.stop(
                        leave=True, deliveries_key=self.deliveries_key, ran=self.outcome_lost
                    )
                except (redis.RedisError, *self.connection_errors):
                    pass  # the connection is gone: what it held waits for the sweep

    def _check_server(self) -> None:
        """Refuse, at once and by name, a Redis older than the oldest tested."""
        if self._seek_limit is not None:
            return
        with self.conn_or_acquire() as client:
            version = str(client.info("server")["redis_version"])
        require_redis(version, self._uri)
        self._seek_limit = seek_limit(version)

    @property
    def deliveries_key(self) -> str:
        """The delivery counts' hash, named after kombu's unacked hash, with the global key
        prefix: the scripts that count and clear deliveries run on plain clients."""
        return f"{self.global_keyprefix or ''}{self.unacked_key}_deliveries"

    def _reliable(self, queues: list[str]) -> bool:
        return all(q in self._acking_queues for q in queues)

    def _keys(self, queues: list[str]) -> list[str]:
        """The lists to pop from, in priority order, as Redis names them (prefix included).

        Adapted from the keys of kombu 5.7.0 ``kombu.transport.redis.Channel._brpop_start``:
        prefixed here, since the script's keys are sent as they are (kombu prefixes its BRPOP's
        through its client).
        """
        prefix = self.global_keyprefix or ""
        return [prefix + self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]

    def _wake_key(self, queue: str) -> str:
        return f"{queue}{self.sep}wake"

    def _wake_keys(self, queues: list[str]) -> list[str]:
        prefix = self.global_keyprefix or ""
        return [prefix + self._wake_key(q) for q in queues]

    def _pop_for(
        self, queues: list[str], take_token: bool, most: int = 1
    ) -> tuple[list[str], list[Any], Heart]:
        """The pop script's keys and arguments for ``queues`` (up to ``most`` messages), and
        the consumer it records for."""
        self._check_server()
        heart = self._consumer()
        keys = [
            *self._keys(queues),
            *self._wake_keys(queues),
            heart.keys.consumers,
            heart.held_key,
            self.deliveries_key,
            heart.landing_key,
        ]
        args = [len(queues), int(take_token), heart.id, self._seek_limit, PARK_ABOVE, most]
        return keys, args, heart

    def _room(self) -> int:
        """How many messages the next pop may take: the prefetch room, at most ``POP_BATCH``.

        One, as kombu's BRPOP takes, without a prefetch count (a plain consumer's
        ``drain_events`` then delivers one message a call, as on stock kombu), and when
        ``can_consume`` is narrowed on the QoS itself: Celery's ``worker_disable_prefetch``
        does so to take a message only while a process is free, a limit the prefetch room
        does not show.
        """
        if "can_consume" in vars(self.qos):
            return 1
        room = self.qos.can_consume_max_estimate()
        return 1 if room is None else max(1, min(room, POP_BATCH))

    # -- publishing: the message and its wake token, in one round trip ------------------

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> Any:
        kept = _captured.get()
        if kept is not None:
            kept.append((copy.deepcopy(message), exchange, routing_key, dict(kwargs)))
        return super().basic_publish(message, exchange, routing_key, **kwargs)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            if self.wait_replicas:
                raise BrokerUnsupported(
                    "kombu's publish batches cannot wait for replicas "
                    "(TASKPOOL_REDIS_WAIT_REPLICAS): publish one message at a time"
                )
            super()._put(queue, message, _publish_batch=batch, **kwargs)
            self._ring(batch, queue)
            return
        if self._at_once(queue):
            self._put_at_once(queue, message, kombu_redis.dumps(message))
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            commands = _Pipeline(pipe)
            super()._put(queue, message, _publish_batch=commands, **kwargs)
            self._ring(commands, queue)
            wait = self._replica_wait()
            replicas = wait.add(client, pipe) if wait else 0
            replies = pipe.execute(raise_on_error=False)
        waited = replies.pop() if replicas else None
        _sent(queue, replies)
        if wait and replicas:
            if isinstance(waited, Exception):
                raise waited
            wait.check(replicas, waited, f"a message to {queue!r}")

    def put_encoded(self, queue: str, message: Any, text: str) -> bool:
        """Publish ``text`` to ``queue``: ``message`` as kombu's ``_put`` stores it, encoded
        already (``taskpool.envelope``), and its wake token, in one write. False, with nothing
        sent, where a publish to ``queue`` takes the pipeline (replicas to wait for, an
        expiring queue): the caller then publishes ``message`` with ``basic_publish``."""
        if not self._at_once(queue):
            return False
        self._put_at_once(queue, message, text)
        return True

    def _at_once(self, queue: str) -> bool:
        """Whether a publish to ``queue`` is one write, without the pipeline."""
        return not self.wait_replicas and not (self._expires and queue in self._expires)

    def _put_at_once(self, queue: str, message: Any, text: str) -> None:
        """The message (``text``, its encoding) and its wake token in one write, on the
        channel's publishing connection (``taskpool.kept_connection``), and its three replies
        read: what the pipeline path sends, without redis-py's pipeline object around it,
        which cost about half of a publish's client CPU (bench/README.md).

        Adapted from kombu 5.7.0 ``kombu.transport.redis.Channel._put`` (the list by
        priority); the replies are judged as the pipeline path's (``_sent``). The wake token's
        two commands are packed once per queue and pool.
        """
        prefix = self.global_keyprefix or ""
        key = prefix + self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        pool = self._pool_client().connection_pool

        def pack(connection: Any) -> list[bytes]:
            packed: list[bytes] = connection.pack_command("LPUSH", key, text)
            packed[-1] += self._packed_wake(queue, pool, connection)  # short: one write
            return packed

        replies = self._publishing.send(pool, pack, PUBLISH_REPLIES)
        _sent(queue, replies)

    def _packed_wake(self, queue: str, pool: Any, connection: Any) -> bytes:
        """The wake token's LPUSH and LTRIM for ``queue``, packed as ``pool``'s connections
        pack them."""
        kept = self._wake_packs.get(queue)
        if kept is None or kept[0] is not pool:
            wake = (self.global_keyprefix or "") + self._wake_key(queue)
            commands = (("LPUSH", wake, 1), ("LTRIM", wake, 0, WAKE_CAP - 1))
            kept = self._wake_packs[queue] = (pool, b"".join(connection.pack_commands(commands)))
        return kept[1]

    def _replica_wait(self) -> ReplicaWait | None:
        if not self.wait_replicas:
            return None
        if self._wait is None:
            self._wait = ReplicaWait(self.wait_replicas, self.wait_timeout)
        return self._wait

    def _ring(self, commands: Any, queue: str) -> None:
        key = self._wake_key(queue)
        commands.add("lpush", key, 1)
        # kombu's prefixing client prefixes LPUSH but passes LTRIM through unchanged.
        commands.add("ltrim", (self.global_keyprefix or "") + key, 0, WAKE_CAP - 1)
        expires = self._expires.get(queue) if self._expires else None
        if expires:  # the queue's x-expires, as kombu gives its lists
            commands.add("pexpire", key, expires)

    def _purge(self, queue: str) -> int:
        with self.conn_or_acquire() as client:
            client.delete(self._wake_key(queue))
        return int(super()._purge(queue))

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        with self.conn_or_acquire(client=kwargs.get("client")) as client:
            client.delete(self._wake_key(queue))
        super()._delete(queue, *args, **kwargs)

    # -- the consuming loop --------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the next read for this channel's queues; kombu's event loop reads its reply.

        Adapted from kombu 5.7.0 ``kombu.transport.redis.Channel._brpop_start``: when every
        queue read has a consumer that acks, it sends the pop script (EVALSHA), or, after a pop
        found nothing, a BRPOP on the queues' wake lists for the current ``IDLE_WAITS`` wait,
        instead of a BRPOP on the queues for ``brpop_timeout``; otherwise kombu's.
        """
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues or not self._reliable(queues):
            if not queues:
                return
            self._pending = Pending.KOMBU
            return super()._brpop_start(timeout)
        self._pool_client()  # registers the script for this pool
        connection = self.client.connection
        self._queues = queues
        # What may raise (the server check, the consumer's first beat) runs before the channel
        # counts a reply as pending: closing it would wait for one that was never asked for.
        if self._waiting:
            pending = Pending.WAIT
            wait = IDLE_WAITS[self._wait_index]
            # The pop goes in the same write: Redis runs it as soon as the wait ends, without
            # a round trip back here. A woken wait took the message's token already.
            self._pop = keys, args, _ = self._pop_for(queues, False, self._room())
            packed = connection.pack_commands(
                [
                    ("BRPOP", *self._wake_keys(queues), wait),
                    ("EVALSHA", self._script.sha, len(keys), *keys, *args),
                ]
            )
        else:
            pending = Pending.POP
            self._pop = keys, args, _ = self._pop_for(queues, True, self._room())
            packed = connection.pack_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it None
        self._pending = pending
        connection.send_packed_command(packed)

    def credit_returned(self) -> None:
        """An ack or a reject: a pending POP's empty reply may be stale (kombu may have held it
        unread while the channel could take no more), so it is POP_AFTER_ACK."""
        if self._pending is Pending.POP:
            self._pending = Pending.POP_AFTER_ACK

    def _brpop_read(self, **options: Any) -> bool:
        """Read the reply to what ``_brpop_start`` sent and deliver its message; raises Empty
        when it brought none.

        Adapted from kombu 5.7.0 ``kombu.transport.redis.Channel._brpop_read``: the reply is
        the script's (or a wake list's: then the script runs at once); an empty pop reply read
        after an ack or a reject (kombu may have held it unread until that credit) is run
        again; a message is read by ``taskpool.messages`` and quarantined if it cannot be; a
        pop that found nothing sends the next wait before returning. Kombu's BRPOP replies keep
        kombu's path.
        """
        pending, self._pending = self._pending, Pending.KOMBU
        if pending is Pending.KOMBU:
            return super()._brpop_read(**options)
        wait_next = False
        try:
            try:
                reply = self._reply(pending.command, **options)
            except BaseException:
                if pending is Pending.WAIT:  # the pop's reply is left unread behind it
                    self.client.connection.disconnect()
                raise
            if pending is Pending.WAIT:
                woken = reply is not None
                # A wait that timed out makes the next one longer.
                self._wait_index = 0 if woken else min(self._wait_index + 1, len(IDLE_WAITS) - 1)
                reply = self._reply("EVALSHA", **options)  # the pop sent with the wait
                if self._may_pop():
                    wait_next = not reply
                elif reply and reply != TAKEN_FOR_DEAD:
                    # Taken as the channel closed or its consumer was cancelled: back they go.
                    self._give_back_popped(reply, self._pop[2])
                    reply = None
            elif not reply and pending is Pending.POP_AFTER_ACK and self._may_pop():
                reply = self._pop_now(take_token=True)
            if reply == TAKEN_FOR_DEAD:
                self._consumer_lost()  # the next pop goes at once, under a new consumer
                raise Empty()
            if not reply:
                self._waiting = True
                raise Empty()
            self._waiting = False
            self._wait_index = 0
            if not self._deliver_all(reply):
                raise Empty()  # quarantined, or given back: the next pop goes at once
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu declares it a Connection
            self._flush_brpop_reauth()
            if wait_next:
                self._brpop_start()

    def _may_pop(self) -> bool:
        """Whether the channel may take a message now, for the queues of the command read."""
        if self._closing or self.closed or not self._reliable(self._queues):
            return False
        return bool(self.qos.can_consume())

    def _consumer_lost(self) -> None:
        """The pop found this channel's consumer taken for dead."""
        heart = self._pop[2]
        if heart is not None:
            heart.alive = False

    def _pop_now(self, take_token: bool) -> Any:
        """Run the script at once for the queues of the command read; its reply."""
        self._pop = keys, args, _ = self._pop_for(self._queues, take_token, self._room())
        return self._script(keys=keys, args=args)

    def _reply(self, command: str, **options: Any) -> Any:
        """The pending command's reply.

        Adapted from the read in kombu 5.7.0 ``kombu.transport.redis.Channel._brpop_read``
        (a connection error disconnects, so the next round reconnects): a script the server
        lost is loaded again and run at once.
        """
        try:
            return self.client.parse_response(self.client.connection, command, **options)
        except redis.exceptions.NoScriptError:  # Redis restarted, failed over, or flushed
            # The same pop at once, through redis-py's script object, which loads it again: an
            # event loop's reader expects a message or Empty, and kombu's own BRPOP never sees
            # this error (kombu's hub test called the reader by hand and got one).
            keys, args, _ = self._pop
            return self._script(keys=keys, args=args)
        except self.connection_errors:
            self.client.connection.disconnect()  # reconnects on the next round
            raise

    def _deliver_all(self, entries: list[list[Any]]) -> bool:
        """Hand the popped messages to kombu in order; False if none was delivered.

        Each delivery may run its task then and there (Celery's solo pool). Once the worker
        begins stopping, or the channel closes, the messages not delivered yet go back to the
        front of their queues, uncounted, as a closing channel gives back what it did not run;
        and so do they if a delivery raises.
        """
        delivered, heart, index = False, self._pop[2], 0
        try:
            while index < len(entries):
                if index and not self._may_deliver():
                    break
                index += 1
                delivered = self._deliver_popped(entries[index - 1], heart) or delivered
        finally:
            if index < len(entries):
                self._give_back_popped(entries[index:], heart)
        return delivered

    def _may_deliver(self) -> bool:
        """Whether a message popped with others may still be delivered now."""
        stop, terminate = worker_state.should_stop, worker_state.should_terminate
        stopping = any(flag is not None and flag is not False for flag in (stop, terminate))
        return not (stopping or self._closing or self.closed)

    def _give_back_popped(self, entries: list[list[Any]], heart: Heart | None) -> None:
        """Put popped messages that were not delivered back at the front of their queues, the
        last first so that they keep their order. One that cannot go back now stays held by
        this consumer, and goes back when it leaves or is found silent."""
        assert heart is not None  # a pop records for a consumer
        try:
            for entry in reversed(entries):
                if len(entry) == 2:  # parked: recorded by its landing key, not counted
                    heart.give_back(heart.landing_key, self.deliveries_key, True, front=True)
                elif int(entry[2]):  # recorded under its tag
                    tag = bytes_to_str(entry[3])
                    heart.give_back(tag, self.deliveries_key, counted=False, front=True)
                else:  # no tag could be read, so nothing recorded it: the pop only took it
                    # Without a wake token: the next pop or wait finds it.
                    heart.client.rpush(entry[0], entry[1])
        except (redis.RedisError, *self.connection_errors) as exc:
            log.warning("Could not give back %d popped message(s) now: %s", len(entries), exc)

    def _deliver_popped(self, reply: list[Any], heart: Heart | None) -> bool:
        """Hand one popped message to kombu; False if it went to the quarantine instead.

        Adapted from the delivery in kombu 5.7.0 ``kombu.transport.redis.Channel._brpop_read``
        (rotate the queue cycle, ``connection._deliver``): the message is read by ``_read``
        first, and one that cannot be read is not delivered.
        """
        popped = self._read(reply, heart)
        if popped is None:
            return False
        dest, payload = popped
        self._queue_cycle.rotate(dest)
        self.connection._deliver(payload, dest)
        return True

    def _read(self, reply: list[Any], heart: Heart | None) -> tuple[str, dict[str, Any]] | None:
        """The popped message's queue and payload, or None once it is quarantined (or no
        longer this consumer's); ``heart`` is the consumer the pop recorded it for."""
        key = bytes_to_str(reply[0])[len(self.global_keyprefix or "") :]
        queue = key.rsplit(self.sep, 1)[0]
        if len(reply) == 2 and heart is not None:
            return self._read_parked(queue, heart)
        raw = reply[1] if isinstance(reply[1], bytes) else str(reply[1]).encode()
        deliveries = int(reply[2])
        recorded_as = reply[3] if deliveries else None  # bytes: a tag need not be UTF-8
        tag = None if recorded_as is None else bytes_to_str(recorded_as)
        recorded = None
        if recorded_as is not None and heart is not None:
            recorded = self._recorded(recorded_as, heart)
        try:
            payload = messages.read(raw, max_inflated=self.max_inflated)
        except UnreadableMessage as exc:
            self._quarantine(queue, raw, str(exc), recorded, deliveries)
            return None
        if tag is not None and payload["properties"]["delivery_tag"] != tag:
            reason = (
                "the message's text holds a second properties object after its own, which the "
                "pop read instead"
            )
            self._quarantine(queue, raw, reason, recorded, deliveries)
            return None
        return self._hold(queue, raw, payload, recorded, deliveries, heart)

    def _read_parked(self, queue: str, heart: Heart) -> tuple[str, dict[str, Any]] | None:
        """Read a message the pop parked in ``heart``'s landing list, and claim it under its
        tag (``liveness.lua``); None once it is quarantined or no longer this consumer's."""
        found = heart.client.lindex(heart.landing_key, 0)
        if found is None:  # taken for dead since the pop: the sweep gave it back
            return None
        raw = found if isinstance(found, bytes) else str(found).encode()
        try:
            payload = messages.read(raw, max_inflated=self.max_inflated)
        except UnreadableMessage as exc:
            landed = Recorded(heart.landing_key, heart.held_key, self.deliveries_key,
                              heart.landing_key)  # fmt: skip
            self._quarantine(queue, raw, str(exc), landed, 1)
            return None
        tag = payload["properties"]["delivery_tag"]
        deliveries = heart.claim(tag, self.deliveries_key)
        if not deliveries:
            return None
        return self._hold(queue, raw, payload, self._recorded(tag, heart), deliveries, heart)

    def _recorded(self, tag: bytes | str, heart: Heart) -> Recorded:
        return Recorded(tag, heart.held_key, self.deliveries_key, heart.parked_key(tag))

    def _hold(
        self,
        queue: str,
        raw: bytes,
        payload: dict[str, Any],
        recorded: Recorded | None,
        deliveries: int,
        heart: Heart | None,
    ) -> tuple[str, dict[str, Any]] | None:
        """The message as delivered, held by ``heart``; None once it went to the quarantine
        for its deliveries."""
        if deliveries > self.max_deliveries:
            reason = (
                f"delivered {deliveries - 1} times without an outcome "
                f"(TASKPOOL_MAX_DELIVERIES={self.max_deliveries})"
            )
            self._quarantine(queue, raw, reason, recorded, deliveries - 1)
            return None
        if recorded is not None and heart is not None:
            self.held[bytes_to_str(recorded.tag)] = heart
        self.last_text = (payload["properties"]["delivery_tag"], raw)
        return queue, payload

    def _quarantine(
        self, queue: str, raw: bytes, reason: str, recorded: Recorded | None, deliveries: int
    ) -> None:
        entry = Entry.of(queue, raw, reason, deliveries)
        plain = redis.Redis(connection_pool=self.pool)  # Quarantine prefixes keys itself
        Quarantine(plain, self.global_keyprefix or "").add(entry, recorded)
        log.error(
            "Quarantined a message from queue %r (task %s, id %s): %s. "
            "`taskpool quarantine list` shows it, `taskpool quarantine replay %s` sends it again.",
            queue,
            entry.task,
            entry.task_id,
            reason,
            entry.id,
        )
        message_quarantined.send(sender=self, entry=entry)

    # -- broadcasts: remote control and events ---------------------------------------------

    def _receive_one(self, c: Any) -> Any:
        """Read one broadcast (a fanout message: remote control, events) and deliver it.

        Adapted from kombu 5.7.0 ``kombu.transport.redis.Channel._receive_one``: the message is
        read by ``taskpool.messages`` first, as a popped one is. Any client of the Redis can
        PUBLISH on these channels, and kombu took a JSON array, an envelope without properties
        or a type marker it cannot decode for a fatal error of the worker. One that cannot be
        read, or that names an exchange no consumer here receives, is logged with the reason
        and dropped: a broadcast has no queue to keep it in, and nobody waits on it.
        """
        try:
            response = c.parse_response()
        except self.connection_errors:
            self._in_listen = None  # type: ignore[assignment]  # kombu declares it a Connection
            raise
        if not isinstance(response, (list, tuple)):
            raise Empty()
        payload = self._handle_message(c, response)
        if not bytes_to_str(payload["type"]).endswith("message") or not payload["data"]:
            raise Empty()
        channel = bytes_to_str(payload["channel"])
        if channel[0] == "/":  # kombu's fanout prefix: /<db>.<exchange>
            channel = channel.partition(".")[2]
        exchange = channel.split("/", 1)[0]
        data = payload["data"]
        raw = data if isinstance(data, bytes) else str(data).encode()
        try:
            if exchange not in self._fanout_to_queue:
                raise UnreadableMessage(f"no consumer here receives exchange {exchange!r:.80}")
            message = messages.read(raw, max_inflated=self.max_inflated)
        except UnreadableMessage as exc:
            log.error("Dropped a broadcast on channel %.80r that cannot be read: %s", channel, exc)
            # Not Empty: kombu's _receive stops at one, and the messages read with it would wait.
            return False
        return self._deliver_fanout_message(message, exchange)

    # -- basic_get, the synchronous path ---------------------------------------------------

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """Take one message from ``queue`` now, or None.

        Adapted from kombu 5.7.0 ``kombu.transport.virtual.Channel.basic_get`` and
        ``kombu.transport.redis.Channel._get``: the message is popped by the script, recorded
        as held by this channel's consumer, and read (or quarantined) as a consumed one is;
        ``no_ack`` keeps kombu's.
        """
        if no_ack:
            return super().basic_get(queue, no_ack, **kwargs)
        with self.conn_or_acquire() as client:
            keys, args, heart = self._pop_for([queue], take_token=True)
            reply = self._script(keys=keys, args=args)
            if reply == TAKEN_FOR_DEAD:
                heart.alive = False
                keys, args, heart = self._pop_for([queue], take_token=True)
                reply = self._script(keys=keys, args=args)
            self._maybe_update_queues_expire(client, queue)
        popped = self._read(reply[0], heart) if reply else None
        if popped is None:
            return None
        _, payload = popped
        message = self.Message(payload, channel=self)
        self.qos.append(message, message.delivery_tag)
        return message


_TransportBase: Any = kombu_redis.Transport if TYPE_CHECKING else object


class _Changes(_TransportBase):
    """What taskpool's transports change in kombu's; mixed in before it."""

    polling_interval: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No sleep between polls: the channel waits itself (IDLE_WAITS on the wake lists).
        # kombu takes a polling_interval as its BRPOP timeout, and its drain_events still
        # sleeps that long after every empty poll; this channel's polls come back empty after
        # each idle wait, so a drain_events consumer (not Celery's event loop) slept between
        # pops.
        self.polling_interval = None


class Transport(_Changes, kombu_redis.Transport):
    """kombu's Redis transport with Channel above; select it with ``broker_transport``."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same delivery through kombu's Sentinel support, which asks the sentinels for the
    primary and reconnects to the new one after a failover. A replica that took over holds
    none of the scripts: the first pop there reloads it (NoScriptError above)."""

    from_transport_options = _options(kombu_redis.SentinelChannel)  # type: ignore[assignment]


class SentinelTransport(_Changes, kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with SentinelChannel above."""

    Channel = SentinelChannel
