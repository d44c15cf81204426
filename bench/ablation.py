"""Where do tiny tasks lose time? Stock Celery with taskpool's settings added one group at a time.

``python -m bench ablation [--tasks 3000] [--rounds 2] [--latency 300] [VARIANT ...]``. Per
variant: a prefork worker (``-c 2``) of this module's app and a fresh client that sends tiny
``square`` tasks and collects every result, then times sequential round trips. The app is a
plain ``Celery(broker=..., backend=...)`` whose configuration is ``taskpool.celery_config`` of the
shipped settings, minus the groups a variant drops (``BENCH_VARIANT``), with or without
``FallbackTask`` as the task base. Prints a table; writes bench/results/tiny_ablation.json.
Used to find what in taskpool's configuration costs time on tiny tasks (see bench/README.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from celery import Celery

#: Groups of ``celery_config`` keys, dropped together by the variants.
GROUPS: dict[str, tuple[str, ...]] = {
    "acks_late": (
        "task_acks_late",
        "task_reject_on_worker_lost",
        "worker_cancel_long_running_tasks_on_connection_loss",
    ),
    "time_limits": ("task_time_limit", "task_soft_time_limit"),
    "socket_timeouts": (
        "redis_socket_timeout",
        "redis_socket_connect_timeout",
        "broker_transport_options",
    ),
    "retry_policies": (
        "task_publish_retry_policy",
        "result_backend_transport_options",
        "broker_connection_timeout",
    ),
}

#: name -> (use taskpool's configuration, groups dropped from it, FallbackTask as base)
VARIANTS: dict[str, tuple[bool, tuple[str, ...], bool]] = {
    "stock": (False, (), False),
    "stock+FallbackTask": (False, (), True),
    "taskpool config": (True, (), False),
    "taskpool config + FallbackTask (= ours)": (True, (), True),
    "taskpool config - acks_late": (True, ("acks_late",), False),
    "taskpool config - time_limits": (True, ("time_limits",), False),
    "taskpool config - socket_timeouts": (True, ("socket_timeouts",), False),
    "taskpool config - retry_policies": (True, ("retry_policies",), False),
    "taskpool config - time_limits - acks_late": (True, ("time_limits", "acks_late"), False),
}


@functools.cache
def make_app() -> Celery:
    from bench.stock_app import URL_VARIABLE, plain_functions
    from taskpool import Settings, celery_config
    from taskpool.fallback import FallbackTask

    url = os.environ[URL_VARIABLE]
    if not url.startswith("redis://127.0.0.1:"):
        raise SystemExit(f"{URL_VARIABLE} must be a loopback redis:// URL")
    use_config, dropped, fallback = VARIANTS[os.environ["BENCH_VARIANT"]]
    options: dict[str, Any] = {"task_cls": FallbackTask} if fallback else {}
    app = Celery("bench.ablation", broker=url, backend=url, **options)
    settings = Settings(broker_url=url, result_backend=url)
    app.taskpool_settings = settings  # what FallbackTask reads
    if use_config:
        config = celery_config(settings)
        for group in dropped:
            for key in GROUPS[group]:
                config.pop(key)
        app.conf.update(config)
    functions = plain_functions()
    app.task(name="tasks.square")(functions.square)
    return app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return make_app()
    raise AttributeError(name)


def client(tasks: int, rounds: int, latency: int) -> dict[str, Any]:
    square = make_app().tasks["tasks.square"]
    for i in range(200):
        square.delay(i).get(timeout=60)
    enqueue, total = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        pending = [square.delay(i) for i in range(tasks)]
        sent = time.perf_counter()
        values = [p.get(timeout=300) for p in pending]
        total.append(time.perf_counter() - started)
        enqueue.append(sent - started)
        if values != [i * i for i in range(tasks)]:
            raise AssertionError("wrong results")
    trips = []
    for _ in range(latency):
        started = time.perf_counter()
        square.delay(7).get(timeout=60)
        trips.append((time.perf_counter() - started) * 1000)
    trips.sort()
    return {
        "enqueue_s": enqueue,
        "total_s": total,
        "p50_ms": trips[len(trips) // 2],
        "p99_ms": trips[min(len(trips) - 1, math.ceil(0.99 * len(trips)) - 1)],
    }


def fill(tasks: int) -> list[str]:
    """Client of the drain mode: publish ``tasks`` squares to a queue no worker consumes yet."""
    square = make_app().tasks["tasks.square"]
    return [square.delay(i).id for i in range(tasks)]


def drain(stack: Any, worker: Any, pinger: Celery, env: dict[str, str], tasks: int) -> float:
    """Seconds the worker takes to run ``tasks`` queued tasks and store their results.

    The queue is filled while the worker consumes another queue only, then the worker is told
    to consume it: the time is the worker's alone, no client competes for the CPUs.
    """
    done = subprocess.run(
        [sys.executable, "-m", "bench.ablation", "--fill", "--tasks", str(tasks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    backend = pinger.backend
    keys = [backend.get_key_for_task(i) for i in ids]
    client = backend.client
    started = time.perf_counter()
    pinger.control.add_consumer("celery", destination=[worker.node], reply=True, timeout=5)
    deadline = started + 600
    from bench.harness import keys_stored

    stored = keys_stored(client, keys)
    while time.perf_counter() < deadline:
        if stored() == tasks:
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    if (found := stored()) != tasks:
        raise AssertionError(f"only {found} of {tasks} results stored")
    client.flushdb()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="*", help="default: all")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=int, default=300)
    parser.add_argument(
        "--drain",
        action="store_true",
        help="worker only: time the worker on a pre-filled queue (no client running)",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.tasks, args.rounds, args.latency)), flush=True)
        return
    if args.fill:
        print(json.dumps(fill(args.tasks)), flush=True)
        return

    from bench.compare import Stack
    from bench.harness import REPO_ROOT, write
    from taskpool.testing.celery_worker import CeleryWorker

    chosen = args.variants or list(VARIANTS)
    stack = Stack()
    stack.redis.start()
    rows = {}
    try:
        for index, variant in enumerate(chosen):
            env = stack.env("stock")
            env["BENCH_VARIANT"] = variant
            command = [sys.executable, "-m", "celery", "-A", "bench.ablation", "worker"]
            command += ["-P", "prefork", "-c", "2"]
            worker = CeleryWorker(
                env,
                f"ablation-{index}@{socket.gethostname()}",
                stack.workdir / f"ablation-{index}.log",
                command=command,
                extra=("-Q", "hold") if args.drain else (),
            )
            pinger = Celery("bench-ping", broker=stack.url("stock"), backend=stack.url("stock"))
            try:
                worker.start().wait_ready(pinger, timeout=60)
                if args.drain:
                    seconds = []
                    for _ in range(args.rounds):
                        seconds.append(drain(stack, worker, pinger, env, args.tasks))
                        pinger.control.cancel_consumer(
                            "celery", destination=[worker.node], reply=True, timeout=5
                        )
                    rate = args.tasks / statistics.median(seconds)
                    rows[variant] = {"drain_s": seconds, "tasks_per_s": rate}
                    print(f"{variant:44} worker alone: {rate:>7.0f} tasks/s {seconds}", flush=True)
                    continue
                done = subprocess.run(
                    [sys.executable, "-m", "bench.ablation", "--client"]
                    + ["--tasks", str(args.tasks), "--rounds", str(args.rounds)]
                    + ["--latency", str(args.latency)],
                    cwd=REPO_ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            finally:
                worker.stop()
                pinger.close()
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            figures["tasks_per_s"] = args.tasks / statistics.median(figures["total_s"])
            rows[variant] = figures
            print(
                f"{variant:44} {figures['tasks_per_s']:>7.0f} tasks/s  enqueue "
                f"{statistics.median(figures['enqueue_s']):.2f} s  p50 {figures['p50_ms']:.2f} ms"
                f"  p99 {figures['p99_ms']:.2f} ms",
                flush=True,
            )
    finally:
        stack.close()
    path = write(
        "tiny_ablation_drain.json" if args.drain else "tiny_ablation.json",
        {"tasks": args.tasks, "rounds": args.rounds, "latency_calls": args.latency, "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
