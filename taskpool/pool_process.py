"""What runs inside a local pool process: a task found by reference, run once as a worker
would run it (time limits, expiry, ``self.retry()`` sent back to the caller, ``update_state``
reported to it), or a chunk of a map.

Everything here is started by the pool (``taskpool.local_executor``) and travels pickled:
a task by its ``TaskRef``, its arguments serialized as a broker message's would be.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

from celery import Task, states
from celery.app.utils import find_app
from celery.exceptions import Retry, SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celery.local import maybe_evaluate
from celery.utils.serialization import get_pickleable_exception
from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.serialization import dumps, loads

from taskpool.arguments import check_items
from taskpool.chunks import ChunkOutcome, run_items
from taskpool.errors import LocalPoolError
from taskpool.results import Again, Outcome

#: (content type, encoding, data) of a serialized ``[args, kwargs]``.
Payload = tuple[str, str, bytes | str]


class RunOptions(NamedTuple):
    """What a worker would honour for one run, as the local pool does."""

    #: Seconds to wait before starting (on a timer in the caller, not in a pool process).
    countdown: float = 0.0
    #: Unix time after which the run does not start (REVOKED, as on a worker).
    expires_at: float | None = None
    #: Per-call limits; None: the task's, else the app's.
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: ``request.retries`` of this run: how many times ``self.retry()`` sent it round already.
    retries: int = 0


#: Inside a pool process: where update_state reports go (to the caller's PROGRESS); None in
#: any other process. Set by the pool's initializer.
_reports: Any = None


def in_pool_process() -> bool:
    return _reports is not None


#: How often a pool process checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 1.0


def initialize(reports: Any) -> None:
    """The pool's initializer, in each pool process as it starts."""
    global _reports
    _reports = reports
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller, who stops the pool.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this pool process once its parent is gone (SIGKILLed, say).

    Its siblings hold the task queue's write end too, so it would never see end-of-file and
    would wait for work for ever, an orphan.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


class _StateReporter:
    """A task's ``update_state`` inside a pool process: the report reaches the caller, whose
    LocalResult shows it, as a worker's reaches the result store."""

    def __init__(self, task: Task, queue: Any) -> None:
        self.task, self.queue = task, queue

    def __call__(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **_: Any
    ) -> None:
        self.queue.put((task_id or self.task.request.id, state, meta))


class TaskRef(NamedTuple):
    """How a pool process finds a task: the module defining it, its app's name, its name."""

    module: str
    app_main: str
    name: str


def task_ref(task: Task) -> TaskRef:
    # __class__ sees through Celery's lazy task proxies to the task's own class and module.
    return TaskRef(task.__class__.__module__, str(task.app.main or ""), task.name)


def _find_task(ref: TaskRef) -> Task:
    """Import what defines the task, then find it: on the app ``-A`` would find, or by scan.

    The task itself, not a lazy proxy of it: a run sets attributes on it for its duration.
    """
    module = sys.modules.get(ref.module) or importlib.import_module(ref.module)
    try:
        app = find_app(ref.app_main) if ref.app_main else None
    except (ImportError, AttributeError):  # an app whose name is not a module
        app = None
    if app is not None and ref.name in app.tasks:
        return maybe_evaluate(app.tasks[ref.name])
    for value in list(vars(module).values()):
        if isinstance(value, Task) and value.name == ref.name:  # evaluates lazy task proxies
            return maybe_evaluate(value)
    raise LocalPoolError(
        f"task {ref.name!r} was not found after importing {ref.module!r}: define tasks at the "
        "top level of an importable module"
    )


