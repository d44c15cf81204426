"""Measure worker throughput per prefetch multiplier, to choose TASKPOOL_PREFETCH_MULTIPLIER.

Starts a private redis-server and, per multiplier, a real prefork worker (concurrency 2), then
sends tiny ``square`` tasks and times until every result is back. Prints a table and writes
bench/results/prefetch.json. Run: ``python -m bench.prefetch [--tasks N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from config import Settings
from tasks import create_app
from tests.support.celery_worker import CeleryWorker
from tests.support.redis_server import RedisServer, find_redis_server, free_port

RESULTS = Path(__file__).parent / "results" / "prefetch.json"
MULTIPLIERS = (1, 4, 16, 64)


def one_round(app, tasks: int) -> float:  # type: ignore[no-untyped-def]
    square = app.tasks["tasks.square"]
    started = time.perf_counter()
    pending = [square.apply_async((i,), dispatch="celery") for i in range(tasks)]
    values = [result.get(timeout=120) for result in pending]
    elapsed = time.perf_counter() - started
    assert values == [i * i for i in range(tasks)], "wrong results"
    return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found")
    workdir = Path(tempfile.mkdtemp(prefix="taskpool-bench-"))
    redis = RedisServer(binary, free_port(), workdir / "redis").start()
    rows = []
    try:
        url = redis.url()
        app = create_app(Settings(broker_url=url, result_backend=url))
        for multiplier in MULTIPLIERS:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOOL_")}
            env.update(
                TASKPOOL_BROKER_URL=url,
                TASKPOOL_RESULT_BACKEND=url,
                TASKPOOL_PREFETCH_MULTIPLIER=str(multiplier),
            )
            node = f"prefetch{multiplier}@{socket.gethostname()}"
            worker = CeleryWorker(env, node, workdir / f"{node}.log", concurrency=2)
            worker.start()
            try:
                worker.wait_ready(app)
                one_round(app, 200)  # warm-up
                rates = [one_round(app, args.tasks) for _ in range(args.rounds)]
            finally:
                worker.stop()
            row = {
                "multiplier": multiplier,
                "median_tasks_per_s": round(statistics.median(rates), 1),
                "min": round(min(rates), 1),
                "max": round(max(rates), 1),
            }
            rows.append(row)
            print(
                f"prefetch {multiplier:>3}: {row['median_tasks_per_s']:>8} tasks/s "
                f"(min {row['min']}, max {row['max']})"
            )
    finally:
        redis.stop()
    best = max(row["median_tasks_per_s"] for row in rows)
    for row in rows:
        row["ratio_to_best"] = round(row["median_tasks_per_s"] / best, 3)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "tasks": args.tasks,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "concurrency": 2,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
