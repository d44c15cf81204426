"""The client side of ``python -m bench compare``: one workload, one implementation, one process.

``python -m bench.clients WORKLOAD IMPL [--n N] [--rounds R] ...`` prints one JSON line: the
raw samples of every round. ``bench/compare.py`` starts it with the environment that points
the implementation at the private Redis (``TASKPOOL_*`` for ours, ``BENCH_STOCK_URL`` for stock
Celery), so each implementation runs in an interpreter of its own, as a user's script would.

Implementations: ``ours`` (``tasks`` app, ``.delay`` / ``taskpool.map``), ``ours-local`` (the
same with ``TASKPOOL_DISPATCH=local``), ``stock`` (bench/stock_app.py), ``pool2``
(``multiprocessing.Pool(2)``, creation included), ``threads2`` (``ThreadPool(2)``), ``single``
(a plain loop in one process). Every result is checked.

Whole processes (``map`` only), timed from start to exit: ``ours-local-cli`` (``python -m
taskpool map square --range N`` with ``TASKPOOL_DISPATCH=local``) and ``pool2-script`` (a
``python -c`` script: ``Pool(2).map`` of the same ``square``), both writing one JSON line per
result to stdout.

``stall`` and ``memory`` (ours or stock) are bench/long_client.py's: a client that goes on
after many tasks. ``fill`` (ours, stock and the peers) enqueues ``n`` squares while no worker
runs, for the ``drain`` workload, and prints where their results will be stored.

Peers (``tiny`` and ``latency`` only): ``huey`` (bench/huey_app.py, ``square(i)`` enqueues,
``result.get(blocking=True)``) and ``dramatiq`` (bench/dramatiq_app.py, ``square.send(i)``,
``message.get_result(block=True)``), each against its own worker on the same private Redis.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Bound on any one ``.get()``: a lost task fails the benchmark instead of hanging it.
GET_TIMEOUT = 300.0


def plain(name: str) -> Callable[..., Any]:
    """The plain task body (no Celery), for the single-process, thread and Pool baselines."""
    from taskpool import examples as functions

    return getattr(functions, name)


def celery_task(impl: str, name: str) -> Any:
    if impl in ("ours", "ours-local", "ours-fetching"):
        import tasks

        return getattr(tasks, name)
    if impl == "stock":
        from bench.stock_app import make_app

        return make_app().tasks[f"tasks.{name}"]
    raise SystemExit(f"{impl} has no Celery task")


def send_and_get(impl: str) -> tuple[Callable[[int], Any], Callable[[Any], Any]]:
    """``square``'s enqueue call and its blocking result fetch, for a Celery app or a peer."""
    if impl == "huey":
        from bench.huey_app import square as huey_square

        def huey_get(result: Any) -> Any:
            return result.get(blocking=True, timeout=GET_TIMEOUT)

        return huey_square, huey_get
    if impl == "dramatiq":
        from bench.dramatiq_app import square as dramatiq_square

        timeout_ms = int(GET_TIMEOUT * 1000)

        def dramatiq_get(message: Any) -> Any:
            return message.get_result(block=True, timeout=timeout_ms)

        return dramatiq_square.send, dramatiq_get
    task = celery_task(impl, "square")

    def celery_get(pending: Any) -> Any:
        return pending.get(timeout=GET_TIMEOUT)

    return task.delay, celery_get


def expect_squares(values: list[int], n: int) -> None:
    if len(values) != n or any(v != i * i for i, v in enumerate(values)):
        raise AssertionError("wrong results")


def fork_pool() -> multiprocessing.pool.Pool:
    # Linux's default start method, as a plain `multiprocessing.Pool(2)` gets.
    return multiprocessing.get_context("fork").Pool(2)


# --- 1. many tiny tasks ------------------------------------------------------------------


def tiny(impl: str, n: int, rounds: int) -> dict[str, Any]:
    """n x ``square.delay(i)``, then every result collected in order and checked."""
    enqueue, total = [], []
    run: Callable[[int], tuple[float, float]]
    if impl == "single":
        square = plain("square")

        def run(count: int) -> tuple[float, float]:
            started = time.perf_counter()
            values = [square(i) for i in range(count)]
            elapsed = time.perf_counter() - started
            expect_squares(values, count)
            return elapsed, elapsed

    elif impl == "pool2":
        square = plain("square")

        def run(count: int) -> tuple[float, float]:
            started = time.perf_counter()
            with fork_pool() as pool:
                pending = [pool.apply_async(square, (i,)) for i in range(count)]
                sent = time.perf_counter()
                values = [p.get(GET_TIMEOUT) for p in pending]
            done = time.perf_counter()
            expect_squares(values, count)
            return sent - started, done - started

    else:
        send, get = send_and_get(impl)

        def run(count: int) -> tuple[float, float]:
            started = time.perf_counter()
            pending = [send(i) for i in range(count)]
            sent = time.perf_counter()
            values = [get(p) for p in pending]
            done = time.perf_counter()
            expect_squares(values, count)
            return sent - started, done - started

        run(200)  # warm-up: imports, connections, the local pool's start
    for _ in range(rounds):
        sent, done = run(n)
        enqueue.append(sent)
        total.append(done)
    return {"enqueue_s": enqueue, "total_s": total, "tasks_per_s": [n / t for t in total]}


