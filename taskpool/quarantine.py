"""The quarantine: messages a worker moved aside, with the reason, to be listed, sent again or
dropped (a dead-letter set, as RabbitMQ's and Dramatiq's).

A message goes here when no worker can read it (``taskpool.messages``) or when it was taken
from the queue more than TASKPOOL_MAX_DELIVERIES times without an outcome (its task kills the
process that runs it, say). It leaves the queue and the unacked records in the same
transaction, so nothing loops and nothing is lost. A task message with a readable id is also
marked failed in the result store (MessageQuarantined), so its ``.get()`` does not wait for
ever. Entries are kept ``KEEP_SECONDS`` (a week, as Dramatiq keeps dead messages).

Two Redis keys, beside kombu's (with its ``global_keyprefix``): ``ENTRIES``, a hash of entry
id -> entry JSON, and ``INDEX``, a sorted set of entry id -> when it was quarantined.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from celery.utils.dispatch import Signal
from kombu.exceptions import OperationalError

from taskpool.errors import BrokerUnavailable, BrokerUnsupported, MessageQuarantined
from taskpool.liveness import HELD
from taskpool.urls import mask_url

#: The script that keeps an entry, read once; Redis runs it by its SHA1.
KEEP = (Path(__file__).with_name("quarantine.lua")).read_text()
ENTRIES = "taskpool.quarantine"
INDEX = "taskpool.quarantine.index"
#: How long an entry is kept before the next quarantining drops it.
KEEP_SECONDS = 7 * 24 * 3600
#: Sent by the transport, in the worker, after each message it quarantines (``entry=Entry``).
message_quarantined = Signal(name="message_quarantined", providing_args={"entry"})


@dataclass(frozen=True)
class Entry:
    """One quarantined message, as it was taken from ``queue``."""

    id: str
    queue: str
    reason: str
    at: float
    deliveries: int
    #: The message's bytes, exactly as they were in the queue.
    message: bytes
    #: From the message's headers, when it had readable ones.
    task: str | None = None
    task_id: str | None = None

    @classmethod
    def of(cls, queue: str, message: bytes, reason: str, deliveries: int) -> Entry:
        task, task_id = _task_of(message)
        return cls(uuid.uuid4().hex, queue, reason, time.time(), deliveries, message, task, task_id)

    def to_json(self) -> str:
        fields = asdict(self)
        fields["message"] = self.message.decode("latin-1")  # every byte, as one character
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: bytes | str) -> Entry:
        fields = json.loads(text)
        fields["message"] = fields["message"].encode("latin-1")
        return cls(**fields)

    def summary(self) -> dict[str, Any]:
        """What ``taskpool quarantine list`` shows: everything but the message's bytes."""
        shown = {k: v for k, v in asdict(self).items() if k != "message"}
        return {**shown, "size": len(self.message)}


def _task_of(message: bytes) -> tuple[str | None, str | None]:
    """The task name and id in a message's headers, where they can be read as strings."""
    try:
        headers = json.loads(message).get("headers") or {}
        task, task_id = headers.get("task"), headers.get("id")
    except (ValueError, RecursionError, AttributeError):
        return None, None
    return (
        task if isinstance(task, str) else None,
        task_id if isinstance(task_id, str) else None,
    )


@dataclass(frozen=True)
class Recorded:
    """Where the transport recorded a popped message, for the quarantine to clear."""

    tag: bytes | str  # as Redis gave it: a tag that is not UTF-8 is still found
    held_key: str  # the consumer's held messages (taskpool.liveness), prefix included
    deliveries_key: str  # the delivery counts, prefix included
    parked_key: bytes | str  # where it is kept if it was parked (taskpool.liveness)


