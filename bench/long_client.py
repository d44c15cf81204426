"""A client that goes on after many tasks: the call after a burst, and memory over a long run.

``python -m bench long-client [stall] [memory] [--n 20000] [--tasks 1000000] [--window 1000]
[--impl ours|stock]``. One private ``redis-server`` and, per implementation, a real worker
(``celery -A tasks worker -P prefork -c 2`` for ours, ``celery -A bench.stock_app worker -P
prefork -c 2`` for stock Celery), started and stopped as ``python -m bench compare`` does; each
client runs in a fresh interpreter (``python -m bench.clients stall|memory IMPL``).

- ``stall``: ``--n`` x ``square.delay(i)``, every ``.get()`` in order, then the next
  ``square.delay(0).get()`` and five more, in ms (ours and stock by default).
- ``memory``: ``--tasks`` tasks sent and collected ``--window`` at a time; the client's RSS
  (VmRSS) after 1k, 10k, 100k and every 100k tasks, and tasks/s (ours by default).

Prints the tables; writes bench/results/long_client.json, where each part and implementation
keeps its last run's figures, with the command, the time and the tree (commit and the files
that differed from it) of that run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from typing import Any

import redis

from bench.compare import CLIENT_TIMEOUT_S, Stack, run_client
from bench.harness import RESULTS, tree, write
from bench.report import LABELS, table

PARTS = ("stall", "memory")
DEFAULT_IMPLS = {"stall": ("ours", "stock"), "memory": ("ours",)}
#: The slowest rate a memory client may run at before it is stopped (tasks/s).
SLOWEST_RATE = 50


def redis_used_mb(stack: Stack, impl: str) -> float:
    """What the results left in the implementation's Redis database come to (used_memory)."""
    client = redis.Redis.from_url(stack.url(impl))
    try:
        return float(client.info("memory")["used_memory"]) / 2**20
    finally:
        client.close()


def run(args: argparse.Namespace, parts: list[str]) -> dict[str, Any]:
    stack = Stack()
    print(f"private redis-server on port {stack.redis.port}; logs in {stack.workdir}", flush=True)
    stack.redis.start()
    found: dict[str, dict[str, Any]] = {}
    try:
        for part in parts:
            for impl in args.impl or DEFAULT_IMPLS[part]:
                print(f"  {part}: {impl} ...", flush=True)
                with stack.worker(impl):
                    if part == "stall":
                        figures = run_client(stack, "stall", impl, n=args.n)
                    else:
                        timeout = max(CLIENT_TIMEOUT_S, args.tasks / SLOWEST_RATE)
                        figures = run_client(
                            stack, "memory", impl, timeout=timeout, live=True,
                            n=args.tasks, window=args.window,
                        )  # fmt: skip
                        figures["redis_used_mb_after"] = redis_used_mb(stack, impl)
                found.setdefault(part, {})[impl] = {
                    "command": " ".join(["python -m bench long-client", *sys.argv[1:]]),
                    "when": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    "tree": tree(),
                    **figures,
                }
    finally:
        stack.close()
    return found


def stall_table(figures: dict[str, Any]) -> str:
    rows = []
    for impl, f in figures.items():
        rows.append(
            [
                LABELS[impl],
                f"{f['n']:,}",
                f"{f['enqueue_s'] + f['collect_s']:.1f}",
                f"{statistics.median(f['before_ms']):.2f}",
                f"{f['next_ms']:.2f}",
                ", ".join(f"{v:.2f}" for v in f["further_ms"]),
                "holds" if f["next_ms"] < 50 else "MISSED",
            ]
        )
    header = ["implementation", "tasks", "send + collect s", "idle call ms (median of 5)"]
    header += ["next call ms", "5 further calls ms", "next < 50 ms"]
    return table(header, rows)


def memory_table(figures: dict[str, Any]) -> str:
    rows = []
    for impl, f in figures.items():
        for sample in f["samples"]:
            rate = sample["tasks_per_s"]
            rows.append(
                [
                    LABELS[impl],
                    f"{sample['tasks']:,}",
                    f"{sample['rss_mb']:.1f}",
                    f"{sample['peak_mb']:.1f}",
                    "-" if rate is None else f"{rate:,.0f}",
                ]
            )
    header = ["implementation", "tasks done", "client RSS MB", "peak RSS MB"]
    header.append("tasks/s since the previous row")
    notes = [
        f"{LABELS[impl]}: {f['tasks']:,} tasks, window {f['window']:,}, {f['total_s']:.0f} s, "
        f"{f['tasks'] / f['total_s']:,.0f} tasks/s overall; Redis used_memory after: "
        f"{f['redis_used_mb_after']:.0f} MB"
        for impl, f in figures.items()
    ]
    return table(header, rows) + "\n\n" + "\n".join(notes)


def render(results: dict[str, Any]) -> None:
    for part, title, make in (
        ("stall", "the call after a burst", stall_table),
        ("memory", "memory of a long client", memory_table),
    ):
        if part in results:
            print(f"\n{title}\n")
            print(make(results[part]))
            for impl, f in results[part].items():
                changed = len(f["tree"]["uncommitted"])
                edits = f" with {changed} files changed" if changed else ""
                print(f"  {impl}: `{f['command']}`, {f['when']}, tree {f['tree']['commit']}{edits}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench long-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("parts", nargs="*", metavar="PART", help="stall, memory (default: both)")
    parser.add_argument("--n", type=int, default=20_000, help="stall: tasks in the burst")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="memory: tasks in all")
    parser.add_argument("--window", type=int, default=1000, help="memory: tasks out at once")
    parser.add_argument(
        "--impl",
        action="append",
        choices=("ours", "stock"),
        help="repeatable; default: ours and stock for stall, ours for memory",
    )
    parser.add_argument("--report", action="store_true", help="only print the tables")
    args = parser.parse_args()
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if min(args.n, args.tasks, args.window) < 1:
        parser.error("--n, --tasks and --window must be at least 1")
    path = RESULTS / "long_client.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if args.report:
        render(previous)
        return
    parts = [p for p in PARTS if p in args.parts] or list(PARTS)
    found = run(args, parts)
    merged = {part: {**previous.get(part, {}), **found.get(part, {})} for part in PARTS}
    merged = {part: impls for part, impls in merged.items() if impls}
    render(merged)
    print(f"\nwrote {write('long_client.json', merged)}")


if __name__ == "__main__":
    main()
