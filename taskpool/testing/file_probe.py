"""A task that logs each run to a file: counts runs where Redis itself may fail over.

Workers load it with ``-I taskpool.testing.file_probe``; a line of an append is written whole, so
concurrent runs in several processes do not interleave. Each line: the input, the task id, the
node (None on the local pool) and the time.
"""

from __future__ import annotations

import time

from celery import Task, shared_task


@shared_task(name="probe.logged_square", bind=True)
def logged_square(self: Task, n: int, log: str) -> int:
    with open(log, "a") as out:
        out.write(f"{n} {self.request.id} {self.request.hostname} {time.time():.3f}\n")
    return n * n
