"""taskpool's result store (``taskpool.result_store``, ``taskpool.result_consumer``) against a
real Redis, and a real prefork worker where results come from one: the round trips it saves
and the guarantees of Celery's that it keeps."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.backends import asynchronous as celery_asynchronous

from taskpool.read_ahead import LARGEST
from taskpool.result_consumer import SUBSCRIBED_AT_SEND
from taskpool.result_store import RedisStore
from taskpool.testing.celery_worker import node_name
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app

NO_HANG = 20.0


def calls(client: redis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, NO_HANG, what)


def worker_and_client(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object], name: str
) -> tuple[Celery, redis.Redis]:
    """A private Redis with a worker on it; a client app, and a plain client to read Redis."""
    server = redis_factory()
    worker_factory(server.url(), node_name(name))
    return client_app(server.url(), dispatch="celery"), redis.Redis.from_url(server.url())


def stored(app: Celery, stats: redis.Redis, results: list[Any]) -> None:
    keys = [app.backend.get_key_for_task(result.id) for result in results]
    wait_until(lambda: stats.exists(*keys) == len(keys), "all stored")


def channels(stats: redis.Redis) -> list[bytes | str]:
    return list(stats.pubsub_channels("celery-task-meta-*"))


def test_a_task_sent_is_subscribed_to_as_on_stock_celery_until_its_result_is_read_or_forgotten(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    """What Celery's test_asyncresult_get_cancels_subscription and ..._forget_... check."""
    app, stats = worker_and_client(redis_factory, worker_factory, "subscribed")
    square = app.tasks["tasks.square"]

    read = square.delay(3)
    assert channels(stats) == [f"celery-task-meta-{read.id}".encode()]
    assert read.get(timeout=NO_HANG) == 9
    assert channels(stats) == []

    forgotten = square.delay(4)
    assert channels(stats) == [f"celery-task-meta-{forgotten.id}".encode()]
    forgotten.forget()
    assert channels(stats) == []


