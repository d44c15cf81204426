"""Memory over a long stream: map ``square`` over a generator of ten million ints via the broker.

``python -m bench map-stream [--n 10000000]``. Records the caller's peak resident memory (this
process does nothing else) and Redis's peak ``used_memory``, sampled every 50 ms, and writes
bench/results/map_stream.json. Bounded chunks in flight should keep both flat whatever ``n`` is.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time

import redis as redis_py

import taskpool
from bench.harness import private_stack, write


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000_000)
    n = parser.parse_args().n
    with private_stack(concurrency=2) as (redis, app):
        client = redis_py.Redis.from_url(redis.url())
        redis_peak = 0
        finished = threading.Event()

        def sample() -> None:
            nonlocal redis_peak
            while not finished.is_set():
                redis_peak = max(redis_peak, int(client.info("memory")["used_memory"]))
                time.sleep(0.05)

        square = app.tasks["tasks.square"]
        taskpool.map(square, range(1_000), dispatch="celery")  # imports and connections warm
        rss_before = peak_rss_mb()
        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        count, expected = 0, 0
        for count, value in enumerate(
            taskpool.imap(square, (i for i in range(n)), dispatch="celery")
        ):
            if value != count * count:
                raise AssertionError(f"wrong result at {count}")
            expected += 1
        seconds = time.perf_counter() - started
        finished.set()
        sampler.join()
        client.close()
    figures = {
        "inputs": expected,
        "seconds": round(seconds, 2),
        "inputs_per_s": round(expected / seconds),
        "caller_peak_rss_mb_before": rss_before,
        "caller_peak_rss_mb_after": peak_rss_mb(),
        "redis_peak_used_memory_mb": round(redis_peak / 2**20, 1),
    }
    print(json.dumps(figures, indent=2))
    print(f"wrote {write('map_stream.json', figures)}")


if __name__ == "__main__":
    main()
