"""Arguments refused in the caller: integers JSON would not carry exactly, and oversized calls."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import EncodeError

from taskpool import Settings, create_app
from taskpool.arguments import JSON_SAFE_INTEGER, check_call, check_items
from taskpool.errors import ArgumentTooLarge, BrokerUnavailable, NestedTooDeep, UnsafeInteger
from taskpool.examples import register
from taskpool.messages import MAX_NESTING
from taskpool.testing.redis_server import free_port
from tests.support.values import nested

LIMIT = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ((JSON_SAFE_INTEGER + 1,), {}, "args[0]"),
        ((1, -(2**64)), {}, "args[1]"),
        (({"a": [1, 2**100]},), {}, "args[0]['a'][1]"),
        ((), {"n": 10**30}, "kwargs['n']"),
        (([(1, 2), (3, 2**60)],), {}, "args[0][1][1]"),
    ],
)
def test_an_unsafe_integer_is_named_where_it_is(args: tuple, kwargs: dict, where: str) -> None:
    check_call("tasks.square", args, kwargs, LIMIT)  # by default, as stock Celery: carried
    with pytest.raises(UnsafeInteger) as caught:
        check_call("tasks.square", args, kwargs, LIMIT, json_safe_integers=True)
    message = str(caught.value)
    assert message.startswith(f"tasks.square: {where} is an integer of ")
    assert "str(n)" in message
    assert isinstance(caught.value, ValueError)


def test_safe_values_pass() -> None:
    for strict in (False, True):
        check_call(
            "tasks.square", (JSON_SAFE_INTEGER, -JSON_SAFE_INTEGER, 1.5e300, True), {}, LIMIT,
            json_safe_integers=strict,
        )  # fmt: skip
        check_call(
            "tasks.square", ([1, 2], {"k": "v"}, None, "text"), {"x": (1,)}, LIMIT,
            json_safe_integers=strict,
        )  # fmt: skip


def test_huge_integers_still_count_toward_the_size_limit() -> None:
    with pytest.raises(ArgumentTooLarge):
        check_call("tasks.square", (10**3000,), {}, 1000)


def test_arguments_over_the_limit_are_refused_with_their_size() -> None:
    with pytest.raises(ArgumentTooLarge) as caught:
        check_call("tasks.square", ("x" * 2000,), {}, 1000)
    assert "tasks.square: the arguments encode to 2,010 bytes" in str(caught.value)
    assert "TASKPOOL_MAX_MESSAGE_BYTES" in str(caught.value)


def test_a_flat_tuple_of_numbers_over_a_small_limit_is_refused_too() -> None:
    check_call("tasks.square", tuple(range(20)), {}, 1000)
    with pytest.raises(ArgumentTooLarge):
        check_call("tasks.square", tuple(range(100)), {}, 200)


def test_the_limit_counts_json_escapes_not_just_characters() -> None:
    check_call("tasks.square", ("\x00" * 100,), {}, 1000)
    with pytest.raises(ArgumentTooLarge):
        check_call("tasks.square", ("\x00" * 200,), {}, 1000)  # 6 bytes each as JSON


@pytest.mark.parametrize(
    ("items", "where"),
    [
        ([1, 2, JSON_SAFE_INTEGER + 1], "input 12"),
        ([0.5, -(2**60)], "input 11"),
        (["a", 3, 2**70], "input 12"),
        ([(1, 2), (3, 2**60)], "input 11[1]"),
        ([{"k": 1}, {"k": -(2**60)}], "input 11['k']"),
        (range(2**53 - 3, 2**53 + 3), "input 13"),
        (range(0, 2**60, 2**50), "input 18"),
    ],
)
def test_map_inputs_are_checked_with_their_index(items: list, where: str) -> None:
    with pytest.raises(UnsafeInteger) as caught:
        check_items("tasks.square", items, start=10)
    assert str(caught.value).startswith(f"tasks.square: {where} is an integer")


@pytest.mark.parametrize(
    "items",
    [
        [],
        list(range(1000)),
        [0.5, -3, JSON_SAFE_INTEGER],
        ["a", "b"],
        [(1, 2), (3, 4)],
        [None],
        range(0),
        range(-JSON_SAFE_INTEGER, JSON_SAFE_INTEGER + 1, 2**40),
    ],
)
def test_safe_map_inputs_pass(items: list) -> None:
    check_items("tasks.square", items, start=0)


def _app_with_no_broker(**settings: Any) -> Celery:
    """Mode celery against a closed port: an argument error must come before any connection."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    app = create_app(
        "tasks",
        settings=Settings(broker_url=url, result_backend=url, dispatch="celery", **settings),
    )
    register(app)
    app.finalize()
    return app


def test_delay_sends_a_64_bit_integer_as_stock_celery_does() -> None:
    square = _app_with_no_broker().tasks["tasks.square"]
    with pytest.raises(BrokerUnavailable):  # no argument error: it got as far as the broker
        square.delay(2**60)


def test_delay_refuses_an_unsafe_integer_before_it_tries_the_broker_when_asked() -> None:
    square = _app_with_no_broker(json_safe_integers=True).tasks["tasks.square"]
    with pytest.raises(UnsafeInteger, match="tasks.square: args.0. is an integer of 61 bits"):
        square.delay(2**60)
    with pytest.raises(BrokerUnavailable):  # the same call with a fine argument gets that far
        square.delay(2**40)


@pytest.mark.parametrize("dispatch", ["celery", "local"])
def test_delay_refuses_oversized_arguments_on_either_backend(dispatch: str) -> None:
    square = _app_with_no_broker(max_message_bytes=1000).tasks["tasks.square"]
    with pytest.raises(ArgumentTooLarge, match="over the 1,000 allowed"):
        square.apply_async(("x" * 5000,), dispatch=dispatch)


@pytest.mark.parametrize("kind", [list, dict])
def test_arguments_nested_past_max_nesting_are_refused_at_the_call(kind: type) -> None:
    check_call("tasks.square", (nested(MAX_NESTING, kind),), {}, 10**6)
    with pytest.raises(NestedTooDeep, match="tasks.square: an argument is nested deeper than"):
        check_call("tasks.square", (), {"tree": nested(MAX_NESTING + 1, kind)}, 10**6)


def test_deep_nesting_is_walked_without_recursion_and_cycles_are_left_to_the_encoder() -> None:
    with pytest.raises(NestedTooDeep):
        check_call("t", (nested(50_000),), {}, 10**6)  # no RecursionError of the check's own
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(EncodeError, match="Circular reference"):
        check_call("t", (cycle,), {}, 10**6)
