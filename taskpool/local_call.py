"""One local call through every run a worker would give it: its countdown, a second run when
its pool process is lost, and each ``self.retry()``."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import traceback
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from celery import states

from taskpool.errors import LocalPoolError
from taskpool.local_executor import shared_pool
from taskpool.results import PROGRESS, Again, Outcome
from taskpool.settings import Settings

log = logging.getLogger(__name__)

#: How many times one call is started: a call whose pool broke (a pool process was killed, or
#: could not start) runs once more on a fresh pool, as a broker redelivers a lost task.
ATTEMPTS = 2


class LocalCall:
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
        if shared_pool.stopped is not None:
            name = self._job[0].name
            self._finish(None, LocalPoolError(f"{name}: {shared_pool.stopped} before it finished"))
            return
        if broken is not None:
            reason = shared_pool.exit_reason()
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
                self._future = shared_pool.submit(self._func, self._job, self._settings)
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


class Finished:
    """A call or chunk that already ran in this process, shaped like a pool result."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self, timeout: float | None = None) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


def _formatted(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))
