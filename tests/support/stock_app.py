"""A plain Celery app on kombu's own Redis transport, as a project not yet on taskpool runs it:
for tests of a mixed fleet. Its URL and visibility timeout come from the environment."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("STOCK_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("stock", broker=URL, backend=URL, include=["taskpool.testing.probe_tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={
        "visibility_timeout": int(os.environ.get("STOCK_VISIBILITY_TIMEOUT", "3600")),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)
