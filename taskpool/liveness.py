"""Which consumers are alive, by heartbeat, and the messages each one holds.

A message popped by taskpool's transport is recorded as held by the consumer (the channel)
that popped it, in a hash of that consumer's own (``taskpool.held.<id>``), not in kombu's
``unacked`` hash, which kombu's restore empties by age alone. Each consumer beats once a third
of the liveness timeout (``TASKPOOL_LIVENESS_TIMEOUT``, 3 s: one command a second), from a
thread of its own, so a long task, a busy event loop or a solo pool does not stop it. Each
beat is also a sweep: a consumer silent for longer than the timeout is taken for dead, and
every message it held, running or reserved, goes back to the front of its queue in the same
step (``liveness.lua``). So a killed worker's tasks run again within seconds, and a live
worker's are never handed to another, however long they run or however far their eta. Each
consumer is judged by its own timeout, so workers configured apart share one Redis safely.

A consumer taken for dead that comes back (a network cut, a stopped process) learns it at its
next beat or pop: it takes a new id, and acks under the old one find nothing to remove
(counted as ``late_acks``: those tasks may have run twice, as at-least-once delivery allows).
It never acks, re-queues or deletes a message another consumer holds, since each step touches
only the hash of the id that popped the message. A stored success is never overwritten by the
second run (``store_result.lua``).

Peers: Dramatiq's Redis broker keeps each worker's unacked messages under its id with a
heartbeat (``heartbeat_timeout``, 60 s); Kafka's consumer groups drop a silent member after
``session.timeout.ms`` (45 s); stock Celery on Redis waits one visibility timeout (1 hour) for a
dead worker and a long task alike.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

import redis

log = logging.getLogger(__name__)

#: The ack both liveness.lua and store_result.lua run (a Lua function, put before each).
ACK = Path(__file__).with_name("ack.lua").read_text()
LIVENESS = ACK + Path(__file__).with_name("liveness.lua").read_text()

#: The consumers alive (sorted set: id -> the server time by which it must beat again).
CONSUMERS = "taskpool.consumers"
#: The liveness clock (hash): the last beat of any consumer, when beats resumed after a
#: silence, and the count of acks that found their message handed out again (``late_acks``).
CLOCK = "taskpool.liveness"
#: The queues each consumer consumes (hash: id -> queue names, one a line), for ``serving``.
QUEUES = "taskpool.queues"
#: Each consumer's held messages: this prefix and its id (hash: delivery tag -> record).
HELD = "taskpool.held."
#: Where a big message is kept while held, out of the held record (pop_and_record.lua): this
#: prefix and the consumer's id (its landing list), then ':' and the delivery tag once claimed.
PARKED = "taskpool.parked."
#: A beat every third of the timeout: two may be lost before a consumer counts as dead.
BEATS_PER_TIMEOUT = 3
#: How long closing a consumer waits for its beating thread to leave.
STOP_WAIT = 1.0


def consumer_id() -> str:
    """A new consumer id: the host and process, for an operator to read, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Keys:
    """The liveness keys on one Redis, with kombu's global key prefix."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.consumers = prefix + CONSUMERS
        self.clock = prefix + CLOCK
        self.queues = prefix + QUEUES
        self.held_prefix = prefix + HELD
        self.parked_prefix = prefix + PARKED

    def held(self, consumer: str) -> str:
        return self.held_prefix + consumer

    def landing(self, consumer: str) -> str:
        return self.parked_prefix + consumer


class Heart:
    """One consumer's heartbeat: ``start`` beats once (so it may pop at once), then a thread
    beats until ``stop``. ``alive`` turns False for good once the consumer is taken for dead."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        timeout: float,
        wake_cap: int,
        queues: Callable[[], Iterable[str]] = tuple,
        consumer: str | None = None,
    ) -> None:
        self.client = client
        #: The queues the consumer consumes now, sent with each beat (``serving``).
        self.queues = queues
        self.keys = keys
        self.timeout = timeout
        self.wake_cap = wake_cap
        #: A new id, or with ``consumer`` another process's, to settle what it held
        #: (``taskpool.fetching``): such a heart is never started.
        self.id = consumer or consumer_id()
        self.held_key = keys.held(self.id)
        self.landing_key = keys.landing(self.id)
        self.alive = True
        self._script = client.register_script(LIVENESS)
        self._stopped = threading.Event()
        self._nudged = threading.Event()
        self._leave: tuple[str, list[str]] | None = None  # deliveries key, tags that ran
        self._thread: threading.Thread | None = None

    def start(self) -> Heart:
        self.beat(first=True)
        self._thread = threading.Thread(
            target=self._run, name=f"taskpool-liveness-{self.id}", daemon=True
        )
        self._thread.start()
        return self

    def beat(self, first: bool = False) -> bool:
        """Beat and sweep once; False (and ``alive`` False) once taken for dead."""
        reply = self._script(
            keys=[self.keys.consumers, self.keys.clock, self.keys.queues],
            args=[
                "beat", self.id, self.timeout, int(first), self.keys.held_prefix, self.wake_cap,
                "\n".join(sorted(self.queues())),
            ],
        )  # fmt: skip
        if not int(reply[0]):
            self.alive = False
            return False
        for silent, count in zip(reply[1::2], reply[2::2], strict=True):
            log.log(
                logging.WARNING if int(count) else logging.INFO,
                "Consumer %s was silent for longer than its liveness timeout: the %d "
                "message(s) it held are back in their queues",
                _text(silent),
                int(count),
            )
        return True

    def _run(self) -> None:
        interval = self.timeout / BEATS_PER_TIMEOUT
        failing_since: float | None = None
        while True:
            self._nudged.wait(interval)
            self._nudged.clear()
            if self._stopped.is_set():
                self._leave_if_asked()
                return
            try:
                alive = self.beat()
            except Exception as exc:  # noqa: BLE001 - whatever failed, the next beat tries again
                if failing_since is None:
                    failing_since = monotonic()
                    log.warning("Consumer %s cannot beat: %s", self.id, exc)
                continue
            if failing_since is not None:
                log.info("Consumer %s beats again", self.id)
                failing_since = None
            if not alive:
                log.warning(
                    "Consumer %s was taken for dead (silent for more than %s s): the messages "
                    "it held went back to their queues and may run twice",
                    self.id,
                    _seconds(self.timeout),
                )
                return

    def nudge(self) -> None:
        """Beat now, not at the next interval: the queues consumed changed."""
        self._nudged.set()

    def stop(self, leave: bool, *, deliveries_key: str = "", ran: Iterable[str] = ()) -> None:
        """Stop beating; with ``leave`` (a channel closing, after it gave back what it
        delivered and did not run), also leave the consumers alive, and put back at the front
        of its queue whatever the consumer still holds: messages whose pop reply was lost
        with its connection (not counted as delivered), and those in ``ran`` (tags whose ack
        or requeue was lost: counted). If that cannot reach Redis, the sweep does it one
        timeout later.

        The beating thread leaves, and this waits for it at most STOP_WAIT seconds: a
        connection gone half-open (no reply, no reset) would otherwise hold a worker's
        shutdown or reconnection for its socket timeouts and retries.
        """
        self._leave = (deliveries_key, list(ran)) if leave else None
        self._stopped.set()
        self._nudged.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=min(STOP_WAIT, self.timeout))

    def _leave_if_asked(self) -> None:
        if self._leave is None or not self.alive:
            return
        deliveries_key, ran = self._leave
        keys = [self.keys.consumers, self.held_key, self.keys.queues, deliveries_key]
        try:
            back = int(self._script(keys=keys, args=["leave", self.id, self.wake_cap, *ran]))
        except Exception as exc:  # noqa: BLE001 - the sweep removes it one timeout later
            log.info("Consumer %s could not leave (%s); the sweep will", self.id, exc)
            return
        if back:
            log.warning(
                "Consumer %s closed holding %d message(s) whose pop reply or outcome was lost "
                "with a connection: back at the front of their queues",
                self.id,
                back,
            )

    def parked_key(self, tag: bytes | str) -> bytes | str:
        """Where this consumer keeps the message ``tag`` if it was parked."""
        if isinstance(tag, bytes):
            return self.landing_key.encode() + b":" + tag
        return f"{self.landing_key}:{tag}"

    def claim(self, tag: str, deliveries_key: str) -> int:
        """Record the message parked in the landing list under its tag, read there; its
        deliveries with this one, or 0 if it was no longer this consumer's."""
        keys = [self.held_key, deliveries_key, self.landing_key, self.parked_key(tag)]
        return int(self._script(keys=keys, args=["claim", tag]))

    def ack(self, tag: str, deliveries_key: str) -> bool:
        """Forget a message acknowledged; False if it was no longer this consumer's."""
        keys = [self.held_key, deliveries_key, self.keys.clock, self.parked_key(tag)]
        return bool(self._script(keys=keys, args=["ack", tag]))

    def give_back(self, tag: str, deliveries_key: str, counted: bool, front: bool) -> bool:
        """Put a held message back in its queue; False if it was no longer held."""
        keys = [self.held_key, deliveries_key]
        args: list[str | int] = ["give_back", tag, int(not counted), self.wake_cap, int(front)]
        return bool(self._script(keys=keys, args=args))

    def bury(self) -> int:
        """Take this consumer, whose process is known dead, for dead now: what it holds goes
        back to the front of its queues, as the sweep would one timeout later. Returns how many
        messages went back."""
        keys = [self.keys.consumers, self.held_key, self.keys.queues]
        return int(self._script(keys=keys, args=["bury", self.id, self.wake_cap]))


