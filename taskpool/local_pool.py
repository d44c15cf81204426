"""The local pool: a lazily started process pool that runs tasks outside a worker.

Start method, chosen once when the pool first starts (TASKPOOL_LOCAL_START_METHOD; by default
``auto``): ``fork`` while the caller runs a single thread and holds no open socket, as a plain
``multiprocessing.Pool`` does on Linux (pool processes exist within milliseconds and the main
script is not imported again); ``forkserver`` otherwise. Forking a threaded process can copy a
lock some other thread holds, and forking a connected one shares its connections (see
``_safe_to_fork``); the fork server is a fresh single-threaded process with no connections, so
its children start clean, at the price of one interpreter start that imports Celery (~0.2 s).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

from celery import Task, states
from celery.app.utils import find_app
from celery.exceptions import Retry, SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celery.local import maybe_evaluate
from celery.result import EagerResult
from celery.utils import uuid
from celery.utils.serialization import get_pickleable_exception
from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.serialization import dumps, loads

from taskpool.arguments import check_items
from taskpool.chunks import ChunkOutcome, run_items
from taskpool.errors import LocalPoolError
from taskpool.ledger import count_local_run
from taskpool.main_guard import importing_main_in_child, unguarded_main_call
from taskpool.results import PROGRESS, Again, LocalResult, Outcome
from taskpool.settings import Settings, settings_of

log = logging.getLogger("taskpool.local_pool")


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


def submit(
    task: Task,
    args: Iterable[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    task_id: str | None = None,
    options: RunOptions = RunOptions(),  # noqa: B008 - an immutable NamedTuple
    store: bool = False,
) -> LocalResult | EagerResult:
    """Start one run of ``task`` and return at once.

    Where the pool cannot be used (see ``_run_here``) the run happens in this process. With
    ``store``, its outcome also goes to the app's result store, as a worker's would, before
    the call's result is ready here: ``AsyncResult(id)`` in any process reads it.
    """
    args = list(args)  # read once: an iterator would be empty the second time
    payload = dumps([args, kwargs or {}], serializer=task.app.conf.task_serializer)
    settings = settings_of(task.app)
    if _run_here(settings):
        return task.apply(args, kwargs, task_id=task_id)
    task_id = task_id or uuid()
    job = (_ref(task), payload, task_id, options)
    call = _Call(
        _execute, job, settings, options.countdown,
        on_outcome=_StoredOutcome(task, task_id) if store else None,
    )  # fmt: skip
    return LocalResult(task_id, task.name, call)


class _StoredOutcome:
    """Writes a local run's outcome to its app's result store, as a worker would."""

    def __init__(self, task: Task, task_id: str) -> None:
        self.task, self.task_id = task, task_id
        # The caller's: Celery makes one per thread, and the thread that delivers outcomes
        # would keep its own connection open.
        self.backend = task.backend

    def __call__(self, outcome: Outcome) -> None:
        if outcome.state not in states.READY_STATES:
            return
        value = outcome.value() if outcome.state == states.SUCCESS else outcome.error
        try:
            self.backend.store_result(
                self.task_id, value, outcome.state, traceback=outcome.traceback
            )
            count_local_run(self.backend, self.task.name)
        except Exception as exc:  # the store stopped answering: the caller still has the result
            log.warning(
                "%s[%s] ran on the local pool; its result was not stored (%s: %s), so only "
                "this process can read it", self.task.name, self.task_id, type(exc).__name__, exc,
            )  # fmt: skip


def submit_chunk(
    task: Task,
    items: Sequence[Any],
    start: int = 0,
    *,
    check_integers: bool = False,
    star: bool = False,
) -> _Call | _Finished:
    """Run ``task`` over ``items`` in one pool process; the result is a ChunkOutcome.

    Items travel pickled between our own processes (no broker is involved), which keeps
    bulk maps as fast as ``Pool.map``. With ``check_integers`` the pool process first applies
    the map's integer check (``start``: the first item's index in the map), off the caller's
    path.
    """
    job = (_ref(task), items, start, check_integers, star)
    settings = settings_of(task.app)
    if _run_here(settings):
        return _Finished(_execute_chunk(*job))
    return _Call(_execute_chunk, job, settings)


#: How many times one call is started: a call whose pool broke (a pool process was killed, or
#: could not start) runs once more on a fresh pool, as a broker redelivers a lost task.
ATTEMPTS = 2


class _SharedPool:
    """One executor per process, created on first use, replaced when broken, closed at exit.

    ``concurrent.futures.ProcessPoolExecutor``, chosen by measurement (see bench/README.md):
    a pool process killed from outside, or one that cannot start, fails the calls in flight
    within milliseconds (BrokenProcessPool), where ``multiprocessing.Pool`` waits for ever and
    ``billiard.Pool`` takes ten seconds to notice a lost process and respawns one that cannot
    start without end.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._processes: list[Any] = []  # the executor's, kept to read their exit codes
        self._reports: Any = None  # the executor's update_state reports (a SimpleQueue)
        self._in_flight = 0
        self._unguarded: bool | None = None
        self._method: str | None = None
        self._idle = threading.Condition(self._lock)
        #: The process that started the pool and registered its exit hook.
        self._owner = os.getpid()
        #: Why the pool stopped with calls in flight (exit, Ctrl-C); none of them runs again.
        self.stopped: str | None = None

    def caller_unguarded(self, settings: Settings) -> bool:
        """Asked once, before the pool would start: is the caller an unguarded main script?

        Fork server and spawn children import the main script again; forked ones do not.
        """
        with self._lock:
            if self._unguarded is None:
                self._unguarded = (
                    self._executor is None
                    and self._start_method(settings) != "fork"
                    and unguarded_main_call() is not None
                )
            return self._unguarded

    def submit(self, func: Any, job: tuple[Any, ...], settings: Settings) -> Future[Any]:
        """Start ``func(*job)``; the first call starts the pool, sized by ``settings``."""
        with self._lock:
            executor = self._executor
            if executor is None or getattr(executor, "_broken", False):
                executor = self._start(job[0].module, settings)
            future = executor.submit(func, *job)
            self._in_flight += 1
        future.add_done_callback(self._done)
        with self._lock:
            if not self._processes and self._executor is executor:
                self._processes = list(getattr(executor, "_processes", {}).values())
                # Started once the processes exist: none of them is forked with it running.
                reader = threading.Thread(target=_read_reports, args=(self._reports,), daemon=True)
                reader.start()
        return future

    def exit_reason(self) -> str:
        """How the pool's processes ended, for the message of a call the pool lost."""
        with self._lock:
            processes = list(self._processes)
        # The executor's own thread may be reaping them right now: give it a moment.
        deadline = time.monotonic() + 1.0
        while any(p.exitcode is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.01)
        codes = [p.exitcode for p in processes if p.exitcode is not None]
        lost = [code for code in codes if code != -signal.SIGTERM] or codes
        if not lost:
            return "exited"
        code = lost[0]
        if code < 0:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        return f"exited with code {code} (its error, if any, is on stderr above)"

    def shutdown(self, grace: float) -> None:
        """Let submitted runs finish (up to ``grace`` seconds), then stop every pool process.

        Run as the interpreter exits (a script's end, or its first Ctrl-C): it takes no new
        work and says what it waits for. A Ctrl-C meanwhile stops the pool at once, and the
        calls still waited on fail with LocalPoolError instead of running again.
        """
        if os.getpid() != self._owner:
            return  # a forked pool process ending: it inherited this hook, not the pool
        with self._lock:
            executor, self._executor = self._executor, None
            processes, self._processes = self._processes, []
            if executor is None:
                return
            waiting = self._in_flight
        interrupted = threading.Event()
        restore = _on_interrupt(interrupted.set)
        try:
            if waiting:
                log.warning(
                    "waiting up to %gs for %d local task(s) to finish%s", grace, waiting,
                    " (Ctrl-C again stops them now)" if restore else "",
                )  # fmt: skip
            deadline = time.monotonic() + grace
            with self._lock:
                # In slices: a signal handler cannot wake a condition its own thread waits on.
                while self._in_flight and not interrupted.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._idle.wait(min(left, 0.1))
                running = self._in_flight
            if running:
                why = "interrupted" if interrupted.is_set() else f"still running after {grace:g}s"
                self.stopped = f"the local pool was stopped ({why})"
                log.error("%s: stopping %d local task(s)", self.stopped, running)
                for process in processes:
                    process.terminate()
            executor.shutdown(wait=True, cancel_futures=True)
        finally:
            if restore:
                restore()

    def _start_method(self, settings: Settings) -> str:
        """Decided once (TASKPOOL_LOCAL_START_METHOD; ``auto``: see the module's docstring).

        The caller holds the lock.
        """
        if self._method is None:
            requested = settings.local_start_method
            if requested == "auto":
                requested = "fork" if _safe_to_fork() else "forkserver"
            self._method = requested
        return self._method

    def _start(self, preload: str, settings: Settings) -> ProcessPoolExecutor:
        """A new executor; the caller holds the lock."""
        method = self._start_method(settings)
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            modules = ["taskpool.local_pool"] + ([preload] if preload != "__main__" else [])
            context.set_forkserver_preload(modules)
        processes = settings.processes
        first = self._executor is None and not self._processes
        self._reports = context.SimpleQueue()
        self._executor = ProcessPoolExecutor(
            processes, mp_context=context, initializer=_mark_pool_process,
            initargs=(self._reports,),
        )  # fmt: skip
        self._processes = []
        if first:
            self._owner = os.getpid()
            # Before concurrent.futures' own exit hook, which waits for the running calls
            # without a word and cannot be interrupted cleanly (it is registered at import, and
            # these hooks run last registered first).
            try:
                threading._register_atexit(self.shutdown, grace=settings.task_time_limit)  # type: ignore[attr-defined]
            except RuntimeError:  # first started while the interpreter exits
                atexit.register(self.shutdown, grace=settings.task_time_limit)
        log.debug("started a local pool of %d processes (%s)", processes, method)
        return self._executor

    def _done(self, _: object) -> None:
        with self._lock:
            self._in_flight -= 1
            self._idle.notify_all()


