"""Workers other than taskpool's own, for tests of a mixed fleet."""

from __future__ import annotations

import sys
from pathlib import Path

from taskpool.testing.celery_worker import CeleryWorker, worker_env
from taskpool.testing.redis_server import RedisServer
from tests.support.paths import REPO_ROOT


def busiest(worker: CeleryWorker) -> int:
    """The pool process of ``worker`` that used the most CPU: the one that took the task."""

    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    return max(worker.pool_pids(), key=cpu)


def stock_worker(
    redis: RedisServer, tmp_path: Path, node: str, visibility: int = 3600
) -> CeleryWorker:
    """A stock Celery worker (``tests.support.stock_app``, kombu's Redis transport) on
    ``redis``, with the probe tasks; not started."""
    command = [sys.executable, "-m", "celery", "-A", "tests.support.stock_app", "worker"]
    env = {
        **worker_env(redis.url()),
        "PYTHONPATH": str(REPO_ROOT),
        "STOCK_BROKER_URL": redis.url(),
        "STOCK_VISIBILITY_TIMEOUT": str(visibility),
    }
    options = ["-P", "prefork", "-c", "2", "-l", "info", "--without-gossip", "--without-mingle"]
    return CeleryWorker(env, node, tmp_path / f"{node}.log", command=[*command, *options])
