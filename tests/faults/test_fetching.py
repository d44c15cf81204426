"""The fetching pool (``TASKPOOL_WORKER_POOL=fetching``) keeps what the prefork pool gives: time
limits, revoke-terminate, a dead process replaced and its task settled, per-process limits.

Each test starts a real ``celery -A tasks worker`` with the pool chosen by the setting alone,
and kills, revokes and times out for real. Shutdowns and a whole worker lost are the same tests
as the prefork pool's (tests/faults/test_worker_loss.py, parametrized by pool).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_py
from celery import states
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.held import held_count
from taskpool.testing.probe_tasks import PIDS, STARTED
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT
from tests.support.script_calls import ScriptCalls

PROBE = ("-I", "taskpool.testing.probe_tasks")
FETCHING = {"TASKPOOL_WORKER_POOL": "fetching", "PYTHONPATH": str(REPO_ROOT)}

Start = Callable[..., CeleryWorker]


def start(
    redis: RedisServer, worker_factory: Start, name: str, concurrency: int = 2, **env: str
) -> CeleryWorker:
    return worker_factory(redis.url(), node_name(name), concurrency, PROBE, **FETCHING, **env)


def running_in(worker: CeleryWorker, client: redis_py.Redis, runs: int) -> int:
    """The process of ``worker`` running the task, once ``runs`` tasks have started."""
    wait_for(lambda: client.llen(STARTED) >= runs, 30, f"{runs} task(s) to start")
    pid = int(client.lrange(PIDS, runs - 1, runs - 1)[0])
    assert pid in worker.pool_pids()
    return pid


def nothing_held(client: redis_py.Redis) -> bool:
    return held_count(client) == 0


def replaced(worker: CeleryWorker, gone: int, count: int) -> None:
    wait_for(
        lambda: gone not in worker.pool_pids() and len(worker.pool_pids()) == count,
        15,
        f"process {gone} to be replaced",
    )


def test_tasks_run_in_processes_that_fetch_their_own_and_the_parent_takes_none(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "fetcher")
    app = client_app(redis.url(), dispatch="celery")
    results = [app.send_task("probe.where", args=(n, 0.05)) for n in range(20)]
    nodes = {r.get(timeout=30) for r in results}
    name, host = worker.node.split("@")
    assert nodes <= {f"{name}-1@{host}", f"{name}-2@{host}"}
    assert len(nodes) == 2, "both processes should have fetched work"
    assert "concurrency: 2 (fetching)" in worker.log_tail(100_000)
    stats = app.control.inspect([worker.node], timeout=2).stats() or {}
    assert sorted(stats[worker.node]["pool"]["processes"]) == sorted(worker.pool_pids())


def test_a_task_past_its_hard_time_limit_fails_as_on_prefork_and_its_process_is_replaced(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "hard")
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port)
    result = app.send_task("probe.record", args=(1, 60), time_limit=1)
    victim = running_in(worker, client, 1)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)
    assert result.state == states.FAILURE
    replaced(worker, victim, 2)
    wait_for(lambda: held_count(client) == 0, 10, "the timed-out message to be acked")
    assert "Hard time limit (1s) exceeded for probe.record" in worker.log_tail(100_000)
    assert app.send_task("probe.power", args=(2, 10)).get(timeout=15) == 1024


def test_a_task_past_its_soft_time_limit_sees_the_exception_in_the_same_process(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "soft")
    app = client_app(redis.url(), dispatch="celery")
    before = worker.pool_pids()
    result = app.send_task("probe.nap", args=(4,))  # soft_time_limit=1
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=15)
    assert worker.pool_pids() == before, "a soft limit must not cost the process"
    assert "Soft time limit (1s) exceeded for probe.nap" in worker.log_tail(100_000)


def test_revoke_with_terminate_stops_the_running_task_and_stores_it_revoked(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "revoker")
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port)
    result = app.send_task("probe.record", args=(7, 60))
    victim = running_in(worker, client, 1)
    app.control.revoke(result.id, terminate=True)
    wait_for(lambda: result.state == states.REVOKED, 15, "the task to be stored revoked")
    replaced(worker, victim, 2)
    wait_for(lambda: client.llen("celery") == 0 and held_count(client) == 0, 15, "no copy left")
    time.sleep(1)
    assert client.llen(STARTED) == 1, "a terminated task must not run again"


def test_revoke_by_stamped_headers_with_terminate_stops_the_running_task(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "stamps")
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port)
    result = app.send_task("probe.record", args=(8, 60), stamped_headers=["batch"], batch="b1")
    victim = running_in(worker, client, 1)
    app.control.revoke_by_stamped_headers({"batch": "b1"}, terminate=True)
    wait_for(lambda: result.state == states.REVOKED, 15, "the task to be stored revoked")
    replaced(worker, victim, 2)


def test_a_queue_added_by_remote_control_reaches_the_processes_and_their_replacements(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "added", 1, TASKPOOL_MAX_TASKS_PER_CHILD="2")
    app = client_app(redis.url(), dispatch="celery")
    replies = app.control.add_consumer("extra", destination=[worker.node], reply=True, timeout=5)
    assert "forwarded" in str(replies)
    first = app.send_task("probe.power", args=(2, 0), queue="extra")
    assert first.get(timeout=30) == 1
    # Past two tasks the process is replaced: its successor must consume "extra" too.
    results = [app.send_task("probe.power", args=(2, n), queue="extra") for n in range(1, 5)]
    assert [r.get(timeout=30) for r in results] == [2, 4, 8, 16]


def test_a_process_killed_mid_task_is_replaced_and_its_task_runs_again(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(redis, worker_factory, "killed")
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port)
    result = app.send_task("probe.record", args=(3, 2))
    victim = running_in(worker, client, 1)
    os.kill(victim, signal.SIGKILL)
    assert result.get(timeout=30) == 9  # task_reject_on_worker_lost: requeued, run again
    assert client.llen(STARTED) == 2
    replaced(worker, victim, 2)
    wait_for(lambda: held_count(client) == 0, 10, "every message to be acked")


def test_a_process_lost_under_early_acks_fails_its_task_as_prefork_does(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    """A task acked before it runs (Celery's default) has no message left to run again: a lost
    process's task is stored failed with WorkerLostError, as the prefork pool stores it."""
    redis = redis_factory()
    worker = start(redis, worker_factory, "early")
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port)
    result = app.send_task("probe.early", args=(4, 60))
    victim = running_in(worker, client, 1)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        result.get(timeout=15)
    replaced(worker, victim, 2)
    assert held_count(client) == 0 and client.llen("celery") == 0
    assert client.llen(STARTED) == 1


