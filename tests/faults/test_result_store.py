"""``.get(timeout=t)`` keeps its word when the result store dies or freezes mid-wait."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError

from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.redis_server import RedisServer
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT

WAIT = 2.0


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_get_returns_or_raises_within_its_timeout_plus_a_second(
    fault: signal.Signals,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    redis = redis_factory()
    worker_factory(
        redis.url(),
        node_name(f"waiting-{fault.name.lower()}"),
        extra=("-I", "taskpool.testing.probe_tasks"),
        PYTHONPATH=str(REPO_ROOT),
    )
    app = client_app(redis.url(), dispatch="celery")
    result = app.send_task("probe.record", args=(1, 10.0))  # still running when the fault hits
    strike = threading.Timer(0.5, os.kill, (redis.pid, fault))
    started = time.monotonic()
    strike.start()
    try:
        # Frozen: the socket read times out. Killed: the result consumer gives up reconnecting.
        with pytest.raises((CeleryTimeoutError, TimeoutError, RuntimeError, ConnectionError)):
            result.get(timeout=WAIT)
        elapsed = time.monotonic() - started
    finally:
        strike.join()
        if fault == signal.SIGSTOP:
            os.kill(redis.pid, signal.SIGCONT)
        else:
            assert redis.process is not None
            redis.process.wait(10)  # reap the killed server before starting it again
            redis.start()  # same port
        # Dropped now, while Redis answers: a pending result unsubscribes when collected, and
        # against a dead server that fails inside __del__, in whichever test runs at the time.
        del result
        gc.collect()
    assert elapsed <= WAIT + 1.0, f".get(timeout={WAIT}) took {elapsed:.2f}s"
