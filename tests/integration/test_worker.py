"""Both tasks through a real prefork worker and a real Redis."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group
from celery.result import AsyncResult
from kombu.exceptions import EncodeError

from taskpool.errors import NestedTooDeep
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tasks import app, print_number, square
from tests.support.apps import client_app
from tests.support.values import nested


def test_square_runs_on_the_worker(session_worker: CeleryWorker) -> None:
    result = square.delay(10)
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=10) == 100
    assert result.successful()


def test_a_64_bit_integer_goes_to_the_worker_and_back_exactly(session_worker: CeleryWorker) -> None:
    # Database and snowflake ids: stock Celery carries them exactly between Python processes.
    assert square.delay(2**62 + 1).get(timeout=10) == (2**62 + 1) ** 2


def test_print_number_runs_in_a_worker_pool_process(session_worker: CeleryWorker) -> None:
    report = print_number.delay(3).get(timeout=10)
    assert report["number"] == 3
    assert report["hostname"] == session_worker.node
    assert report["pid"] != os.getpid()
    assert report["pid"] in session_worker.pool_pids()
    assert f"Process ID: {report['pid']} - Number: 3" in session_worker.log_tail()


def test_calls_on_a_worker_of_concurrency_four_use_more_than_one_process(
    session_worker: CeleryWorker,
) -> None:
    pool = session_worker.pool_pids()
    assert len(pool) == 4
    seen: set[int] = set()
    for _ in range(10):  # tiny tasks may all land on one idle process in a round; a few rounds vary
        batch = [print_number.delay(n) for n in range(4)]
        seen |= {result.get(timeout=10)["pid"] for result in batch}
        if len(seen) > 1:
            break
    assert len(seen) > 1
    assert seen <= pool


@pytest.mark.parametrize(
    ("bad", "type_name"), [("ten", "str"), (2.5, "float"), (None, "NoneType"), (True, "bool")]
)
def test_bad_input_comes_back_as_the_tasks_type_error_and_the_worker_keeps_answering(
    session_worker: CeleryWorker, bad: object, type_name: str
) -> None:
    result = square.delay(bad)
    with pytest.raises(TypeError, match=f"expected an int, got {type_name}"):
        result.get(timeout=10)
    assert result.failed()
    assert "TypeError" in (result.traceback or "")
    assert square.delay(12).get(timeout=10) == 144
    assert session_worker.process is not None and session_worker.process.poll() is None


def test_a_worker_with_a_bad_setting_stops_with_one_clear_line() -> None:
    import subprocess
    import sys

    from taskpool.testing.celery_worker import worker_env
    from tests.support.paths import REPO_ROOT

    env = worker_env("redis://127.0.0.1:1/0", TASKPOOL_DISPATCH="sideways")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "taskpool: TASKPOOL_DISPATCH='sideways' is not valid: expected one of auto, celery, local"
    )


def test_canvas_primitives_run_on_the_worker_as_on_stock_celery(
    session_worker: CeleryWorker,
) -> None:
    assert group(square.s(i) for i in range(4))().get(timeout=20) == [0, 1, 4, 9]
    assert chain(square.s(2), square.s())().get(timeout=20) == 16
    body = app.signature("celery.accumulate", kwargs={"index": 0})
    assert chord(square.s(i) for i in range(3))(body).get(timeout=20) == [0, 1, 4]
    callback = square.s()
    called = callback.freeze()
    square.apply_async((3,), link=callback).get(timeout=20)
    assert called.get(timeout=20) == 81


@pytest.mark.parametrize("mode", ["celery", "local"])
def test_argument_errors_are_raised_at_the_call_as_stock_celery_raises_them_on_both_paths(
    mode: str, session_worker: CeleryWorker
) -> None:
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        square.apply_async((1, 2), dispatch=mode)
    # Nesting past what a worker can hand to its pool process (pickling fails at about 470
    # levels, stopping the worker): refused at the call, as kombu's EncodeError.
    with pytest.raises(EncodeError, match="nested deeper than 200 levels") as caught:
        square.apply_async((nested(600),), dispatch=mode)
    assert isinstance(caught.value, NestedTooDeep)
    with pytest.raises(NestedTooDeep):
        square.apply_async((nested(201),), dispatch=mode)
    sent = square.apply_async((nested(200),), dispatch=mode)  # sent, and run
    with pytest.raises(TypeError, match="expected an int, got list"):
        sent.get(timeout=20)
    # A cycle is the encoder's to refuse, as on stock Celery.
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(EncodeError, match="Circular reference"):
        square.apply_async((cycle,), dispatch=mode)


def taken(app: Any, worker: CeleryWorker, sent: AsyncResult) -> bool:
    """Whether ``sent`` ran, or ``worker`` holds it (reserved or running, by its own answer)."""
    if sent.ready():
        return True
    replies = app.control.inspect([worker.node], timeout=1.0).query_task(sent.id) or {}
    return bool(replies.get(worker.node))


def test_a_drained_stop_does_not_stall_on_a_task_finishing_as_the_worker_stops(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The pytest plugin's worker stops this way. A plain warm shutdown stalled 20 s in about
    # one stop of three here, when the task sent just before finished during it.
    url = redis_server.url(db=7)
    client = client_app(url)
    stops = []
    for attempt in range(8):
        worker = CeleryWorker(
            worker_env(url), node_name(f"drained-{attempt}"), tmp_path / f"{attempt}.log"
        )
        try:
            worker.start().wait_ready(client)
            sent = client.send_task("tasks.square", (3,))
            # A drain finishes what the worker holds; one still queued stays for the next
            # worker. On a loaded machine the worker may take it after the drain begins.
            held = functools.partial(taken, client, worker, sent)
            wait_for(held, 30, "the task taken")
            started = time.monotonic()
            worker.stop(drain=client)
            stops.append(time.monotonic() - started)
        finally:
            worker.stop()
        assert sent.get(timeout=10) == 9  # drained: it ran before the worker stopped
    assert max(stops) < 10, stops  # generous: a stop takes about 2 s, a stall 20 s
