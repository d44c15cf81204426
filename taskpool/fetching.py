"""A worker pool whose processes fetch their own messages: ``TASKPOOL_WORKER_POOL=fetching``
(``worker_pool = "taskpool.fetching:TaskPool"`` in any Celery app).

Celery's prefork parent pops every message, builds its request, passes it to a pool process
over a pipe, takes the outcome back and acks: for tiny tasks that hop costs as much as the
tasks. Here each of the ``-c`` processes is a Celery worker of its own on the solo pool
(``taskpool.fetching_process``), with its own consumer, prefetch and node name
(``<name>-<n>@<host>``), popping from Redis itself. The parent is still the worker you started:
its node answers remote control, runs beat, and consumes no task queue. It keeps what the
prefork pool gives, reading what each process runs from shared memory (``taskpool.slots``):

- hard time limits: the process is killed, the task fails with ``TimeLimitExceeded`` and its
  message is acked, as Celery's own ``Request.on_timeout`` does it; soft ones: ``SIGUSR1``,
  which raises ``SoftTimeLimitExceeded`` in the task;
- ``revoke(terminate=True)``: the process running the task is killed (``SIGUSR1`` is passed
  on, as a soft limit) and the task is stored revoked;
- a process that dies (killed, out of memory) is replaced; its task is settled as a lost
  worker (``task_reject_on_worker_lost`` requeues it) and the rest of what it held goes back to
  its queues at once, not one liveness timeout later;
- ``max_tasks_per_child`` and ``max_memory_per_child``: the process stops, warm, and is
  replaced;
- warm shutdown (SIGTERM, Ctrl-C) waits for the running tasks, cold shutdown (SIGQUIT, a second
  Ctrl-C) kills the processes and gives their messages back.

Refused at start, by name: ``--autoscale`` and ``--statedb``. What differs from prefork is in
docs/COMPATIBILITY.md.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import billiard
from billiard.einfo import ExceptionInfo
from celery import platforms
from celery.concurrency.base import BasePool, apply_target
from celery.exceptions import ImproperlyConfigured, Terminated, WorkerLostError
from celery.signals import worker_init
from celery.utils.nodenames import nodesplit
from celery.worker import control, state
from celery.worker.request import Request
from kombu.message import Message
from kombu.utils.functional import maybe_list

from taskpool import fetching_process
from taskpool.fetching_process import Limits, Place
from taskpool.liveness import Heart
from taskpool.slots import Slots

log = logging.getLogger(__name__)

#: How often the parent looks at its processes: exits, time limits (billiard's pool: 1 s).
CHECK_INTERVAL = 0.1
#: How long a process killed by its parent may take to be gone.
KILL_WAIT = 5.0
#: A process that ends sooner than this after its start is replaced after a wait, doubling
#: from FIRST_RESTART_WAIT up to MAX_RESTART_WAIT while it keeps doing so: no respawn storm.
QUICK_EXIT, FIRST_RESTART_WAIT, MAX_RESTART_WAIT = 2.0, 0.5, 30.0
#: The worker options a process takes from the worker that started it, by attribute.
CARRIED = ("loglevel", "logfile", "task_events", "prefetch_multiplier", "optimization")
#: ... and from the options Celery keeps for its bootsteps.
CARRIED_OPTIONS = ("without_gossip", "without_mingle", "without_heartbeat", "heartbeat_interval")

#: The workers started in this process, by node name, as ``worker_init`` announced them.
_workers: dict[str, Any] = {}


def remember_worker(sender: Any = None, **_: Any) -> None:
    """``worker_init`` receiver: the pool reads the worker's options through it."""
    _workers[sender.hostname] = sender


worker_init.connect(remember_worker, weak=False)


@dataclass(frozen=True)
class Fate:
    """Why the parent killed a process: its task's outcome, for the task seen at ``sequence``."""

    sequence: int
    how: str  # "timeout" or "terminated"
    signum: int = signal.SIGKILL


