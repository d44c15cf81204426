"""The result of a task run on the local pool, with the ``AsyncResult`` API scripts use."""

from __future__ import annotations

import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol

from celery import states
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.serialization import loads

from taskpool.errors import LocalPoolError

#: ``update_state`` reports of local runs still going: task id -> (state, meta). The local pool
#: writes them as its processes send them; a LocalResult reads its own until the run ends.
PROGRESS: dict[str, tuple[str, Any]] = {}


class Pending(Protocol):
    """A call in flight on the local pool (``multiprocessing``'s result API)."""

    def ready(self) -> bool: ...
    def get(self, timeout: float | None = None) -> Any: ...
    def cancel(self) -> bool: ...


class TaskResult(Protocol):
    """What a caller may rely on, whichever backend ran the task."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def result(self) -> Any: ...
    @property
    def traceback(self) -> str | None: ...
    def ready(self) -> bool: ...
    def successful(self) -> bool: ...
    def failed(self) -> bool: ...
    def get(self, timeout: float | None = None, propagate: bool = True, **options: Any) -> Any: ...


class Again(NamedTuple):
    """A run that called ``self.retry()``: run it again with these arguments (serialized as
    ``[args, kwargs]``) after ``delay`` seconds, as a worker runs the retry message it publishes.
    """

    payload: tuple[str, str, bytes | str]
    delay: float
    retries: int


@dataclass(frozen=True)
class Outcome:
    """How a run ended, as sent back from a pool process.

    A successful value travels serialized (``payload``) with the app's result serializer, as it
    would through a result backend, so a task behaves the same on both backends.
    """

    state: str
    error: BaseException | None = None
    traceback: str | None = None
    payload: tuple[str, str, bytes | str] | None = None
    #: When the run ended (Unix time, set where it ran).
    done_at: float = field(default_factory=time.time)
    #: Set when the run retried: the call is not over.
    again: Again | None = None

    def value(self) -> Any:
        if self.payload is None:
            return self.error
        content_type, encoding, data = self.payload
        return loads(data, content_type, encoding, accept=[content_type])


class LocalResult:
    """A pending or finished local run; behaves like ``celery.result.AsyncResult``."""

    def __init__(self, task_id: str, task_name: str, pending: Pending) -> None:
        self.id = task_id
        self.name = task_name
        self._pending = pending
        self._outcome: Outcome | None = None

    def __repr__(self) -> str:
        return f"<LocalResult: {self.id} {self.name} {self.state}>"

    @property
    def task_id(self) -> str:
        return self.id

    def ready(self) -> bool:
        return self._poll() is not None

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state in states.PROPAGATE_STATES

    @property
    def state(self) -> str:
        outcome = self._poll()
        if outcome is not None:
            return outcome.state
        return PROGRESS.get(self.id, (states.PENDING, None))[0]

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception on failure, or while running the last meta given
        to ``update_state`` (None before any)."""
        outcome = self._poll()
        if outcome is not None:
            return outcome.value()
        return PROGRESS.get(self.id, (None, None))[1]

    info = result

    @property
    def traceback(self) -> str | None:
        outcome = self._poll()
        return outcome.traceback if outcome else None

    def get(self, timeout: float | None = None, propagate: bool = True, **options: Any) -> Any:
        """Wait for the result; re-raise the task's exception; Celery's TimeoutError on timeout.

        Other ``AsyncResult.get`` options (``interval``, ``no_ack``, ...) are accepted and have
        nothing to do here.
        """
        try:
            outcome = self._fetch(timeout)
        except multiprocessing.TimeoutError:
            raise CeleryTimeoutError("The operation timed out.") from None
        if outcome.error is not None and propagate:
            raise outcome.error
        return outcome.value()

    wait = get

    def forget(self) -> None:
        """Nothing is stored outside this process, so there is nothing to forget."""

    def revoke(self, terminate: bool = False, **_: Any) -> None:
        """As on a worker: a run not started yet never starts; a running one is left to finish.

        ``terminate=True`` on a running call is refused: the local pool cannot stop one call
        without stopping the others sharing its process.
        """
        if self._outcome is None and self._pending.cancel():
            self._outcome = Outcome(states.REVOKED, TaskRevokedError("revoked"))
        elif terminate and not self.ready():
            raise LocalPoolError(
                f"{self.name}: revoke(terminate=True) of a running local call is not "
                "supported; it runs to its time limit"
            )

    @property
    def date_done(self) -> datetime | None:
        """When the run ended (UTC), or None while pending."""
        outcome = self._poll()
        return None if outcome is None else datetime.fromtimestamp(outcome.done_at, timezone.utc)

    #: Calls made from inside a local run are not tracked, as with a result store that does
    #: not keep them; a local call has no parent.
    children = None
    parent = None

    def _poll(self) -> Outcome | None:
        if self._outcome is None and self._pending.ready():
            return self._fetch(0)
        return self._outcome

    def _fetch(self, timeout: float | None) -> Outcome:
        if self._outcome is None:
            try:
                self._outcome = self._pending.get(timeout)
            except multiprocessing.TimeoutError:
                raise
            except Exception as exc:  # the pool itself failed, e.g. a value it could not send
                self._outcome = Outcome(states.FAILURE, exc, traceback.format_exc())
            PROGRESS.pop(self.id, None)
        return self._outcome