def test_processes_are_replaced_after_max_tasks_per_child(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    start(redis, worker_factory, "recycled", 1, TASKPOOL_MAX_TASKS_PER_CHILD="3")
    app = client_app(redis.url(), dispatch="celery")
    pids = [app.tasks["tasks.print_number"].delay(n).get(timeout=30)["pid"] for n in range(7)]
    assert len(set(pids[:3])) == 1 and len(set(pids[3:6])) == 1 and pids[6] not in pids[:6]
    assert pids[0] != pids[3]


@pytest.mark.parametrize("pool", ["prefork", "fetching"])
def test_disable_prefetch_still_takes_a_message_only_while_a_process_is_free(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, pool: str
) -> None:
    """Celery's ``--disable-prefetch`` narrows ``can_consume`` to the free processes, a limit
    the prefetch room does not show: a pop then takes one message, so a queue of slow tasks
    waits in Redis rather than in a worker that cannot start them (the prefetch would hold 8)."""
    redis = redis_factory()
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    results = [app.send_task("probe.record", args=(n, 0.3)) for n in range(12)]
    worker_factory(
        redis.url(), node_name(f"unprefetched-{pool}"), 2, (*PROBE, "--disable-prefetch"),
        TASKPOOL_WORKER_POOL=pool, PYTHONPATH=str(REPO_ROOT),
    )  # fmt: skip
    held = []
    deadline = time.monotonic() + 60
    while not all(r.ready() for r in results) and time.monotonic() < deadline:
        held.append(held_count(client))
        time.sleep(0.02)
    assert [r.get(timeout=5) for r in results] == [n * n for n in range(12)]
    # Two running, and for a moment a third popped as one's ack is on its way.
    assert 2 <= max(held) <= 3, held


def test_a_process_that_reaches_max_tasks_mid_batch_gives_back_the_rest_unrun(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    """Tasks queued before the worker starts are popped four at a time; a process whose third
    task is its last gives back the fourth, which its replacement runs."""
    redis = redis_factory()
    app = client_app(redis.url(), dispatch="celery")
    results = [app.send_task("tasks.print_number", args=(n,)) for n in range(10)]
    start(redis, worker_factory, "batched", 1, TASKPOOL_MAX_TASKS_PER_CHILD="3")
    pids = [r.get(timeout=30)["pid"] for r in results]
    assert sorted(Counter(pids).values()) == [1, 3, 3, 3], pids
    assert pids == sorted(pids, key=pids.index)  # run in the order queued, process by process
    client = redis_py.Redis(port=redis.port)
    wait_for(functools.partial(nothing_held, client), 10, "every message to be acked")
    assert client.llen("celery") == 0


def test_a_process_past_max_memory_per_child_is_replaced_after_its_task(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    redis = redis_factory()
    worker = start(
        redis, worker_factory, "grown", 1,
        TASKPOOL_MAX_MEMORY_PER_CHILD_MB="1",  # below any Python process: every task is its last
    )  # fmt: skip
    app = client_app(redis.url(), dispatch="celery")
    pids = [app.tasks["tasks.print_number"].delay(n).get(timeout=30)["pid"] for n in range(3)]
    assert len(set(pids)) == 3
    assert len(worker.pool_pids()) == 1


@pytest.mark.parametrize(
    ("option", "named"), [("--autoscale=4,1", "--autoscale"), ("--statedb", "--statedb")]
)
def test_an_option_the_fetching_pool_cannot_honour_stops_the_worker_naming_it(
    redis_factory: Callable[..., RedisServer], tmp_path: Path, option: str, named: str
) -> None:
    redis = redis_factory()
    if option == "--statedb":
        option = f"--statedb={tmp_path / 'state'}"
    worker = CeleryWorker(
        worker_env(redis.url(), **FETCHING), node_name("refused"), tmp_path / "refused.log",
        extra=(option,),
    )  # fmt: skip
    try:
        worker.start()
        assert worker.wait_exit(30) != 0
    finally:
        worker.stop()
    assert f"ImproperlyConfigured: {named}: a fetching pool" in worker.log_tail()


def test_processes_that_cannot_start_are_restarted_with_a_growing_wait_not_in_a_storm(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """A replacement process whose start fails at once (a worker_process_init receiver that
    ends it while a file exists) is started again after 0.5, 1, 2, 4 ... s, the worker goes
    on, and once starting works again the pool is whole. (At the worker's own start, Celery
    stops the worker instead, as it does for the prefork pool.)"""
    redis = redis_factory()
    broken = tmp_path / "broken"
    (tmp_path / "broken_start.py").write_text(
        "import os\n"
        "from celery.signals import worker_process_init\n"
        "@worker_process_init.connect(weak=False)\n"
        "def fail(**_):\n"
        f"    if os.path.exists({str(broken)!r}):\n"
        "        os._exit(3)\n"
    )
    env = worker_env(redis.url(), **FETCHING)
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    worker = CeleryWorker(
        env, node_name("storm"), tmp_path / "storm.log", 2, ("-I", "broken_start")
    )
    try:
        worker.start()
        worker.wait_ready(client_app(redis.url(), dispatch="celery"))
        broken.touch()
        victim = min(worker.pool_pids())
        os.kill(victim, signal.SIGKILL)
        time.sleep(6)
        log = worker.log_tail(1_000_000)
        exits = log.count("after it started; the next starts in")
        assert 2 <= exits <= 5, f"{exits} failed starts in 6 s:\n{log[-3000:]}"
        assert worker.process is not None and worker.process.poll() is None
        broken.unlink()
        wait_for(lambda: len(worker.pool_pids()) == 2, 20, "the pool to be whole again")
        app = client_app(redis.url(), dispatch="celery")
        assert app.tasks["tasks.square"].delay(3).get(timeout=20) == 9
    finally:
        worker.stop()


def test_a_success_acks_its_message_in_the_script_that_stores_it_one_round_trip_less(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    """The scripts Redis runs for 200 tiny tasks, on each pool: both store each result with one
    script; the prefork pool then acks each message with another (liveness.lua), where a
    fetching pool's process acks a success in the script that stores it."""
    calls = {}
    for pool in ("prefork", "fetching"):
        redis = redis_factory()
        worker_factory(redis.url(), node_name(f"trips-{pool}"), TASKPOOL_WORKER_POOL=pool)
        app = client_app(redis.url(), dispatch="celery")
        client = redis_py.Redis(port=redis.port)
        square = app.tasks["tasks.square"]
        assert square.delay(1).get(timeout=30) == 1
        with ScriptCalls(redis.port) as seen:
            results = [square.delay(n) for n in range(200)]
            assert [r.get(timeout=60) for r in results] == [n * n for n in range(200)]
            wait_for(functools.partial(nothing_held, client), 10, "every message to be acked")
        calls[pool] = seen.counts
    assert calls["prefork"]["store"] == calls["fetching"]["store"] == 200, calls
    assert calls["prefork"]["liveness"] >= 200, calls  # an ack each, and the heartbeats
    assert calls["fetching"]["liveness"] < 40, calls  # the heartbeats only


def test_a_process_that_finds_a_queue_waiting_pops_its_prefetch_in_one_call(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    """400 tasks queued before the worker starts: each pop takes what the process may still
    hold (Celery's prefetch, 4 per process), not one message a round trip; each task runs
    once, and every message is acked."""
    redis = redis_factory()
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    results = [app.send_task("probe.record", args=(n, 0.0)) for n in range(400)]
    with ScriptCalls(redis.port) as seen:
        start(redis, worker_factory, "batch")
        assert [r.get(timeout=60) for r in results] == [n * n for n in range(400)]
        wait_for(functools.partial(nothing_held, client), 10, "every message to be acked")
    assert seen.counts["pop"] <= 400 / 2, seen.counts
    assert sorted(int(n) for n in client.lrange(STARTED, 0, -1)) == list(range(400))
    assert client.llen("celery") == 0
