"""Redelivery by liveness, with the default settings: a dead worker's tasks run again within
seconds; a live worker's are never handed to another, however long they run; a worker taken
for dead that comes back runs its tasks at most once more, counted, and overwrites nothing.

Each test counts real runs with the probe tasks (taskpool/testing/probe_tasks.py).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_py
from celery.result import AsyncResult

from taskpool.liveness import CLOCK, PARKED
from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.held import consumers, held_count
from taskpool.testing.probe_tasks import FINISHED, STARTED
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from taskpool.transport import PARK_ABOVE
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT
from tests.support.workers import stock_worker

PROBE = ("-I", "taskpool.testing.probe_tasks")
#: The defaults, and the probe tasks importable by the worker.
DEFAULTS = {"PYTHONPATH": str(REPO_ROOT)}

Start = Callable[..., CeleryWorker]


def send(
    redis: RedisServer, task: str, count: int, seconds: float, padding: int = 0, **options: object
) -> list:
    app = client_app(redis.url(), dispatch="celery")
    kwargs = {"padding": "x" * padding} if padding else {}
    return [app.send_task(task, (n, seconds), kwargs, **options) for n in range(count)]


def runs(client: redis_py.Redis, key: str) -> Counter[int]:
    return Counter(int(n) for n in client.lrange(key, 0, -1))


@pytest.mark.parametrize("padding", [0, 2 * PARK_ABOVE], ids=["small", "parked"])
def test_a_killed_workers_tasks_run_again_within_seconds_with_the_defaults(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, padding: int
) -> None:
    """Six 3 s tasks, two running and four reserved, on a worker SIGKILLed: a worker started
    at once runs all six again (before: after the ten-minute visibility timeout). Big
    messages, kept out of their held records, come back the same way."""
    redis = redis_factory()
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    doomed = worker_factory(redis.url(), node_name("doomed"), extra=PROBE, **DEFAULTS)
    results = send(redis, "probe.record", 6, 3.0, padding=padding)
    wait_for(lambda: client.llen(STARTED) >= 2, 30, "two tasks to be running")
    wait_for(lambda: client.llen("celery") == 0, 20, "the worker to hold all six")
    assert held_count(client) == 6

    os.killpg(doomed.pid, signal.SIGKILL)  # the main process and its pool processes at once
    killed = time.monotonic()
    doomed.wait_exit(10)
    worker_factory(redis.url(), node_name("survivor"), extra=PROBE, **DEFAULTS)
    assert [r.get(timeout=60) for r in results] == [n * n for n in range(6)]
    took = time.monotonic() - killed
    # Three rounds of two 3 s tasks take 9 s; the visibility timeout took 600 s.
    assert took < 45, f"the dead worker's tasks took {took:.1f} s to come back and run"
    assert runs(client, FINISHED) == Counter(range(6))  # none had finished before the kill
    wait_for(lambda: held_count(client) == 0, 10, "every message acked")
    assert not list(client.scan_iter(match=f"{PARKED}*"))
    client.close()


def test_a_live_workers_long_and_delayed_tasks_are_never_handed_to_another(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    """A liveness timeout of 1 s against 8 s tasks and a 6 s countdown, and a visibility timeout
    (kombu's sweep, still running for stock workers' messages) far shorter than both: with a
    second worker idle beside it, each task runs exactly once."""
    redis = redis_factory()
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    short = {
        **DEFAULTS,
        "TASKPOOL_LIVENESS_TIMEOUT": "1",
        "TASKPOOL_VISIBILITY_TIMEOUT": "2",
        "TASKPOOL_RESTORE_INTERVAL": "1",
        "TASKPOOL_TASK_TIME_LIMIT": "30",
    }
    holder = worker_factory(redis.url(), node_name("holder"), extra=PROBE, **short)
    results = send(redis, "probe.where", 2, 8.0)
    delayed = send(redis, "probe.where", 1, 0.0, countdown=6)
    wait_for(lambda: client.llen(STARTED) >= 2, 30, "both long tasks to be running")
    wait_for(lambda: client.llen("celery") == 0, 20, "the countdown task to be held too")
    idle = worker_factory(redis.url(), node_name("idle"), extra=PROBE, **short)
    assert [r.get(timeout=60) for r in [*results, *delayed]] == [holder.node] * 3
    assert runs(client, STARTED) == Counter({0: 2, 1: 1}), "a task ran twice"
    assert "silent for longer than" not in holder.log_tail() + idle.log_tail()
    client.close()


def test_a_worker_taken_for_dead_that_comes_back_overwrites_nothing_and_is_counted(
    redis_factory: Callable[..., RedisServer], worker_factory: Start
) -> None:
    """A worker stopped (SIGSTOP: no beat, no ack, as a network cut) for longer than the
    timeout: its two running tasks go to a second worker, which stores their results. Once
    resumed, it finishes them too: the stored results stay the second worker's, its acks
    remove nothing the second worker holds, and each late ack is counted."""
    redis = redis_factory()
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    stalled = worker_factory(redis.url(), node_name("stalled"), extra=PROBE, **DEFAULTS)
    results = send(redis, "probe.where", 2, 4.0)
    wait_for(lambda: client.llen(STARTED) >= 2, 30, "both tasks to be running")
    os.killpg(stalled.pid, signal.SIGSTOP)
    try:
        taker = worker_factory(redis.url(), node_name("taker"), extra=PROBE, **DEFAULTS)
        # The taker holds a long task of its own while the stalled worker comes back.
        (own,) = send(redis, "probe.where", 1, 12.0)
        assert [r.get(timeout=60) for r in results] == [taker.node] * 2
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    # Resumed: it finishes both tasks (runs 3 and 4) and takes the news of its death.
    wait_for(lambda: client.llen(FINISHED) >= 4, 30, "the resumed worker to finish its runs")
    wait_for(lambda: "was taken for dead" in stalled.log_tail(), 15, "the news of its death")
    wait_for(lambda: int(client.hget(CLOCK, "late_acks") or 0) == 2, 15, "its two late acks")
    assert [AsyncResult(r.id, app=r.app).get(timeout=5) for r in results] == [taker.node] * 2
    assert own.get(timeout=30) == taker.node  # the taker's own message was not touched
    # Tasks 0 and 1 twice each (stalled, then taken), and the taker's own (also numbered 0).
    assert runs(client, STARTED) == Counter({0: 3, 1: 2})
    wait_for(lambda: held_count(client) == 0, 15, "every message acked")
    assert len(consumers(client)) == 2  # the stalled worker beats again, under a new id
    client.close()


def test_a_stock_worker_beside_never_takes_what_a_taskpool_worker_holds(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, tmp_path: Path
) -> None:
    """A mixed fleet during a migration: the stock worker's visibility timeout (2 s) and
    sweep (every second) are far shorter than the taskpool worker's 8 s tasks, which still
    run once; kombu's sweep reads only its own ``unacked`` records."""
    redis = redis_factory()
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    holder = worker_factory(redis.url(), node_name("holder"), extra=PROBE, **DEFAULTS)
    results = send(redis, "probe.where", 2, 8.0)
    wait_for(lambda: client.llen(STARTED) >= 2, 30, "both long tasks to be running")
    stock = stock_worker(redis, tmp_path, node_name("stock"), visibility=2)
    try:
        stock.start().wait_ready(client_app(redis.url(), dispatch="celery"))
        assert [r.get(timeout=60) for r in results] == [holder.node] * 2
        assert runs(client, STARTED) == Counter({0: 1, 1: 1}), "a held task ran twice"
    finally:
        stock.stop(timeout=10)
    client.close()


