"""A Redis failover, measured: what it loses with and without waiting for a replica, and what
the wait costs a publish.

``python -m bench failover [--trials 3] [--tasks 5000] [--calls 5000]``. Each trial starts a
primary, a replica and three sentinels on loopback (taskpool/testing/failover.py), two prefork
workers, and a client streaming ``--tasks`` calls while the primary is SIGKILLed; once with
``TASKPOOL_REDIS_WAIT_REPLICAS`` unset and once with 1. Then, on a fresh cluster with no worker,
``--calls`` x ``.delay()`` (mode celery) with and without the wait, alternating, for the cost.
Prints each figure; writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import redis_binary, write
from taskpool import Settings
from taskpool.testing.apps import close_app, example_app
from taskpool.testing.failover import MASTER, SENTINEL_PASSWORD, Cluster, run_failover


def failover_trial(tasks: int, wait_replicas: int | None) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="taskpool-failover-"))
    cluster = Cluster(folder / "cluster", redis_binary()).start()
    try:
        run = run_failover(cluster, folder, tasks, 1, wait_replicas)
    finally:
        cluster.stop()
    print(f"  wait_replicas={wait_replicas}: {run.summary()}", flush=True)
    return {
        "promotion_s": round(run.promotions[0], 2),
        "back_on_broker_s": round(run.back_on_broker_s, 2),
        "ran_locally": run.ran_locally,
        "lost": len(run.lost),
        "duplicate_runs": run.duplicate_runs,
    }


def publish_cost(calls: int, rounds: int) -> dict[str, Any]:
    """Seconds per ``.delay()`` with no worker, with and without the wait, alternating."""
    folder = Path(tempfile.mkdtemp(prefix="taskpool-wait-"))
    cluster = Cluster(folder / "cluster", redis_binary()).start()
    seconds: dict[str, list[float]] = {"no wait": [], "wait for 1 replica": []}
    try:
        for _ in range(rounds):
            for label, wait in (("no wait", None), ("wait for 1 replica", 1)):
                app = example_app(
                    Settings(
                        broker_url=cluster.url, result_backend=cluster.url,
                        sentinel_master=MASTER, sentinel_password=SENTINEL_PASSWORD,
                        dispatch="celery", redis_wait_replicas=wait,
                    )
                )  # fmt: skip
                square = app.tasks["tasks.square"]
                square.delay(0)  # connections made, out of the timing
                started = time.perf_counter()
                for n in range(calls):
                    square.apply_async((n,), ignore_result=True)
                seconds[label].append((time.perf_counter() - started) / calls)
                close_app(app)
    finally:
        cluster.stop()
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    base = medians["no wait"]
    return {
        label: {"ms_per_call": round(value * 1e3, 3), "vs_no_wait": round(value / base, 2)}
        for label, value in medians.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trials: dict[str, list[dict[str, Any]]] = {"no wait": [], "wait for 1 replica": []}
    for trial in range(args.trials):
        print(f"trial {trial + 1} of {args.trials}", flush=True)
        trials["no wait"].append(failover_trial(args.tasks, None))
        trials["wait for 1 replica"].append(failover_trial(args.tasks, 1))
    cost = publish_cost(args.calls, args.rounds)
    for label, figures in cost.items():
        print(f"{label}: {figures['ms_per_call']} ms per .delay() ({figures['vs_no_wait']}x)")
    write(
        "failover.json",
        {"tasks": args.tasks, "trials": trials, "publish_cost": cost, "calls": args.calls},
    )


if __name__ == "__main__":
    main()