class TaskPool(BasePool):
    """Processes that each fetch and run their own tasks, under a parent that keeps watch."""

    def __init__(self, limit: int | None = None, *args: Any, **options: Any) -> None:
        super().__init__(limit, *args, **options)
        memory = options.get("max_memory_per_child")
        self.limits = Limits(
            hard=options.get("timeout"),
            soft=options.get("soft_timeout"),
            max_tasks=options.get("maxtasksperchild"),
            max_memory_kib=memory,
        )
        # The parent consumes no task queue (its processes do); a task handed to it all the
        # same would run here, as on Celery's solo pool.
        self.on_apply = apply_target
        self._processes: list[Any] = []
        self._fates: dict[int, Fate] = {}
        self._soft_sent: dict[int, int] = {}
        self._slots: Slots | None = None
        self._queues: list[str] = []
        self._added: list[tuple[str, dict[str, Any]]] = []  # by add_consumer
        self._child_options: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- start ---------------------------------------------------------------------------

    def on_start(self) -> None:
        app, hostname = self.options["initargs"]
        self.hostname = hostname
        worker = _workers.get(hostname)
        self._child_options = child_options(worker)
        queues = app.amqp.queues
        self._queues = list(queues.consume_from)
        self._slots = Slots(self.limit)
        self._processes = [None] * self.limit
        self._started = [0.0] * self.limit
        self._due = [0.0] * self.limit
        self._quick_exits = [0] * self.limit
        for index in range(self.limit):
            self._start(index)
        if self._queues:
            queues.deselect(self._queues)  # the parent consumes none: its processes do
        take_over_control()
        if worker is None or not worker.use_eventloop:
            self._thread = threading.Thread(
                target=self._watch, name="taskpool-fetching", daemon=True
            )
            self._thread.start()

    def register_with_event_loop(self, loop: Any) -> None:
        if self._thread is None:  # else the thread watches, and one watcher is enough
            loop.call_repeatedly(CHECK_INTERVAL, self.maintain)

    def did_start_ok(self) -> bool:
        return all(p is not None and p.is_alive() for p in self._processes)

    def _start(self, index: int) -> None:
        assert self._slots is not None
        self._slots.clear(index)
        place = Place(index, self._slots, self.limits)
        process = billiard.get_context("fork").Process(
            target=_process_main,
            args=(
                self.app,
                self.nodes()[index],
                place,
                self._queues,
                self._added,
                self._child_options,
            ),
            name=f"FetchingProcess-{index + 1}",
        )
        process.start()
        self._processes[index] = process
        self._started[index] = time.monotonic()

    def _watch(self) -> None:
        while not self._stopping:
            self.maintain()
            time.sleep(CHECK_INTERVAL)

    # -- watch ---------------------------------------------------------------------------

    def maintain(self, replace: bool = True) -> None:
        """Reap and replace processes that ended; enforce the time limits of what runs."""
        assert self._slots is not None
        for index, process in enumerate(self._processes):
            if process is None:
                if replace and not self._stopping and time.monotonic() >= self._due[index]:
                    self._start(index)
                continue
            if not process.is_alive():
                self._reap(index, process)
                continue
            sequence, entry = self._slots.read(index)
            task = (entry or {}).get("task")
            if not task:
                continue
            now = time.monotonic()
            if task.get("hard_at") and now >= task["hard_at"]:
                self._kill(index, Fate(sequence, "timeout"))
            elif self._soft_due(index, sequence, task, now):
                self._soft_sent[index] = sequence
                log.warning(
                    "Soft time limit (%ss) exceeded for %s[%s]",
                    task["soft"],
                    _name(task),
                    task["id"],
                )
                _signal(process.pid, signal.SIGUSR1)

    def _restart_at(self, index: int, exitcode: int | None, killed: bool) -> float:
        """When the process that replaces one that ended may start: at once, unless it failed
        within QUICK_EXIT of its start, again and again (its worker cannot start, say); then
        after a wait that doubles with each such exit, up to MAX_RESTART_WAIT. A process that
        stopped by itself (exit code 0: its task or memory limit) or that this pool killed
        is replaced at once."""
        now = time.monotonic()
        if killed or exitcode == 0 or now - self._started[index] >= QUICK_EXIT:
            self._quick_exits[index] = 0
            return now
        self._quick_exits[index] += 1
        wait = min(MAX_RESTART_WAIT, FIRST_RESTART_WAIT * 2 ** (self._quick_exits[index] - 1))
        log.error(
            "Pool process %d exited with %s %.1f s after it started; the next starts in %g s",
            index + 1, _status(exitcode), now - self._started[index], wait,
        )  # fmt: skip
        return now + wait

    def _soft_due(self, index: int, sequence: int, task: dict[str, Any], now: float) -> bool:
        """Past its soft limit, and not told yet (once per task, as billiard tells it)."""
        due = bool(task.get("soft_at")) and now >= task["soft_at"]
        return due and self._soft_sent.get(index) != sequence

    def _kill(self, index: int, fate: Fate) -> None:
        process = self._processes[index]
        self._fates[index] = fate
        _signal(process.pid, signal.SIGKILL)
        process.join(KILL_WAIT)
        self._reap(index, process)

    def _reap(self, index: int, process: Any) -> None:
        """A process ended: settle its task, give back what else it held, free its slot."""
        assert self._slots is not None
        process.join(KILL_WAIT)
        self._processes[index] = None
        fate = self._fates.pop(index, None)
        self._due[index] = self._restart_at(index, process.exitcode, killed=fate is not None)
        self._soft_sent.pop(index, None)
        sequence, entry = self._slots.read(index)
        entry = entry or {}
        task = entry.get("task")
        try:
            with self.app.connection_for_write() as conn:
                heart = _heart(conn, entry)
                if task and not state.should_terminate:
                    if fate is not None and fate.sequence == sequence:
                        self._settle(entry, heart, fate)
                    else:
                        self._settle_lost(entry, heart, process.exitcode)
                if heart is not None:
                    _bury(heart)
        except Exception:  # noqa: BLE001 - what it held waits for the liveness sweep
            log.exception("Could not settle what process %s held", process.pid)
        finally:
            self._slots.clear(index)

    # -- settle --------------------------------------------------------------------------

    def _settle(self, entry: dict[str, Any], heart: Heart | None, fate: Fate) -> None:
        request = self._request(entry, heart)
        task = entry["task"]
        if request is None:
            return
        if fate.how == "timeout":
            request.on_timeout(soft=False, timeout=task["hard"])
        else:
            request.on_failure(_einfo(Terminated(fate.signum)))

    def _settle_lost(
        self, entry: dict[str, Any], heart: Heart | None, exitcode: int | None
    ) -> None:
        request = self._request(entry, heart)
        if request is None:
            return
        status = _status(exitcode)
        request.on_failure(_einfo(WorkerLostError(f"Worker exited prematurely: {status}.")))

    def _request(self, entry: dict[str, Any], heart: Heart | None) -> Request | None:
        """Celery's request for the task in ``entry``, acking and rejecting through ``heart``,
        the consumer of the process that popped it; None if its message was not copied."""
        task = entry["task"]
        copy = fetching_process.message_copy(task)
        if copy is None or copy["headers"].get("task") not in self.app.tasks:
            log.error("Process running task %s died; its message is unknown here", task["id"])
            return None
        tag = task.get("tag")
        if tag is None:
            heart = None

        def on_ack(*_: Any) -> None:
            if heart is not None:
                heart.ack(tag, task["deliveries"])

        def on_reject(_logger: Any, _errors: Any, requeue: bool) -> None:
            if heart is None:
                return
            if requeue:
                heart.give_back(tag, task["deliveries"], counted=True, front=False)
            else:
                heart.ack(tag, task["deliveries"])

        request = Request(
            rebuilt(copy, tag),
            on_ack=on_ack,
            on_reject=on_reject,
            app=self.app,
            hostname=task.get("hostname") or self.hostname,
            eventer=self._eventer(),
            connection_errors=(),
        )
        if task.get("acked"):
            # Acked on acceptance, as Celery's worker acks a task without late acks; in a
            # solo pool's worker that ack waits in the event loop until the task ends.
            on_ack()
            request.acknowledged = True
        request.time_start = task.get("started")
        return request

    def _eventer(self) -> Any:
        worker = _workers.get(self.hostname)
        consumer = getattr(worker, "consumer", None)
        if self._thread is not None or consumer is None:
            return None  # the dispatcher is the event loop's: not from another thread
        return consumer.event_dispatcher

    # -- remote control ------------------------------------------------------------------

    def terminate_tasks(self, matches: Callable[[dict[str, Any]], bool], signum: int) -> None:
        """``revoke(terminate=True)``: kill the process running each task that ``matches``
        (SIGUSR1: the soft time limit, the task goes on), settle the task revoked, start
        another process."""
        assert self._slots is not None
        for index, process in enumerate(self._processes):
            if process is None:
                continue
            sequence, entry = self._slots.read(index)
            task = (entry or {}).get("task")
            if not task or not matches(task):
                continue
            log.info("Terminating %s (%s)", task["id"], signum)
            if signum == signal.SIGUSR1:
                _signal(process.pid, signum)
                continue
            self._kill(index, Fate(sequence, "terminated", signum))

    def nodes(self) -> list[str]:
        """The node names of this pool's processes."""
        name, host = nodesplit(self.hostname)
        return [f"{name}-{index + 1}@{host}" for index in range(self.limit or 0)]

    def consume(self, queue: str, options: dict[str, Any] | None) -> None:
        """A queue added (``options``) or cancelled (None) by remote control: processes started
        from now on consume as the running ones were told to."""
        self._added = [(name, kept) for name, kept in self._added if name != queue]
        if options is not None:
            self._added.append((queue, options))
        elif queue in self._queues:
            self._queues.remove(queue)

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        _signal(pid, signal or platforms.signals.signum("SIGTERM"))

    # -- stop ----------------------------------------------------------------------------

    def on_stop(self) -> None:
        """Warm: each process finishes its task, gives back what it prefetched, and stops."""
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        while any(p is not None for p in self._processes):
            if state.should_terminate:
                self.on_terminate()
                return
            self.maintain(replace=False)
            time.sleep(CHECK_INTERVAL)
        self._close_slots()

    def on_terminate(self) -> None:
        """Cold: the processes are killed, what they held goes back to the queues."""
        self._stopping = True
        self._signal_all(signal.SIGKILL)
        for index, process in enumerate(self._processes):
            if process is not None:
                self._reap(index, process)
        self._close_slots()

    def _signal_all(self, signum: int) -> None:
        for process in self._processes:
            if process is not None and process.is_alive():
                _signal(process.pid, signum)

    def _close_slots(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._processes = [None] * len(self._processes)

    def _get_info(self) -> dict[str, Any]:
        info = super()._get_info()
        info.update({
            "processes": [p.pid for p in self._processes if p is not None],
            "nodes": self.nodes() if hasattr(self, "hostname") else [],
            "max-tasks-per-child": self.limits.max_tasks,
            "timeouts": (self.limits.soft, self.limits.hard),
        })  # fmt: skip
        return info


def child_options(worker: Any) -> dict[str, Any]:
    """The options of the worker that its processes' workers take; refuses those that a
    fetching pool cannot honour, by name."""
    if worker is None:
        return {}
    if getattr(worker, "autoscale", None):
        raise ImproperlyConfigured(
            "--autoscale: a fetching pool (TASKPOOL_WORKER_POOL=fetching) has a fixed number "
            "of processes (-c); use the prefork pool to autoscale"
        )
    if getattr(worker, "statedb", None):
        raise ImproperlyConfigured(
            "--statedb: a fetching pool's processes would share one state file; use the "
            "prefork pool to keep revoked ids across restarts"
        )
    options = {name: getattr(worker, name) for name in CARRIED if hasattr(worker, name)}
    given = getattr(worker, "options", {}) or {}
    options.update({name: given[name] for name in CARRIED_OPTIONS if name in given})
    return options


def take_over_control() -> None:
    """Have this process's remote control reach into a fetching pool's processes: Celery's
    ``revoke`` terminates only the requests its own process holds, and its ``add_consumer``
    would have the parent, which runs nothing, consume. In a process of the pool (and any
    other worker) the commands stay Celery's own."""
    for name, handler in (
        ("revoke", _revoke),
        ("revoke_by_stamped_headers", _revoke_by_stamps),
        ("add_consumer", _add_consumer),
        ("cancel_consumer", _cancel_consumer),
    ):
        original = control.Panel.data[name]
        if getattr(original, "fetching", False):
            continue
        wrapper = functools.partial(_in_parent, original, handler)
        functools.update_wrapper(wrapper, original)
        wrapper.fetching = True  # type: ignore[attr-defined]
        control.Panel.data[name] = wrapper


def _in_parent(
    original: Callable[..., Any], handler: Callable[..., Any], state: Any, *args: Any, **kwargs: Any
) -> Any:
    pool = getattr(state.consumer, "pool", None)
    if not isinstance(pool, TaskPool):
        return original(state, *args, **kwargs)
    return handler(original, pool, state, *args, **kwargs)


def _revoke(
    original: Callable[..., Any],
    pool: TaskPool,
    state: Any,
    task_id: Any,
    terminate: bool = False,
    signal: Any = None,
    **kwargs: Any,
) -> Any:
    reply = original(state, task_id, terminate=terminate, signal=signal, **kwargs)
    if terminate:
        ids = set(maybe_list(task_id) or [])
        pool.terminate_tasks(lambda task: task["id"] in ids, _signum(signal))
    return reply


def _revoke_by_stamps(
    original: Callable[..., Any],
    pool: TaskPool,
    state: Any,
    headers: Any,
    terminate: bool = False,
    signal: Any = None,
    **kwargs: Any,
) -> Any:
    reply = original(state, headers, terminate=terminate, signal=signal, **kwargs)
    if terminate:
        if isinstance(headers, list):  # as Celery reads a list: "name=value" each
            headers = dict(h.split("=", 1) for h in headers)
        pool.terminate_tasks(lambda task: _stamped(task, headers), _signum(signal))
    return reply


def _stamped(task: dict[str, Any], revoked: dict[str, Any]) -> bool:
    stamps = _headers(task).get("stamps") or {}
    return any(
        set(map(str, maybe_list(stamps.get(name)) or [])) & set(map(str, maybe_list(values)))
        for name, values in revoked.items()
    )


def _add_consumer(
    original: Callable[..., Any],
    pool: TaskPool,
    state: Any,
    queue: str,
    exchange: Any = None,
    exchange_type: Any = None,
    routing_key: Any = None,
    **options: Any,
) -> Any:
    kept = {"exchange": exchange, "exchange_type": exchange_type or "direct",
            "routing_key": routing_key, **options}  # fmt: skip
    pool.consume(queue, kept)
    state.app.control.add_consumer(
        queue, exchange, exchange_type or "direct", routing_key, options=options,
        destination=pool.nodes(),
    )  # fmt: skip
    return {"ok": f"add consumer {queue}: forwarded to {', '.join(pool.nodes())}"}


def _cancel_consumer(
    original: Callable[..., Any], pool: TaskPool, state: Any, queue: str, **_: Any
) -> Any:
    pool.consume(queue, None)
    state.app.control.cancel_consumer(queue, destination=pool.nodes())
    return {"ok": f"no longer consuming from {queue}: forwarded to {', '.join(pool.nodes())}"}


def _signum(signal: Any) -> int:
    return int(platforms.signals.signum(signal or "SIGTERM"))


def rebuilt(copy: dict[str, Any], tag: Any) -> Message:
    """The message a process copied into its slot (``fetching_process.copied``)."""
    body: Any = copy["body"]
    if copy["body_encoding"] == "base64":
        body = base64.b64decode(body)
    return Message(
        body=body,
        delivery_tag=tag,
        content_type=copy["content_type"],
        content_encoding=copy["content_encoding"],
        delivery_info=copy["delivery_info"],
        properties=copy["properties"],
        headers=copy["headers"],
    )


def _process_main(app: Any, hostname: str, place: Place, *queues_and_options: Any) -> None:
    raise SystemExit(fetching_process.run(app, hostname, place, *queues_and_options))


def _heart(conn: Any, entry: dict[str, Any]) -> Heart | None:
    """The consumer of the process in ``entry``; None if it had none, or on a transport other
    than taskpool's (there kombu's visibility timeout restores what it held)."""
    heart_of = getattr(conn.default_channel, "heart_of", None) if entry.get("consumer") else None
    return heart_of(entry["consumer"]) if heart_of is not None else None


def _bury(heart: Heart) -> None:
    given_back = heart.bury()
    if given_back:
        log.warning("%d message(s) held by a process that ended went back", given_back)


def _einfo(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


def _status(exitcode: int | None) -> str:
    return f"signal {-exitcode}" if exitcode and exitcode < 0 else f"exitcode {exitcode}"


def _headers(task: dict[str, Any]) -> dict[str, Any]:
    """The headers of the message of a slot's ``task``; empty if it was not copied."""
    return (fetching_process.message_copy(task) or {}).get("headers") or {}


def _name(task: dict[str, Any]) -> str:
    return str(_headers(task).get("task", "?"))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: its exit is reaped
        os.kill(pid, signum)
