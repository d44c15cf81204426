"""Map ``square`` over a million ints: through the broker, on the local pool, and Pool(2).map.

All in one run, on one machine: ``python -m bench map-throughput [--n 1000000] [--rounds 3]``.
Every result list is checked against the expected squares. Prints a table and writes
bench/results/map.json. (bench/map_stream.py measures memory over a ten-million generator.)
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import subprocess
import sys
import time
from typing import Any

import msgpack

import taskpool
from bench.harness import private_stack, repeat, write
from taskpool.examples import square as plain_square
from tasks import square


def pool_map(n: int) -> None:
    """The baseline: Pool(2).map with its default chunksize, pool creation included."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        check(pool.map(plain_square, range(n)), n)


def check(results: list[int], n: int) -> None:
    if len(results) != n or results[-1] != (n - 1) ** 2 or results[n // 2] != (n // 2) ** 2:
        raise AssertionError("wrong results")


def local_cold(n: int) -> float:
    """Our local backend in a fresh interpreter: its pool's start is part of the time."""
    code = (
        "import time, tasks, taskpool\n"
        f"t = time.perf_counter(); r = taskpool.map(tasks.square, range({n}), dispatch='local')\n"
        f"assert r[-1] == {(n - 1) ** 2}; print(time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def codec_costs(n: int) -> dict[str, float]:
    """Where the time goes in moving n ints and n results: JSON against msgpack in base64."""
    values = list(range(n))
    squares = [v * v for v in values]

    def seconds(fn: Any) -> float:
        started = time.perf_counter()
        fn()
        return round(time.perf_counter() - started, 4)

    packed = base64.b64encode(msgpack.packb(squares))
    text = json.dumps(squares)
    return {
        "json_encode_inputs_s": seconds(lambda: json.dumps(values)),
        "json_encode_results_s": seconds(lambda: json.dumps(squares)),
        "json_decode_results_s": seconds(lambda: json.loads(text)),
        "msgpack_encode_results_s": seconds(lambda: base64.b64encode(msgpack.packb(squares))),
        "msgpack_decode_results_s": seconds(lambda: msgpack.unpackb(base64.b64decode(packed))),
        "compute_in_one_process_s": seconds(lambda: [plain_square(v) for v in values]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.n, args.rounds

    rows: dict[str, dict[str, float]] = {}
    rows["list comprehension (1 process)"] = repeat(
        lambda: check([plain_square(i) for i in range(n)], n), rounds
    )
    rows["multiprocessing Pool(2).map"] = repeat(lambda: pool_map(n), rounds)
    cold = sorted(local_cold(n) for _ in range(rounds))
    rows["taskpool local, cold (pool start included)"] = {
        "median_s": round(cold[len(cold) // 2], 4),
        "min_s": round(cold[0], 4),
        "max_s": round(cold[-1], 4),
    }
    taskpool.map(square, range(1000), dispatch="local")  # start the local pool once
    rows["taskpool local, warm pool"] = repeat(
        lambda: check(taskpool.map(square, range(n), dispatch="local"), n), rounds
    )
    with private_stack(concurrency=2) as (redis, app):
        chunk_square = app.tasks["tasks.square"]
        taskpool.map(chunk_square, range(1000), dispatch="celery")  # connections warm
        rows["taskpool broker (worker -c 2)"] = repeat(
            lambda: check(taskpool.map(chunk_square, range(n), dispatch="celery"), n), rounds
        )

    baseline = rows["multiprocessing Pool(2).map"]["median_s"]
    print(
        f"{'workload':48} {'median s':>9} {'min':>7} {'max':>7} {'inputs/s':>11} {'vs Pool(2)':>10}"
    )
    for name, row in rows.items():
        row["inputs_per_s"] = round(n / row["median_s"])
        row["throughput_vs_pool2"] = round(baseline / row["median_s"], 3)
        print(
            f"{name:48} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f} "
            f"{row['inputs_per_s']:>11,} {row['throughput_vs_pool2']:>9.2f}x"
        )
    costs = codec_costs(n)
    print("where the time goes (one process, seconds):", json.dumps(costs))
    path = write(
        "map.json",
        {"n": n, "rounds": rounds, "rows": rows, "codec_costs": costs},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