def test_a_dead_stock_workers_tasks_are_restored_by_a_taskpool_worker(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, tmp_path: Path
) -> None:
    """The other way round: what a stock worker took (kombu's ``unacked`` hash) comes back
    after TASKPOOL_VISIBILITY_TIMEOUT through kombu's own sweep, run by taskpool's workers."""
    redis = redis_factory()
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    stock = stock_worker(redis, tmp_path, node_name("stock"), visibility=3600)
    app = client_app(redis.url(), dispatch="celery")
    try:
        stock.start().wait_ready(app)
        results = send(redis, "probe.record", 2, 6.0)
        wait_for(lambda: client.llen(STARTED) >= 2, 30, "the stock worker to run both")
        assert client.hlen("unacked") == 2
        os.killpg(stock.pid, signal.SIGKILL)
        stock.wait_exit(10)
    finally:
        stock.stop(timeout=5)
    backstop = {**DEFAULTS, "TASKPOOL_VISIBILITY_TIMEOUT": "5", "TASKPOOL_RESTORE_INTERVAL": "1"}
    worker_factory(redis.url(), node_name("restorer"), extra=PROBE, **backstop)
    assert [r.get(timeout=60) for r in results] == [0, 1]
    assert runs(client, STARTED) == Counter({0: 2, 1: 2})  # killed mid-run on the stock worker
    assert runs(client, FINISHED) == Counter({0: 1, 1: 1})
    wait_for(lambda: held_count(client) == 0, 10, "every message acked")
    client.close()
