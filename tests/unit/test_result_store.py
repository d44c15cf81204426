"""The result store's quick answers agree with Celery's own: keys, and the eager warning."""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import pytest
from celery import Celery
from celery.backends.redis import RedisBackend

from taskpool.result_store import RedisStore


def stores(**conf: Any) -> tuple[Any, Any]:
    """taskpool's store and Celery's, for the same app (neither connects until used)."""
    app = Celery(set_as_current=False, broker="redis://127.0.0.1:1/0")
    app.conf.update(conf)
    url = "redis://127.0.0.1:1/0"
    return RedisStore(app=app, url=url), RedisBackend(app=app, url=url)


@pytest.mark.parametrize(
    ("task_id", "key"),
    [("an-id", ""), ("ünï-🙂", ""), (uuid.uuid4(), ""), ("an-id", "suffix"), (b"bytes-id", "")],
)
@pytest.mark.parametrize("prefix", [None, "tenant:"])
def test_a_tasks_key_is_celerys(task_id: Any, key: str, prefix: str | None) -> None:
    options = {"global_keyprefix": prefix} if prefix else {}
    ours, celerys = stores(result_backend_transport_options=options)
    assert ours.get_key_for_task(task_id, key) == celerys.get_key_for_task(task_id, key)


def test_an_empty_task_id_is_refused_as_celery_refuses_it() -> None:
    ours, _ = stores()
    with pytest.raises(ValueError, match="task_id must not be empty"):
        ours.get_key_for_task("")


def test_reading_a_result_under_always_eager_warns_as_celery_does_and_stops_when_unset() -> None:
    ours, _ = stores()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours._ensure_not_eager()
        ours.app.conf.task_always_eager = True
        with pytest.warns(RuntimeWarning, match="task_always_eager"):
            ours._ensure_not_eager()
        ours.app.conf.task_store_eager_result = True
        ours._ensure_not_eager()
        ours.app.conf.task_always_eager = False
        ours.app.conf.task_store_eager_result = False
        ours._ensure_not_eager()
