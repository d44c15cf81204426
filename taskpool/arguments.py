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
import math
from collections.abc import Sequence
from typing import Any

from kombu.serialization import dumps

from taskpool.errors import ArgumentTooLarge, NestedTooDeep, UnsafeInteger
from taskpool.messages import MAX_NESTING

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
    """Raise ArgumentTooLarge, NestedTooDeep (or, when asked, UnsafeInteger) for a call that
    should not go."""
    if not kwargs and _few_safe_numbers(args, max_bytes):
        return  # the common call, square(7), in a tenth of the walk's time
    positional, named = list(args or ()), dict(kwargs or {})
    try:
        size = _rough_size([positional, named], json_safe_integers)
    except NestedTooDeep as exc:
        raise NestedTooDeep(f"{task_name}: {exc}") from None
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


#: Types whose values JSON spells in a few bytes (an int only within JSON_SAFE_INTEGER).
_NUMBERS = frozenset({int, float, bool, type(None)})


def _few_safe_numbers(args: Any, max_bytes: int) -> bool:
    """Whether ``args`` is a flat list or tuple of numbers, each safe, whose JSON cannot reach
    ``max_bytes`` (as ``_rough_size`` reckons a number: 32 bytes, and a separator)."""
    if type(args) not in (tuple, list) or (len(args) * 34 + 8) * WORST_JSON_GROWTH > max_bytes:
        return False
    for arg in args:
        if type(arg) not in _NUMBERS:
            return False
        if type(arg) is int and not -JSON_SAFE_INTEGER <= arg <= JSON_SAFE_INTEGER:
            return False
    return True


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


def _rough_size(value: Any, refuse_unsafe: bool) -> float:
    """About how many bytes ``value`` takes as JSON; -1 if it holds a refused integer.

    A walk with its own stack, not recursion, container by container: NestedTooDeep past
    MAX_NESTING levels (``value`` is ``[args, kwargs]``, so an argument's own level is two
    less). A container met twice (shared, or a cycle) is walked once and the size is unknown
    (infinity): the trial encoding then tells.
    """
    total, shared = 0, False
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        container, level = stack.pop()
        if id(container) in seen:
            shared = True
            continue
        seen.add(id(container))
        if level - 1 > MAX_NESTING:
            raise NestedTooDeep(
                f"an argument is nested deeper than {MAX_NESTING} levels of lists and "
                "dicts: a worker could not pass it to its pool process (RecursionError); "
                "flatten it, or pass it as a JSON string"
            )
        items = [*container, *container.values()] if isinstance(container, dict) else container
        total += 2 * len(items) + 2
        for item in items:
            if isinstance(item, (str, bytes)):
                total += len(item) + 2
            elif _unsafe_int(item):
                if refuse_unsafe:
                    return -1
                total += item.bit_length() // 3 + 2  # its decimal digits, roughly
            elif isinstance(item, (dict, *_CONTAINERS)):
                stack.append((item, level + 1))
            else:
                total += 32  # safe ints, floats, None, what the serializer spells as a short string
    return math.inf if shared else total


def _name_unsafe(task_name: str, value: Any, where: str) -> None:
    """Raise UnsafeInteger naming the first unsafe integer in ``value`` (walked as above)."""
    seen: set[int] = set()
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if _unsafe_int(item):
            raise UnsafeInteger(
                f"{task_name}: {path} is an integer of {item.bit_length()} bits, beyond "
                "±(2**53 - 1), the integers JSON carries exactly (RFC 8259); pass it as a "
                "string, e.g. str(n), and convert it back with int() inside the task"
            )
        if isinstance(item, (dict, *_CONTAINERS)) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            # Reversed, so the stack gives the first unsafe integer first.
            stack += [(v, f"{path}[{k!r}]") for k, v in reversed(list(pairs))]
