"""Where each task queue spends CPU per tiny task: client, worker processes, Redis.

``python -m bench cpu-share [--n 10000] [--rounds 2] [--impls ours,stock,...]`` (default: all
of ours, ours-fetching, stock, huey, dramatiq)

CPU time, not wall time: the machine is shared, and CPU seconds per task say what each
implementation costs whatever else runs beside it. One private ``redis-server`` and, per
implementation, its worker as ``python -m bench compare`` starts it (``Stack.worker``: ``celery
-A tasks worker -P prefork -c 2`` (``ours-fetching``: with ``TASKPOOL_WORKER_POOL=fetching``),
``celery -A bench.stock_app worker -P prefork -c 2``,
``huey_consumer ... -w 2 -k process -q``, ``dramatiq ... --processes 2 --threads 8``), each on
its own Redis database, the implementations taking turns round by round.

Each round of each implementation runs one fresh client interpreter (``--client IMPL``, below):
after the worker answered and the client got 200 warm-up results, the client waits; this
process reads the worker's and Redis's CPU over a 2 s idle window, then tells the client to go.
The client sends ``n`` x ``square(i)`` with ``send_and_get(impl)`` of bench/clients.py, then
collects every result in order and checks it, timing each loop with ``getrusage(RUSAGE_SELF)``
(user and system CPU of all its threads) and ``perf_counter`` (wall). Once it reports, and
before it exits, this process reads the CPU again ("after"), and once more a second later, to
show any work left behind the last result (e.g. an ack after the result).

What is read, from ``/proc/<pid>/stat``: ``utime + stime`` (all threads of the process) of
redis-server, and of every process of the worker: its main process and every descendant, found
by walking ``/proc/<pid>/task/*/children`` from the worker's PID, and, since the kernel warns
those lists can miss a child, every process in the worker's session (each worker is started
with ``start_new_session``), both at each reading. A process that exits between two readings
takes its CPU with it, except into its parent's ``cutime + cstime`` once reaped; so each
process counts as ``utime + stime + cutime + cstime`` and a process gone by "after" counts as
zero there: the sum over the worker is then exact for children reaped by a process of the
worker. Processes that exited in the window are listed in the results.

Per implementation, the median over rounds of: CPU ms per task of the client's send loop, its
collect loop, the worker's main process, its other processes (summed), redis-server, and the
total of those five (the median of each round's total); wall tasks/s (``n`` over send plus
collect). Prints the table; writes ``bench/results/cpu_share.json`` with every round's figures
and every process's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bench.harness import REPO_ROOT, tree, write
from bench.report import LABELS, table
from taskpool.testing.processes import terminate

if TYPE_CHECKING:
    from bench.compare import Stack

IMPLS = ("ours", "ours-fetching", "stock", "huey", "dramatiq")
#: Round trips before the measured window: imports, connections, the worker's first tasks.
WARM_UP = 200
#: Seconds of an idle worker read before the window, to tell idle polling from work.
IDLE_S = 2.0
#: Seconds read after the last result, for work the worker does after storing it.
SETTLE_S = 1.0
#: Bound on any one line the client owes us (its warm-up, or the whole measured run).
CLIENT_TIMEOUT_S = 900.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("client_send", "client_collect", "worker_main", "worker_children", "redis")


# --- the client, in a fresh interpreter --------------------------------------------------


def cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def client(impl: str, n: int) -> None:
    """Warm up, say ``ready``, wait for ``go``, send n, collect n; one JSON line; wait for EOF."""
    from bench.clients import expect_squares, send_and_get

    send, get = send_and_get(impl)
    warm = [send(i) for i in range(WARM_UP)]
    expect_squares([get(p) for p in warm], WARM_UP)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    cpu0, wall0 = cpu_s(), time.perf_counter()
    pending = [send(i) for i in range(n)]
    cpu1, wall1 = cpu_s(), time.perf_counter()
    values = [get(p) for p in pending]
    cpu2, wall2 = cpu_s(), time.perf_counter()
    expect_squares(values, n)
    figures = {
        "send_user_s": cpu1[0] - cpu0[0],
        "send_sys_s": cpu1[1] - cpu0[1],
        "send_wall_s": wall1 - wall0,
        "collect_user_s": cpu2[0] - cpu1[0],
        "collect_sys_s": cpu2[1] - cpu1[1],
        "collect_wall_s": wall2 - wall1,
    }
    print(json.dumps(figures), flush=True)
    # Alive and idle until the parent has read the worker's and Redis's CPU after the run.
    sys.stdin.read()


# --- reading CPU from /proc ----------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process at one reading; CPU in clock ticks."""

    pid: int
    start: int  # start time: with the PID, tells a reused PID from the process read before
    ppid: int
    session: int
    user: int
    sys: int
    reaped_user: int  # cutime: exited children this process has waited for
    reaped_sys: int  # cstime
    command: str
    found_by: str = ""

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces: the fields start after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return Proc(
        pid=pid,
        start=int(fields[19]),
        ppid=int(fields[1]),
        session=int(fields[3]),
        user=int(fields[11]),
        sys=int(fields[12]),
        reaped_user=int(fields[13]),
        reaped_sys=int(fields[14]),
        command=command or stat[stat.index("(") : stat.rindex(")") + 1],
    )


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.update(int(child) for child in listing.read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def worker_processes(root: int) -> dict[int, str]:
    """Every process of the worker: its descendants, and its session's; each with how found."""
    found = {root: "root"}
    todo = [root]
    while todo:
        for child in children(todo.pop()) - found.keys():
            found[child] = "tree"
            todo.append(child)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in found:
            proc = read_proc(int(entry.name))
            if proc is not None and proc.session == root:
                found[proc.pid] = "session only"
    return found


@dataclass(frozen=True)
class Reading:
    at: float
    worker: dict[tuple[int, int], Proc]
    redis: Proc


def reading(worker_pid: int, redis_pid: int) -> Reading:
    worker = {}
    for pid, how in worker_processes(worker_pid).items():
        proc = read_proc(pid)
        if proc is not None:
            worker[proc.key] = replace(proc, found_by=how)
    redis = read_proc(redis_pid)
    if redis is None:
        raise RuntimeError("redis-server is gone")
    return Reading(time.perf_counter(), worker, redis)


def ticks(proc: Proc | None) -> tuple[int, int, int, int]:
    """User, system, reaped user, reaped system; zeros for a process absent at that reading."""
    if proc is None:
        return 0, 0, 0, 0
    return proc.user, proc.sys, proc.reaped_user, proc.reaped_sys


def change_ms(old: Proc | None, new: Proc | None) -> tuple[float, ...]:
    return tuple((b - a) * 1000 / TICKS_PER_S for a, b in zip(ticks(old), ticks(new), strict=True))


def worker_cpu(before: Reading, after: Reading, root: int) -> dict[str, Any]:
    """CPU ms between two readings: the main process, the others, and each process.

    What the main process reaped from exited children is theirs, so it counts to the others.
    """
    main = {"user": 0.0, "sys": 0.0}
    rest = {"user": 0.0, "sys": 0.0}
    processes = []
    for key in before.worker.keys() | after.worker.keys():
        old, new = before.worker.get(key), after.worker.get(key)
        proc = new or old
        assert proc is not None
        user, sys_, reaped_user, reaped_sys = change_ms(old, new)
        if proc.pid == root:
            main["user"] += user
            main["sys"] += sys_
        else:
            rest["user"] += user
            rest["sys"] += sys_
        rest["user"] += reaped_user
        rest["sys"] += reaped_sys
        processes.append(
            {
                "pid": proc.pid,
                "ppid": proc.ppid,
                "role": "main" if proc.pid == root else "child",
                "found_by": proc.found_by,
                "state": "exited" if new is None else "started" if old is None else "ran",
                "user_ms": user,
                "sys_ms": sys_,
                "reaped_ms": reaped_user + reaped_sys,
                "command": proc.command[:160],
            }
        )
    processes.sort(key=lambda p: (p["role"] != "main", p["pid"]))
    return {"main": main, "children": rest, "processes": processes}


def redis_cpu(before: Reading, after: Reading) -> dict[str, float]:
    user, sys_, reaped_user, reaped_sys = change_ms(before.redis, after.redis)
    return {"user": user + reaped_user, "sys": sys_ + reaped_sys}


def total(part: dict[str, float]) -> float:
    return part["user"] + part["sys"]


# --- one round of one implementation -----------------------------------------------------


def read_line(process: subprocess.Popen[bytes], timeout: float, log: Path) -> str:
    """The client's next line on stdout, or an error with its stderr if it dies or stalls."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout):
            line = process.stdout.readline().decode()
            if line:
                return line.strip()
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise RuntimeError(f"client gave no line in {timeout:g} s (exit {process.poll()}):\n{tail}")


def tell(stream: IO[bytes] | None, text: str) -> None:
    assert stream is not None
    stream.write(text.encode())
    stream.flush()


def measure(stack: Stack, impl: str, n: int, index: int) -> dict[str, Any]:
    """One worker, one client: the CPU of each process over the client's send and collect."""
    log = stack.workdir / f"client-{impl}-{index}.log"
    command = [sys.executable, "-m", "bench.cpu_share", "--client", impl, "--n", str(n)]
    with stack.worker(impl) as worker, log.open("ab") as stderr:
        client_process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=stack.env(impl), bufsize=0,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
        try:
            if read_line(client_process, CLIENT_TIMEOUT_S, log) != "ready":
                raise RuntimeError(f"{impl} client did not say ready")
            idle = reading(worker.pid, stack.redis.pid)
            time.sleep(IDLE_S)
            before = reading(worker.pid, stack.redis.pid)
            tell(client_process.stdin, "go\n")
            figures = json.loads(read_line(client_process, CLIENT_TIMEOUT_S, log))
            after = reading(worker.pid, stack.redis.pid)
            time.sleep(SETTLE_S)
            settled = reading(worker.pid, stack.redis.pid)
        finally:
            if client_process.stdin is not None:
                client_process.stdin.close()  # its end of file: the client exits by itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                client_process.wait(10)
            terminate(client_process, 10)
    cpu = worker_cpu(before, after, worker.pid)
    idle_s, settle_s = before.at - idle.at, settled.at - after.at
    idle_worker = worker_cpu(idle, before, worker.pid)
    late_worker = worker_cpu(after, settled, worker.pid)
    wall = figures["send_wall_s"] + figures["collect_wall_s"]
    return {
        "impl": impl,
        "round": index,
        "n": n,
        "client": figures,
        "wall_s": wall,
        "window_s": after.at - before.at,
        "tasks_per_s": n / wall,
        "cpu_ms": {
            "client_send": {
                "user": figures["send_user_s"] * 1000,
                "sys": figures["send_sys_s"] * 1000,
            },
            "client_collect": {
                "user": figures["collect_user_s"] * 1000,
                "sys": figures["collect_sys_s"] * 1000,
            },
            "worker_main": cpu["main"],
            "worker_children": cpu["children"],
            "redis": redis_cpu(before, after),
        },
        "processes": cpu["processes"],
        "idle_ms_per_s": {
            "worker": (total(idle_worker["main"]) + total(idle_worker["children"])) / idle_s,
            "redis": total(redis_cpu(idle, before)) / idle_s,
        },
        "after_last_result_ms": {
            "seconds": settle_s,
            "worker": total(late_worker["main"]) + total(late_worker["children"]),
            "redis": total(redis_cpu(after, settled)),
        },
    }


# --- summary -----------------------------------------------------------------------------


def per_task(run: dict[str, Any]) -> dict[str, float]:
    """CPU ms per task of each component and their total, for one round."""
    out = {c: total(run["cpu_ms"][c]) / run["n"] for c in COMPONENTS}
    out["total"] = sum(out[c] for c in COMPONENTS)
    out["sys_total"] = sum(run["cpu_ms"][c]["sys"] for c in COMPONENTS) / run["n"]
    # How many of the 2 CPUs the five kept busy over the window: near 2, the run was CPU-bound.
    out["cpus_busy"] = out["total"] * run["n"] / 1000 / run["window_s"]
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for impl in dict.fromkeys(r["impl"] for r in runs):
        mine = [r for r in runs if r["impl"] == impl]
        rounds = [per_task(r) for r in mine]
        summary[impl] = {key: statistics.median(p[key] for p in rounds) for key in rounds[0]}
        summary[impl]["tasks_per_s"] = statistics.median(r["tasks_per_s"] for r in mine)
    return summary


def render(summary: dict[str, dict[str, float]]) -> str:
    header = ["implementation", "wall tasks/s", "client send", "client collect", "worker main"]
    header += ["worker children", "redis", "total", "of which system", "CPUs busy"]
    rows = [
        [
            LABELS[impl],
            f"{s['tasks_per_s']:,.0f}",
            *(f"{s[c]:.3f}" for c in (*COMPONENTS, "total", "sys_total")),
            f"{s['cpus_busy']:.2f}",
        ]
        for impl, s in summary.items()
    ]
    return table(header, rows)


def process_note(process: dict[str, Any], n: int) -> str:
    """``main 123 0.412``; a child also says if it started or exited, or was found by session."""
    odd = [v for v in (process["state"], process["found_by"]) if v not in ("ran", "tree", "root")]
    extra = f" ({', '.join(odd)})" if odd else ""
    per_task = (process["user_ms"] + process["sys_ms"]) / n
    return f"{process['role']} {process['pid']}{extra} {per_task:.3f}"


def note(run: dict[str, Any]) -> str:
    """One round: each worker process's CPU ms per task, the idle rates, the work after."""
    procs = ", ".join(process_note(p, run["n"]) for p in run["processes"])
    idle, late = run["idle_ms_per_s"], run["after_last_result_ms"]
    return (
        f"{run['impl']} round {run['round'] + 1}: {run['tasks_per_s']:,.0f} tasks/s; "
        f"worker CPU ms/task by process: {procs}; idle CPU ms/s: worker {idle['worker']:.1f}, "
        f"redis {idle['redis']:.1f}; in the {late['seconds']:.1f} s after the last result: "
        f"worker {late['worker']:.0f} ms, redis {late['redis']:.0f} ms"
    )


# --- the run -----------------------------------------------------------------------------


def run(n: int, rounds: int, impls: list[str]) -> None:
    # Imported here, not at the top: the client (``--client``) needs none of the server side.
    from bench.compare import Stack, package_versions, redis_version

    stack = Stack()
    print(f"private redis-server on port {stack.redis.port}; logs in {stack.workdir}", flush=True)
    stack.redis.start()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    runs = []
    try:
        for index in range(rounds):
            for impl in impls:
                print(f"  round {index + 1}: {impl} ...", flush=True)
                runs.append(measure(stack, impl, n, index))
                print("    " + note(runs[-1]), flush=True)
    finally:
        stack.close()
    seconds = time.perf_counter() - started
    summary = summarize(runs)
    print(f"\nmeasured in {seconds:.0f} s; CPU ms per task, median of {rounds} rounds\n")
    print(render(summary))
    path = write(
        "cpu_share.json",
        {
            "command": " ".join(["python -m bench cpu-share", *sys.argv[1:]]),
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tree": tree(),
            "versions": {"redis_server": redis_version(stack), **package_versions()},
            # Other work on the machine skews wall time (less so CPU time): the load around it.
            "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "n": n,
            "rounds": rounds,
            "seconds": seconds,
            "summary_ms_per_task": summary,
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench cpu-share",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=10_000, help="tasks per round (default 10,000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="default: " + ",".join(IMPLS))
    parser.add_argument("--client", metavar="IMPL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.n)
        return
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        parser.error(f"unknown implementation {', '.join(unknown)}; choose from {', '.join(IMPLS)}")
    run(args.n, args.rounds, impls)


if __name__ == "__main__":
    main()
