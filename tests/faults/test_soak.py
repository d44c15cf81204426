"""Soak: many tasks while workers are SIGKILLed and restarted every few seconds.

CI runs SOAK_TASKS (default 3,000); the full run is documented in docs/RELIABILITY.md:
``SOAK_TASKS=50000 python -m pytest tests/faults/test_soak.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.held import held_text
from taskpool.testing.redis_server import RedisServer
from tests.support.apps import FAST_REDELIVERY, client_app

pytestmark = pytest.mark.slow

SOAK_TASKS = int(os.environ.get("SOAK_TASKS", "3000"))
#: Long enough for a restarted worker to start (about 2 s here) and take some work.
KILL_EVERY = 4.0
#: The tasks are sent spread over at least this long, so that kills land among them however
#: fast the workers are.
SEND_OVER = 3 * KILL_EVERY + 1


class KillerLoop:
    """Every KILL_EVERY seconds, SIGKILL one worker (main process and pool) and start another."""

    def __init__(self, url: str, logdir: Path, workers: list[CeleryWorker]) -> None:
        self.url, self.logdir, self.workers = url, logdir, workers
        self.kills = 0
        self._names = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def start_worker(self) -> CeleryWorker:
        node = node_name(f"soak{next(self._names)}")
        worker = CeleryWorker(
            worker_env(self.url, **FAST_REDELIVERY), node, self.logdir / f"{node}.log"
        )
        self.workers.append(worker.start())
        return worker

    def __enter__(self) -> KillerLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(KILL_EVERY):
            victim = self.workers[-2]  # the older of the two running workers
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait_exit(10)
            self.kills += 1
            self.start_worker()


def send_paced(task: Any, count: int, seconds: float) -> list[str]:
    """Send task(0) .. task(count - 1), in batches of 100, taking at least ``seconds``."""
    started, ids = time.monotonic(), []
    for n in range(count):
        ids.append(task.apply_async((n,), ignore_result=False).id)
        if n % 100 == 99:
            time.sleep(max(0.0, started + seconds * (n + 1) / count - time.monotonic()))
    return ids


def collect(client: redis_py.Redis, ids: list[str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for start in range(0, len(ids), 1000):
        batch = ids[start : start + 1000]
        keys = [f"celery-task-meta-{i}" for i in batch]
        for task_id, raw in zip(batch, client.mget(keys), strict=True):
            if raw is not None:
                meta = json.loads(raw)
                if meta["status"] == "SUCCESS":
                    found[task_id] = meta["result"]
    return found


def _as_bytes(item: bytes | str) -> bytes:
    return item.encode() if isinstance(item, str) else item


def where_are(client: redis_py.Redis, missing: list[str]) -> str:
    """Where the missing tasks' messages are, for the failure message."""
    queued = b"".join(_as_bytes(item) for item in client.lrange("celery", 0, -1))
    unacked = held_text(client).encode()
    return (
        "; ".join(
            f"{task_id}: queued={task_id.encode() in queued} unacked={task_id.encode() in unacked}"
            for task_id in missing[:10]
        )
        + f" ({len(missing)} missing)"
    )


@pytest.mark.timeout(120 + SOAK_TASKS // 20)
def test_every_task_has_its_correct_result_despite_workers_killed_all_along(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory(appendonly=True)
    app = client_app(redis.url(), dispatch="celery")
    square = app.tasks["tasks.square"]
    client = redis_py.Redis(port=redis.port)
    workers: list[CeleryWorker] = []
    killer = KillerLoop(redis.url(), tmp_path, workers)
    try:
        for _ in range(2):
            killer.start_worker().wait_ready(app)
        with killer:
            ids = send_paced(square, SOAK_TASKS, SEND_OVER)
            deadline = time.monotonic() + 60 + SOAK_TASKS // 50
            results = collect(client, ids)
            while len(results) < SOAK_TASKS and time.monotonic() < deadline:
                time.sleep(1)
                results = collect(client, ids)
        assert killer.kills >= 2, "the soak should have outlived several worker kills"
        missing = [i for i in ids if i not in results]
        assert not missing, where_are(client, missing)
        assert len(results) == len(ids) == SOAK_TASKS
        assert [results[i] for i in ids] == [n * n for n in range(SOAK_TASKS)]
    finally:
        client.close()
        for worker in workers:
            worker.stop()
