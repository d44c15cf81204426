"""One process of a fetching pool (``taskpool.fetching``): a Celery worker of its own, on
Celery's solo pool, that pops its messages from Redis itself and runs each inline.

It says in its slot (``taskpool.slots``) what runs, with the time limits that apply and the
message it came in, so that its parent can enforce the limits, terminate it on a revoke and
settle its task if it dies. It stops itself, warm, once it has run ``max_tasks_per_child``
tasks or grown past ``max_memory_per_child``; its parent starts another. Ctrl-C, SIGHUP and
SIGUSR1's stack dump are its parent's: the parent drives shutdowns, and SIGUSR1 here is the
soft time limit, as in Celery's prefork pool processes.
"""

from __future__ import annotations

import base64
import json
import resource
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from celery import Celery, platforms
from celery.concurrency import solo
from celery.concurrency.base import apply_target
from celery.exceptions import SecurityWarning, SoftTimeLimitExceeded
from celery.platforms import EX_OK
from celery.worker import state
from kombu.asynchronous import set_event_loop
from kombu.utils.json import loads

from taskpool.liveness import RUNNING, Heart, Running
from taskpool.slots import SLOT_SIZE, Slots


@dataclass(frozen=True)
class Limits:
    """What the worker's options set for every task, as Celery's prefork pool takes them."""

    hard: float | None = None  # --time-limit, for tasks that set none
    soft: float | None = None  # --soft-time-limit
    max_tasks: int | None = None  # --max-tasks-per-child
    max_memory_kib: int | None = None  # --max-memory-per-child


@dataclass(frozen=True)
class Place:
    """A process's place in its pool: its slot and the limits it runs under."""

    index: int
    slots: Slots
    limits: Limits


#: Set in the forked process before its worker starts, for the pool its worker makes.
_place: Place | None = None