@dataclass(frozen=True)
class Running:
    """The message whose task a fetching pool's process runs now (``fetching_process``): the
    success stored for it acks it in the same script (``store_result.lua``), and ``acked``
    tells its channel, whose ack then has nothing left to send."""

    task_id: str
    heart: Heart
    tag: str
    deliveries_key: str
    acked: Callable[[str], None]

    def ack_keys(self) -> list[str]:
        """ack.lua's keys for this message: held, deliveries, clock, parked."""
        heart = self.heart
        parked = heart.parked_key(self.tag)
        return [heart.held_key, self.deliveries_key, heart.keys.clock, str(parked)]


#: Set by a fetching pool's process around each task it runs (None elsewhere).
RUNNING: ContextVar[Running | None] = ContextVar("taskpool_running", default=None)


def serving(client: redis.Redis, queue: str, prefix: str = "") -> int:
    """How many consumers alive consume ``queue`` (by their beats: stock workers do not beat)."""
    keys = Keys(prefix)
    script = client.register_script(LIVENESS)
    return int(script(keys=[keys.consumers, keys.queues], args=["serves", queue]))


def consumers_by_queue(client: redis.Redis, prefix: str = "") -> Counter[str]:
    """How many consumers alive consume each queue (by their last beats), for ``status``."""
    keys = Keys(prefix)
    alive = {_text(id) for id in client.zrange(keys.consumers, 0, -1)}
    counts: Counter[str] = Counter()
    for consumer, queues in client.hgetall(keys.queues).items():
        if _text(consumer) in alive:
            counts.update(name for name in _text(queues).split("\n") if name)
    return counts


def held_keys(client: redis.Redis, prefix: str = "") -> list[Any]:
    """Every consumer's hash of held messages, named as the client names keys."""
    return list(client.scan_iter(match=f"{prefix}{HELD}*", count=1000))


def summary(client: redis.Redis, prefix: str = "") -> dict[str, int]:
    """The consumers alive, the messages they hold, and the acks that came after their
    consumer was taken for dead (tasks that may have run twice), for ``taskpool status``."""
    keys = Keys(prefix)
    return {
        "consumers": int(client.zcard(keys.consumers)),
        "held": sum(int(client.hlen(key)) for key in held_keys(client, prefix)),
        "late_acks": int(client.hget(keys.clock, "late_acks") or 0),
    }


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _seconds(value: float) -> str:
    return f"{value:g}"
