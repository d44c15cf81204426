"""A countdown or eta longer than the visibility timeout runs once, not once per restore.

kombu's Redis transport hands a worker an eta task at once; the worker holds it unacked until
it is due. Past the visibility timeout kombu's restore put it back in the queue, so a second
worker (or the same one) ran it again: celery #4400, #7009, kombu #337. taskpool indexes such
a message at its due time (taskpool/pop_and_record.lua).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis as redis_py

from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.held import held_count
from taskpool.testing.probe_tasks import FINISHED, STARTED
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT

#: A visibility timeout of 4 s, swept every second (the hard limit must stay below it).
SHORT_VISIBILITY = {
    "TASKPOOL_TASK_TIME_LIMIT": "2",
    "TASKPOOL_VISIBILITY_TIMEOUT": "4",
    "TASKPOOL_RESTORE_INTERVAL": "1",
    "PYTHONPATH": str(REPO_ROOT),
}
COUNTDOWN = 9.0


@pytest.mark.parametrize("how", ["countdown", "eta"])
def test_a_task_due_after_the_visibility_timeout_runs_exactly_once(
    how: str,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    redis = redis_factory()
    for name in ("one", "two"):  # a second worker would take a restored copy
        worker_factory(
            redis.url(), node_name(f"eta-{how}-{name}"),
            extra=("-I", "taskpool.testing.probe_tasks"), **SHORT_VISIBILITY,
        )  # fmt: skip
    app = client_app(redis.url(), dispatch="celery")
    timing = (
        {"countdown": COUNTDOWN}
        if how == "countdown"
        else {"eta": app.now().fromtimestamp(time.time() + COUNTDOWN, tz=app.timezone)}
    )
    sent = time.monotonic()
    result = app.send_task("probe.record", args=(5, 0.0), **timing)
    assert result.get(timeout=COUNTDOWN + 20) == 25
    assert time.monotonic() - sent >= COUNTDOWN - 1  # it did wait for its time
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    # Past two more sweeps, a restored copy would have run by now.
    time.sleep(3)
    assert client.lrange(STARTED, 0, -1) == ["5"], "the task ran more than once"
    assert client.lrange(FINISHED, 0, -1) == ["5"]
    wait_for(lambda: held_count(client) == 0, 10, "the message to be acknowledged")
    client.close()