def run(
    app: Celery,
    hostname: str,
    place: Place,
    queues: list[str],
    added: list[tuple[str, dict[str, Any]]],
    options: dict[str, Any],
) -> int:
    """The forked process's life: a worker of its own until it stops; its exit code."""
    global _place
    _place = place
    platforms.set_pdeathsig("SIGTERM")  # its parent gone, it stops warm
    # The parent's event loop (its poller and waker) is shared memory and file descriptors
    # here: this worker makes its own.
    set_event_loop(None)
    state.reset_state()
    if queues:
        app.amqp.queues.select(queues)
    for queue, declared in added:  # by add_consumer, to the processes before this one
        app.amqp.queues.select_add(queue, **declared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # its parent warned already
        worker = app.Worker(
            hostname=hostname, pool_cls=ProcessPool, concurrency=1, quiet=True, **options
        )
    worker.start()
    return int(worker.exitcode or 0)


class ProcessPool(solo.TaskPool):
    """Celery's solo pool, saying in the slot what runs, and stopping its worker when spent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _place is None:
            raise RuntimeError("taskpool's process pool runs only in a fetching pool's process")
        self.place = _place
        self.on_apply = self._apply
        self._done = 0
        self._running = False
        self._consumer: dict[str, str] = {}

    def on_start(self) -> None:
        # After the worker installed its handlers (the blueprint's on_start runs first).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, self._soft_limit)

    def _soft_limit(self, signum: int, frame: FrameType | None) -> None:
        if self._running:  # the parent sends it once per task; between tasks it is late
            raise SoftTimeLimitExceeded()

    def _apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        soft_timeout: float | None = None,
        timeout_callback: Any = None,
        **options: Any,
    ) -> None:
        limits = self.place.limits
        hard, soft = timeout or limits.hard, soft_timeout or limits.soft
        request = getattr(timeout_callback, "__self__", None)
        message, heart = held(request)
        self._say(running(request, message, heart, args, hard, soft, self._consumer))
        token = RUNNING.set(acked_with_result(message, heart, args))

        def guarded(*a: Any, **kw: Any) -> Any:
            self._running = True
            try:
                return target(*a, **kw)
            finally:
                self._running = False

        try:
            apply_target(guarded, args, kwargs, **options)
        finally:
            RUNNING.reset(token)
            self._say(None)
            self._done += 1
            if self._spent():
                state.should_stop = EX_OK

    def _say(self, task: dict[str, Any] | None) -> None:
        entry: dict[str, Any] = dict(self._consumer)
        if task is not None:
            entry["task"] = task
        self.place.slots.write(self.place.index, entry)

    def _spent(self) -> bool:
        limits = self.place.limits
        if limits.max_tasks and self._done >= limits.max_tasks:
            return True
        if not limits.max_memory_kib:
            return False
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > limits.max_memory_kib  # KiB

    def _get_info(self) -> dict[str, Any]:
        info = super()._get_info()
        info.update({"max-tasks-per-child": self.place.limits.max_tasks})
        return info


def held(request: Any) -> tuple[Any, Heart | None]:
    """The message of the task that starts now, and the heart of this process's consumer that
    holds it (none for a message that came another way)."""
    message = getattr(request, "message", None)
    channel = getattr(message, "channel", None)
    return message, getattr(channel, "held", {}).get(getattr(message, "delivery_tag", None))


def running(
    request: Any,
    message: Any,
    heart: Heart | None,
    args: tuple[Any, ...],
    hard: float | None,
    soft: float | None,
    consumer: dict[str, str],
) -> dict[str, Any]:
    """The slot entry of a task that starts now: ``consumer`` learns who holds its message."""
    now = time.monotonic()
    task: dict[str, Any] = {
        "id": args[1] if len(args) > 1 else None,
        "started": now,
        "hard": hard, "soft": soft,
        "hard_at": now + hard if hard else None,
        "soft_at": now + soft if soft else None,
    }  # fmt: skip
    if message is None:
        return task
    if heart is not None:
        consumer.update(consumer=heart.id, prefix=heart.keys.prefix)
        task["tag"] = message.delivery_tag
        task["deliveries"] = message.channel.deliveries_key
    task["hostname"] = request.hostname
    task["acked"] = not request.task.acks_late  # Request.on_accepted acks before it runs
    task["message"] = copied(message)
    return task


def acked_with_result(message: Any, heart: Heart | None, args: tuple[Any, ...]) -> Running | None:
    """The running message, for its stored success to ack, if it is held by this process's
    consumer on taskpool's transport."""
    if heart is None or len(args) < 2:
        return None
    channel = message.channel
    return Running(
        args[1], heart, message.delivery_tag, channel.deliveries_key, channel.acked_by_result.add
    )


#: Room in a slot for a message's copy: what is left of it past the rest of the entry.
MESSAGE_ROOM = SLOT_SIZE - 2048


def copied(message: Any) -> str | dict[str, Any]:
    """What the parent needs to rebuild the message (``message_copy``): the text it was
    stored as, which its channel kept (``taskpool.transport.Channel.last_text``), if it fits in
    the slot; else its parts, and of a body too big for the slot only its callbacks, errbacks,
    chain and chord (no arguments)."""
    kept = getattr(message.channel, "last_text", None)
    if kept is not None and kept[0] == message.delivery_tag and len(kept[1]) <= MESSAGE_ROOM:
        return kept[1].decode()  # UTF-8: taskpool.messages read it so
    body = message.body
    if isinstance(body, memoryview):
        body = body.tobytes()
    encoding = "utf-8"
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(body).decode(), "base64"
    if len(body) > MESSAGE_ROOM:
        body, encoding = _without_arguments(body, message), "utf-8"
    return {
        "body": body, "body_encoding": encoding,
        "content_type": message.content_type, "content_encoding": message.content_encoding,
        "headers": message.headers, "properties": message.properties,
        "delivery_info": message.delivery_info,
    }  # fmt: skip


def message_copy(task: dict[str, Any]) -> dict[str, Any] | None:
    """The parts of the message a slot's ``task`` copied (``copied``), read from its stored
    text if that is what was copied; None if none was."""
    copy = task.get("message")
    if not isinstance(copy, str):
        return copy
    stored = loads(copy)  # kombu's envelope, as taskpool.messages read it in the process
    properties = stored["properties"]
    return {
        "body": stored.get("body") or "",
        "body_encoding": properties.get("body_encoding") or "utf-8",
        "content_type": stored.get("content-type"),
        "content_encoding": stored.get("content-encoding"),
        "headers": stored.get("headers") or {},
        "properties": properties,
        "delivery_info": properties["delivery_info"],
    }


def _without_arguments(body: str, message: Any) -> str:
    try:
        _, _, embed = (
            message.decode() if message.content_type == "application/json" else ([], {}, {})
        )
    except Exception:  # noqa: BLE001 - the parent then settles without callbacks
        embed = {}
    return json.dumps([[], {}, embed if len(json.dumps(embed)) <= MESSAGE_ROOM else {}])