# --- 2. bulk map -------------------------------------------------------------------------


def bulk_map(impl: str, n: int, rounds: int) -> dict[str, Any]:
    """``square`` over range(n), results in order and checked.

    Ours also maps the same numbers given as a list (``list_total_s``): a range is cut into
    ranges, which travel as three numbers, while a list's items are copied and encoded.
    """
    from bench.map_throughput import check, local_cold, pool_map

    run: Callable[[], Any]
    run_list: Callable[[], Any] | None = None
    if impl == "single":
        square = plain("square")

        def run() -> None:
            check([square(i) for i in range(n)], n)

    elif impl == "pool2":

        def run() -> None:
            pool_map(n)

    elif impl == "ours-local-cold":
        # A fresh interpreter per round; the time it reports is the map call alone.
        return {"total_s": [local_cold(n) for _ in range(rounds)]}
    elif impl in WHOLE_PROCESS_MAPS:
        return {"total_s": whole_process_map(impl, n, rounds)}
    elif impl in ("ours", "ours-local"):
        import taskpool

        task = celery_task(impl, "square")

        numbers = list(range(n))

        def run() -> None:
            check(taskpool.map(task, range(n)), n)

        def run_list() -> None:
            check(taskpool.map(task, numbers), n)

        taskpool.map(task, range(1000))  # warm-up
    elif impl == "stock":
        task = celery_task(impl, "square")
        # Stock Celery's own chunking, with as many chunks as our broker map cuts (4 per
        # process, 2 processes).
        size = math.ceil(n / 8)

        def run() -> None:
            nested = task.chunks(zip(range(n)), size).apply_async().get(timeout=GET_TIMEOUT)
            check([v for chunk in nested for v in chunk], n)

        task.chunks(zip(range(1000)), 125).apply_async().get(timeout=GET_TIMEOUT)
    else:
        raise SystemExit(f"map: unknown implementation {impl}")
    variants = {"total_s": run, **({"list_total_s": run_list} if run_list else {})}
    figures: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, variant in variants.items():
            started = time.perf_counter()
            variant()
            figures[key].append(time.perf_counter() - started)
    return figures


#: The baseline of the CLI row: ``Pool(2).map`` (fork, as on Linux by default) of the same
#: ``square``, its results written as the CLI writes them, one JSON line each, in one write.
POOL2_SCRIPT = """
import multiprocessing, sys
from taskpool.examples import square
if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(square, range(int(sys.argv[1])))
    sys.stdout.write("\\n".join(map(str, results)) + "\\n")
"""

#: The map as a user runs it from a shell, timed from start to exit; both write the same lines
#: to stdout. ``ours-local-cli`` runs with ``TASKPOOL_DISPATCH=local`` (see bench/compare.py).
WHOLE_PROCESS_MAPS: dict[str, list[str]] = {
    "ours-local-cli": [sys.executable, "-m", "taskpool", "map", "square", "--range"],
    "pool2-script": [sys.executable, "-c", POOL2_SCRIPT],
}


def whole_process_map(impl: str, n: int, rounds: int) -> list[float]:
    """Seconds from start to exit of ``rounds`` fresh processes, stdout to /dev/null.

    A first, untimed run (the same files then cached for every row) writes to a file, whose
    every line is checked; the CLI's own summary checksum is checked on every timed run.
    """
    command = [*WHOLE_PROCESS_MAPS[impl], str(n)]
    expected = "".join(f"{i * i}\n" for i in range(n)).encode()
    checksum = f"checksum={hashlib.sha256(expected).hexdigest()[:16]} "
    with tempfile.TemporaryFile() as out:
        subprocess.run(command, stdout=out, stderr=subprocess.PIPE, check=True, timeout=300)
        out.seek(0)
        if out.read() != expected:
            raise AssertionError(f"{impl}: wrong output")
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300
        )
        seconds.append(time.perf_counter() - started)
        if done.returncode != 0 or (impl == "ours-local-cli" and checksum not in done.stderr):
            raise AssertionError(f"{impl} failed or summed wrong: {done.stderr[-2000:]}")
    return seconds


# --- 3. CPU-bound calls ------------------------------------------------------------------


