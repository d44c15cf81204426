"""The local runner: real pool processes, the AsyncResult API, and a clean exit."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, states
from celery.exceptions import MaxRetriesExceededError, SoftTimeLimitExceeded, TaskRevokedError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import EncodeError

import taskpool
import tasks
from taskpool import (
    FallbackTask,
    LocalPoolError,
    LocalResult,
    LocalRunner,
    MapItemFailed,
    RetryInMap,
    current_settings,
)
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tests.support.paths import REPO_ROOT

local_app = Celery(
    "local_app",
    broker=f"redis://127.0.0.1:{free_port()}/0",
    backend=f"redis://127.0.0.1:{free_port()}/0",
    task_cls=FallbackTask,
)


@local_app.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@local_app.task(soft_time_limit=0.5, time_limit=5)
def overrun() -> str:
    time.sleep(3)
    return "finished"


@local_app.task
def returns_a_set() -> set[int]:
    return {1, 2}


@local_app.task
def sum_of_squares(n: int) -> int:
    """A task that calls another task: inside a pool process the inner calls run inline."""
    return sum(tasks.square.apply_async((i,), dispatch="local").get() for i in range(n))


@pytest.fixture
def runner() -> LocalRunner:
    return LocalRunner(tasks.app)


def test_mapping_square_by_name_gives_the_squares_in_order(runner: LocalRunner) -> None:
    assert runner.map("tasks.square", [1, 2, 3, 4, 5]) == [1, 4, 9, 16, 25]
    assert runner.map(tasks.square, range(20)) == [i * i for i in range(20)]


def test_an_unknown_task_name_is_refused_with_the_known_ones(runner: LocalRunner) -> None:
    with pytest.raises(LocalPoolError, match="no task named 'tasks.cube'.*tasks.square"):
        runner.submit("tasks.cube", (2,))


def test_the_pool_is_created_once_and_reused(runner: LocalRunner) -> None:
    first = {r["pid"] for r in runner.map("tasks.print_number", range(8))}
    second = {r["pid"] for r in runner.map("tasks.print_number", range(8))}
    assert os.getpid() not in first
    assert len(first | second) <= current_settings().processes  # the same processes both times


def test_a_local_result_has_the_async_result_api(runner: LocalRunner) -> None:
    result = runner.submit("tasks.square", (8,), task_id="fixed-id")
    assert isinstance(result, LocalResult)
    assert result.id == result.task_id == "fixed-id"
    assert result.get(timeout=5) == 64
    assert result.ready() and result.successful() and not result.failed()
    assert result.state == result.status == states.SUCCESS
    assert result.result == 64 and result.traceback is None


def test_a_failure_re_raises_the_tasks_own_exception(runner: LocalRunner) -> None:
    result = runner.submit("tasks.square", ("eight",))
    with pytest.raises(TypeError, match="expected an int, got str"):
        result.get(timeout=5)
    assert result.failed() and not result.successful()
    assert result.state == states.FAILURE
    assert isinstance(result.result, TypeError)
    assert "TypeError" in (result.traceback or "")
    assert isinstance(result.get(timeout=5, propagate=False), TypeError)


def test_get_raises_celerys_timeout_error_and_the_run_still_finishes() -> None:
    result = nap.apply_async((1.0,), dispatch="local")
    assert result.state == states.PENDING and not result.ready()
    with pytest.raises(CeleryTimeoutError):
        result.get(timeout=0.1)
    assert result.get(timeout=10) == 1.0


def test_arguments_must_survive_json_as_they_would_through_a_broker() -> None:
    with pytest.raises(EncodeError):
        tasks.square.apply_async((object(),), dispatch="local")
    assert tasks.square.apply_async(((3),), dispatch="local").get(timeout=5) == 9


def test_a_result_json_cannot_carry_fails_as_it_would_on_a_worker() -> None:
    result = returns_a_set.apply_async(dispatch="local")
    with pytest.raises(EncodeError):
        result.get(timeout=5)


def test_the_soft_time_limit_is_raised_inside_a_local_run() -> None:
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        overrun.apply_async(dispatch="local").get(timeout=10)
    assert time.monotonic() - started < 2.5


def test_a_task_calling_tasks_inside_a_pool_process_runs_them_inline() -> None:
    assert sum_of_squares.apply_async((5,), dispatch="local").get(timeout=10) == 30


def test_a_countdown_delays_a_local_run() -> None:
    started = time.monotonic()
    assert tasks.square.apply_async((4,), countdown=0.5, dispatch="local").get(timeout=5) == 16
    assert time.monotonic() - started >= 0.5


def local_env(**settings: str) -> dict[str, str]:
    """This environment, with the local pool and the repository's tasks importable."""
    return {**os.environ, "TASKPOOL_DISPATCH": "local", "PYTHONPATH": str(REPO_ROOT), **settings}


