"""The task bodies as plain Python: no Celery here, so they test like any function."""

from __future__ import annotations

import os
from typing import TypedDict


class NumberReport(TypedDict):
    """What ``print_number`` returns: the number and who ran it."""

    number: int
    pid: int
    hostname: str


def square(n: int) -> int:
    """Return ``n * n`` for an int; refuse anything else with a TypeError naming its type."""
    _require_int(n)
    return n * n


def print_number(n: int, hostname: str) -> NumberReport:
    """Print the classic ``Process ID: <pid> - Number: <n>`` line and say who printed it."""
    _require_int(n)
    pid = os.getpid()
    # One write of the whole line: print() writes the text and the newline separately, and on
    # unbuffered output (PYTHONUNBUFFERED) lines of processes sharing a terminal interleave.
    print(f"Process ID: {pid} - Number: {n}\n", end="", flush=True)
    return {"number": n, "pid": pid, "hostname": hostname}


def sum_of_squares(n: int) -> int:
    """Sum of i*i for i below n: real CPU work, to show what processes buy over threads."""
    _require_int(n)
    return sum(i * i for i in range(n))


def _require_int(value: object) -> None:
    # bool is a subclass of int, but square(True) is a caller's mistake, not a number.
    # (The exact-type test first: it is the common case, and bulk maps call this per input.)
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"expected an int, got {type(value).__name__}: {value!r:.80}")