class _Call:
    """One local call through every run a worker would give it, each started by a timer thread
    (never by the executor's own thread, which delivers results):

    - after its countdown, holding no pool process meanwhile;
    - once more on a fresh pool if its pool process is lost (ATTEMPTS in all), as a broker
      redelivers a lost task, then LocalPoolError saying how the process ended;
    - again after each ``self.retry()``, at the retry's countdown or eta and with
      ``request.retries`` one higher, as a worker runs the retry message it publishes.

    The timers are not daemons, so a script waits for its delayed calls and retries at exit, as
    a worker would run them. By then the pool takes no new work, so a run falling due during
    exit happens in the timer's thread (where no time limit can be raised).
    """

    def __init__(
        self,
        func: Any,
        job: tuple[Any, ...],
        settings: Settings,
        delay: float = 0.0,
        on_outcome: Any = None,
    ) -> None:
        self._func, self._job, self._settings = func, job, settings
        #: Called with the final outcome before the call is ready (``_StoredOutcome``).
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._future: Future[Any] | None = None
        self._timer: threading.Timer | None = None
        self._cancelled = False
        self.attempt = 1
        if delay > 0:
            self._later(delay)
        else:
            self._submit()

    def ready(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> bool:
        """Withdraw the call if no run of it has started; True if it will not run again."""
        with self._lock:
            if self._future is not None and not self._future.cancel():
                return False
            if self._timer is not None:
                self._timer.cancel()
            self._cancelled = True
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The call's value; multiprocessing.TimeoutError when ``timeout`` passes first."""
        if not self._done.wait(timeout):
            raise multiprocessing.TimeoutError()
        if self._error is not None:
            raise self._error
        return self._value

    def _later(self, delay: float, broken: BaseException | None = None) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._future = None
            self._timer = threading.Timer(delay, self._submit, kwargs={"broken": broken})
            self._timer.start()

    def _submit(self, broken: BaseException | None = None) -> None:
        if _shared_pool.stopped is not None:
            name = self._job[0].name
            self._finish(None, LocalPoolError(f"{name}: {_shared_pool.stopped} before it finished"))
            return
        if broken is not None:
            reason = _shared_pool.exit_reason()
            if self.attempt >= ATTEMPTS:
                name = self._job[0].name
                error = LocalPoolError(
                    f"{name}: a local pool process {reason} while the call was running or "
                    f"waiting, {ATTEMPTS} times; the pool keeps serving other calls"
                )
                error.__cause__ = broken
                self._finish(None, error)
                return
            log.warning("a local pool process %s; running its calls again on a new pool", reason)
            self.attempt += 1
        with self._lock:
            if self._cancelled:
                return
            try:
                self._future = _shared_pool.submit(self._func, self._job, self._settings)
            except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
                self._future = None
        if self._future is None:  # exiting: no new timer would be waited for either
            value = self._func(*self._job)
            while (again := self._next_run(value)) is not None:
                time.sleep(again.delay)
                value = self._func(*self._job)
            self._finish(value, None)
        else:
            self._future.add_done_callback(self._returned)

    def _returned(self, future: Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            self._later(0, broken=error)
        elif error is not None:  # the pool itself failed, e.g. a value it could not send
            self._finish(None, error)
        else:
            self._ran(future.result())

    def _ran(self, value: Any) -> None:
        again = self._next_run(value)
        if again is None:
            self._finish(value, None)
        else:
            self._later(again.delay)

    def _next_run(self, value: Any) -> Again | None:
        """For a run that retried: the next one's job set up, its state RETRY meanwhile."""
        again: Again | None = getattr(value, "again", None)
        if again is not None:
            ref, _, task_id, options = self._job
            PROGRESS[task_id] = (states.RETRY, value.error)
            self._job = (ref, again.payload, task_id, options._replace(retries=again.retries))
        return again

    def _finish(self, value: Any, error: BaseException | None) -> None:
        if self._on_outcome is not None:
            self._on_outcome(
                value if error is None else Outcome(states.FAILURE, error, _formatted(error))
            )
        self._value, self._error = value, error
        self._done.set()


_shared_pool = _SharedPool()


def _formatted(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def _on_interrupt(action: Any) -> Any:
    """Have SIGINT call ``action`` instead of raising KeyboardInterrupt, in the main thread;
    returns what restores the previous handler, or None where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: action())
    except ValueError:  # not the main interpreter
        return None
    return lambda: signal.signal(signal.SIGINT, previous)


#: Set by the pool's initializer inside each pool process.
_in_pool_process = False
#: Inside a pool process: where update_state reports go (to the caller's PROGRESS).
_reports: Any = None


class _StateReporter:
    """A task's ``update_state`` inside a pool process: the report reaches the caller, whose
    LocalResult shows it, as a worker's reaches the result store."""

    def __init__(self, task: Task, queue: Any) -> None:
        self.task, self.queue = task, queue

    def __call__(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **_: Any
    ) -> None:
        self.queue.put((task_id or self.task.request.id, state, meta))


def _read_reports(queue: Any) -> None:
    """In the caller: keep PROGRESS up to date from the pool processes' reports."""
    while True:
        task_id, state, meta = queue.get()
        PROGRESS[task_id] = (state, meta)


def _safe_to_fork() -> bool:
    """Whether a forked child could inherit nothing live: one thread, and no open socket.

    A thread may hold a lock the child then waits on forever. A socket (a broker or result
    store connection) is shared with the child, and libraries' after-fork clean-up talks on it:
    kombu's closes a Redis channel by reading the reply its parent waits for, which stalled a
    forked pool process for the socket timeout. Linux lists threads in /proc/self/task and
    descriptors in /proc/self/fd; elsewhere, and when in doubt, the answer is no.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        if len(os.listdir("/proc/self/task")) != 1:
            return False
        descriptors = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return False
    for fd in descriptors:
        if fd <= 2:
            continue  # standard streams: children share them by design
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                return False
        except OSError:  # closed since the listing (the listing's own descriptor)
            continue
    return True


#: How often a pool process checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 1.0


def _mark_pool_process(reports: Any) -> None:
    global _in_pool_process, _reports
    _in_pool_process = True
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


def _run_here(settings: Settings) -> bool:
    """Whether local runs must happen in this process rather than in the pool.

    Inside a pool process (a task calling a task), pool processes cannot start pools; while a
    pool process imports the main script, or when the caller is a main script's unguarded
    top-level line, starting pool processes would re-run that line (see ``taskpool.main_guard``).
    """
    return _in_pool_process or importing_main_in_child() or _shared_pool.caller_unguarded(settings)


class _Finished:
    """A call or chunk that already ran in this process, shaped like a pool result."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self, timeout: float | None = None) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


def _execute(ref: TaskRef, payload: Payload, task_id: str, options: RunOptions) -> Outcome:
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
    which runs it when due (``_Call``), as a worker runs the retry message it publishes; Celery
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


def _execute_chunk(
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


class TaskRef(NamedTuple):
    """How a pool process finds a task: the module defining it, its app's name, its name."""

    module: str
    app_main: str
    name: str


def _ref(task: Task) -> TaskRef:
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


class _time_limits:
    """Soft then hard time limit for one run, raised inside the task as on a Celery worker."""

    def __init__(self, task: Task, options: RunOptions) -> None:
        conf = task.app.conf
        self.hard = options.time_limit or task.time_limit or conf.task_time_limit
        self.soft = options.soft_time_limit or task.soft_time_limit or conf.task_soft_time_limit
        self.armed = False

    def __enter__(self) -> None:
        # Signals reach the main thread only: a delayed call run by its timer thread at
        # interpreter exit (see _Call) runs without limits.
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
