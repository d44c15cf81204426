"""The bulk map, through a real worker and Redis, on the local pool, and across a lost broker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

import taskpool
from taskpool import MapItemFailed
from taskpool.errors import ArgumentTooLarge, UnsafeInteger
from taskpool.settings import forget_settings
from taskpool.testing import probe_tasks  # noqa: F401 - probe.nap on every app
from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tasks import print_number, square, sum_of_squares
from tests.support.apps import client_app

PROBE = ("-I", "taskpool.testing.probe_tasks")

N = 100_000


@pytest.fixture(params=["celery", "local"])
def dispatch(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs through the session's worker (mode celery) and on the local pool."""
    if request.param == "celery":
        request.getfixturevalue("session_worker")
    yield request.param


def test_a_hundred_thousand_inputs_come_back_squared_in_order(dispatch: str) -> None:
    results = taskpool.imap(square, range(N), dispatch=dispatch)
    assert list(results) == [i * i for i in range(N)]
    assert results.backends == ["broker" if dispatch == "celery" else "local pool"]


def test_a_generator_is_mapped_without_knowing_its_length(dispatch: str) -> None:
    numbers = (n for n in range(5_000))
    assert taskpool.map(square, numbers, dispatch=dispatch, chunksize=700) == [
        n * n for n in range(5_000)
    ]


def test_a_failing_input_names_its_index_and_keeps_the_tasks_error(dispatch: str) -> None:
    inputs: list[Any] = list(range(1_000))
    inputs[637] = "six"
    with pytest.raises(TypeError, match="expected an int, got str") as caught:
        taskpool.map(square, inputs, dispatch=dispatch, chunksize=100)
    assert isinstance(caught.value, MapItemFailed)
    assert caught.value.index == 637 and caught.value.item == "six"
    assert "input 637" in str(caught.value)


def test_return_exceptions_puts_each_failure_in_its_place(dispatch: str) -> None:
    results = taskpool.map(square, [1, "x", 3, None, 5], dispatch=dispatch, return_exceptions=True)
    assert [results[0], results[2], results[4]] == [1, 9, 25]
    assert isinstance(results[1], TypeError) and "got str" in str(results[1])
    assert isinstance(results[3], TypeError) and "got NoneType" in str(results[3])


def test_bound_tasks_see_who_ran_them(dispatch: str, request: pytest.FixtureRequest) -> None:
    reports = taskpool.map(print_number, range(8), dispatch=dispatch, chunksize=2)
    assert [r["number"] for r in reports] == list(range(8))
    if dispatch == "celery":
        worker = request.getfixturevalue("session_worker")
        assert {r["hostname"] for r in reports} == {worker.node}
        assert {r["pid"] for r in reports} <= worker.pool_pids()
    else:
        assert all(r["hostname"].startswith("local-pool@") for r in reports)


@pytest.fixture
def json_safe_integers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """TASKPOOL_JSON_SAFE_INTEGERS=true for this test's calls and maps."""
    monkeypatch.setenv("TASKPOOL_JSON_SAFE_INTEGERS", "true")
    forget_settings()
    yield
    monkeypatch.undo()
    forget_settings()


def test_64_bit_and_larger_inputs_travel_exactly_by_default(dispatch: str) -> None:
    inputs = [2**60, -(2**63), 2**70, 3]
    assert taskpool.map(square, inputs, dispatch=dispatch) == [n * n for n in inputs]


@pytest.mark.usefixtures("json_safe_integers")
def test_inputs_json_would_not_carry_exactly_are_refused_before_anything_runs(
    dispatch: str,
) -> None:
    with pytest.raises(UnsafeInteger, match="input 1 is an integer of 71 bits"):
        taskpool.map(square, [3, 2**70], dispatch=dispatch)
    # Results are not inputs: big ones come back exact (msgpack, or JSON past 64 bits).
    assert taskpool.map(square, [2**40, 2**35, 3], dispatch=dispatch) == [2**80, 2**70, 9]


@pytest.mark.usefixtures("json_safe_integers")
def test_an_unsafe_input_in_a_later_chunk_is_named_by_its_index_in_the_map(dispatch: str) -> None:
    inputs = list(range(1_000))
    inputs[750] = 2**60
    with pytest.raises(UnsafeInteger, match="input 750 is an integer of 61 bits"):
        taskpool.map(square, inputs, dispatch=dispatch, chunksize=100)


