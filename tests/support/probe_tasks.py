"""A task that records in Redis each time its body starts and finishes.

Fault tests load it into real workers (``-I tests.support.probe_tasks``) to count how often each
task really ran, which a result alone cannot tell.
"""

from __future__ import annotations

import time

import redis
from celery import Task, shared_task

STARTED = "probe:started"
FINISHED = "probe:finished"


@shared_task(name="probe.record", bind=True)
def record(self: Task, n: int, seconds: float) -> int:
    """Sleep ``seconds`` between two marks in Redis; return ``n * n``."""
    client = redis.Redis.from_url(self.app.conf.broker_url, socket_timeout=5)
    try:
        client.rpush(STARTED, n)
        time.sleep(seconds)
        client.rpush(FINISHED, n)
    finally:
        client.close()
    return n * n
