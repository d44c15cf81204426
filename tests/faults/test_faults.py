"""Faults injected for real: signals to real processes, a real Redis killed, a poisoned message."""

from __future__ import annotations

import os
import pickle
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_py
from celery import states

from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.held import held_count
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app
from tests.support.servers import redis_binary
from tests.support.workers import busiest

#: sum_of_squares(n) for this n runs for a few hundred milliseconds: long enough to kill mid-run.
SLOW = 8_000_000


def test_a_pool_process_killed_mid_task_runs_the_task_again(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory()
    worker = worker_factory(redis.url(), node_name("victim"))
    app = client_app(redis.url(), dispatch="celery")
    result = app.tasks["tasks.sum_of_squares"].delay(SLOW)
    wait_for(
        lambda: "Task tasks.sum_of_squares[" in worker.log_tail(), 10, "the worker to take the task"
    )
    victim = busiest(worker)
    os.kill(victim, signal.SIGKILL)
    assert result.get(timeout=60) == sum(i * i for i in range(SLOW))
    assert result.state == states.SUCCESS
    assert f"pid:{victim} exited with 'signal 9 (SIGKILL)'" in worker.log_tail(200_000)


def test_queued_tasks_survive_redis_killed_with_sigkill(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory(appendonly=True)  # what the compose file ships: AOF, fsync every second
    app = client_app(redis.url(), dispatch="celery")
    results = [app.tasks["tasks.square"].delay(n) for n in range(50)]
    client = redis_py.Redis(port=redis.port)
    wait_for(lambda: client.llen("celery") == 50, 5, "all 50 messages in the queue")
    wait_for(
        lambda: client.info("persistence")["aof_last_write_status"] == "ok", 5, "the AOF write"
    )
    time.sleep(1.5)  # the appendfsync everysec window: what a killed Redis may lose by design
    client.close()
    redis.kill(signal.SIGKILL)
    redis.start()
    worker_factory(redis.url(), node_name("after-crash"))
    assert [r.get(timeout=30) for r in results] == [n * n for n in range(50)]


class _CreatesAFile:
    """Unpickling this creates a file: what a malicious pickle could do, made harmless."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickle_message_is_refused_and_does_not_loop(
    tmp_path: Path,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    redis = redis_factory()
    worker = worker_factory(redis.url(), node_name("poisoned"))
    app = client_app(redis.url(), dispatch="celery")
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(
        (
            (_CreatesAFile(marker),),
            {},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        )
    )
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            body,
            routing_key="celery",
            exchange="",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "lang": "py",
                "task": "tasks.square",
                "id": task_id,
                "root_id": task_id,
                "argsrepr": "(...)",
            },
            declare=[app.amqp.queues["celery"]],
        )
    client = redis_py.Redis(port=redis.port)
    refusal = "Refusing to deserialize untrusted content of type pickle"
    wait_for(lambda: refusal in worker.log_tail(100_000), 15, "the worker to refuse the message")
    wait_for(
        lambda: client.llen("celery") == 0 and held_count(client) == 0,
        15,
        "the message to be gone",
    )
    client.close()
    assert not marker.exists()
    assert app.tasks["tasks.square"].delay(6).get(timeout=10) == 36  # the worker is still up
    time.sleep(1.0)  # long enough for a requeued poison message to come round again
    assert worker.log_tail(100_000).count("Received invalid task message") == 1
    assert not marker.exists()


def test_a_huge_argument_fails_cleanly_and_its_pool_process_is_recycled(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    """Another client (send_task skips taskpool's caller-side size check) sends ~25 MB."""
    redis = redis_factory()
    worker = worker_factory(
        redis.url(), node_name("bloated"), TASKPOOL_MAX_MEMORY_PER_CHILD_MB="150"
    )
    app = client_app(redis.url(), dispatch="celery")
    assert app.tasks["tasks.square"].delay(2).get(timeout=10) == 4
    before = worker.pool_pids()
    huge = list(range(10**6, 4 * 10**6))  # ~24 MB of JSON; over 150 MB once decoded
    result = app.send_task("tasks.square", args=(huge,))
    del huge
    with pytest.raises(TypeError, match="expected an int, got list"):
        result.get(timeout=60)
    # The process that decoded it went over TASKPOOL_MAX_MEMORY_PER_CHILD_MB and was replaced.
    wait_for(lambda: worker.pool_pids() - before, 15, "the bloated pool process to be replaced")
    assert len(worker.pool_pids()) == 2
    assert app.tasks["tasks.square"].delay(9).get(timeout=10) == 81  # the worker is still up
    assert worker.process is not None and worker.process.poll() is None


def test_a_worker_started_before_redis_retries_with_logged_back_off_then_serves(
    tmp_path: Path,
) -> None:
    """Refused is not rejected: Redis may simply be starting, so the worker waits for it."""
    secret = "s3cret-" + uuid.uuid4().hex
    redis = RedisServer(redis_binary(), free_port(), tmp_path / "late-redis", password=secret)
    url = f"redis://127.0.0.1:{redis.port}/0"
    worker = CeleryWorker(
        worker_env(url, TASKPOOL_REDIS_PASSWORD=secret),
        node_name("early"),
        tmp_path / "early.log",
    ).start()
    try:
        wait_for(lambda: "Trying again in" in worker.log_tail(), 20, "a logged retry")
        assert worker.process is not None and worker.process.poll() is None
        redis.start()
        worker.wait_ready(client_app(redis.url(), dispatch="celery"), timeout=40)
        app = client_app(redis.url(), dispatch="celery")
        assert app.tasks["tasks.square"].delay(11).get(timeout=10) == 121
        log = worker.log_tail(1_000_000)
        # The log names the broker by its URL's scheme (taskpool.amqp), its password masked.
        assert f"Cannot connect to redis://:**@127.0.0.1:{redis.port}" in log
        assert secret not in log
    finally:
        worker.stop()
        redis.stop()
