"""Whole workers lost: SIGKILL, warm shutdown (SIGTERM) and cold shutdown (SIGQUIT).

Each test counts real runs with ``probe.record`` (taskpool/testing/probe_tasks.py), so "nothing
lost" and "nothing that finished runs again" are both checked, not inferred from results.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis as redis_py
from celery import states
from celery.result import AsyncResult

from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.held import held_count
from taskpool.testing.probe_tasks import FINISHED, STARTED
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tests.support.apps import FAST_REDELIVERY, client_app
from tests.support.paths import REPO_ROOT

PROBE = ("-I", "taskpool.testing.probe_tasks")
#: Takes one message from the default queue through taskpool's transport, then waits.
TAKE_AND_WAIT = """
import sys, time
from kombu import Connection
from taskpool.transport import Transport
with Connection(sys.argv[1], transport=Transport) as connection:
    assert connection.default_channel.basic_get("celery", no_ack=False) is not None
    print("taken", flush=True)
    time.sleep(120)
"""
#: Redelivery in seconds, and the probe task importable by the worker.
WORKER_ENV = {**FAST_REDELIVERY, "PYTHONPATH": str(REPO_ROOT)}

Start = Callable[..., CeleryWorker]
#: Each test runs on both worker pools: Celery's prefork, and processes that fetch their own
#: messages (taskpool/fetching.py).
POOLS = pytest.mark.parametrize("pool", ["prefork", "fetching"])


def on(pool: str) -> dict[str, str]:
    return {**WORKER_ENV, "TASKPOOL_WORKER_POOL": pool}


def send(redis: RedisServer, count: int, seconds: float) -> list[AsyncResult]:
    app = client_app(redis.url(), dispatch="celery")
    return [app.send_task("probe.record", args=(n, seconds)) for n in range(count)]


def runs(client: redis_py.Redis, key: str, start: int = 0) -> Counter[int]:
    return Counter(int(n) for n in client.lrange(key, start, -1))


@POOLS
def test_a_whole_worker_killed_loses_nothing_and_reruns_nothing_that_finished(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, pool: str
) -> None:
    redis = redis_factory()
    doomed = worker_factory(redis.url(), node_name("doomed"), extra=PROBE, **on(pool))
    results = send(redis, 20, 0.4)
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    # A fetching pool's process pops between its tasks, so it holds little past what runs, and
    # for a moment after each task only what it runs next. The kill waits for both to hold one.
    holding = 3 if pool == "prefork" else 2
    wait_for(
        lambda: client.llen(FINISHED) >= 4 and held_count(client) >= holding,
        30,
        f"four tasks to finish and {holding} messages to be held",
    )

    os.killpg(doomed.pid, signal.SIGKILL)  # the main process and its pool processes at once
    doomed.wait_exit(10)
    held = held_count(client)
    assert held >= holding, "the dead worker should have held messages"
    assert client.llen("celery") > 0, "some tasks should still have been queued"
    finished = {n for n, r in enumerate(results) if r.state == states.SUCCESS}
    started_before = client.llen(STARTED)

    restarted = time.monotonic()
    worker_factory(redis.url(), node_name("successor"), extra=PROBE, **on(pool))
    assert [r.get(timeout=30) for r in results] == [n * n for n in range(20)]
    assert time.monotonic() - restarted < 30
    rerun = runs(client, STARTED, started_before)
    assert not set(rerun) & finished, f"finished tasks ran again: {set(rerun) & finished}"
    # Late acks follow the stored result, so the last ack may land just after the last .get().
    wait_for(lambda: held_count(client) == 0, 10, "every message to be acknowledged")
    client.close()


@POOLS
@pytest.mark.parametrize(("stop", "exit_code"), [("sigterm", 0), ("ctrl-c", 1)])
def test_warm_shutdown_finishes_running_tasks_and_requeues_the_prefetched(
    redis_factory: Callable[..., RedisServer],
    worker_factory: Start,
    pool: str,
    stop: str,
    exit_code: int,
) -> None:
    """SIGTERM to the worker, or a terminal's Ctrl-C, which reaches every process of the
    worker's group at once (Celery then exits 1, EX_FAILURE)."""
    redis = redis_factory()
    leaving = worker_factory(redis.url(), node_name("leaving"), extra=PROBE, **on(pool))
    results = send(redis, 10, 1.0)
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    wait_for(lambda: client.llen(STARTED) >= 2, 30, "two tasks to be running")

    running = set(runs(client, STARTED))
    assert leaving.process is not None
    if stop == "sigterm":
        leaving.process.send_signal(signal.SIGTERM)
    else:
        os.killpg(leaving.pid, signal.SIGINT)
    assert leaving.wait_exit(15) == exit_code  # well inside compose's stop_grace_period
    assert running <= set(runs(client, FINISHED)), "a running task was cut short"
    assert held_count(client) == 0, "prefetched messages were left for the visibility timeout"
    # Given back unrun, so not counted as delivered: no count is left behind for them.
    assert client.hgetall("unacked_deliveries") == {}
    assert client.llen("celery") >= 10 - client.llen(FINISHED)

    worker_factory(redis.url(), node_name("next"), extra=PROBE, **on(pool))
    assert [r.get(timeout=30) for r in results] == [n * n for n in range(10)]
    assert runs(client, FINISHED) == Counter(range(10)), "each task must finish exactly once"
    client.close()


@POOLS
def test_cold_shutdown_loses_nothing(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, pool: str
) -> None:
    redis = redis_factory()
    leaving = worker_factory(redis.url(), node_name("cold"), extra=PROBE, **on(pool))
    results = send(redis, 10, 1.0)
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    wait_for(lambda: client.llen(STARTED) >= 2, 30, "two tasks to be running")

    assert leaving.process is not None
    leaving.process.send_signal(signal.SIGQUIT)  # cold: running tasks are terminated
    leaving.wait_exit(15)

    worker_factory(redis.url(), node_name("after-cold"), extra=PROBE, **on(pool))
    assert [r.get(timeout=30) for r in results] == [n * n for n in range(10)]
    assert runs(client, FINISHED) == Counter(range(10)), "each task must finish exactly once"
    client.close()


@POOLS
def test_a_redelivered_task_that_already_succeeded_is_not_run_again(
    redis_factory: Callable[..., RedisServer], worker_factory: Start, pool: str
) -> None:
    """What a worker lost between storing a result and acking it leaves behind, made on purpose."""
    redis = redis_factory()
    app = client_app(redis.url(), dispatch="celery")
    result = app.send_task("probe.record", args=(7, 0.0))
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    taker = subprocess.Popen(
        [sys.executable, "-c", TAKE_AND_WAIT, redis.url()], stdout=subprocess.PIPE, text=True
    )
    try:
        assert taker.stdout is not None and taker.stdout.readline().strip() == "taken"
        app.backend.store_result(result.id, 49, states.SUCCESS)  # ...after it had succeeded
    finally:
        taker.kill()  # before its ack: the message goes back once its consumer is found dead
        taker.wait(timeout=10)
        if taker.stdout is not None:
            taker.stdout.close()
    assert held_count(client) == 1

    worker = worker_factory(redis.url(), node_name("dedup"), extra=PROBE, **on(pool))
    wait_for(lambda: "already completed successfully" in worker.log_tail(), 15, "the skip")
    wait_for(lambda: client.llen("celery") + held_count(client) == 0, 15, "the ack")
    assert client.llen(STARTED) == 0, "the body ran again"
    assert result.get(timeout=5) == 49
    client.close()