def cpu(impl: str, n: int, rounds: int, calls: int) -> dict[str, Any]:
    """``calls`` x ``sum_of_squares(n)``: real work per call."""
    expected = (n - 1) * n * (2 * n - 1) // 6
    run: Callable[[], list[int]]
    if impl == "single":
        body = plain("sum_of_squares")

        def run() -> list[int]:
            return [body(n) for _ in range(calls)]

    elif impl == "threads2":
        body = plain("sum_of_squares")

        def run() -> list[int]:
            with multiprocessing.pool.ThreadPool(2) as pool:
                return pool.map(body, [n] * calls, chunksize=1)

    elif impl == "pool2":
        body = plain("sum_of_squares")

        def run() -> list[int]:
            with fork_pool() as pool:
                return pool.map(body, [n] * calls, chunksize=1)

    else:
        task = celery_task(impl, "sum_of_squares")

        def run() -> list[int]:
            pending = [task.delay(n) for _ in range(calls)]
            return [p.get(timeout=GET_TIMEOUT) for p in pending]

        task.delay(10).get(timeout=GET_TIMEOUT)  # warm-up
    total = []
    for _ in range(rounds):
        started = time.perf_counter()
        values = run()
        total.append(time.perf_counter() - started)
        if values != [expected] * calls:
            raise AssertionError("wrong results")
    return {"total_s": total}


# --- 4. round-trip latency ---------------------------------------------------------------


