"""With no broker, .delay() runs on the local pool instead of hanging; mode celery raises."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_py
from celery import Celery, chain, chord, group
from celery.result import AsyncResult
from celery.signals import beat_init
from kombu.exceptions import OperationalError

import taskpool
from taskpool import (
    BrokerUnavailable,
    FallbackTask,
    LocalPoolError,
    LocalResult,
    dispatch,
    liveness,
)
from taskpool.examples import LOCAL_NODE, register
from taskpool.testing.celery_worker import node_name
from taskpool.testing.listeners import SilentListener
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app

#: Generous bound for "does not hang" on a shared, noisy machine.
NO_HANG = 3.0


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def test_a_closed_port_runs_both_tasks_on_the_local_pool() -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0")
    square, print_number = app.tasks["tasks.square"], app.tasks["tasks.print_number"]
    result, seconds = timed(lambda: square.delay(10))
    assert isinstance(result, LocalResult)
    assert result.get(timeout=NO_HANG) == 100
    assert seconds < NO_HANG
    report, seconds = timed(lambda: print_number.delay(3).get(timeout=NO_HANG))
    assert report["hostname"] == LOCAL_NODE and report["number"] == 3
    assert seconds < NO_HANG


def test_a_broker_that_accepts_but_never_answers_falls_back_within_the_bound() -> None:
    with SilentListener() as silent:
        app = client_app(silent.url())
        result, seconds = timed(lambda: app.tasks["tasks.square"].delay(7).get(timeout=NO_HANG))
        assert silent.accepted, "the probe never reached the silent broker"
    assert result == 49
    assert seconds < NO_HANG


def test_a_silent_result_store_also_falls_back(redis_server: RedisServer) -> None:
    with SilentListener() as silent:
        app = client_app(redis_server.url())
        app.conf.result_backend = silent.url()
        result, seconds = timed(lambda: app.tasks["tasks.square"].delay(6))
        assert isinstance(result, LocalResult)
        assert result.get(timeout=NO_HANG) == 36
    assert seconds < NO_HANG


def test_mode_celery_raises_the_clear_error_within_a_second_for_a_closed_port() -> None:
    app = client_app(f"redis://:hunter2@127.0.0.1:{free_port()}/0", dispatch="celery")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        app.tasks["tasks.square"].delay(2)
    assert time.monotonic() - started < 1.5
    assert isinstance(caught.value, OperationalError)
    message = str(caught.value)
    assert "Connection refused" in message and "TASKPOOL_DISPATCH" in message
    assert "hunter2" not in message and ":**@127.0.0.1" in message


def test_mode_celery_raises_within_the_timeout_for_a_silent_broker() -> None:
    with SilentListener() as silent:
        app = client_app(silent.url(), dispatch="celery", broker_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            app.tasks["tasks.square"].apply_async((2,))
        assert time.monotonic() - started < NO_HANG


def test_mode_local_never_opens_a_connection() -> None:
    with SilentListener() as silent:
        app = client_app(silent.url(), dispatch="local")
        assert app.tasks["tasks.square"].delay(5).get(timeout=NO_HANG) == 25
        assert (
            app.tasks["tasks.square"].apply_async((6,), dispatch="local").get(timeout=NO_HANG) == 36
        )
        time.sleep(0.3)  # give a stray connection time to be accepted before counting
        assert silent.accepted == []


def test_a_stopped_broker_sends_calls_local_and_a_restarted_one_gets_them_back(
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = redis_factory()
    node = node_name("restart")
    worker_factory(redis.url(), node)
    app = client_app(redis.url(), broker_recheck=0.2)
    print_number = app.tasks["tasks.print_number"]
    with caplog.at_level(logging.WARNING, logger="taskpool.health"):
        assert print_number.delay(1).get(timeout=10)["hostname"] == node

        redis.stop()
        time.sleep(0.3)  # past the recheck interval, so the next call probes
        (report, seconds) = timed(lambda: print_number.delay(2).get(timeout=NO_HANG))
        assert report["hostname"] == LOCAL_NODE and seconds < NO_HANG
        assert print_number.delay(3).get(timeout=NO_HANG)["hostname"] == LOCAL_NODE

        redis.start()
        # The worker reconnects, and its consumer beats again (no_worker counts it).
        client = redis_py.Redis.from_url(redis.url())
        wait_for(lambda: liveness.serving(client, "celery") > 0, 60, "the worker's beat")
        client.close()
        time.sleep(0.3)
        back = print_number.delay(4)
        assert isinstance(back, AsyncResult)
        assert back.get(timeout=30)["hostname"] == node  # the worker reconnects and runs it
    switches = [r.getMessage() for r in caplog.records if r.name == "taskpool.health"]
    assert len(switches) == 2, switches
    assert "local pool" in switches[0] and "answers again" in switches[1]


def test_a_publish_that_fails_after_a_good_check_also_falls_back(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory()
    # The good verdict stays fresh; with no worker, the call waits in the queue.
    app = client_app(redis.url(), broker_recheck=600, no_worker="wait")
    square = app.tasks["tasks.square"]
    assert isinstance(square.delay(1), AsyncResult)  # published; nobody needs to run it
    redis.kill()
    result, seconds = timed(lambda: square.delay(9))
    assert isinstance(result, LocalResult)
    assert result.get(timeout=NO_HANG) == 81
    assert seconds < NO_HANG


user_app = Celery(
    "user_app",
    broker=f"redis://127.0.0.1:{free_port()}/0",
    backend=f"redis://127.0.0.1:{free_port()}/0",
    task_cls=FallbackTask,
)


@user_app.task
def add(x: int, y: int) -> int:
    return x + y


def test_any_celery_app_gets_the_fallback_through_its_task_class() -> None:
    result, seconds = timed(lambda: add.delay(2, 3))
    assert isinstance(result, LocalResult)
    assert result.get(timeout=NO_HANG) == 5
    assert seconds < NO_HANG


def test_the_fallback_warning_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    app = client_app(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="taskpool.health"):
        assert app.tasks["tasks.square"].delay(4).get(timeout=NO_HANG) == 16
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in logged and ":**@127.0.0.1" in logged
    assert "hunter2" not in logged


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda sq: group(sq.s(i) for i in range(4)), "group_id= (a group)"),
        (lambda sq: chain(sq.s(2), sq.s()), "chain= (a chain)"),
        (lambda sq: sq.signature((2,), link=sq.s()), "link= (a callback)"),
        (lambda sq: sq.signature((2,), link_error=sq.s()), "link_error= (an error callback)"),
        (lambda sq: chord([sq.s(i) for i in range(3)], sq.s()), "chord= (a chord)"),
    ],
    ids=["group", "chain", "link", "link_error", "chord"],
)
def test_a_canvas_with_no_broker_raises_broker_unavailable_at_once_and_runs_nothing(
    build: Callable[[Any], Any], option: str, tmp_path: Any
) -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0")
    square = app.tasks["tasks.square"]
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=re.escape(option) + ".*nothing was run"):
        build(square).apply_async()
    assert time.monotonic() - started < NO_HANG
    # Celery's own way out was "the Celery application must be restarted": not here.
    assert square.delay(5).get(timeout=NO_HANG) == 25


def test_a_canvas_in_mode_local_is_refused_with_local_pool_error_naming_the_option() -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0", dispatch="local")
    square = app.tasks["tasks.square"]
    with pytest.raises(LocalPoolError, match=re.escape("chain= (a chain)")):
        chain(square.s(2), square.s()).apply_async()
    with pytest.raises(LocalPoolError, match=re.escape("chord= (a chord)")):
        chord([square.s(1), square.s(2)], square.s()).apply_async()


def test_a_plain_celery_app_naming_taskpools_store_has_its_chords_refused_too() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = Celery(
        "plain", broker=url, backend=f"taskpool.result_store:RedisStore+{url}",
        task_cls=FallbackTask, set_as_current=False,
    )  # fmt: skip
    register(app)
    square = app.tasks["tasks.square"]
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=re.escape("chord= (a chord)")):
            chord([square.s(1), square.s(2)], square.s()).apply_async()
        assert time.monotonic() - started < NO_HANG
    finally:
        app.close()


def test_send_task_with_no_broker_runs_a_known_task_locally_and_refuses_an_unknown_one() -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0")
    result, seconds = timed(lambda: app.send_task("tasks.square", args=(6,)))
    assert isinstance(result, LocalResult) and result.get(timeout=NO_HANG) == 36
    with pytest.raises(BrokerUnavailable, match="no task of that name is registered"):
        app.send_task("elsewhere.cube", args=(2,))
    assert seconds < NO_HANG


def test_a_plain_celery_apps_send_task_gets_the_same_decision_once_a_task_is_bound() -> None:
    assert add.name.endswith(".add")  # using a task binds it, as a worker or app.tasks does
    result, seconds = timed(lambda: user_app.send_task(add.name, args=(3, 4)))
    assert isinstance(result, LocalResult) and result.get(timeout=NO_HANG) == 7
    assert seconds < NO_HANG
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="no task of that name is registered"):
        user_app.send_task("elsewhere.cube", args=(2,))
    assert time.monotonic() - started < NO_HANG  # stock: 19 s, "must be restarted"


def test_a_plain_app_with_only_celerys_own_tasks_is_guarded_once_finalized() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    app = Celery("bare", broker=url, backend=url, task_cls=FallbackTask, set_as_current=False)
    try:
        app.finalize()  # binds Celery's built-in tasks, which take the app's task class
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="no task of that name is registered"):
            app.send_task("elsewhere.cube", args=(2,))
        assert time.monotonic() - started < NO_HANG
    finally:
        app.close()


def test_send_task_goes_to_the_worker_when_the_broker_answers(
    session_worker: Any, redis_server: RedisServer
) -> None:
    app = client_app(redis_server.url())
    result = app.send_task("tasks.square", args=(7,))
    assert isinstance(result, AsyncResult) and result.get(timeout=10) == 49


def test_beat_never_falls_back_to_the_local_pool() -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0")
    square = app.tasks["tasks.square"]
    assert isinstance(square.delay(2), LocalResult)
    beat_init.send(sender=None)  # what `celery beat` sends when it starts
    try:
        with pytest.raises(BrokerUnavailable):
            square.delay(2)
    finally:
        dispatch._in_beat = False


def test_task_always_eager_runs_calls_and_maps_in_this_process_without_asking_the_broker() -> None:
    with SilentListener() as silent:
        # Mode celery with no broker would raise: the eager rule comes first, for maps too.
        app = client_app(silent.url(), dispatch="celery")
        app.conf.task_always_eager = True

        @app.task(name="eager.pid")
        def pid(n: int) -> tuple[int, int]:
            return n, os.getpid()

        assert tuple(pid.delay(7).get(timeout=NO_HANG)) == (7, os.getpid())
        assert taskpool.map(pid, range(40), progress=False) == [(n, os.getpid()) for n in range(40)]
        assert not silent.accepted
