"""``LocalRunner``: an app's tasks, by name or object, on the local pool."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery, Task
from celery.result import EagerResult

from taskpool import local_pool
from taskpool.errors import LocalPoolError
from taskpool.mapping import map as bulk_map
from taskpool.registry import find_task
from taskpool.results import LocalResult


class LocalRunner:
    """Runs tasks registered on ``app`` in the shared local pool, whatever the dispatch mode."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def submit(
        self,
        task: str | Task,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        countdown: float | None = None,
    ) -> LocalResult | EagerResult:
        """Start one run and return at once; ``countdown`` delays its start, as on a worker."""
        options = local_pool.RunOptions(countdown=countdown or 0.0)
        return local_pool.submit(self.task(task), args, kwargs, task_id=task_id, options=options)

    def submit_chunk(self, task: str | Task, items: Sequence[Any], start: int = 0) -> Any:
        """Run ``task`` over ``items`` in one pool process; ``.get()`` gives a ChunkOutcome."""
        return local_pool.submit_chunk(self.task(task), items, start)

    def map(self, task: str | Task, inputs: Iterable[Any], **options: Any) -> list[Any]:
        """``taskpool.map`` on the local pool: results in input order, the first failure raised."""
        return bulk_map(self.task(task), inputs, dispatch="local", **options)

    def task(self, task: str | Task) -> Task:
        """``task`` itself, or the task of that name on the app."""
        if not isinstance(task, str):
            return task
        try:
            return find_task(self.app, task)
        except LookupError as exc:
            raise LocalPoolError(f"{exc} (app {self.app.main!r})") from None