def latency(impl: str, n: int, rounds: int) -> dict[str, Any]:
    """n sequential ``square.delay(7).get()`` (a peer: its own calls); p50, p95, p99 in ms."""
    send, get = send_and_get(impl)
    for _ in range(50):  # warm-up
        get(send(7))
    out: dict[str, list[float]] = {"p50_ms": [], "p95_ms": [], "p99_ms": [], "mean_ms": []}
    for _ in range(rounds):
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            value = get(send(7))
            samples.append((time.perf_counter() - started) * 1000)
            if value != 49:
                raise AssertionError("wrong result")
        samples.sort()
        for key, q in (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            out[key].append(samples[min(len(samples) - 1, math.ceil(q * len(samples)) - 1)])
        out["mean_ms"].append(sum(samples) / len(samples))
    return out


# --- a long-lived client (bench/long_client.py) ------------------------------------------


def round_trip_ms(send: Callable[[int], Any], get: Callable[[Any], Any]) -> float:
    """One ``square.delay(0).get()``, in milliseconds."""
    started = time.perf_counter()
    if get(send(0)) != 0:
        raise AssertionError("wrong result")
    return (time.perf_counter() - started) * 1000


def stall(impl: str, n: int) -> dict[str, Any]:
    """The round trips right after n x ``square.delay(i)`` and every ``.get()`` in order.

    The results are still referenced while the calls after them are timed, as in a script that
    goes on using them; five calls before the burst give the idle round trip to compare with.
    """
    send, get = send_and_get(impl)
    for _ in range(20):  # warm-up: imports, connections
        round_trip_ms(send, get)
    before = [round_trip_ms(send, get) for _ in range(5)]
    started = time.perf_counter()
    pending = [send(i) for i in range(n)]
    sent = time.perf_counter()
    values = [get(p) for p in pending]
    collected = time.perf_counter()
    next_ms = round_trip_ms(send, get)
    further = [round_trip_ms(send, get) for _ in range(5)]
    expect_squares(values, n)
    return {
        "n": n,
        "enqueue_s": sent - started,
        "collect_s": collected - sent,
        "before_ms": before,
        "next_ms": next_ms,
        "further_ms": further,
    }


def rss_mb() -> tuple[float, float]:
    """This process's resident memory and its peak (VmRSS, VmHWM), in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def checkpoints(n: int) -> list[int]:
    """Task counts to sample at: 1k, 10k, 100k, then every 100k, and the last."""
    marks = [m for m in (1_000, 10_000) if m < n] + list(range(100_000, n, 100_000))
    return [*marks, n]


def memory(impl: str, n: int, window: int) -> dict[str, Any]:
    """Send and collect n tasks, at most ``window`` out at once; RSS at each checkpoint.

    Nothing is kept past its window: each result is checked and dropped, so the client's own
    memory is bounded by the window and whatever the library keeps.
    """
    send, get = send_and_get(impl)
    round_trip_ms(send, get)  # warm-up: imports, connections
    rss, peak = rss_mb()
    samples = [{"tasks": 0, "rss_mb": rss, "peak_mb": peak, "seconds": 0.0, "tasks_per_s": None}]
    marks = iter(checkpoints(n))
    mark = next(marks)
    started = last_time = time.perf_counter()
    done = last_done = 0
    while done < n:
        first, size = done, min(window, n - done)
        pending = [send(i) for i in range(first, first + size)]
        for i, result in enumerate(pending, start=first):
            if get(result) != i * i:
                raise AssertionError(f"wrong result for {i}")
        del pending
        done += size
        if done >= mark:
            now = time.perf_counter()
            rss, peak = rss_mb()
            rate = (done - last_done) / (now - last_time)
            samples.append(
                {
                    "tasks": done,
                    "rss_mb": rss,
                    "peak_mb": peak,
                    "seconds": now - started,
                    "tasks_per_s": rate,
                }
            )
            print(
                f"    {impl}: {done:>9,} tasks  RSS {rss:6.1f} MB  (peak {peak:6.1f})  "
                f"{rate:6.0f} tasks/s",
                file=sys.stderr,
                flush=True,
            )
            last_time, last_done = now, done
            while mark <= done and mark < n:
                mark = next(marks)
    total = time.perf_counter() - started
    return {"tasks": n, "window": window, "total_s": total, "samples": samples}


# --- a worker's readiness --------------------------------------------------------------


def ready(impl: str) -> dict[str, Any]:
    """One round trip; it waits in the queue until the worker consumes it."""
    send, get = send_and_get(impl)
    started = time.perf_counter()
    if get(send(7)) != 49:
        raise AssertionError("wrong result")
    return {"first_result_s": [time.perf_counter() - started]}


# --- 7. a worker draining a queue (the harness times it: bench/compare.py) ----------------


def fill(impl: str, n: int) -> dict[str, Any]:
    """n x ``square(i)`` enqueued while no worker runs; where their results will be stored:
    one Redis key each (Celery, Dramatiq), or Huey's result hash."""
    send, _ = send_and_get(impl)
    sent = [send(i) for i in range(n)]
    if impl == "huey":
        from bench.huey_app import huey

        return {"hash": huey.storage.result_key}
    if impl == "dramatiq":
        from bench.dramatiq_app import backend

        return {"keys": [backend.build_message_key(message) for message in sent]}
    from kombu.utils.encoding import bytes_to_str

    backend = celery_task(impl, "square").app.backend
    return {"keys": [bytes_to_str(backend.get_key_for_task(r.id)) for r in sent]}


# --- 6. worker start ---------------------------------------------------------------------


def worker_start(impl: str, rounds: int, pidfile: Path) -> dict[str, Any]:
    """From starting ``celery -A <app> worker -P prefork -c 2`` to the first result.

    The client is connected before the worker starts (its own start is not counted); the task
    is sent right after the worker's process is started and waits in the queue until the
    worker consumes it.
    """
    import socket

    from taskpool.testing.celery_worker import CeleryWorker

    task = celery_task(impl, "square")
    app = task.app
    app.backend.client.ping()
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    if impl == "ours":  # its broker verdict too, so the timed call does not probe
        from taskpool.health import health_of
        from taskpool.settings import settings_of

        settings = settings_of(app)
        health_of(app, settings.broker_timeout, settings.broker_recheck).is_up()
    module = "tasks" if impl == "ours" else "bench.stock_app"
    command = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", "2"]
    logdir = pidfile.parent
    total = []
    for index in range(rounds):
        worker = CeleryWorker(
            dict(os.environ),
            f"start-{impl}-{index}@{socket.gethostname()}",
            logdir / f"worker-start-{impl}-{index}.log",
            command=command,
        )
        started = time.perf_counter()
        worker.start()
        try:
            with pidfile.open("a") as pids:
                pids.write(f"{worker.pid}\n")
            value = task.delay(7).get(timeout=60)
            total.append(time.perf_counter() - started)
            if value != 49:
                raise AssertionError("wrong result")
        finally:
            worker.stop()
    return {"total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "workload",
        choices=("tiny", "map", "cpu", "latency", "start", "ready", "stall", "memory", "fill"),
    )
    parser.add_argument("impl")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--pidfile", type=Path)
    parser.add_argument("--window", type=int, default=1000, help="memory: tasks out at once")
    args = parser.parse_args()
    if args.impl == "ours-fetching":  # the worker's pool differs; the client is the same
        args.impl = "ours"
    if args.workload == "tiny":
        figures = tiny(args.impl, args.n, args.rounds)
    elif args.workload == "map":
        figures = bulk_map(args.impl, args.n, args.rounds)
    elif args.workload == "cpu":
        figures = cpu(args.impl, args.n, args.rounds, args.calls)
    elif args.workload == "latency":
        figures = latency(args.impl, args.n, args.rounds)
    elif args.workload == "ready":
        figures = ready(args.impl)
    elif args.workload == "fill":
        figures = fill(args.impl, args.n)
    elif args.workload == "stall":
        figures = stall(args.impl, args.n)
    elif args.workload == "memory":
        figures = memory(args.impl, args.n, args.window)
    else:
        figures = worker_start(args.impl, args.rounds, args.pidfile)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