def start_script(tmp_path: Path, source: str, *argv: str) -> subprocess.Popen[str]:
    """A script in the background, in a process group of its own (its pool processes too),
    with Ctrl-C's signal handled as a terminal leaves it: a shell's background job, which a CI
    runner may be, starts with SIGINT ignored, and the script would inherit that."""
    script = tmp_path / "script.py"
    script.write_text(source)
    return subprocess.Popen(
        [sys.executable, str(script), *argv], cwd=tmp_path, env=local_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_script(process: subprocess.Popen[str]) -> None:
    """Whatever is left of a ``start_script`` group is killed, and its pipes are closed (left
    open, they are collected later, as a ResourceWarning in another test)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with process:  # closes stdout and stderr, then waits
        pass


def run_script(tmp_path: Path, body: str, **settings: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = local_env(**settings)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_pool_shuts_down_at_exit_leaving_no_process_behind(tmp_path: Path) -> None:
    done = run_script(
        tmp_path,
        """
        import os
        from tasks import print_number, square
        if __name__ == "__main__":
            assert square.delay(3).get(timeout=10) == 9
            pids = [print_number.delay(n).get(timeout=10)["pid"] for n in range(4)]
            assert os.getpid() not in pids, "a guarded script runs tasks in pool processes"
            print(" ".join(map(str, pids)))
            slow = print_number.apply_async((99,), countdown=1.0)  # running at exit: must finish
        """,
    )
    assert done.returncode == 0, done.stderr
    listed = [line for line in done.stdout.splitlines() if not line.startswith("Process ID")]
    pids = {int(p) for p in listed[-1].split()}
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 5, "the pool to exit")
    assert done.stdout.rstrip().endswith("Number: 99")  # the pending run finished, not dropped


#: A script line that starts a thread before any task is called, so the pool uses the fork server.
START_A_THREAD = (
    "import threading; threading.Thread(target=threading.Event().wait, daemon=True).start()"
)

#: A script line that keeps a connected socket open, as a caller that used its broker does.
HOLD_A_SOCKET = "import socket; held = socket.socketpair()"

UNGUARDED_SCRIPT = """
import os
import taskpool
from tasks import print_number, square
print("result", square.delay(6).get(timeout=10))
print("map", taskpool.map(square, range(5)))
print("same process", print_number.delay(1).get(timeout=10)["pid"] == os.getpid())
"""


@pytest.mark.parametrize(
    ("first_line", "in_the_caller"),
    [
        # Forked pool processes do not import the script again: the tasks run in parallel.
        ("", False),
        # Fork server children would import it again: the tasks run in the caller, with a warning.
        (START_A_THREAD, True),
    ],
    ids=["single-threaded", "threaded"],
)
def test_an_unguarded_script_runs_each_line_once(
    tmp_path: Path, first_line: str, in_the_caller: bool
) -> None:
    done = run_script(tmp_path, first_line + UNGUARDED_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "result 36",
        "map [0, 1, 4, 9, 16]",
        "Process ID: " + done.stdout.split("Process ID: ")[1].split()[0] + " - Number: 1",
        f"same process {in_the_caller}",
    ]
    warning = f"{tmp_path / 'script.py'}:5 calls a task outside"
    assert done.stderr.count("calls a task outside") == (1 if in_the_caller else 0)
    assert (warning in done.stderr) is in_the_caller


#: Prints how the script's pool processes were started, told by their command lines: a forked
#: child runs the caller's own, a fork server's child the fork server's, a spawned child its own.
HOW_POOL_PROCESSES_STARTED = """
import os
from pathlib import Path
from tasks import print_number
def started_by(pid):
    line = Path(f"/proc/{pid}/cmdline").read_bytes()
    if line == Path(f"/proc/{os.getpid()}/cmdline").read_bytes():
        return "fork"
    return "forkserver" if b"forkserver" in line else "spawn" if b"spawn" in line else "?"
if __name__ == "__main__":
    pids = {print_number.delay(n).get(timeout=10)["pid"] for n in range(4)}
    print("started by", " ".join(sorted({started_by(pid) for pid in pids})))
"""


@pytest.mark.parametrize(
    ("first_line", "setting", "method"),
    [
        ("", "auto", "fork"),
        (START_A_THREAD, "auto", "forkserver"),
        (HOLD_A_SOCKET, "auto", "forkserver"),
        ("", "forkserver", "forkserver"),
        ("", "spawn", "spawn"),
        (START_A_THREAD, "fork", "fork"),
    ],
)
def test_pool_processes_are_forked_only_from_a_single_threaded_caller_unless_configured(
    tmp_path: Path, first_line: str, setting: str, method: str
) -> None:
    """``auto`` forks only a single-threaded caller; TASKPOOL_LOCAL_START_METHOD overrides it."""
    done = run_script(
        tmp_path, first_line + HOW_POOL_PROCESSES_STARTED, TASKPOOL_LOCAL_START_METHOD=setting
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"started by {method}"


def test_a_caller_that_pinged_workers_over_redis_gets_fork_server_children(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The ping leaves a Redis connection open; a forked child stalled reading its reply."""
    ping = "from tasks import app; app.control.ping(timeout=0.2)"
    done = run_script(
        tmp_path,
        ping + HOW_POOL_PROCESSES_STARTED,
        TASKPOOL_BROKER_URL=redis_server.url(),
        TASKPOOL_RESULT_BACKEND=redis_server.url(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "started by forkserver"


def test_callbacks_and_chains_are_refused_locally_rather_than_dropped() -> None:
    with pytest.raises(LocalPoolError, match=r"link= \(a callback\) need the broker"):
        tasks.square.apply_async((2,), link=tasks.square.s(), dispatch="local")
    with pytest.raises(LocalPoolError, match=r"chain= \(a chain\) need the broker"):
        chain(tasks.square.s(2), tasks.square.s()).apply_async(dispatch="local")


def test_a_naive_eta_delays_a_local_run() -> None:
    started = time.monotonic()
    due = datetime.now() + timedelta(seconds=0.4)
    assert tasks.square.apply_async((5,), eta=due, dispatch="local").get(timeout=5) == 25
    assert time.monotonic() - started >= 0.3


NAPPER = """
import os, time
from pathlib import Path
from celery import Celery
from taskpool import FallbackTask

app = Celery("napper", task_cls=FallbackTask)


@app.task(name="napper.nap")
def nap(seconds, marker):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()
"""


def wait_for_pid(marker: Path, other_than: int = 0) -> int:
    """The pid a nap wrote, once one other than ``other_than`` has."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = marker.read_text() if marker.exists() else ""
        if text and int(text) != other_than:
            return int(text)
        time.sleep(0.02)
    raise AssertionError("no nap started")


@pytest.mark.parametrize("kills", [1, 2])
def test_a_killed_pool_process_reruns_its_call_once_then_fails_by_name(
    tmp_path: Path, kills: int
) -> None:
    (tmp_path / "napper.py").write_text(NAPPER)
    marker = tmp_path / "pid"
    process = start_script(
        tmp_path,
        "import sys, time\n"
        "from napper import nap\n"
        "if __name__ == '__main__':\n"
        f"    result = nap.delay(2.0, {str(marker)!r})\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        print('value', result.get(timeout=30))\n"
        "    except Exception as exc:\n"
        "        print('error', type(exc).__name__, exc)\n"
        "    print('seconds', round(time.monotonic() - started, 1))\n"
        "    print('after', nap.delay(0.0, sys.argv[1] + '.after').get(timeout=30))\n",
        str(marker),
    )
    try:
        victim = wait_for_pid(marker)
        os.kill(victim, signal.SIGKILL)
        if kills == 2:
            os.kill(wait_for_pid(marker, other_than=victim), signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        stop_script(process)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    if kills == 1:
        assert lines["value"].isdigit(), err  # ran again on a fresh pool
    else:
        assert lines["error"].startswith("LocalPoolError napper.nap: a local pool process was")
        assert "killed by signal 9 (SIGKILL)" in lines["error"]
    assert float(lines["seconds"]) < 15  # noticed at once, not after a timeout
    assert lines["after"].isdigit()  # the pool keeps serving


def test_pool_processes_that_cannot_start_fail_the_call_fast_without_a_respawn_storm(
    tmp_path: Path,
) -> None:
    done = run_script(
        tmp_path,
        """
        import time
        if __name__ != "__main__":  # a spawned pool process imports the script again
            raise RuntimeError("this pool process cannot start")
        from tasks import square
        if __name__ == "__main__":
            started = time.monotonic()
            try:
                square.delay(3).get(timeout=30)
            except Exception as exc:
                print(type(exc).__name__, exc)
            print("seconds", round(time.monotonic() - started, 1))
        """,
        TASKPOOL_LOCAL_START_METHOD="spawn",
        TASKPOOL_CONCURRENCY="2",
    )
    assert done.returncode == 0, done.stderr
    first, seconds = done.stdout.splitlines()[-2:]
    assert first.startswith("LocalPoolError tasks.square: a local pool process exited with code 1")
    assert float(seconds.split()[1]) < 20
    # Each of the two attempts started its two processes once: no respawn storm.
    assert done.stderr.count("this pool process cannot start") <= 4


def test_pool_processes_exit_when_their_caller_is_killed(tmp_path: Path) -> None:
    caller = start_script(
        tmp_path,
        "import time\n"
        "from tasks import print_number\n"
        "if __name__ == '__main__':\n"
        "    pids = {print_number.delay(n).get(timeout=10)['pid'] for n in range(6)}\n"
        "    print(' '.join(map(str, pids)), flush=True)\n"
        "    time.sleep(60)\n",
    )
    try:
        assert caller.stdout is not None
        line = next(line for line in caller.stdout if not line.startswith("Process ID"))
        pids = [int(pid) for pid in line.split()]
        caller.kill()  # SIGKILL: no atexit, no pool shutdown
        caller.wait(10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        for pid in left:  # stopped here, by PID, whatever the verdict
            os.kill(pid, signal.SIGKILL)
        assert not left, f"orphaned pool processes {left}"
    finally:
        stop_script(caller)


def test_an_expired_call_is_revoked_as_on_a_worker_and_does_not_run() -> None:
    past = datetime.now(tz=tasks.app.timezone) - timedelta(seconds=1)
    for expires in (past, past.isoformat()):
        result = tasks.square.apply_async((4,), expires=expires, dispatch="local")
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=10)
        assert result.state == states.REVOKED
    # Expiring while its countdown runs: not started either.
    late = tasks.square.apply_async((4,), countdown=0.5, expires=0.2, dispatch="local")
    with pytest.raises(TaskRevokedError):
        late.get(timeout=10)
    assert tasks.square.apply_async((4,), expires=60, dispatch="local").get(timeout=10) == 16


def test_a_per_call_time_limit_is_honoured_on_the_local_pool() -> None:
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        nap.apply_async((3.0,), soft_time_limit=0.3, dispatch="local").get(timeout=10)
    assert time.monotonic() - started < 2.5


def test_revoke_withdraws_a_call_that_has_not_started_and_date_done_says_when_one_ended() -> None:
    busy = [nap.apply_async((0.5,), dispatch="local") for _ in range(6)]
    last = nap.apply_async((0.0,), dispatch="local")
    last.revoke()
    assert last.state == states.REVOKED
    with pytest.raises(TaskRevokedError, match="revoked"):
        last.get(timeout=10)
    assert [r.get(timeout=30) for r in busy] == [0.5] * 6
    done = busy[0].date_done
    assert done is not None and done <= datetime.now(tz=timezone.utc)
    assert busy[0].children is None and busy[0].parent is None


def test_a_countdown_waits_on_a_timer_not_in_a_pool_process() -> None:
    processes = current_settings().processes
    delayed = [
        tasks.square.apply_async((n,), countdown=1.5, dispatch="local") for n in range(processes)
    ]
    started = time.monotonic()
    assert tasks.square.apply_async((9,), dispatch="local").get(timeout=10) == 81
    assert time.monotonic() - started < 1.0  # not queued behind the delayed calls
    assert not any(result.ready() for result in delayed)
    assert [result.get(timeout=10) for result in delayed] == [n * n for n in range(processes)]


def test_revoking_a_delayed_call_means_it_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "napper.py").write_text(NAPPER)
    done = run_script(
        tmp_path,
        f"""
        from napper import nap
        if __name__ == "__main__":
            result = nap.apply_async((0.0, {str(marker)!r}), countdown=0.5)
            result.revoke()
            print(result.state)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["REVOKED"]
    assert not marker.exists()


@local_app.task(bind=True)
def reports_progress(self: Any, steps: int) -> int:
    for step in range(steps):
        self.update_state(state="PROGRESS", meta={"step": step})
        time.sleep(0.3)
    return steps


def test_update_state_on_the_local_pool_reaches_the_callers_result() -> None:
    result = reports_progress.apply_async((4,), dispatch="local")
    wait_for(
        lambda: result.state == "PROGRESS" and result.info in ({"step": 1}, {"step": 2}),
        10, "a progress report",
    )  # fmt: skip
    assert result.get(timeout=10) == 4
    assert result.state == states.SUCCESS and result.info == 4


@local_app.task(bind=True, max_retries=3)
def fails_then_succeeds(self: Any, log: str, failures: int, countdown: float) -> int:
    """Logs each run's start and process, retries ``failures`` times, then returns its retries."""
    with open(log, "a") as out:
        out.write(f"{time.time()} {os.getpid()}\n")
    if self.request.retries < failures:
        raise self.retry(countdown=countdown)
    return int(self.request.retries)


@local_app.task(
    bind=True, autoretry_for=(ValueError,), retry_backoff=1, retry_jitter=False, max_retries=2
)
def backs_off(self: Any, log: str) -> str:
    with open(log, "a") as out:
        out.write(f"{time.time()} {os.getpid()}\n")
    if self.request.retries < 2:
        raise ValueError("not yet")
    return "done"


def runs_logged(log: Path) -> list[tuple[float, int]]:
    return [
        (float(t), int(pid))
        for t, pid in (line.split() for line in log.read_text().split("\n") if line)
    ]


def test_a_retry_on_the_local_pool_waits_its_countdown_and_counts_its_retries(
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs"
    result = fails_then_succeeds.apply_async((str(log), 2, 1.0), dispatch="local")
    wait_for(lambda: result.state == states.RETRY, 10, "the RETRY state between runs")
    assert result.get(timeout=30) == 2  # the last run saw request.retries == 2, as on a worker
    runs = runs_logged(log)
    assert len(runs) == 3
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(runs)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # Celery's eager mode retries at once
    assert all(pid != os.getpid() for _, pid in runs)


def test_max_retries_ends_a_local_call_as_on_a_worker(tmp_path: Path) -> None:
    result = fails_then_succeeds.apply_async((str(tmp_path / "runs"), 10, 0.1), dispatch="local")
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=30)
    assert result.state == states.FAILURE
    assert len(runs_logged(tmp_path / "runs")) == 4  # the first run and max_retries=3 more


def test_autoretry_with_backoff_on_the_local_pool_waits_longer_each_time(tmp_path: Path) -> None:
    log = tmp_path / "runs"
    assert backs_off.apply_async((str(log),), dispatch="local").get(timeout=30) == "done"
    runs = runs_logged(log)
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(runs)]
    # retry_backoff=1 without jitter: 1 s, then 2 s, as Celery computes them on a worker.
    assert len(gaps) == 2 and gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps


def test_a_retry_waiting_its_countdown_holds_no_pool_process_and_can_be_revoked(
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs"
    processes = current_settings().processes
    waiting = [
        fails_then_succeeds.apply_async((str(log), 1, 30.0), dispatch="local")
        for _ in range(processes)
    ]
    wait_for(lambda: all(r.state == states.RETRY for r in waiting), 10, "every call retrying")
    # Every pool process would be asleep if retries waited inside them.
    assert nap.apply_async((0,), dispatch="local").get(timeout=10) == 0
    for result in waiting:
        result.revoke()
        assert result.state == states.REVOKED
    assert len(runs_logged(log)) == processes  # the revoked retries never ran


@local_app.task(bind=True)
def retries_at_two(self: Any, n: int) -> int:
    if n == 2:
        raise self.retry(countdown=1)
    return n


def test_self_retry_in_a_local_map_is_refused_by_name() -> None:
    with pytest.raises(RetryInMap, match=r"self\.retry\(\)") as caught:
        taskpool.map(retries_at_two, range(4), dispatch="local")
    assert isinstance(caught.value, MapItemFailed) and caught.value.index == 2
    values = taskpool.map(retries_at_two, range(4), dispatch="local", return_exceptions=True)
    assert values[:2] == [0, 1] and values[3] == 3 and isinstance(values[2], RetryInMap)


def test_ctrl_c_says_what_it_waits_for_and_a_second_stops_the_pool_at_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "napper.py").write_text(NAPPER)
    marker = tmp_path / "pid"
    process = start_script(
        tmp_path,
        "import sys, threading\n"
        "from napper import nap\n"
        "if __name__ == '__main__':\n"
        "    waited = nap.delay(60.0, sys.argv[1])\n"
        "    def wait():\n"
        "        try:\n"
        "            waited.get()\n"
        "        except Exception as exc:\n"
        "            print('waiter', type(exc).__name__, exc, flush=True)\n"
        "    threading.Thread(target=wait).start()\n"
        "    nap.delay(60.0, sys.argv[1] + '.2').get()\n",
        str(marker),
    )
    try:
        wait_for_pid(marker)
        wait_for_pid(marker.with_name("pid.2"))  # both naps run: the message counts two
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        assert process.stderr is not None
        said = process.stderr.readline()
        while "waiting up to" not in said and (line := process.stderr.readline()):
            said += line
        assert (
            "waiting up to 300s for 2 local task(s) to finish (Ctrl-C again stops them now)" in said
        ), f"exit code {process.poll()}, stderr: {said!r}"
        time.sleep(1)
        assert process.poll() is None  # the first Ctrl-C waits for the running tasks
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=15)  # the second stops them at once
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # no pool process is left in the group
    finally:
        stop_script(process)
    assert "waiter LocalPoolError napper.nap: the local pool was stopped (interrupted)" in out
    assert "Exception ignored" not in err
    assert err.count("Traceback") == 0, err  # the first Ctrl-C's was read above
