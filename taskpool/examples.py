"""The classic multiprocessing examples: ``square``, ``print_number``, ``sum_of_squares``.

The bodies are plain functions, so they test like any function; ``register`` makes them tasks
of an app. They keep the names they have always had (``tasks.square``, ...), so queued
messages, ``TASKPOOL_ROUTES`` and dashboards keep working, and a worker of the repository's
``tasks`` app serves the ``taskpool demo`` command.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple, TypedDict

from celery import Celery, Task

#: The node name a local-pool run reports, so callers can tell it from a worker's ``name@host``.
LOCAL_NODE = f"local-pool@{socket.gethostname()}"


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


class ExampleTasks(NamedTuple):
    """The examples as tasks of one app."""

    square: Task
    print_number: Task
    sum_of_squares: Task


def register(app: Celery) -> ExampleTasks:
    """Make the examples tasks of ``app`` (of it alone: not shared), by their usual names."""

    # The plain function is the task body itself: no wrapper to call per map input.
    def report_number(self: Task, n: int) -> NumberReport:
        """Print the pid and number, and return who ran it."""
        return print_number(n, hostname=node_name(self))

    report_number.__module__ = __name__  # the local pool imports this module to find it
    return ExampleTasks(
        square=app.task(name="tasks.square", shared=False)(square),
        print_number=app.task(name="tasks.print_number", bind=True, shared=False)(report_number),
        sum_of_squares=app.task(name="tasks.sum_of_squares", shared=False)(sum_of_squares),
    )


def node_name(task: Task) -> str:
    """The Celery node running ``task`` (``-n``), or LOCAL_NODE outside a worker."""
    request = task.request
    if request.is_eager or not request.hostname:
        return LOCAL_NODE
    return str(request.hostname)
