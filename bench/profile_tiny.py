"""Where taskpool's tiny tasks spend their time, on the client and (optionally) the worker.

``python -m bench profile-tiny [--n 20000] [--py-spy] [--out DIR]``: one private redis-server
and ``celery -A tasks worker -P prefork -c 2`` (the project's app, as ``python -m bench compare
tiny`` starts it), then a client in a fresh interpreter that runs the ``tiny`` workload (``n`` x
``square.delay(i)``, then every ``.get()`` in order) twice after a warm-up: once under
pyinstrument (a sampling profiler: the shares) and once under cProfile (the call counts, and
Redis commands per task). Each loop, enqueue and result collection, is profiled apart. With
``--py-spy``, ``py-spy record`` samples the worker and its pool processes during an unprofiled
round before those (it needs ptrace; where that is refused it says so and the rest runs).

Prints, for each loop: its seconds, the functions with the largest cumulative share of it
(each function counted once per stack), self time by package, and calls per task of the
functions that send to and read from Redis. The reports (pyinstrument text, cProfile stats,
py-spy's collapsed stacks) go to ``--out`` (default: a temp directory); the summary also to
``bench/results/profile_tiny.json``.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Functions whose calls per task are worth a line: Redis commands sent and replies read.
COUNTED = (
    ("redis/connection.py", "send_packed_command"),
    ("redis/connection.py", "read_response"),
    ("redis/client.py", "execute_command"),
    ("redis/client.py", "parse_response"),
    ("kombu/messaging.py", "publish"),
    ("redis/client.py", "subscribe"),
    ("redis/client.py", "unsubscribe"),
    ("celery/backends/redis.py", "on_task_call"),
    ("celery/backends/redis.py", "_consume_from"),
    ("redis/client.py", "get_message"),
    ("celery/backends/asynchronous.py", "drain_events"),
)

GET_TIMEOUT = 300.0
PY_SPY_RATE = 200


# --- the client: a fresh interpreter --------------------------------------------------------


def package_of(path: str) -> str:
    """``kombu``, ``celery``, ``redis``, ``taskpool``..., or ``stdlib:<module>``."""
    parts = Path(path).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    for root in ("taskpool", "tasks", "bench"):
        if root in parts:
            return root
    if path.startswith("<"):
        return path
    return f"stdlib:{Path(path).stem}"


def walk_pyinstrument(root: Any) -> dict[str, Any]:
    """Total seconds; per function, cumulative seconds (once per stack) and self seconds; self
    seconds by package.

    A built-in's time (a socket call, ``select``...) goes to the package of the Python code
    that called it.
    """
    cumulative: dict[str, float] = collections.defaultdict(float)
    own: dict[str, float] = collections.defaultdict(float)
    by_package: dict[str, float] = collections.defaultdict(float)

    def visit(frame: Any, on_stack: frozenset[str], owner: str, caller: str) -> None:
        if frame.is_synthetic:  # [self], [await]...: time spent in the parent itself
            by_package[caller] += frame.time
            own[owner] += frame.time
            return
        name = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        path = frame.file_path or ""
        if path.startswith("<"):  # a built-in: name it with its caller's package
            name = f"{frame.function} ({path}, from {caller})"
        else:
            caller = package_of(path)
        if name not in on_stack:
            cumulative[name] += frame.time
        for child in frame.children:
            visit(child, on_stack | {name}, name, caller)

    visit(root, frozenset(), "?", "?")

    def top(figures: dict[str, float], count: int) -> list[tuple[str, float]]:
        return sorted(figures.items(), key=lambda kv: -kv[1])[:count]

    return {
        "sampled_s": root.time,
        "cumulative": top(cumulative, 60),
        "self": top(own, 25),
        "self_by_package": top(by_package, 25),
    }


def client(n: int, out: Path, wait_spy: bool) -> None:
    """Runs in the fresh interpreter: warm-up, then the two profiled rounds."""
    from pyinstrument import Profiler

    import tasks

    square = tasks.square

    def enqueue(count: int) -> list[Any]:
        return [square.delay(i) for i in range(count)]

    def collect(pending: list[Any]) -> list[Any]:
        return [p.get(timeout=GET_TIMEOUT) for p in pending]

    def check(values: list[Any], count: int) -> None:
        if values != [i * i for i in range(count)]:
            raise AssertionError("wrong results")

    check(collect(enqueue(200)), 200)  # warm-up: imports, connections, the first SUBSCRIBE
    summary: dict[str, Any] = {"n": n}
    # Round 0, no profiler: the figures the profiles are to explain, and py-spy's window.
    py_spy_flag = out / "profile-now"
    if wait_spy:
        py_spy_flag.write_text("")
        deadline = time.monotonic() + 30
        while not (out / "spy-ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    started = time.perf_counter()
    plain = enqueue(n)
    sent = time.perf_counter()
    check(collect(plain), n)
    summary["plain"] = {"enqueue": sent - started, "collect": time.perf_counter() - sent}
    py_spy_flag.unlink(missing_ok=True)
    del plain
    # Round 1, pyinstrument: the shares (sampling, so the least distortion).
    pending: list[Any] = []

    def do_enqueue() -> None:
        pending.extend(enqueue(n))

    def do_collect() -> None:
        check(collect(pending), n)

    sections: list[tuple[str, Callable[[], Any]]] = [
        ("enqueue", do_enqueue),
        ("collect", do_collect),
    ]
    for name, run in sections:
        profiler = Profiler(interval=0.002)
        started = time.perf_counter()
        profiler.start()
        run()
        profiler.stop()
        seconds = time.perf_counter() - started
        session = profiler.last_session
        assert session is not None
        (out / f"pyinstrument-{name}.txt").write_text(
            profiler.output_text(unicode=False, color=False, show_all=True)
        )
        summary[name] = {"seconds": seconds, **walk_pyinstrument(session.root_frame())}
    pending.clear()
    # Round 2, cProfile: call counts (its overhead inflates the Python-heavy parts' time).
    for name, run in sections:
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        run()
        profile.disable()
        seconds = time.perf_counter() - started
        path = out / f"cprofile-{name}.pstats"
        profile.dump_stats(str(path))
        stats = pstats.Stats(str(path))
        counts: dict[str, int] = {}
        for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
            for suffix, wanted in COUNTED:
                if function == wanted and filename.endswith(suffix):
                    counts[f"{suffix}:{wanted}"] = counts.get(f"{suffix}:{wanted}", 0) + row[1]
        summary[name]["cprofile_seconds"] = seconds
        summary[name]["calls_per_task"] = {k: v / n for k, v in sorted(counts.items())}
        with (out / f"cprofile-{name}.txt").open("w") as text:
            pstats.Stats(str(path), stream=text).sort_stats("cumulative").print_stats(40)
    print(json.dumps(summary))


# --- the driver -----------------------------------------------------------------------------


def py_spy_available(pid: int, workdir: Path) -> str | None:
    """None if ``py-spy dump`` can read ``pid``; else why not."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        return "py-spy is not installed (pip install py-spy)"
    done = subprocess.run(
        [binary, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return f"py-spy dump failed: {(done.stderr or done.stdout).strip()[-400:]}"
    (workdir / "py-spy-dump.txt").write_text(done.stdout)
    return None


def summarize_collapsed(path: Path, main_pid: int) -> dict[str, dict[str, Any]]:
    """py-spy's collapsed stacks, for the worker's main process and for its pool processes:
    samples, cumulative share per function (once per stack) and self (leaf) share."""
    groups: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --subprocesses a child's stack starts with its parent's "process" entry too.
        processes = [f.split(":")[0][8:] for f in frames if f.startswith("process ")]
        pid = processes[-1] if processes else ""
        role = "main process" if pid == str(main_pid) else "pool processes"
        group = groups.setdefault(role, {"samples": 0, "pids": set(), "cumulative": {}, "self": {}})
        group["samples"] += count
        group["pids"].add(pid)
        names = [f for f in frames if not f.startswith(("process ", "thread "))]
        for name in set(names):
            group["cumulative"][name] = group["cumulative"].get(name, 0) + count
        if names:
            group["self"][names[-1]] = group["self"].get(names[-1], 0) + count
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--py-spy", action="store_true", help="also sample the worker (ptrace)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="taskpool-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.client:
        client(args.n, out, args.py_spy)
        return

    from bench.compare import Stack
    from bench.harness import REPO_ROOT, write

    stack = Stack()
    stack.redis.start()
    print(f"private redis-server on port {stack.redis.port}; reports in {out}", flush=True)
    spy: subprocess.Popen[bytes] | None = None
    try:
        with stack.worker("ours") as worker:
            worker_pid = worker.pid
            why_not = None
            if args.py_spy:
                why_not = py_spy_available(worker.pid, out)
                if why_not:
                    print(f"py-spy: {why_not}", flush=True)
            command = [sys.executable, "-m", "bench.profile_tiny", "--client"]
            command += ["--n", str(args.n), "--out", str(out)]
            if args.py_spy and not why_not:
                command.append("--py-spy")
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=stack.env("ours"), stdout=subprocess.PIPE, text=True
            )
            if args.py_spy and not why_not:
                while process.poll() is None and not (out / "profile-now").exists():
                    time.sleep(0.01)
                binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                spy = subprocess.Popen(
                    [binary, "record", "--pid", str(worker.pid), "--subprocesses", "--nolineno",
                     "--rate", str(PY_SPY_RATE), "--format", "raw",
                     "--output", str(out / "py-spy-worker.txt"), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                time.sleep(1.0)  # attached
                (out / "spy-ready").write_text("")
                while process.poll() is None and (out / "profile-now").exists():
                    time.sleep(0.01)
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                spy.wait(60)
            stdout, _ = process.communicate(timeout=1800)
            if process.returncode != 0:
                raise SystemExit(f"profile client failed (exit {process.returncode})")
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        stack.close()
    summary = json.loads(stdout.strip().splitlines()[-1])
    if spy is not None:
        summary.update(worker_pid=worker_pid, py_spy_rate=PY_SPY_RATE)
    summary["load_1min_after"] = round(os.getloadavg()[0], 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    path = write("profile_tiny.json", summary)
    report(summary, out)
    print(f"summary in {path}")


def report(summary: dict[str, Any], out: Path) -> None:
    n = summary["n"]
    for name in ("enqueue", "collect"):
        s = summary[name]
        title = "enqueue: square.delay(i)" if name == "enqueue" else "collect: .get() in order"
        plain = summary["plain"][name]
        print(
            f"\n{title}, {n:,} tasks: {plain:.2f} s unprofiled ({plain / n * 1e3:.3f} ms per "
            f"task); {s['seconds']:.2f} s under pyinstrument, {s['cprofile_seconds']:.2f} s under "
            "cProfile"
        )
        total = s["sampled_s"]
        print("  cumulative share (pyinstrument; the wrappers above 95% left out):")
        inner = [(f, t) for f, t in s["cumulative"] if t / total < 0.95]
        for function, seconds in inner[:25]:
            print(f"    {seconds / total:6.1%}  {function}")
        print("  self time by function:")
        for function, seconds in s["self"][:12]:
            print(f"    {seconds / total:6.1%}  {function}")
        print("  self time by package (a built-in's time goes to its caller's):")
        for package, seconds in s["self_by_package"][:8]:
            print(f"    {seconds / total:6.1%}  {package}")
        print("  calls per task (cProfile):")
        for function, per_task in s["calls_per_task"].items():
            print(f"    {per_task:6.2f}  {function}")
    collapsed = out / "py-spy-worker.txt"
    if collapsed.exists() and "worker_pid" in summary:
        rate = summary["py_spy_rate"]
        print(f"\nworker, py-spy at {rate}/s during the unprofiled round (busy samples only):")
        for role, group in sorted(summarize_collapsed(collapsed, summary["worker_pid"]).items()):
            samples = group["samples"]
            print(
                f"  {role} ({len(group['pids'])}): {samples} samples, about "
                f"{samples / rate:.1f} s busy; cumulative share (wrappers above 95% left out):"
            )
            ranked = sorted(group["cumulative"].items(), key=lambda kv: -kv[1])
            for function, count in [(f, c) for f, c in ranked if c / samples < 0.95][:15]:
                print(f"    {count / samples:6.1%}  {function}")
            print("   self (leaf) share:")
            for function, count in sorted(group["self"].items(), key=lambda kv: -kv[1])[:8]:
                print(f"    {count / samples:6.1%}  {function}")
    print(f"\nreports in {out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
