"""Redis answers and no live worker consumes the work's queue: TASKPOOL_NO_WORKER decides
(the local pool by default in mode auto, a warning and the queue, or NoWorker), read from the
workers' heartbeats; calls and maps never queue silently."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import pytest
from celery.result import AsyncResult

import taskpool
from taskpool import LocalResult, NoWorker, Settings, liveness
from taskpool.celery_conf import RELIABLE_TRANSPORTS
from taskpool.ledger import Ledger
from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app, settings_app


def queued(app: taskpool.TaskpoolCelery, queue: str = "celery") -> int:
    with app.connection_for_read() as connection:
        return int(connection.default_channel.client.llen(queue))


def test_with_no_worker_a_call_and_a_map_run_on_the_local_pool_by_default(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = client_app(redis_server.url(db=8))
    square = app.tasks["tasks.square"]
    with caplog.at_level(logging.WARNING, logger="taskpool"):
        result = square.delay(3)
        assert taskpool.map(square, range(100), chunksize=10) == [n * n for n in range(100)]
        again = square.delay(4)
    assert isinstance(result, LocalResult) and result.get(timeout=30) == 9
    assert isinstance(again, LocalResult) and again.get(timeout=30) == 16
    assert queued(app) == 0
    said = [r.getMessage() for r in caplog.records if "no live worker" in r.getMessage()]
    assert len(said) == 1, said  # once, not per call
    assert "no live worker consumes queue 'celery'" in said[0]
    assert "running its tasks on the local pool" in said[0]


def test_no_worker_wait_leaves_the_call_queued_and_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = client_app(redis_server.url(db=9), no_worker="wait")
    with caplog.at_level(logging.WARNING, logger="taskpool"):
        result = app.tasks["tasks.square"].delay(3)
    assert isinstance(result, AsyncResult)
    assert queued(app) == 1
    assert any("wait in the queue until a worker starts" in r.getMessage() for r in caplog.records)


def test_no_worker_raise_names_the_queue(redis_server: RedisServer) -> None:
    app = client_app(redis_server.url(db=10), no_worker="raise")
    with pytest.raises(NoWorker, match="no live worker consumes queue 'celery' on redis://"):
        app.tasks["tasks.square"].delay(3)
    assert queued(app) == 0


def test_a_task_routed_by_its_own_queue_is_checked_on_that_queue(
    redis_server: RedisServer,
) -> None:
    """``@app.task(queue=...)``: Celery sends its calls there, so the no-worker check and a
    map's chunks look there too (they used to look at the default queue)."""
    app = client_app(redis_server.url(db=12), no_worker="raise")

    @app.task(name="t.own_queue", queue="special")
    def own_queue(n: int) -> int:
        return n

    for call in (
        lambda: own_queue.delay(1),
        lambda: own_queue.apply_async((1,), countdown=0),
        lambda: taskpool.map(own_queue, [1, 2]),
    ):
        with pytest.raises(NoWorker, match="no live worker consumes queue 'special'"):
            call()


def test_a_worker_of_another_queue_does_not_count_and_a_killed_one_stops_counting(
    redis_server: RedisServer, worker_factory: Callable[..., CeleryWorker]
) -> None:
    url = redis_server.url(db=11)
    app = client_app(url, broker_recheck=0.1)
    square = app.tasks["tasks.square"]
    worker = worker_factory(url, node_name("cpu-only"), extra=("-Q", "cpu"))
    routed = square.apply_async((5,), queue="cpu")
    assert isinstance(routed, AsyncResult) and routed.get(timeout=30) == 25
    assert isinstance(square.delay(3), LocalResult)  # queue celery: nobody consumes it
    os.kill(worker.pid, signal.SIGKILL)
    # Its beats stop: within its liveness timeout (3 s) the cpu queue has no worker either.
    wait_for(
        lambda: isinstance(square.apply_async((2,), queue="cpu"), LocalResult),
        timeout=30, what="calls to queue cpu to run locally", interval=0.5,
    )  # fmt: skip
    started = time.monotonic()
    assert square.apply_async((2,), queue="cpu").get(timeout=30) == 4
    assert time.monotonic() - started < 30  # ran, instead of waiting for a worker


def test_a_local_run_for_want_of_a_worker_is_stored_for_readers_elsewhere(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url(db=12)
    app = client_app(url)
    elsewhere = client_app(url)  # another client, as a web app's poller would be
    result = app.tasks["tasks.square"].delay(7)
    failed = app.tasks["tasks.sum_of_squares"].delay("not a number")
    assert isinstance(result, LocalResult) and result.get(timeout=30) == 49
    with pytest.raises(TypeError):
        failed.get(timeout=30)
    # Stored before the caller saw it: "enqueue, keep the id, poll later" works.
    assert AsyncResult(result.id, app=elsewhere).get(timeout=5) == 49
    assert Ledger(elsewhere).local_runs() == {"tasks.square": 1, "tasks.sum_of_squares": 1}
    stored = AsyncResult(failed.id, app=elsewhere)
    assert stored.state == "FAILURE" and isinstance(stored.result, TypeError)


def test_a_worker_and_a_client_on_the_second_url_of_a_failover_list_keep_taskpools_transport(
    redis_server: RedisServer, worker_factory: Callable[..., CeleryWorker]
) -> None:
    # Both start on a closed port and move on to the next URL, as after a failover; kombu's
    # switch used to pick its own transport by the URL's scheme there, so the worker never beat.
    store = redis_server.url(db=13)
    url = f"redis://127.0.0.1:{free_port()}/13;{store}"
    worker_factory(url, node_name("failover-list"), TASKPOOL_RESULT_BACKEND=store)
    app = settings_app(Settings(broker_url=url, result_backend=store))
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=3)
        assert connection.transport_cls == RELIABLE_TRANSPORTS["redis"]
        client = connection.default_channel.client
        wait_for(lambda: liveness.serving(client, "celery") == 1, 10, "the worker's beat")
    result = app.tasks["tasks.square"].delay(6)
    assert not isinstance(result, LocalResult)
    assert result.get(timeout=30) == 36
