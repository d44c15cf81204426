"""A full Redis (maxmemory with noeviction, the policy a broker needs): a named condition that
stops no worker and loses no result.

Redis over maxmemory refuses every write that needs memory, and every command queued in a
MULTI; it still runs deletions and scripts whose first command frees memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py
from celery import Celery
from celery.result import AsyncResult

import taskpool
from taskpool.testing import probe_tasks  # noqa: F401 - probe.sleep on every app
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app

PROBE = ("-I", "taskpool.testing.probe_tasks")
FULL = ("--maxmemory", "20mb", "--maxmemory-policy", "noeviction")


class Filler:
    """Takes a Redis past its maxmemory with junk keys, and gives the memory back."""

    def __init__(self, port: int) -> None:
        self.client = redis_py.Redis(port=port)
        self.keys: list[str] = []

    def fill(self) -> None:
        limit = str(self.client.config_get("maxmemory")["maxmemory"])
        self.client.config_set("maxmemory", 0)
        while self.client.info("memory")["used_memory"] < int(limit) + 4 * 1024 * 1024:
            self.keys.append(f"junk:{len(self.keys)}")
            self.client.set(self.keys[-1], b"x" * 1024 * 1024)
        self.client.config_set("maxmemory", limit)

    def free(self) -> None:
        if self.keys:
            self.client.delete(*self.keys)
        self.keys.clear()


@pytest.fixture
def full_redis(redis_factory: Callable[..., RedisServer]) -> Iterator[tuple[RedisServer, Filler]]:
    redis = redis_factory(extra=FULL)
    filler = Filler(redis.port)
    yield redis, filler
    filler.client.close()


def running_when_full(
    full_redis: tuple[RedisServer, Filler],
    worker_factory: Callable[..., CeleryWorker],
    node: str,
    seconds: float,
) -> tuple[CeleryWorker, Celery, AsyncResult]:
    """A worker running a ``seconds`` long task when Redis fills up."""
    redis, filler = full_redis
    worker = worker_factory(redis.url(), node_name(node), extra=PROBE)
    app = client_app(redis.url(), dispatch="celery")
    result = app.send_task("probe.sleep", args=(seconds,))
    wait_for(lambda: "probe.sleep[" in worker.log_tail(), 10, "the worker to take the task")
    filler.fill()
    return worker, app, result


def test_a_task_finishing_while_redis_is_full_keeps_its_worker_and_its_result(
    full_redis: tuple[RedisServer, Filler], worker_factory: Callable[..., CeleryWorker]
) -> None:
    """The result write is retried with back-off, saying why, and the ack still goes through;
    the worker used to stop at that ack ("Unrecoverable error: OutOfMemoryError")."""
    worker, app, result = running_when_full(full_redis, worker_factory, "full", 2.0)
    filler = full_redis[1]
    wait_for(lambda: "is full" in worker.log_tail(100_000), 20, "the worker to say Redis is full")
    assert worker.process is not None and worker.process.poll() is None
    filler.free()
    assert result.get(timeout=60) == 2.0
    assert app.tasks["tasks.square"].delay(6).get(timeout=20) == 36
    assert worker.process.poll() is None


def test_a_result_redis_refuses_past_the_retries_goes_back_with_its_message_and_arrives_later(
    full_redis: tuple[RedisServer, Filler], worker_factory: Callable[..., CeleryWorker]
) -> None:
    """Redis stays full past the worker's result-write retries (about 15 s): the task's message
    goes back to its queue and the task runs again once Redis has room. The worker used to ack
    the message without its result, and the result was lost."""
    worker, _, result = running_when_full(full_redis, worker_factory, "fuller", 1.0)
    filler = full_redis[1]
    given_back = f"result of task {result.id} could not be stored"
    wait_for(lambda: given_back in worker.log_tail(1_000_000), 90, "the message to go back")
    line = next(x for x in worker.log_tail(1_000_000).splitlines() if given_back in x)
    assert "maxmemory" in line and "goes back to the queue" in line
    assert worker.process is not None and worker.process.poll() is None
    filler.free()
    assert result.get(timeout=90) == 1.0
    assert worker.log_tail(1_000_000).count(f"probe.sleep[{result.id}] received") >= 2
    assert worker.process.poll() is None


def test_a_call_to_a_full_redis_names_maxmemory_not_a_broker_to_start(
    full_redis: tuple[RedisServer, Filler],
) -> None:
    redis, filler = full_redis
    app = client_app(redis.url(), dispatch="celery")
    filler.fill()
    with pytest.raises(taskpool.BrokerUnavailable, match="maxmemory") as caught:
        app.tasks["tasks.square"].delay(3)
    assert "start the broker" not in str(caught.value)
    with pytest.raises(taskpool.BrokerUnavailable, match="maxmemory"):  # within the recheck
        app.tasks["tasks.square"].delay(3)
    # Mode auto runs it on the local pool meanwhile.
    auto = client_app(redis.url())
    assert auto.tasks["tasks.square"].delay(4).get(timeout=30) == 16


def test_a_plain_call_to_a_redis_that_filled_since_the_last_probe_names_maxmemory(
    full_redis: tuple[RedisServer, Filler],
) -> None:
    """The publish itself meets the full Redis, within the broker verdict's recheck interval:
    the quick publish of a plain call (``taskpool.quick_publish``) gives way to Celery's path,
    which raises what it raises for any call."""
    redis, filler = full_redis
    app = client_app(redis.url(), dispatch="celery", no_worker="wait", broker_recheck=60)
    square = app.tasks["tasks.square"]
    square.delay(1)
    square.delay(2)  # from the template
    filler.fill()
    with pytest.raises(taskpool.BrokerUnavailable, match="maxmemory"):
        square.delay(3)


def test_a_worker_started_on_a_full_redis_waits_then_serves(
    tmp_path: Path, full_redis: tuple[RedisServer, Filler]
) -> None:
    redis, filler = full_redis
    app = client_app(redis.url(), dispatch="celery")
    queued = app.tasks["tasks.square"].delay(5)  # before Redis fills
    filler.fill()
    worker = CeleryWorker(worker_env(redis.url()), node_name("late"), tmp_path / "late.log")
    worker.start()
    try:
        wait_for(lambda: "maxmemory" in worker.log_tail(), 20, "the worker to say why it waits")
        time.sleep(2.0)  # it keeps waiting: a worker that stopped would have exited by now
        assert worker.process is not None and worker.process.poll() is None
        filler.free()
        assert queued.get(timeout=60) == 25
    finally:
        worker.stop()


@pytest.mark.parametrize("mode", ["celery", "auto"])
def test_a_map_on_a_redis_that_fills_up_says_so_or_finishes_locally_within_a_bound(
    mode: str, full_redis: tuple[RedisServer, Filler], worker_factory: Callable[..., CeleryWorker]
) -> None:
    """Its chunks' results cannot be stored (the worker gives up after its retries) and new
    chunks cannot be sent: the map used to wait for ever in mode celery."""
    redis, filler = full_redis
    worker_factory(redis.url(), node_name(f"mapfull-{mode}"), extra=PROBE)
    app = client_app(redis.url(), dispatch=mode)
    results = taskpool.imap(app.tasks["probe.sleep"], [0.5] * 8, chunksize=1)
    assert next(results) == 0.5
    filler.fill()
    started = time.monotonic()
    if mode == "celery":
        with pytest.raises(taskpool.BrokerUnavailable, match="maxmemory"):
            list(results)
    else:
        assert list(results) == [0.5] * 7
        assert results.backends == ["broker", "local pool"]
    assert time.monotonic() - started < 60