def execute(ref: TaskRef, payload: Payload, task_id: str, options: RunOptions) -> Outcome:
    """Run one task in a pool process; every failure becomes an Outcome, never a pool error."""
    try:
        task = _find_task(ref)
        args, kwargs = loads(*_reorder(payload), accept=[payload[0]])
        if options.expires_at is not None and time.time() >= options.expires_at:
            return Outcome(states.REVOKED, TaskRevokedError("expired"))  # as a worker does
        if _reports is not None:  # update_state reports to the caller, not the result store
            task.update_state = _StateReporter(task, _reports)
        retry = _RetryLater()
        task.apply = retry  # what Celery's eager retry calls to run the retry at once
        try:
            with _time_limits(task, options):
                run = type(task).apply(
                    task, args, kwargs, task_id=task_id, throw=False, retries=options.retries
                )
        finally:
            vars(task).pop("update_state", None)
            vars(task).pop("apply", None)
        if retry.called:
            return retry.outcome(task)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, not swallowed
        return Outcome(states.FAILURE, get_pickleable_exception(exc), traceback.format_exc())
    if run.state != states.SUCCESS:
        return Outcome(run.state, get_pickleable_exception(run.result), run.traceback)
    try:
        return Outcome(
            states.SUCCESS, payload=dumps(run.result, serializer=task.app.conf.result_serializer)
        )
    except Exception as exc:  # a value the result serializer refuses fails as it would on a worker
        return Outcome(states.FAILURE, get_pickleable_exception(exc), traceback.format_exc())


class _RetryLater:
    """Stands in for ``task.apply`` during a local run.

    On ``self.retry()`` in an eager run, Celery runs the retry at once (``sig.apply()``), with
    no countdown. Caught here, the retry's arguments and timing go back to the caller instead,
    which runs it when due (``LocalCall``), as a worker runs the retry message it publishes; Celery
    itself has applied ``max_retries``, ``autoretry_for`` and ``retry_backoff`` by then.
    """

    def __init__(self) -> None:
        self.called = False
        self.args: Any = ()
        self.kwargs: Any = {}
        self.options: dict[str, Any] = {}

    def __call__(self, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        self.called = True
        self.args, self.kwargs, self.options = args or (), kwargs or {}, options

    def outcome(self, task: Task) -> Outcome:
        countdown, eta = self.options.get("countdown"), self.options.get("eta")
        delay = float(countdown or 0)
        if countdown is None and eta is not None:
            due = maybe_make_aware(maybe_iso8601(eta), task.app.timezone)
            delay = (due - task.app.now()).total_seconds()
        payload = dumps([list(self.args), self.kwargs], serializer=task.app.conf.task_serializer)
        retries = int(self.options.get("retries", 1))
        again = Again(payload, max(0.0, delay), retries)
        return Outcome(states.RETRY, Retry(when=delay), again=again)


def execute_chunk(
    ref: TaskRef, items: Sequence[Any], start: int, check_integers: bool, star: bool = False
) -> ChunkOutcome:
    """Run one chunk in a pool process; failures travel back per input, picklable.

    With ``check_integers``, inputs other languages' JSON would round fail the whole chunk
    (UnsafeInteger) before any of it runs, as they would on the broker.
    """
    task = _find_task(ref)
    if check_integers:
        check_items(task.name, items, start)
    with _time_limits(task, RunOptions()):  # a chunk's limits are one run's, as on a worker
        outcome = run_items(task, items, hostname=None, star=star)
    outcome.errors = [(i, get_pickleable_exception(exc)) for i, exc in outcome.errors]
    return outcome


def _reorder(payload: Payload) -> tuple[bytes | str, str, str]:
    content_type, encoding, data = payload
    return data, content_type, encoding


class _time_limits:
    """Soft then hard time limit for one run, raised inside the task as on a Celery worker."""

    def __init__(self, task: Task, options: RunOptions) -> None:
        conf = task.app.conf
        self.hard = options.time_limit or task.time_limit or conf.task_time_limit
        self.soft = options.soft_time_limit or task.soft_time_limit or conf.task_soft_time_limit
        self.armed = False

    def __enter__(self) -> None:
        # Signals reach the main thread only: a delayed call run by its timer thread at
        # interpreter exit (see LocalCall) runs without limits.
        self.armed = threading.current_thread() is threading.main_thread()
        first = self.soft or self.hard
        if first and self.armed:
            signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, first)

    def __exit__(self, *_: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _expired(self, *_: object) -> None:
        if self.soft:  # the first limit to pass was the soft one; the hard one may follow
            if self.hard and self.hard > self.soft:
                signal.setitimer(signal.ITIMER_REAL, self.hard - self.soft)
            self.soft = None
            raise SoftTimeLimitExceeded()
        raise TimeLimitExceeded(self.hard)
