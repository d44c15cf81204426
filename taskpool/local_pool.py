"""The local pool: runs tasks outside a worker, in a process pool started on first use.

``submit`` starts one call, ``submit_chunk`` one chunk of a map; each returns at once. Where the
pool cannot be used (``_run_here``) the work runs in this process. The parts, by job:
``taskpool.local_executor`` (the executor, its start method, exit), ``taskpool.local_call``
(one call's runs: countdown, a lost process, retries), ``taskpool.pool_process`` (what runs in
a pool process).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Task, states
from celery.result import EagerResult
from celery.utils import uuid
from kombu.serialization import dumps

from taskpool.ledger import count_local_run
from taskpool.local_call import Finished, LocalCall
from taskpool.local_executor import shared_pool
from taskpool.main_guard import importing_main_in_child
from taskpool.pool_process import (
    RunOptions,
    execute,
    execute_chunk,
    in_pool_process,
    task_ref,
)
from taskpool.results import LocalResult, Outcome
from taskpool.settings import Settings, settings_of

log = logging.getLogger(__name__)


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
    job = (task_ref(task), payload, task_id, options)
    call = LocalCall(
        execute, job, settings, options.countdown,
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
) -> LocalCall | Finished:
    """Run ``task`` over ``items`` in one pool process; the result is a ChunkOutcome.

    Items travel pickled between our own processes (no broker is involved), which keeps
    bulk maps as fast as ``Pool.map``. With ``check_integers`` the pool process first applies
    the map's integer check (``start``: the first item's index in the map), off the caller's
    path.
    """
    job = (task_ref(task), items, start, check_integers, star)
    settings = settings_of(task.app)
    if _run_here(settings):
        return Finished(execute_chunk(*job))
    return LocalCall(execute_chunk, job, settings)


def _run_here(settings: Settings) -> bool:
    """Whether local runs must happen in this process rather than in the pool.

    Inside a pool process (a task calling a task), pool processes cannot start pools; while a
    pool process imports the main script, or when the caller is a main script's unguarded
    top-level line, starting pool processes would re-run that line (see ``taskpool.main_guard``).
    """
    return in_pool_process() or importing_main_in_child() or shared_pool.caller_unguarded(settings)
