"""A task that records in Redis each time its body starts and finishes.

Fault tests and the redelivery benchmark load it into real workers (``-I
taskpool.testing.probe_tasks``) to count how often each task really ran, which a result alone
cannot tell.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Task, shared_task
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

STARTED = "probe:started"
FINISHED = "probe:finished"
#: The process that started each run, in the order of STARTED.
PIDS = "probe:pids"


def marks(url: str) -> redis.Redis:
    """A client for the marks that rides out a Redis restart (the flapping tests restart it
    under running tasks): a mark lost to the restart would fail the task, not taskpool."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=40)
    return redis.Redis.from_url(
        url, socket_timeout=5, retry=retry, retry_on_error=[redis.ConnectionError]
    )


@shared_task(name="probe.record", bind=True)
def record(self: Task, n: int, seconds: float, padding: str = "") -> int:
    """Sleep ``seconds`` between two marks in Redis; return ``n * n``. ``padding`` is unused:
    it makes the task's message as big as a test needs."""
    client = marks(self.app.conf.broker_url)
    try:
        marked = client.pipeline()
        marked.rpush(STARTED, n)
        marked.rpush(PIDS, os.getpid())
        marked.execute()
        time.sleep(seconds)
        client.rpush(FINISHED, n)
    finally:
        client.close()
    return n * n


@shared_task(name="probe.early", bind=True, acks_late=False)
def early(self: Task, n: int, seconds: float) -> int:
    """As ``record``, with its message acked before it runs (Celery's default)."""
    return int(record.run(n, seconds))


DIED = "probe:died"


@shared_task(name="probe.die", bind=True)
def die(self: Task, n: int) -> None:
    """Record the run in Redis, then end the pool process running it, as a segfault would."""
    client = marks(self.app.conf.broker_url)
    try:
        client.rpush(DIED, n)
    finally:
        client.close()
    os._exit(1)


@shared_task(name="probe.nap", soft_time_limit=1, time_limit=5)
def nap(seconds: float) -> float:
    """Sleep ``seconds``: past one, the soft time limit interrupts it."""
    time.sleep(seconds)
    return seconds


@shared_task(name="probe.power")
def power(base: int, exponent: int) -> int:
    """A task of two arguments, for starmaps."""
    return int(base**exponent)


@shared_task(name="probe.sleep")
def sleep(seconds: float) -> float:
    """Sleep ``seconds`` and return them, touching nothing else."""
    time.sleep(seconds)
    return seconds


@shared_task(name="probe.where", bind=True)
def where(self: Task, n: int, seconds: float) -> str:
    """As ``record``, and return the node name of the worker that ran it, to tell runs apart."""
    record.run(n, seconds)
    return str(self.request.hostname)