def test_a_chunk_over_the_message_limit_is_refused_with_a_chunksize_hint(
    session_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    app = client_app(redis_server.url(), dispatch="celery", max_message_bytes=20_000)
    square = app.tasks["tasks.square"]
    with pytest.raises(ArgumentTooLarge, match="a chunk of 50,000 inputs to tasks.square") as err:
        taskpool.map(square, list(range(100_000)), chunksize=50_000)
    assert "smaller chunksize" in str(err.value)
    assert taskpool.map(square, list(range(3000)), chunksize=1000) == [n * n for n in range(3000)]
    # A range chunk travels as its start, stop and step, whatever its length.
    assert taskpool.map(square, range(100_000), chunksize=50_000)[-1] == 99_999**2


def test_a_generator_is_read_only_as_far_as_the_chunks_in_flight() -> None:
    pulled = 0

    def counting() -> Iterator[int]:
        nonlocal pulled
        for n in range(1_000_000):
            pulled += 1
            yield n

    results = taskpool.imap(square, counting(), dispatch="local", chunksize=1_000, max_in_flight=3)
    assert next(results) == 0
    assert pulled <= 4 * 1_000  # the chunks in flight, plus the one being cut
    assert list(results)[-1] == 999_999**2


def test_progress_goes_to_stderr_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    taskpool.map(square, range(1_000), dispatch="local", progress=True)
    assert "1000/1000" in capsys.readouterr().err
    taskpool.map(square, range(1_000), dispatch="local")  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_a_killed_pool_process_loses_and_duplicates_nothing(session_worker: CeleryWorker) -> None:
    sizes = [2_000_000 + n for n in range(24)]  # each call computes for a tenth of a second
    results = taskpool.imap(sum_of_squares, sizes, dispatch="celery", chunksize=2)
    first = next(results)  # chunks are now running in every pool process
    victim = _busiest(session_worker)
    os.kill(victim, signal.SIGKILL)
    assert [first, *results] == [sum(i * i for i in range(n)) for n in sizes]
    killed = f"pid:{victim} exited with 'signal 9 (SIGKILL)'"
    wait_for(lambda: killed in session_worker.log_tail(400_000), 10, "the worker to log the kill")


def _busiest(worker: CeleryWorker) -> int:
    """The pool process that has used the most CPU: the one most likely mid-chunk."""

    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    return max(worker.pool_pids(), key=cpu)


def test_with_no_broker_auto_maps_on_the_local_pool() -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0")
    results = taskpool.imap(app.tasks["tasks.square"], range(10_000))
    assert list(results) == [i * i for i in range(10_000)]
    assert results.backends == ["local pool"]


def test_mode_celery_with_no_broker_raises_before_mapping() -> None:
    app = client_app(f"redis://127.0.0.1:{free_port()}/0", dispatch="celery")
    with pytest.raises(taskpool.BrokerUnavailable):
        taskpool.map(app.tasks["tasks.square"], range(10))


def test_a_broker_lost_mid_map_finishes_every_input_once_on_the_local_pool(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory()
    worker_factory(redis.url(), node_name("lost"))
    app = client_app(redis.url(), broker_recheck=0.2)
    sizes = [1_500_000 + n for n in range(40)]
    started = time.monotonic()
    results = taskpool.imap(app.tasks["tasks.sum_of_squares"], sizes, chunksize=2)
    first = next(results)  # the broker is serving this map
    redis.kill()
    assert [first, *results] == [sum(i * i for i in range(n)) for n in sizes]
    assert results.backends == ["broker", "local pool"]
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("mode", ["celery", "local"])
def test_a_chunk_past_its_soft_time_limit_fails_the_rest_of_the_chunk_on_both_backends(
    mode: str,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    """The mapped task's limits (soft 1 s) bound each chunk: the input running when time is up
    and those after it fail with SoftTimeLimitExceeded; the next chunk starts afresh."""
    redis = redis_factory()
    if mode == "celery":
        worker_factory(redis.url(), node_name("limited"), extra=PROBE)
    app = client_app(redis.url(), dispatch=mode)
    nap = app.tasks["probe.nap"]
    results = taskpool.map(nap, [0, 0.1, 3, 0, 0, 0], chunksize=4, return_exceptions=True)
    assert results[:2] == [0, 0.1] and results[4:] == [0, 0]
    assert all(isinstance(r, SoftTimeLimitExceeded) for r in results[2:4]), results


def test_a_map_whose_every_worker_died_runs_on_the_local_pool_within_a_bound(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory()
    worker = worker_factory(redis.url(), node_name("doomed"))
    app = client_app(redis.url())  # mode auto, the default
    sizes = [1_500_000 + n for n in range(16)]
    results = taskpool.imap(app.tasks["tasks.sum_of_squares"], sizes, chunksize=2)
    first = next(results)
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool processes
    killed = time.monotonic()
    assert [first, *results] == [sum(i * i for i in range(n)) for n in sizes]
    assert results.backends == ["broker", "local pool"]
    assert time.monotonic() - killed < 60  # WORKER_SILENCE_SECONDS, then the local work


def test_in_mode_celery_a_map_whose_every_worker_died_says_so_within_a_bound(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory()
    worker = worker_factory(redis.url(), node_name("doomed-celery"))
    app = client_app(redis.url(), dispatch="celery")
    results = taskpool.imap(app.tasks["tasks.sum_of_squares"], [1_500_000] * 16, chunksize=2)
    next(results)
    os.killpg(worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(taskpool.BrokerUnavailable, match="no worker answered.*start a worker"):
        list(results)
    assert time.monotonic() - killed < 60


@pytest.mark.parametrize("mode", ["celery", "local"])
def test_a_starmap_passes_each_inputs_arguments_on_both_backends(
    mode: str,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    redis = redis_factory()
    if mode == "celery":
        worker_factory(redis.url(), node_name("starred"), extra=PROBE)
    app = client_app(redis.url(), dispatch=mode)
    power = app.tasks["probe.power"]
    pairs = [(base, exponent) for base in range(2, 6) for exponent in range(4)]
    assert taskpool.starmap(power, pairs, chunksize=3) == [b**e for b, e in pairs]
    results = taskpool.starmap(power, [(2, 3), (2,), [3, 2]], return_exceptions=True)
    assert results[0] == 8 and results[2] == 9
    assert isinstance(results[1], TypeError)  # one argument short, as power(2) would be
