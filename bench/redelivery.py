"""A worker SIGKILLed with tasks in hand: how long until each task's result, by default.

``python -m bench redelivery [SYSTEM ...] [--quick] [--cap-taskpool S] [--cap-stock S]
[--cap-dramatiq S]``. Systems: taskpool, stock, dramatiq (default: all three, in that order),
each with its settings as shipped, on the private Redis of ``python -m bench compare``
(``Stack``: one ``redis-server`` on a free loopback port, a database per system):

- taskpool: ``celery -A tasks worker -P prefork -c 2`` (only the broker and result URLs set);
- stock Celery: ``celery -A bench.stock_app worker -P prefork -c 2`` (kombu's Redis transport);
- Dramatiq: ``dramatiq bench.dramatiq_app --processes 2 --threads 8`` (its Redis broker).

For each: a worker is started and answers; 6 tasks that mark their start in Redis, sleep 3 s
and return ``n * n`` are sent (``probe.record`` from taskpool/testing/probe_tasks.py, loaded with
``-I``; Dramatiq's ``record`` from bench/dramatiq_app.py); once the queue is empty and the
worker runs as many as it can (2 on the Celery workers, the other 4 reserved; all 6 on
Dramatiq's 16 threads), the worker's whole process group is SIGKILLed and a fresh worker is
started at once. The client polls each result every 20 ms and records the time from the kill
to its result, up to the system's cap (taskpool 60 s, stock 60 s, Dramatiq 150 s): a result
still missing then is "not within the cap". Every process is stopped by PID.

Prints each system's figures and the bound its configuration sets; writes
bench/results/redelivery.json (``--quick``: taskpool and stock only, stock capped at 15 s,
results to the run's temp directory). Never asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery, states

from bench.compare import Stack, package_versions, redis_version
from bench.harness import REPO_ROOT, machine, tree, write
from bench.peers import URL_VARIABLES, PeerWorker
from taskpool.testing.celery_worker import CeleryWorker
from taskpool.testing.held import consumers, held_count
from taskpool.testing.probe_tasks import STARTED

SYSTEMS = ("taskpool", "stock", "dramatiq")
#: Each system's name in ``bench.compare.Stack`` (its database, its environment).
IMPLS = {"taskpool": "ours", "stock": "stock", "dramatiq": "dramatiq"}
CAPS = {"taskpool": 60.0, "stock": 60.0, "dramatiq": 150.0}
QUICK_STOCK_CAP = 15.0
TASKS = 6
TASK_SECONDS = 3.0
POLL_S = 0.02
#: How long a worker may take to take every task and start the first ones.
HOLD_TIMEOUT_S = 30.0
PROBE = ("-I", "taskpool.testing.probe_tasks")
DRAMATIQ_QUEUE = "dramatiq:default"


class Client:
    """One system's client: send the tasks, read each result, and what Redis holds."""

    #: Tasks the worker runs at once (the others are reserved).
    running = 2

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=5)

    def send(self, n: int) -> Any:
        raise NotImplementedError

    def result(self, handle: Any) -> tuple[bool, Any]:
        """(True, value) once the result is stored; (False, None) before."""
        raise NotImplementedError

    def queued(self) -> int:
        return int(self.redis.llen("celery"))

    def held(self) -> int:
        return held_count(self.redis)

    def started(self) -> int:
        return int(self.redis.llen(STARTED))

    def consumers(self) -> set[str] | None:
        """The consumers the broker counts alive, if it keeps such a list."""
        return None

    def bound(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.redis.close()


class CeleryClient(Client):
    def __init__(self, url: str, app: Celery) -> None:
        super().__init__(url)
        self.app = app

    def send(self, n: int) -> Any:
        return self.app.send_task("probe.record", args=(n, TASK_SECONDS))

    def result(self, handle: Any) -> tuple[bool, Any]:
        state = handle.state
        if state in states.READY_STATES:
            return True, handle.result if state == states.SUCCESS else f"{state}: {handle.result}"
        return False, None

    def close(self) -> None:
        super().close()
        backend = getattr(self.app._local, "backend", None)
        client = getattr(backend, "client", None)
        if client is not None:
            client.connection_pool.disconnect()
        self.app.close()


class TaskpoolClient(CeleryClient):
    def __init__(self, url: str) -> None:
        from taskpool import Settings, create_app

        settings = Settings(broker_url=url, result_backend=url, dispatch="celery")
        super().__init__(url, create_app("tasks", settings=settings))

    def consumers(self) -> set[str] | None:
        return set(consumers(self.redis))

    def bound(self) -> dict[str, Any]:
        options = self.app.conf.broker_transport_options
        timeout = float(options["liveness_timeout"])
        return {
            "mechanism": "any live consumer's heartbeat sweep (once a third of the timeout) "
            "puts back what a consumer silent for longer than the liveness timeout held",
            "task_acks_late": bool(self.app.conf.task_acks_late),
            "liveness_timeout_s": timeout,
            "redelivered_within_s": round(timeout + timeout / 3, 2),
        }


class StockClient(CeleryClient):
    def __init__(self, url: str) -> None:
        from bench.stock_app import URL_VARIABLE, make_app

        os.environ[URL_VARIABLE] = url
        super().__init__(url, make_app())

    def bound(self) -> dict[str, Any]:
        from kombu.transport.redis import Channel

        options = self.app.conf.broker_transport_options or {}
        timeout = float(options.get("visibility_timeout", Channel.visibility_timeout))
        return {
            "mechanism": "kombu's Redis transport restores an unacked message once it is older "
            "than the visibility timeout; with task_acks_late False a task is acked as it "
            "starts, so the tasks running at the kill are never redelivered",
            "task_acks_late": bool(self.app.conf.task_acks_late),
            "broker_transport_options": dict(options),
            "visibility_timeout_s": timeout,
            "redelivered_within_s": timeout,
        }


class DramatiqClient(Client):
    """In this process: ``bench.dramatiq_app`` sets the global broker from its URL at import."""

    running = TASKS  # 2 processes x 8 threads: all 6 at once

    def __init__(self, url: str) -> None:
        super().__init__(url)
        os.environ[URL_VARIABLES["dramatiq"]] = url
        from bench import dramatiq_app

        self.actor = dramatiq_app.record
        self.broker = dramatiq_app.broker

    def send(self, n: int) -> Any:
        return self.actor.send(n, TASK_SECONDS)

    def result(self, handle: Any) -> tuple[bool, Any]:
        from dramatiq.results import ResultMissing

        try:
            return True, handle.get_result(block=False)
        except ResultMissing:
            return False, None

    def queued(self) -> int:
        return int(self.redis.llen(DRAMATIQ_QUEUE))

    def held(self) -> int:
        """Every worker's fetched and unacked messages (``dramatiq:__acks__.<worker>.<queue>``)."""
        keys = self.redis.scan_iter(match="dramatiq:__acks__.*", count=1000)
        return sum(int(self.redis.scard(key)) for key in keys)

    def bound(self) -> dict[str, Any]:
        from dramatiq.brokers.redis import MAINTENANCE_SCALE
        from dramatiq.worker import WORKER_TIMEOUT

        return {
            "mechanism": "queue maintenance, run by 1 in MAINTENANCE_SCALE/maintenance_chance "
            "broker commands (not acks or nacks) at random, re-queues the unacked messages of "
            "workers with no command for heartbeat_timeout, for the queue of the command that "
            "ran it; an idle worker fetches from each queue about once a worker_timeout",
            "heartbeat_timeout_s": self.broker.heartbeat_timeout / 1000,
            "maintenance_chance": f"{self.broker.maintenance_chance} in {MAINTENANCE_SCALE}",
            "worker_timeout_s": WORKER_TIMEOUT / 1000,
            "redelivered_within_s": None,  # no bound: a random draw after the heartbeat timeout
        }

    @property
    def timeout_s(self) -> float:
        return float(self.broker.heartbeat_timeout) / 1000

    def consumers(self) -> set[str] | None:
        """Every broker that ran a command lately, this client's included (it enqueued)."""
        members: list[Any] = list(self.redis.zrange("dramatiq:__heartbeats__", 0, -1))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    def commands(self) -> int:
        """Lua dispatch calls served so far: Dramatiq's broker commands (fetch, ack, ...)."""
        stats = self.redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


CLIENTS: dict[str, Callable[[str], Client]] = {
    "taskpool": TaskpoolClient,
    "stock": StockClient,
    "dramatiq": DramatiqClient,
}


@dataclass
class Worker:
    """A started worker: its process group, and how to tell it died early."""

    stop: Callable[[], None]
    pid: int
    log_tail: Callable[[], str]
    poll: Callable[[], int | None]
    wait: Callable[[float], int]


@contextlib.contextmanager
def worker(stack: Stack, system: str, role: str, ready: bool) -> Iterator[Worker]:
    """``system``'s worker, started as ``bench.compare.Stack`` starts it, in its own process
    group; with ``ready``, once it answered (a ping, or Dramatiq's first result)."""
    impl = IMPLS[system]
    env, log = stack.env(impl), stack.workdir / f"worker-{system}-{role}.log"
    if system == "dramatiq":
        peer = PeerWorker(impl, env, REPO_ROOT, log).start()
        try:
            if ready:
                peer.wait_ready([sys.executable, "-m", "bench.clients", "ready", impl], 60)
            assert peer.process is not None
            process = peer.process
            yield Worker(peer.stop, peer.pid, peer.log_tail, process.poll, process.wait)
        finally:
            peer.stop()
        return
    module = "tasks" if system == "taskpool" else "bench.stock_app"
    node = f"redelivery-{system}-{role}@{socket.gethostname()}"
    celery = CeleryWorker(env, node, log, 2, extra=PROBE)
    celery.command = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork"]
    celery.command += ["-c", "2"]
    pinger = Celery("bench-ping", broker=stack.url(impl), backend=stack.url(impl))
    pinger.conf.broker_connection_retry_on_startup = True
    try:
        celery.start()
        if ready:
            celery.wait_ready(pinger, timeout=60)
        assert celery.process is not None
        process = celery.process
        yield Worker(celery.stop, celery.pid, celery.log_tail, process.poll, process.wait)
    finally:
        celery.stop()
        pinger.close()


@dataclass
class Watch:
    """What the client saw after the kill, in seconds from it."""

    results_s: dict[int, float] = field(default_factory=dict)
    values: dict[int, Any] = field(default_factory=dict)
    first_rerun_s: float | None = None
    #: When a consumer the broker did not know at the kill first showed up: the successor's.
    successor_up_s: float | None = None
    #: Dramatiq: the broker commands served by then, from the heartbeat timeout on.
    commands_mark: tuple[float, int] | None = None
    commands_at_kill: int = 0


def wait_until(check: Callable[[], bool], timeout: float, what: str, alive: Worker) -> float:
    """Seconds until ``check()``; raises past ``timeout`` or if the worker exited."""
    started = time.monotonic()
    while not check():
        if alive.poll() is not None:
            raise RuntimeError(f"the worker exited while waiting for {what}:\n{alive.log_tail()}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"no {what} within {timeout:g} s:\n{alive.log_tail()}")
        time.sleep(POLL_S)
    return time.monotonic() - started


def figure(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 2)


def trial(stack: Stack, system: str, cap: float) -> dict[str, Any]:
    """One kill and its aftermath; the figures in seconds from the kill."""
    print(f"{system}: starting a worker ...", flush=True)
    client = CLIENTS[system](stack.url(IMPLS[system]))
    try:
        with worker(stack, system, "doomed", ready=True) as doomed:
            handles = [client.send(n) for n in range(TASKS)]
            sent = time.monotonic()
            wait_until(
                lambda: client.queued() == 0 and client.started() >= client.running,
                HOLD_TIMEOUT_S,
                f"the worker to hold all {TASKS} tasks and run {client.running}",
                doomed,
            )
            held, started_before, queued = client.held(), client.started(), client.queued()
            known = client.consumers()
            killed = time.monotonic()
            os.killpg(doomed.pid, signal.SIGKILL)  # the main process and its pool at once
            with worker(stack, system, "successor", ready=False) as successor:
                doomed.wait(10)
                print(
                    f"{system}: killed with {held} held ({started_before} running, "
                    f"{killed - sent:.2f} s after sending); successor started; waiting up to "
                    f"{cap:g} s",
                    flush=True,
                )
                watch = follow(client, handles, (started_before, known), killed, cap, successor)
                rerun = client.started() - started_before
                commands = None
                if isinstance(client, DramatiqClient):
                    # The successor's commands per second past the heartbeat timeout (its
                    # fetches back off at first), or since the kill with a shorter cap.
                    since, count = watch.commands_mark or (0.0, watch.commands_at_kill)
                    seconds = time.monotonic() - killed - since
                    commands = (client.commands() - count) / seconds
        acked = TASKS - queued - held  # taken from the queue, and no longer held by anyone
        return summary(system, client, cap, (held, acked, started_before), watch, rerun, commands)
    finally:
        client.close()


def follow(
    client: Client,
    handles: list[Any],
    at_kill: tuple[int, set[str] | None],
    killed: float,
    cap: float,
    alive: Worker,
) -> Watch:
    """Poll every result (and the re-runs' starts, and the successor's first appearance as a
    consumer) until all results are in or ``cap`` has passed."""
    before, known = at_kill
    watch = Watch()
    dramatiq = client if isinstance(client, DramatiqClient) else None
    if dramatiq is not None:
        watch.commands_at_kill = dramatiq.commands()
    while len(watch.results_s) < len(handles):
        now = time.monotonic() - killed
        if now > cap:
            break
        if alive.poll() is not None:
            raise RuntimeError(f"the successor exited:\n{alive.log_tail()}")
        if watch.first_rerun_s is None and client.started() > before:
            watch.first_rerun_s = now
        if (
            known is not None
            and watch.successor_up_s is None
            and (client.consumers() or known) - known
        ):
            watch.successor_up_s = now
        if dramatiq is not None and watch.commands_mark is None and now >= dramatiq.timeout_s:
            watch.commands_mark = (now, dramatiq.commands())
        for n, handle in enumerate(handles):
            if n not in watch.results_s:
                done, value = client.result(handle)
                if done:
                    watch.results_s[n] = time.monotonic() - killed
                    watch.values[n] = value
        time.sleep(POLL_S)
    return watch


def summary(
    system: str,
    client: Client,
    cap: float,
    at_kill: tuple[int, int, int],
    watch: Watch,
    rerun: int,
    commands_per_s: float | None,
) -> dict[str, Any]:
    times = sorted(watch.results_s.values()) + [math.inf] * (TASKS - len(watch.results_s))
    wrong = [n for n, v in watch.values.items() if v != n * n]
    held, acked, started_before = at_kill
    row: dict[str, Any] = {
        "cap_s": cap,
        "held_at_kill": held,
        "acked_at_kill": acked,
        "running_at_kill": started_before,
        # None: not seen within the cap, or (stock Celery) the broker keeps no list of consumers.
        "successor_consuming_s": None
        if watch.successor_up_s is None
        else figure(watch.successor_up_s),
        "first_rerun_start_s": figure(
            math.inf if watch.first_rerun_s is None else watch.first_rerun_s
        ),
        "first_result_s": figure(times[0]),
        "median_result_s": figure(statistics.median(times)),
        "last_result_s": figure(times[-1]),
        "within_cap": len(watch.results_s),
        "results_s": {str(n): round(s, 3) for n, s in sorted(watch.results_s.items())},
        "wrong_results": {str(n): repr(watch.values[n]) for n in wrong},
        "runs_started_after_kill": rerun,
        "bound": client.bound(),
    }
    if commands_per_s is not None:
        # About half the successor's commands are fetches from the queue the tasks were on (the
        # other half from its delay queue), and each has a maintenance_chance in a million of
        # running maintenance for that queue, and so of re-queueing the dead worker's messages.
        rate = commands_per_s
        chance = client.bound()["maintenance_chance"].split()
        per_command = int(chance[0]) / int(chance[2])
        per_s = rate / 2 * per_command
        row["successor_commands_per_s"] = round(rate, 2)
        row["expected_maintenance_wait_after_heartbeat_timeout_s"] = round(1 / per_s, 0)
        eligible = max(0.0, cap - row["bound"]["heartbeat_timeout_s"])
        # (what the chance was, at that rate, for the run's cap; not a measurement)
        row["chance_within_cap"] = round(1 - math.exp(-per_s * eligible), 2)
    print(line(system, row), flush=True)
    return row


def shown(value: float | None, cap: float) -> str:
    return f"{value:.2f}" if value is not None else f"not within {cap:g} s"


def line(system: str, row: dict[str, Any]) -> str:
    cap = row["cap_s"]
    within = row["bound"]["redelivered_within_s"]
    bound = "none (a random draw)" if within is None else f"{within:g} s"
    text = (
        f"{system}: at the kill {row['running_at_kill']} running, {row['held_at_kill']} held "
        f"unacked, {row['acked_at_kill']} already acked; successor consuming "
        f"{shown(row['successor_consuming_s'], cap) if system != 'stock' else 'not tracked'}; "
        f"first re-run "
        f"start {shown(row['first_rerun_start_s'], cap)}; results after the kill: first "
        f"{shown(row['first_result_s'], cap)}, median {shown(row['median_result_s'], cap)}, "
        f"last {shown(row['last_result_s'], cap)}; {row['within_cap']} of {TASKS} within "
        f"{cap:g} s; configured bound: {bound}"
    )
    if "successor_commands_per_s" in row:
        text += (
            f"; successor {row['successor_commands_per_s']} broker commands/s, so maintenance "
            f"expected {row['expected_maintenance_wait_after_heartbeat_timeout_s']:g} s after "
            f"the heartbeat timeout (chance within the cap {row['chance_within_cap']})"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench redelivery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("systems", nargs="*", metavar="SYSTEM", help=", ".join(SYSTEMS))
    parser.add_argument(
        "--quick", action="store_true", help="taskpool and stock only, stock capped at 15 s"
    )
    for system in SYSTEMS:
        parser.add_argument(
            f"--cap-{system}",
            type=float,
            help=f"seconds to wait for {system}'s results (default {CAPS[system]:g})",
        )
    parser.add_argument(
        "--out",
        type=Path,
        help="where the results go (default: bench/results; with --quick, a temp directory)",
    )
    args = parser.parse_args()
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    selected = [s for s in SYSTEMS if s in args.systems] or list(SYSTEMS)
    caps = dict(CAPS)
    if args.quick:
        selected = [s for s in selected if s != "dramatiq"]
        caps["stock"] = QUICK_STOCK_CAP
    for system in SYSTEMS:
        cap = getattr(args, f"cap_{system}")
        if cap is not None:
            caps[system] = cap
    stack = Stack()
    print(f"private redis-server on port {stack.redis.port}; logs in {stack.workdir}")
    stack.redis.start()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    rows: dict[str, dict[str, Any]] = {}
    try:
        for system in selected:
            rows[system] = trial(stack, system, caps[system])
    finally:
        stack.close()
    print(f"measured in {time.monotonic() - started:.0f} s")
    payload = {
        "tasks": TASKS,
        "task_seconds": TASK_SECONDS,
        "versions": {"redis_server": redis_version(stack), **package_versions()},
        "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "tree": tree(),
        "systems": rows,
    }
    if args.out is None and not args.quick:
        path = write("redelivery.json", payload)
    else:
        out = args.out or stack.workdir / "results"
        out.mkdir(parents=True, exist_ok=True)
        path = out / "redelivery.json"
        path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
