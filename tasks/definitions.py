"""The shipped tasks: thin Celery wrappers around the plain functions."""

from __future__ import annotations

import socket

from celery import Task

from tasks import functions
from tasks.celery_app import app
from workers import chunks  # noqa: F401 - registers the generic chunk task on the app

#: The node name a local-pool run reports, so callers can tell it from a worker's ``name@host``.
LOCAL_NODE = f"local-pool@{socket.gethostname()}"


#: Return n squared. The plain function is the task body itself: no wrapper to call per input.
square = app.task(name="tasks.square")(functions.square)


#: CPU-bound work: the sum of squares below n.
sum_of_squares = app.task(name="tasks.sum_of_squares")(functions.sum_of_squares)


@app.task(name="tasks.print_number", bind=True)
def print_number(self: Task, n: int) -> functions.NumberReport:
    """Print the pid and number, and return who ran it."""
    return functions.print_number(n, hostname=node_name(self))


def node_name(task: Task) -> str:
    """The Celery node running ``task`` (``-n``), or LOCAL_NODE outside a worker."""
    request = task.request
    if request.is_eager or not request.hostname:
        return LOCAL_NODE
    return str(request.hostname)
