"""Dramatiq as a peer for ``python -m bench compare``: the Redis broker and the Results middleware.

The same task body as the project's (``taskpool/examples.py``) as an actor that stores its
results in Redis (``RedisBackend``), and Dramatiq's defaults otherwise. ``record`` (for
``python -m bench redelivery``) marks its start in Redis, sleeps, and returns ``n * n``, as
``probe.record`` (taskpool/testing/probe_tasks.py) does on the Celery workers.

    dramatiq bench.dramatiq_app --processes 2 --threads 8

``dramatiq MODULE`` uses the global broker that importing the module sets, so this module
sets it at import, from ``BENCH_DRAMATIQ_URL``, and refuses to load without one: Dramatiq's
own default broker is RabbitMQ (or Redis on localhost:6379), which the benchmark must not
touch. Only the ``dramatiq`` worker and the bench's dramatiq client import it.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

# Plain functions only: importing this module of taskpool loads nothing else of it.
from taskpool import examples

URL_VARIABLE = "BENCH_DRAMATIQ_URL"

_url = os.environ.get(URL_VARIABLE, "").strip()
if not _url.startswith("redis://127.0.0.1:"):
    raise SystemExit(f"{URL_VARIABLE} must be a loopback redis:// URL, got {_url!r}")

backend = RedisBackend(url=_url)
broker = RedisBroker(url=_url)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)

square = dramatiq.actor(actor_name="square", store_results=True)(examples.square)


#: The list each run of ``record`` marks its start in: the name probe.record uses.
STARTED = "probe:started"


def _record(n: int, seconds: float) -> int:
    """Mark the start in Redis, sleep ``seconds``, return ``n * n``."""
    broker.client.rpush(STARTED, n)
    time.sleep(seconds)
    return n * n


record = dramatiq.actor(actor_name="record", store_results=True)(_record)