def test_sending_past_the_bound_subscribes_to_no_more_and_stored_results_are_read_ahead(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    app, stats = worker_and_client(redis_factory, worker_factory, "one-read")
    square = app.tasks["tasks.square"]
    n = SUBSCRIBED_AT_SEND + 200

    stats.config_resetstat()
    results = [square.delay(i) for i in range(n)]
    assert calls(stats, "subscribe") == SUBSCRIBED_AT_SEND  # stock Celery: one per task
    stored(app, stats, results)  # not read by the client

    stats.config_resetstat()
    assert [result.get(timeout=NO_HANG) for result in results] == [i * i for i in range(n)]
    # Each read once, most read ahead with the one before them (taskpool.read_ahead).
    assert calls(stats, "get") + calls(stats, "getrange") == n
    assert calls(stats, "get") < n / 10
    assert calls(stats, "subscribe") == 0
    assert calls(stats, "unsubscribe") == SUBSCRIBED_AT_SEND
    assert channels(stats) == []


def test_past_the_bound_a_result_not_stored_yet_is_subscribed_to_when_waited_for(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    app, stats = worker_and_client(redis_factory, worker_factory, "waits")
    held = [app.tasks["tasks.square"].delay(i) for i in range(SUBSCRIBED_AT_SEND)]
    stored(app, stats, held)

    slow = app.tasks["tasks.sum_of_squares"].delay(3_000_000)  # a fraction of a second
    assert len(channels(stats)) == SUBSCRIBED_AT_SEND  # not subscribed to when sent
    stats.config_resetstat()
    assert slow.get(timeout=NO_HANG) == sum(i * i for i in range(3_000_000))
    assert calls(stats, "subscribe") == 1  # by the wait, which found nothing stored
    assert [result.get(timeout=NO_HANG) for result in held] == [i * i for i in range(len(held))]
    wait_until(lambda: not channels(stats), "unsubscribed")


def test_reading_results_yields_to_no_one_as_a_thread(
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery's result consumer sleeps 0 s after each result it hands over, for greenlets;
    that costs a thread about 70 µs a result. Results received on the channel, and results
    read stored, arrive as before without it."""
    app, stats = worker_and_client(redis_factory, worker_factory, "no-yield")
    square = app.tasks["tasks.square"]
    assert square.delay(2).get(timeout=NO_HANG) == 4  # connected and subscribed once
    slept: list[float] = []
    monkeypatch.setattr(celery_asynchronous, "sleep", slept.append)

    assert [square.delay(i).get(timeout=NO_HANG) for i in range(20)] == [i * i for i in range(20)]
    many = [square.delay(i) for i in range(SUBSCRIBED_AT_SEND + 50)]
    stored(app, stats, many)
    assert [result.get(timeout=NO_HANG) for result in many] == [i * i for i in range(len(many))]
    assert slept == []


def test_a_result_stored_before_the_subscription_took_effect_is_found(
    redis_server: RedisServer,
) -> None:
    """The race a lazy subscription opens: the result is stored, and published to nobody,
    between the wait's first read and its subscription. The read after the confirmed
    subscription finds it; a consumer that only listened would wait for ever."""
    app = client_app(redis_server.url(), dispatch="celery")
    backend = app.backend
    result = app.AsyncResult(str(uuid.uuid4()))
    backend.add_pending_result(result)  # what .get() does before its first read
    meta = {"status": states.SUCCESS, "result": 49, "task_id": result.id}
    redis.Redis.from_url(redis_server.url()).set(
        backend.get_key_for_task(result.id), backend.encode(meta)
    )  # no PUBLISH

    started = time.monotonic()
    backend.result_consumer.drain_events(timeout=NO_HANG)
    assert result.ready() and result.get(timeout=1) == 49
    assert time.monotonic() - started < NO_HANG / 2


def test_a_stored_result_read_reaches_every_result_waiting_on_it_and_leaves_nothing_buffered(
    redis_server: RedisServer,
) -> None:
    """Celery's read of a stored result hands its state to any other result waiting on the
    same task (a ``then`` callback, another thread's wait) and buffers it, then takes a success
    or failure back out of the buffer. The read that has no one to hand it to skips both; a
    read that has someone still hands it over."""
    app = client_app(redis_server.url(), dispatch="celery")
    backend = app.backend
    plain = redis.Redis.from_url(redis_server.url())

    def stored_id(status: str, value: Any) -> str:
        task_id = str(uuid.uuid4())
        meta = {"status": status, "result": value, "task_id": task_id, "traceback": None}
        plain.set(backend.get_key_for_task(task_id), backend.encode(meta))  # no PUBLISH
        return task_id

    assert app.AsyncResult(stored_id(states.SUCCESS, 49)).get(timeout=NO_HANG) == 49
    failed = stored_id(states.FAILURE, backend.prepare_exception(ValueError("no")))
    with pytest.raises(ValueError, match="no"):
        app.AsyncResult(failed).get(timeout=NO_HANG)
    assert not backend._pending_messages and backend._pending_messages.total == 0

    shared = stored_id(states.SUCCESS, 64)
    other = app.AsyncResult(shared)
    called: list[Any] = []
    other.then(called.append)  # waits on the task without reading
    assert app.AsyncResult(shared).get(timeout=NO_HANG) == 64
    assert called == [other] and other.result == 64
    assert not backend._pending_messages


def test_a_result_stored_while_the_wait_reconnects_is_found(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's reconnect reads the results (MGET) and then subscribes again: a result stored
    and published between the two reached nobody, and its wait ran out. Here the result is
    stored just after that read, as a worker's can be after a Redis restart."""
    app = client_app(redis_server.url(), dispatch="celery")
    backend = app.backend
    task_id = str(uuid.uuid4())
    backend.on_task_call(None, task_id)  # subscribed at send, as stock Celery does
    result = app.AsyncResult(task_id)
    meta = {"status": states.SUCCESS, "result": 64, "task_id": task_id}
    writer = redis.Redis.from_url(redis_server.url())
    mget = backend.client.mget

    def then_stored(keys: Any, *args: Any) -> Any:
        values = mget(keys, *args)
        key = backend.get_key_for_task(task_id)
        if key in keys and not writer.exists(key):
            writer.set(key, backend.encode(meta))
            writer.publish(key, backend.encode(meta))
        return values

    monkeypatch.setattr(backend.client, "mget", then_stored)
    killed = writer.client_kill_filter(_type="pubsub")  # the wait's connection drops
    assert killed >= 1
    started = time.monotonic()
    assert result.get(timeout=NO_HANG) == 64
    assert time.monotonic() - started < NO_HANG / 2
    writer.close()


def _store(app: Celery, task_id: str, result: Any, state: str) -> Any:
    app.backend.store_result(task_id, result, state)
    return app.backend.get_task_meta(task_id)


def test_a_stored_success_is_never_overwritten(redis_server: RedisServer) -> None:
    """Celery's rule (a task redelivered after a lost worker may run twice): a later outcome
    never replaces a success."""
    app = client_app(redis_server.url(), dispatch="celery")
    task_id = str(uuid.uuid4())
    assert _store(app, task_id, 1, states.STARTED)["status"] == states.STARTED
    assert _store(app, task_id, 2, states.SUCCESS)["result"] == 2
    app.backend._cache.clear()  # read Redis, not the client's cache of successes
    failure = _store(app, task_id, ValueError("second run"), states.FAILURE)
    assert failure["status"] == states.SUCCESS and failure["result"] == 2


def test_a_success_stored_compressed_is_kept_too(redis_server: RedisServer) -> None:
    """A value the one-step script cannot read (here compressed by another client) takes
    Celery's own read, which still keeps the success."""
    compressing = client_app(redis_server.url(), dispatch="celery")
    compressing.conf.result_compression = "zlib"
    plain = client_app(redis_server.url(), dispatch="celery")
    task_id = str(uuid.uuid4())
    compressing.backend.store_result(task_id, 3, states.SUCCESS)
    raw: Any = redis.Redis.from_url(redis_server.url()).get(plain.backend.get_key_for_task(task_id))
    assert raw is not None and not raw.startswith(b"{")

    plain.backend.store_result(task_id, ValueError("second run"), states.FAILURE)
    meta = plain.backend.get_task_meta(task_id)
    assert meta["status"] == states.SUCCESS and meta["result"] == 3


def test_a_plain_celery_app_can_name_the_store_in_its_result_backend(
    redis_server: RedisServer,
) -> None:
    app = Celery(
        "plain",
        broker=redis_server.url(),
        backend=f"taskpool.result_store:RedisStore+{redis_server.url()}",
    )
    try:
        assert isinstance(app.backend, RedisStore)
        task_id = str(uuid.uuid4())
        app.backend.store_result(task_id, 5, states.SUCCESS)
        assert app.AsyncResult(task_id).get(timeout=NO_HANG) == 5
    finally:
        app.backend.client.connection_pool.disconnect()
        app.close()


def test_a_result_write_survives_a_lost_script_and_a_closed_connection(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """The result script runs on a connection the store keeps (taskpool.kept_connection): a
    Redis that lost the script (a restart, a failover) has it loaded again, and a connection the
    server closed is made again, each write stored once. A Redis of its own: the session's has
    other tests' consumers beating with scripts."""
    server = redis_factory()
    app = client_app(server.url(), dispatch="celery")
    admin = redis.Redis.from_url(server.url())
    try:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        _store(app, ids[0], 1, states.SUCCESS)
        admin.script_flush()
        admin.config_resetstat()
        _store(app, ids[1], 2, states.SUCCESS)
        assert calls(admin, "script|load") + calls(admin, "script") == 1  # loaded once again
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # the kept one too
        _store(app, ids[2], 3, states.SUCCESS)
        app.backend._cache.clear()  # read Redis, not the client's cache of successes
        assert [app.backend.get_task_meta(task_id)["result"] for task_id in ids] == [1, 2, 3]
        published = calls(admin, "evalsha")
        assert published == 3, published  # 2: NOSCRIPT, then the reload's; 3: one, reconnected
    finally:
        admin.close()


def test_results_read_in_any_order_are_each_read_once_and_right(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    app, stats = worker_and_client(redis_factory, worker_factory, "any-order")
    square = app.tasks["tasks.square"]
    results = [square.delay(i) for i in range(300)]
    stored(app, stats, results)

    stats.config_resetstat()
    order = list(range(300))[::-1][:100] + list(range(200))  # from the end, then the start
    assert [results[i].get(timeout=NO_HANG) for i in order] == [i * i for i in order]
    assert calls(stats, "get") + calls(stats, "getrange") == 300


def test_only_a_success_is_kept_from_a_read_ahead(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    """A failure, a result too large to read ahead and one not stored yet are each read when
    asked for; the success read ahead with them is not read again."""
    app, stats = worker_and_client(redis_factory, worker_factory, "kept")
    tasks = app.tasks
    first = tasks["tasks.square"].delay(2)
    failed = tasks["tasks.square"].delay("two")
    large = app.AsyncResult(str(uuid.uuid4()))
    app.backend.on_task_call(None, large.id)  # as its send does; its result stored below
    meta = {"status": states.SUCCESS, "result": "h" * LARGEST, "task_id": large.id}
    stats.set(app.backend.get_key_for_task(large.id), app.backend.encode(meta))
    success = tasks["tasks.square"].delay(3)
    stored(app, stats, [first, failed, success])
    slow = tasks["tasks.sum_of_squares"].delay(20_000_000)  # about two seconds
    read_ahead = app.backend.read_ahead
    read_ahead._size = 8  # each of them read ahead with the first

    assert first.get(timeout=NO_HANG) == 4
    assert list(read_ahead._kept) == [success.id]
    reads = calls(stats, "get") + calls(stats, "getrange")
    assert success.get(timeout=NO_HANG) == 9
    assert calls(stats, "get") + calls(stats, "getrange") == reads  # not read again
    with pytest.raises(TypeError, match="expected an int, got str"):
        failed.get(timeout=NO_HANG)
    assert large.get(timeout=NO_HANG) == "h" * LARGEST
    assert slow.get(timeout=NO_HANG) == sum(i * i for i in range(20_000_000))


def test_a_result_read_ahead_and_then_forgotten_is_forgotten(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    app, stats = worker_and_client(redis_factory, worker_factory, "forgotten")
    square = app.tasks["tasks.square"]
    first, second = square.delay(5), square.delay(6)
    stored(app, stats, [first, second])
    app.backend.read_ahead._size = 8

    assert first.get(timeout=NO_HANG) == 25  # reads the second ahead
    second.forget()
    assert second.state == states.PENDING  # as on stock Celery: its result is gone
    assert not stats.exists(app.backend.get_key_for_task(second.id))


def test_a_client_that_drops_its_results_keeps_nothing_for_them(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    app, stats = worker_and_client(redis_factory, worker_factory, "dropped")
    square = app.tasks["tasks.square"]
    kept = [square.delay(i) for i in range(50)]
    stored(app, stats, kept)
    for i in range(200):
        square.delay(i)  # its result dropped at once
    app.backend.read_ahead._size = 8
    assert kept[0].get(timeout=NO_HANG) == 0  # reads ahead the next ones still held
    del kept
    gc.collect()
    read_ahead = app.backend.read_ahead
    assert (dict(read_ahead._sent), read_ahead._kept) == ({}, {})


def test_a_client_ahead_of_the_workers_subscribes_to_the_next_results_with_the_one_it_waits_for(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., object]
) -> None:
    app, stats = worker_and_client(redis_factory, worker_factory, "trailing")
    held = [app.tasks["tasks.square"].delay(i) for i in range(SUBSCRIBED_AT_SEND)]
    slow = [app.tasks["tasks.sum_of_squares"].delay(1_000_000 + i) for i in range(40)]
    assert [result.get(timeout=NO_HANG) for result in held] == [i * i for i in range(len(held))]

    stats.config_resetstat()
    got = [result.get(timeout=NO_HANG) for result in slow]
    assert got == [sum(i * i for i in range(1_000_000 + n)) for n in range(40)]
    # Each subscription takes the next tasks too: one for each wait would be about 40.
    assert 0 < calls(stats, "subscribe") <= 10
    wait_until(lambda: not channels(stats), "unsubscribed")
