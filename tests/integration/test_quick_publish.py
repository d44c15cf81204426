"""The quick publish of a plain call (``taskpool.quick_publish``) sends Celery's own message,
and every call Celery's path must make still takes it."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from celery import Celery, Task, signals
from celery.result import EagerResult

from taskpool import dispatch, quick_publish
from taskpool.testing import probe_tasks  # noqa: F401 - probe.power on every app
from taskpool.testing.celery_worker import node_name
from taskpool.testing.redis_server import RedisServer
from tests.support.apps import client_app
from tests.support.workers import stock_worker


@pytest.fixture
def redis(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture
def app(redis: RedisServer) -> Celery:
    """No worker beats here: calls stay queued, where the test reads them."""
    return client_app(redis.url(), dispatch="celery", no_worker="wait")


@pytest.fixture
def client(redis: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def celery_sends(app: Celery, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The task names Celery's path sent a message for (its ``send_task_message``); the quick
    path does not call it."""
    names: list[str] = []
    send_task_message = app.amqp.send_task_message

    def counted(producer: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return send_task_message(producer, name, *args, **kwargs)

    monkeypatch.setattr(app.amqp, "send_task_message", counted)
    return names


def queued(client: redis_py.Redis, queue: str = "celery") -> list[str]:
    """The messages in ``queue``, oldest first, taken out of it."""
    texts = [str(text) for text in reversed(client.lrange(queue, 0, -1))]
    client.delete(queue)
    return texts


def anonymous(text: str) -> tuple[str, Any]:
    """A message's text with its task id and delivery tag replaced, and its decoded body."""
    message = json.loads(text)
    for value, name in (
        (message["headers"]["id"], "<id>"),
        (message["properties"]["delivery_tag"], "<tag>"),
    ):
        text = text.replace(value, name)
    return text, json.loads(base64.b64decode(message["body"]))


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("tasks.square", (7,), {}),
        ("probe.power", (2,), {"exponent": 10}),
        ("tasks.print_number", ([1, {"a": [2.5, None, "é"]}],), {}),
        ("probe.record", (2**70, -1.5e300), {}),
        ("probe.record", (True, None, float("nan")), {}),
        ("probe.record", (1, 0.5, "two\nlines"), {}),
    ],
)
def test_a_plain_calls_message_is_the_one_celery_sends_key_by_key(
    app: Celery,
    client: redis_py.Redis,
    celery_sends: list[str],
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    task = app.tasks[name]
    Task.apply_async(task, args, kwargs)  # Celery's own apply_async, no quick path
    first = task.delay(*args, **kwargs)  # Celery's path, which leaves the template
    quick = task.delay(*args, **kwargs)
    assert celery_sends == [name, name], "the second delay went Celery's way"
    assert quick_publish._templates[task].envelope is not None  # stored through its envelope
    texts = queued(client)
    assert len(texts) == 3
    ids = [json.loads(text)["headers"]["id"] for text in texts]
    assert ids[1:] == [first.id, quick.id] and len(set(ids)) == 3
    celerys, templates, quicks = (anonymous(text) for text in texts)
    # The same text, byte for byte, once the ids are set aside: headers, properties, the
    # body's encoding and every key's order.
    assert quicks == celerys == templates
    headers = json.loads(texts[2])["headers"]
    assert headers["root_id"] == quick.id
    assert json.loads(texts[2])["properties"]["correlation_id"] == quick.id


def test_the_quick_message_runs_on_a_stock_celery_worker(
    redis: RedisServer, app: Celery, tmp_path: Path, celery_sends: list[str]
) -> None:
    power = app.tasks["probe.power"]
    calls = [power.delay(2, n) for n in range(6)]
    assert celery_sends == ["probe.power"]
    worker = stock_worker(redis, tmp_path, node_name("stock"))
    try:
        worker.start().wait_ready(app)
        assert [call.get(timeout=30) for call in calls] == [2**n for n in range(6)]
    finally:
        worker.stop()


def test_a_changed_configuration_is_followed_at_the_next_call(
    app: Celery, client: redis_py.Redis, celery_sends: list[str]
) -> None:
    """Celery reads ``task_send_sent_event`` at each call: once it is on, calls take Celery's
    path again, which sends the event."""
    square = app.tasks["tasks.square"]
    square.delay(1)
    square.delay(2)
    assert celery_sends == ["tasks.square"]
    app.conf.task_send_sent_event = True
    square.delay(3)
    square.delay(4)
    assert celery_sends == ["tasks.square"] * 3
    texts = queued(client)
    assert [json.loads(text)["headers"]["argsrepr"] for text in texts] == [
        "(1,)",
        "(2,)",
        "(3,)",
        "(4,)",
    ]


def test_task_always_eager_set_between_quick_calls_is_followed_at_the_next_call(
    app: Celery, client: redis_py.Redis, celery_sends: list[str]
) -> None:
    """``route`` keeps ``task_always_eager`` while the configuration stays as it was: set, or
    updated back, the next call follows it."""
    square = app.tasks["tasks.square"]
    square.delay(1)
    square.delay(2)  # quick
    app.conf.task_always_eager = True
    eager = square.delay(3)
    assert isinstance(eager, EagerResult) and eager.get(timeout=5) == 9
    app.conf.update(task_always_eager=False)
    square.delay(4)
    square.delay(5)  # quick again
    assert celery_sends == ["tasks.square", "tasks.square"]
    texts = queued(client)
    assert [json.loads(text)["headers"]["argsrepr"] for text in texts] == [
        "(1,)",
        "(2,)",
        "(4,)",
        "(5,)",
    ]


def test_a_publish_signal_receiver_sees_every_call(app: Celery, celery_sends: list[str]) -> None:
    seen: list[str] = []

    def receiver(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        calls = [app.tasks["tasks.square"].delay(n) for n in range(3)]
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [call.id for call in calls]
    assert len(celery_sends) == 3


def test_a_call_with_options_takes_celerys_path(
    app: Celery, client: redis_py.Redis, celery_sends: list[str]
) -> None:
    square = app.tasks["tasks.square"]
    square.delay(1)
    square.apply_async((2,), countdown=30)
    square.apply_async((3,), priority=5)
    assert len(celery_sends) == 3
    messages = [json.loads(text) for text in queued(client)]  # priority 5 has a list of its own
    assert len(messages) == 2 and messages[0]["headers"]["eta"] is None
    assert messages[1]["headers"]["eta"] is not None  # countdown, as Celery sets it


def test_a_wrapped_send_task_sees_every_call(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error tracker that wraps Celery's ``send_task`` to add its headers, as it starts,
    gets each call."""
    seen: list[str] = []
    original = Celery.send_task

    @functools.wraps(original)
    def traced(self: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Celery, "send_task", traced)
    app = client_app(redis.url(), dispatch="celery", no_worker="wait")
    for n in range(3):
        app.tasks["tasks.square"].delay(n)
    assert seen == ["tasks.square"] * 3


def test_the_queue_a_template_knows_is_the_one_celery_routes_to(
    app: Celery, client: redis_py.Redis
) -> None:
    """The no-worker check asks which queue a call goes to; for a plain call the template
    answers, and must answer as Celery's router does."""

    @app.task(name="t.special", queue="special")
    def special() -> None: ...

    for task in (app.tasks["tasks.square"], special):
        assert quick_publish.queue_of(task) is None  # no template yet
        task.delay() if task is special else task.delay(1)
        assert quick_publish.queue_of(task) == dispatch.queue_of(app, task.name, {}, task)
    assert [len(queued(client, queue)) for queue in ("celery", "special")] == [1, 1]
