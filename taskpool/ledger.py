"""What the result store keeps beside the results: the tasks that failed on a worker, to be
listed, sent again or dropped (``taskpool failed``, as RQ's FailedJobRegistry), and how many
calls ran on the local pool for want of a worker (``taskpool status``).

A failure is recorded by the worker that ran the task, from Celery's ``task_failure`` signal
(a task's last failure: one that retries is recorded when it gives up), with what sending it
again needs: its name, arguments and queue. Map chunks are not recorded: a chunk reports its
inputs' failures to the map itself. Entries are kept ``KEEP_SECONDS`` (a week), at most
``MAX_ENTRIES``, the oldest dropped first.

Keys, in a Redis result store only: ``FAILED``, a hash of task id -> entry JSON, ``INDEX``, a
sorted set of task id -> when it failed, and ``LOCAL_RUNS``, a hash of task name -> count.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery, Task

from taskpool.errors import BrokerUnsupported

log = logging.getLogger(__name__)

FAILED = "taskpool.failed"
INDEX = "taskpool.failed.index"
LOCAL_RUNS = "taskpool.local_runs"
KEEP_SECONDS = 7 * 24 * 3600
MAX_ENTRIES = 10_000
#: Not recorded: a chunk's inputs fail into the map that sent them.
UNRECORDED = ("taskpool.run_chunk",)


def record_failure(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """``task_failure`` receiver, in a worker's pool process: keep what sending it again needs."""
    if sender is None or task_id is None or sender.name in UNRECORDED:
        return
    client = getattr(sender.backend, "client", None)
    if client is None:
        return
    request = getattr(sender, "request", None)
    delivery = getattr(request, "delivery_info", None) or {}
    now = time.time()
    entry = {
        "id": task_id,
        "task": sender.name,
        "args": list(args or ()),
        "kwargs": dict(kwargs or {}),
        "queue": delivery.get("routing_key"),
        "error": f"{type(exception).__name__}: {exception}",
        "at": now,
    }
    try:
        with client.pipeline() as pipe:
            pipe.hset(FAILED, task_id, json.dumps(entry, default=repr))
            pipe.zadd(INDEX, {task_id: now})
            pipe.execute()
        _trim(client, now)
    except Exception as exc:  # the result store is down: its own retries said so already
        log.warning("could not record the failure of %s[%s]: %s", sender.name, task_id, exc)


def _trim(client: Any, now: float) -> None:
    old = client.zrangebyscore(INDEX, "-inf", now - KEEP_SECONDS)
    excess = max(0, int(client.zcard(INDEX)) - MAX_ENTRIES)
    old += client.zrange(INDEX, 0, excess - 1) if excess else []
    _forget(client, old)


def _forget(client: Any, ids: list[Any]) -> None:
    """Remove entries, from the hash and the index together."""
    if ids:
        with client.pipeline() as pipe:
            pipe.hdel(FAILED, *ids)
            pipe.zrem(INDEX, *ids)
            pipe.execute()


def count_local_run(backend: Any, task_name: str) -> None:
    """Count one call that ran on the local pool and was stored (``taskpool status``)."""
    client = getattr(backend, "client", None)
    if client is not None:
        client.hincrby(LOCAL_RUNS, task_name, 1)


class Ledger:
    """The failed tasks and local-run counts in ``app``'s Redis result store."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        client = getattr(app.backend, "client", None)
        if client is None:
            raise BrokerUnsupported(
                f"the failed tasks are kept in a Redis result store; this app's is "
                f"{type(app.backend).__name__}"
            )
        self.client: Any = client

    def failed(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """The entries, oldest first (``ids``: those only, in that order)."""
        ids = ids if ids is not None else [_text(i) for i in self.client.zrange(INDEX, 0, -1)]
        raws = self.client.hmget(FAILED, ids) if ids else []
        return [json.loads(raw) for raw in raws if raw is not None]

    def retry(self, entries: list[dict[str, Any]]) -> int:
        """Send each entry's task again with its arguments, to its queue; forget the entry."""
        for entry in entries:
            self.app.send_task(
                entry["task"], entry["args"], entry["kwargs"], queue=entry.get("queue")
            )
            self.drop([entry])
        return len(entries)

    def failed_count(self) -> int:
        return int(self.client.zcard(INDEX))

    def drop(self, entries: list[dict[str, Any]]) -> int:
        _forget(self.client, [entry["id"] for entry in entries])
        return len(entries)

    def local_runs(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.client.hgetall(LOCAL_RUNS).items()}


def render(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no failed tasks"
    return "\n".join(
        f"{e['id']}  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['at']))}  "
        f"{e['task']}{tuple(e['args'])!r}  queue {e.get('queue')}: {e['error']}"
        for e in entries
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
