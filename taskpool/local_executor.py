"""The local pool's executor: one per process, started on first use, replaced when broken,
stopped at exit.

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
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from taskpool import pool_process
from taskpool.main_guard import unguarded_main_call
from taskpool.results import PROGRESS
from taskpool.settings import Settings

log = logging.getLogger(__name__)


class SharedPool:
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
            executor = self._executor or self._start(job[0].module, settings)
            try:
                future = executor.submit(func, *job)
            except BrokenProcessPool:  # a pool process was lost: the next call gets a new pool
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
            modules = ["taskpool.pool_process"] + ([preload] if preload != "__main__" else [])
            context.set_forkserver_preload(modules)
        processes = settings.processes
        first = self._executor is None and not self._processes
        self._reports = context.SimpleQueue()
        self._executor = ProcessPoolExecutor(
            processes, mp_context=context, initializer=pool_process.initialize,
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


#: The executor of this process.
shared_pool = SharedPool()


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