class Quarantine:
    """The quarantine on one Redis; ``client`` is a plain redis-py client (no key prefix)."""

    def __init__(self, client: Any, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self.entries_key, self.index_key = prefix + ENTRIES, prefix + INDEX
        self._keep = client.register_script(KEEP)

    def add(self, entry: Entry, recorded: Recorded | None = None) -> None:
        """Keep ``entry`` and forget the message's unacked records, in one step that a full
        Redis still runs (``quarantine.lua``)."""
        held, deliveries = self.prefix + HELD, "unacked_deliveries"  # unused without a record
        if recorded is not None:
            held, deliveries = recorded.held_key, recorded.deliveries_key
        keys: list[bytes | str] = [self.entries_key, self.index_key, held, deliveries]
        if recorded is not None:
            keys.append(recorded.parked_key)
        tag = recorded.tag if recorded is not None else ""
        self._keep(keys=keys, args=[entry.id, entry.to_json(), entry.at, tag])
        self._expire(entry.at - KEEP_SECONDS)

    def _expire(self, before: float) -> None:
        old = self.client.zrange(self.index_key, "-inf", before, byscore=True)
        if old:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self.entries_key, *old)
                pipe.zrem(self.index_key, *old)
                pipe.execute()

    def count(self) -> int:
        return int(self.client.zcard(self.index_key))

    def entries(self, ids: Iterable[str] | None = None) -> list[Entry]:
        """The entries named (all of them by default), oldest first; unknown ids are skipped."""
        wanted = list(ids) if ids is not None else self.client.zrange(self.index_key, 0, -1)
        if not wanted:
            return []
        found = self.client.hmget(self.entries_key, wanted)
        return sorted((Entry.from_json(text) for text in found if text), key=lambda e: e.at)

    def replay(self, entries: Sequence[Entry]) -> int:
        """Put each entry's message back at the end of its queue (its delivery count was
        cleared when it was quarantined)."""
        return self._remove(entries, push=True)

    def drop(self, entries: Sequence[Entry]) -> int:
        return self._remove(entries, push=False)

    def _remove(self, entries: Sequence[Entry], push: bool) -> int:
        with self.client.pipeline(transaction=True) as pipe:
            for entry in entries:
                if push:
                    pipe.lpush(self.prefix + entry.queue, entry.message)
                pipe.hdel(self.entries_key, entry.id)
                pipe.zrem(self.index_key, entry.id)
            pipe.execute()
        return len(entries)


def fail_task_of(app: Any, entry: Entry) -> None:
    """Mark the task whose message ``entry`` holds failed, so its ``.get()`` raises."""
    if entry.task_id is None:
        return
    error = MessageQuarantined(
        f"a worker moved the message of task {entry.task}[{entry.task_id}] from queue "
        f"{entry.queue!r} to the quarantine: {entry.reason}; `taskpool quarantine replay "
        f"{entry.id}` sends it again"
    )
    app.backend.mark_as_failure(entry.task_id, error)


@contextmanager
def of_app(app: Any) -> Iterator[Quarantine]:
    """The quarantine on ``app``'s broker, through kombu's connection settings (TLS, Sentinel,
    password, key prefix)."""
    url = mask_url(str(app.conf.broker_url))
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            pool = getattr(channel, "pool", None)
            if pool is None:
                raise BrokerUnsupported(
                    f"the quarantine is kept in Redis, and the broker {url} is not one"
                )
            yield Quarantine(redis.Redis(connection_pool=pool), channel.global_keyprefix or "")
    except (OperationalError, redis.exceptions.ConnectionError, OSError) as exc:
        raise BrokerUnavailable(
            f"broker {url} unreachable ({type(exc).__name__}: {mask_url(str(exc))}): the "
            "quarantine is kept there"
        ) from None


def render(summaries: Sequence[dict[str, Any]]) -> str:
    """``taskpool quarantine list``'s text: one line per entry, oldest first."""
    if not summaries:
        return "the quarantine is empty"
    lines = [f"{len(summaries)} message(s) in the quarantine:"]
    for entry in summaries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
        task = f"{entry['task']}[{entry['task_id']}]" if entry["task"] else "no task"
        lines.append(f"  {entry['id']}  {when}  queue {entry['queue']!r}  {task}")
        lines.append(f"      {entry['reason']}")
    return "\n".join(lines)
