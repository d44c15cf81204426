"""Measure worker throughput per prefetch multiplier, to choose TASKPOOL_PREFETCH_MULTIPLIER.

Per multiplier, a private redis-server and a real prefork worker (concurrency 2); tiny
``square`` tasks are sent and timed until every result is back. Prints a table and writes
bench/results/prefetch.json. Run: ``python -m bench prefetch [--tasks N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from celery import Celery

from bench.harness import private_stack, write

MULTIPLIERS = (1, 4, 16, 64)


def tasks_per_second(app: Celery, tasks: int) -> float:
    square = app.tasks["tasks.square"]
    started = time.perf_counter()
    pending = [square.apply_async((i,), dispatch="celery") for i in range(tasks)]
    values = [result.get(timeout=120) for result in pending]
    elapsed = time.perf_counter() - started
    if values != [i * i for i in range(tasks)]:
        raise AssertionError("wrong results")
    return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for multiplier in MULTIPLIERS:
        with private_stack(concurrency=2, TASKPOOL_PREFETCH_MULTIPLIER=str(multiplier)) as (_, app):
            tasks_per_second(app, 200)  # warm-up
            rates = [tasks_per_second(app, args.tasks) for _ in range(args.rounds)]
        row = {
            "multiplier": multiplier,
            "median_tasks_per_s": round(statistics.median(rates), 1),
            "min": round(min(rates), 1),
            "max": round(max(rates), 1),
        }
        rows.append(row)
        rate, low, high = row["median_tasks_per_s"], row["min"], row["max"]
        print(f"prefetch {multiplier:>3}: {rate:>8} tasks/s (min {low}, max {high})")
    best = max(row["median_tasks_per_s"] for row in rows)
    for row in rows:
        row["ratio_to_best"] = round(row["median_tasks_per_s"] / best, 3)
    path = write(
        "prefetch.json",
        {"tasks": args.tasks, "rounds": args.rounds, "concurrency": 2, "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
