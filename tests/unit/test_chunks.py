"""Cutting map inputs into chunks, and running a chunk's items once each."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery

from taskpool.chunks import MAX_CHUNK_ITEMS, chunked, pack, run_items, unpack
from taskpool.errors import RetryInMap
from tasks import square


@pytest.mark.parametrize(
    "inputs",
    [list(range(10)), tuple(range(10)), range(10), (n for n in range(10)), iter(range(10))],
    ids=["list", "tuple", "range", "generator", "iterator"],
)
def test_every_kind_of_input_is_cut_into_the_same_chunks(inputs: Any) -> None:
    assert [list(chunk) for chunk in chunked(inputs, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_range_is_cut_into_ranges_which_cost_nothing_to_send() -> None:
    assert list(chunked(range(0, 100, 10), 4)) == [
        range(0, 40, 10),
        range(40, 80, 10),
        range(80, 100, 10),
    ]


@pytest.mark.parametrize("values", [[0, 1, 4], [2**70, "x"], range(3, 30, 4), range(0)])
def test_a_chunk_comes_out_of_its_message_as_it_went_in(values: Any) -> None:
    packed = pack(values)
    assert json.loads(json.dumps(packed)) == packed  # it travels inside a JSON message
    assert unpack(packed) == values


def test_a_range_chunk_travels_as_three_numbers() -> None:
    assert pack(range(10**6, 2 * 10**6)) == {"range": [10**6, 2 * 10**6, 1]}


def test_each_item_runs_once_and_a_failure_keeps_its_place() -> None:
    seen: list[Any] = []

    def body(item: Any) -> Any:
        seen.append(item)
        return square.run(item)

    task = type("Recording", (), {"run": staticmethod(body)})()
    outcome = run_items(task, [1, "x", 3, None, 5], hostname=None)
    assert seen == [1, "x", 3, None, 5]
    assert outcome.values == [1, None, 9, None, 25]
    assert [(position, type(error)) for position, error in outcome.errors] == [
        (1, TypeError),
        (3, TypeError),
    ]


retrying = Celery("retrying", set_as_current=False)


@retrying.task(bind=True)
def retries(self: Any, n: int) -> int:
    if n == 2:
        raise self.retry(countdown=1)
    return n


@retrying.task(bind=True, autoretry_for=(ValueError,), max_retries=3)
def retries_on_value_error(self: Any, n: int) -> int:
    if n == 1:
        raise ValueError("not an input this task takes")
    return n


def test_self_retry_in_a_mapped_input_fails_that_input_by_name() -> None:
    outcome = run_items(retries, [0, 1, 2, 3], hostname=None)
    assert outcome.values == [0, 1, None, 3]
    [(position, error)] = outcome.errors
    assert position == 2 and isinstance(error, RetryInMap)
    assert "self.retry()" in str(error) and "direct call" in str(error)


def test_a_retry_for_an_exception_keeps_that_exception() -> None:
    outcome = run_items(retries_on_value_error, [0, 1, 2], hostname=None)
    [(position, error)] = outcome.errors
    assert position == 1 and type(error) is ValueError


@pytest.mark.parametrize(
    "packed",
    [{"range": [0, 10**12, 1]}, pack(list(range(MAX_CHUNK_ITEMS + 1))),
     {"json": [0] * (MAX_CHUNK_ITEMS + 1)}],
    ids=["range", "msgpack", "json"],
)  # fmt: skip
def test_a_chunk_message_over_max_chunk_items_is_refused_before_it_is_run(packed: Any) -> None:
    """A 1 KB message naming range(10**12) would have a pool process build 10**12 results."""
    with pytest.raises(ValueError, match="over the 1,000,000 one chunk may hold"):
        unpack(packed)


def test_a_chunk_of_max_chunk_items_is_read() -> None:
    assert len(unpack({"range": [0, MAX_CHUNK_ITEMS, 1]})) == MAX_CHUNK_ITEMS


def test_a_map_with_a_chunksize_over_max_chunk_items_is_refused_at_the_call() -> None:
    import taskpool

    with pytest.raises(ValueError, match="chunksize 1,000,001 inputs, over the 1,000,000"):
        taskpool.map(square, range(10), chunksize=MAX_CHUNK_ITEMS + 1, dispatch="local")
