"""Cutting map inputs into chunks, and running a chunk's items once each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskpool.chunks import chunked, pack, run_items, unpack
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
