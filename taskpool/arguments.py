"""Arguments checked in the caller, before anything is sent: a size limit, and on request exact
integers for other languages.

A worker that receives a 50 MB argument decodes it in a pool process and stays large, so such
arguments are refused here, naming the limit. Python's JSON carries integers of any size
exactly, as stock Celery does (database and snowflake ids); with TASKPOOL_JSON_SAFE_INTEGERS,
integers past 2**53, which another language's JSON reader (Flower's page, a Go or JS client)
would round, are refused too, naming the argument.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from kombu.serialization import dumps

from taskpool.errors import ArgumentTooLarge, UnsafeInteger

#: RFC 8259 section 6: integers in this range are exchanged exactly by JSON implementations.
JSON_SAFE_INTEGER = 2**53 - 1
#: JSON can spell one byte of a string as six (``\\u0000``): arguments whose rough size times
#: this stays under the limit need no trial encoding.
WORST_JSON_GROWTH = 6
_CONTAINERS = (list, tuple, set, frozenset)


def check_call(
    task_name: str,
    args: Any,
    kwargs: Any,
    max_bytes: int,
    serializer: str = "json",
    *,
    json_safe_integers: bool = False,
) -> None:
    """Raise ArgumentTooLarge (or, when asked, UnsafeInteger) for a call that should not go."""
    positional, named = list(args or ()), dict(kwargs or {})
    size = _rough_size([positional, named], json_safe_integers)
    if size < 0:  # an unsafe integer somewhere: find it and name it
        for index, value in enumerate(positional):
            _name_unsafe(task_name, value, f"args[{index}]")
        for name, value in named.items():
            _name_unsafe(task_name, value, f"kwargs[{name!r}]")
    if size * WORST_JSON_GROWTH <= max_bytes:
        return
    _, _, body = dumps([positional, named], serializer=serializer)
    if len(body) > max_bytes:
        raise ArgumentTooLarge(
            f"{task_name}: the arguments encode to {len(body):,} bytes, over the "
            f"{max_bytes:,} allowed by TASKPOOL_MAX_MESSAGE_BYTES; pass a reference (a path, "
            "a key, a URL) to large data instead of the data itself"
        )


def check_items(task_name: str, items: Sequence[Any], start: int) -> None:
    """The integer check for one chunk of map inputs (``start``: the first item's index).

    A range is checked by its ends; numbers, and tuples of numbers (starmap inputs), with
    min() and max() at C speed; anything else is walked.
    """
    if isinstance(items, range):
        if _all_safe_numbers(items[:: max(1, len(items) - 1)]):  # its first and last values
            return
    elif items and isinstance(items[0], _CONTAINERS):
        try:
            flat = list(itertools.chain.from_iterable(items))
        except TypeError:
            flat = None
        if flat is not None and _all_safe_numbers(flat):
            return
    elif _all_safe_numbers(items):
        return
    for offset, item in enumerate(items):
        _name_unsafe(task_name, item, f"input {start + offset}")


def _unsafe_int(value: Any) -> bool:
    """True for an int (not a bool) outside the range JSON carries exactly."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not -JSON_SAFE_INTEGER <= value <= JSON_SAFE_INTEGER
    )


def _all_safe_numbers(values: Sequence[Any]) -> bool:
    try:
        low, high = min(values), max(values)
    except (TypeError, ValueError):  # mixed types, or empty
        return not values
    if isinstance(low, (str, bytes)):
        return True  # min() and max() succeeded, so every value is a string
    numbers = (int, float)
    # Every value lies between low and high (floats too), so only these two need the range.
    return (
        isinstance(low, numbers)
        and isinstance(high, numbers)
        and low >= -JSON_SAFE_INTEGER
        and high <= JSON_SAFE_INTEGER
    )


def _rough_size(value: Any, refuse_unsafe: bool) -> int:
    """About how many bytes ``value`` takes as JSON; -1 if it holds a refused integer."""
    if isinstance(value, (str, bytes)):
        return len(value) + 2
    if _unsafe_int(value):
        return -1 if refuse_unsafe else value.bit_length() // 3 + 2  # its decimal digits, roughly
    if isinstance(value, dict):
        parts = [_rough_size(k, refuse_unsafe) for k in value]
        parts += [_rough_size(v, refuse_unsafe) for v in value.values()]
    elif isinstance(value, _CONTAINERS):
        parts = [_rough_size(item, refuse_unsafe) for item in value]
    else:
        return 32  # safe ints, floats, None, and what the serializer spells as a short string
    return -1 if -1 in parts else sum(parts) + 2 * len(parts) + 2


def _name_unsafe(task_name: str, value: Any, where: str) -> None:
    if _unsafe_int(value):
        raise UnsafeInteger(
            f"{task_name}: {where} is an integer of {value.bit_length()} bits, beyond "
            "±(2**53 - 1), the integers JSON carries exactly (RFC 8259); pass it as a "
            "string, e.g. str(n), and convert it back with int() inside the task"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _name_unsafe(task_name, item, f"{where}[{key!r}]")
    elif isinstance(value, _CONTAINERS):
        for index, item in enumerate(value):
            _name_unsafe(task_name, item, f"{where}[{index}]")
