"""The reliable Redis transport against a real redis-server: pop and record are one step."""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue
from kombu.asynchronous import Hub

from taskpool import Settings, celery_config, liveness, transport
from taskpool.errors import BrokerUnsupported
from taskpool.liveness import HELD
from taskpool.quarantine import Quarantine
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.held import consumers, held_count
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from taskpool.transport import POP_AND_RECORD, Transport, require_redis, seek_limit
from tests.support.apps import client_app
from tests.support.script_calls import ScriptCalls

#: kombu's separator between a queue's name and its priority, and taskpool's wake list suffix.
SEP = "\x06\x16"


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A Redis of this test's own: the unacked hash is shared by every queue on a server."""
    return redis_factory()


@pytest.fixture
def queue_name() -> str:
    return "reliable"


@pytest.fixture
def queue(queue_name: str) -> Queue:
    return Queue(queue_name, Exchange(queue_name), routing_key=queue_name)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis(port=redis_server.port, decode_responses=True)
    yield client
    client.close()


def connection(redis_server: RedisServer) -> Connection:
    return Connection(redis_server.url(), transport=Transport)


def publish(redis_server: RedisServer, queue: Queue, bodies: list[object]) -> None:
    with connection(redis_server) as conn:
        producer = Producer(conn)
        for body in bodies:
            producer.publish(body, routing_key=queue.name, declare=[queue], serializer="json")


def test_taskpool_apps_use_it_for_redis_brokers_only() -> None:
    assert celery_config(Settings())["broker_transport"] == "taskpool.transport:Transport"
    amqp = Settings(broker_url="amqp://guest@127.0.0.1//", result_backend="redis://x:6379/0")
    assert celery_config(amqp)["broker_transport"] is None


def test_a_message_is_recorded_as_held_in_the_same_step_that_pops_it(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": 1}])
    with connection(redis_server) as conn:
        channel = conn.default_channel
        message = channel.basic_get(queue_name, no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        assert client.llen(queue_name) == 0
        # Under the consumer that popped it, with where it goes back: <n>:<list><m>:<wake>
        (consumer,) = consumers(client)
        record = str(client.hget(f"{HELD}{consumer}", message.delivery_tag))
        wake = f"{queue_name}{SEP}wake"
        prefix = f"{len(queue_name)}:{queue_name}{len(wake)}:{wake}"
        assert record.startswith(prefix)
        payload = json.loads(record[len(prefix) :])
        assert payload["properties"]["delivery_tag"] == message.delivery_tag
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0  # kombu's
        message.ack()
    assert held_count(client) == 0
    assert consumers(client) == []  # a consumer that closed holding nothing has left


def test_an_unacked_message_goes_back_to_the_front_of_its_queue_when_the_channel_closes(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": 2}, {"n": 3}])
    with connection(redis_server) as conn:
        assert conn.default_channel.basic_get(queue_name, no_ack=False) is not None
    assert held_count(client) == 0
    assert client.llen(f"{queue_name}{SEP}wake") == 2  # its token is back too
    with connection(redis_server) as conn:
        again = conn.default_channel.basic_get(queue_name, no_ack=False)
        assert again is not None and again.payload == {"n": 2}  # first in line, as before
        # Handed out before: marked redelivered, as kombu marks what it restores.
        assert again.delivery_info["redelivered"] is True
        again.ack()


def test_consumers_get_every_message_once_and_leave_nothing_unacked(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": n} for n in range(50)])
    seen: list[int] = []
    with connection(redis_server) as conn, Consumer(conn, [queue], accept=["json"]) as consumer:

        def record(body: dict[str, int], message: Message) -> None:
            seen.append(body["n"])
            message.ack()

        consumer.register_callback(record)
        while len(seen) < 50:
            conn.drain_events(timeout=5)
    assert sorted(seen) == list(range(50))
    assert client.llen(queue_name) == 0 and held_count(client) == 0


def test_no_ack_consumers_leave_nothing_in_unacked(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": n} for n in range(5)])
    seen: list[int] = []
    with (
        connection(redis_server) as conn,
        Consumer(conn, [queue], accept=["json"], no_ack=True) as consumer,
    ):
        consumer.register_callback(lambda body, message: seen.append(body["n"]))
        while len(seen) < 5:
            conn.drain_events(timeout=5)
    assert sorted(seen) == list(range(5))
    assert held_count(client) == 0


def test_publishes_share_one_client_per_connection_pool(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    with connection(redis_server) as conn:
        channel = conn.default_channel
        producer = Producer(channel)
        used = []
        for body in range(3):
            producer.publish(body, routing_key=queue.name, declare=[queue], serializer="json")
            with channel.conn_or_acquire() as shared:
                used.append(shared)
        assert used[0] is used[1] is used[2]
        channel._disconnect_pools()  # what kombu does after a fork: a new pool, a new client
        producer.publish(3, routing_key=queue.name, declare=[queue], serializer="json")
        with channel.conn_or_acquire() as fresh:
            assert fresh is not used[0] and fresh.connection_pool is channel.pool
    assert client.llen(queue.name) == 4


def drain_one(conn: Connection, queues: list[Queue], deadline: float) -> tuple[object, float]:
    """The first message any of ``queues`` delivers (acked), and how long it took."""
    got: list[object] = []

    def record(body: object, message: Message) -> None:
        got.append(body)
        message.ack()

    started = time.monotonic()
    with Consumer(conn, queues, accept=["json"], callbacks=[record]):
        while not got:
            assert time.monotonic() - started < deadline, f"nothing delivered in {deadline}s"
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=0.2)
    return got[0], time.monotonic() - started


@pytest.mark.parametrize("prefetch", [None, 8])
def test_one_pop_takes_the_prefetch_room_in_kombus_order_and_no_more(
    redis_server: RedisServer, client: redis_py.Redis, prefetch: int | None
) -> None:
    """Two queues of four and a consumer of both: with a prefetch count of 8, one read delivers
    all eight, the queues in turn as kombu's queue cycle takes them one BRPOP at a time;
    without one, each read delivers one message, as on stock kombu."""
    first, second = Queue("first", routing_key="first"), Queue("second", routing_key="second")
    publish(redis_server, first, [f"first {n}" for n in range(4)])
    publish(redis_server, second, [f"second {n}" for n in range(4)])
    got: list[object] = []
    reads = 0
    with connection(redis_server) as conn:
        consumer = Consumer(conn, [first, second], accept=["json"])
        consumer.register_callback(lambda body, message: got.append(body))
        if prefetch is not None:
            consumer.qos(prefetch_count=prefetch)
        with consumer:
            deadline = time.monotonic() + 10
            while len(got) < 8 and time.monotonic() < deadline:
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.5)
                    reads += 1
        assert held_count(client) == 8  # none acked: each went out under its own record
    assert got == [f"{queue} {n}" for n in range(4) for queue in ("first", "second")]
    assert reads == (1 if prefetch else 8)


def test_an_idle_consumer_is_woken_at_once_for_its_second_queue_and_for_a_priority(
    redis_server: RedisServer, client: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waits far longer than the deadlines below: only the wake token can deliver in time.
    monkeypatch.setattr(transport, "IDLE_WAITS", (30.0,))
    first, second = Queue("first", routing_key="first"), Queue("second", routing_key="second")
    with connection(redis_server) as conn:
        idle = Consumer(conn, [first, second], accept=["json"])
        idle.consume()
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=0.5)  # the pop found nothing: now waiting
        idle.cancel()
        publish(redis_server, second, ["to the second queue"])
        body, took = drain_one(conn, [first, second], deadline=5)
        assert body == "to the second queue" and took < 5
        with connection(redis_server) as producer_conn:
            Producer(producer_conn).publish(
                "urgent", routing_key="first", declare=[first], serializer="json", priority=9
            )
        body, took = drain_one(conn, [first, second], deadline=5)
        assert body == "urgent" and took < 5
    assert held_count(client) == 0
    assert client.llen(f"first{SEP}wake") == 0 and client.llen(f"second{SEP}wake") == 0


def test_a_woken_consumers_pop_was_sent_with_its_wait_on_the_same_connection(
    redis_server: RedisServer, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait and the pop go in one write: Redis runs the pop as the wait ends, and the
    consumer reads both replies in one round trip, where it used to read the token, then send
    the pop on another connection and wait again."""
    monkeypatch.setattr(transport, "IDLE_WAITS", (5.0,))  # longer than the test waits
    got: list[object] = []

    def record(body: object, message: Message) -> None:
        got.append(body)
        message.ack()

    with connection(redis_server) as conn, Consumer(conn, [queue], callbacks=[record]):
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=0.5)  # the pop found nothing: now waiting
        with ScriptCalls(redis_server.port) as calls:
            publish(redis_server, queue, ["wake up"])
            conn.drain_events(timeout=5)
            assert got == ["wake up"]
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=0.3)  # sends the next wait
    pops = [who for name, who in calls.sent if name == "pop"]
    waits = [who for name, who in calls.sent if name == "BRPOP"]
    assert pops and waits, calls.sent
    assert pops[0] == waits[0], calls.sent  # the consumer's own connection


def test_one_message_wakes_one_idle_consumer(
    redis_server: RedisServer, client: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "IDLE_WAITS", (30.0,))
    queue = Queue("shared", routing_key="shared")
    got: list[object] = []
    stop = threading.Event()
    waiting = threading.Barrier(6)

    def record(body: object, message: Message) -> None:
        got.append(body)
        message.ack()

    def consume() -> None:
        rarely = {"liveness_timeout": 60}  # a beat every 20 s: none while this test counts
        with (
            Connection(redis_server.url(), transport=Transport, transport_options=rarely) as conn,
            Consumer(conn, [queue], accept=["json"]) as c,
        ):
            c.register_callback(record)
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=0.3)  # found nothing: now waiting
            waiting.wait(timeout=10)
            while not stop.is_set():
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.2)

    consumers = [threading.Thread(target=consume) for _ in range(5)]
    for thread in consumers:
        thread.start()
    try:
        waiting.wait(timeout=10)
        wait_for(
            lambda: client.info("clients")["blocked_clients"] == len(consumers),
            10,
            "every consumer blocked on the wake list",
        )
        client.script_load(liveness.LIVENESS)  # the ack's script: one run, no reload
        client.config_resetstat()
        publish(redis_server, queue, ["once"])
        wait_for(lambda: bool(got), 5, "the message delivered")
        time.sleep(0.5)  # a wake-everyone design would show its extra pops by now
        # Scripts run: the pops, and one ack (liveness.lua) per message taken. The consumers
        # beat with the same script, every 20 s here: not within this second.
        pops = client.info("commandstats")["cmdstat_evalsha"]["calls"] - len(got)
    finally:
        stop.set()
        for thread in consumers:
            thread.join(timeout=10)
    assert got == ["once"]
    # The woken consumer's pop that took the message, and its next one, which found nothing.
    assert pops == 2


def test_a_message_published_without_a_token_is_found_when_the_wait_times_out(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    """Stock kombu producers push no token: an idle consumer still gets their messages."""
    with Connection(redis_server.url()) as stock:
        stock_producer = Producer(stock)
        with connection(redis_server) as conn:
            idle = Consumer(conn, [queue], accept=["json"])
            idle.consume()
            deadline = time.monotonic() + 3  # long enough for the waits to reach a second
            while time.monotonic() < deadline:
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.2)
            idle.cancel()
            stock_producer.publish(
                "untokened", routing_key=queue.name, declare=[queue], serializer="json"
            )
            assert client.llen(f"{queue.name}{SEP}wake") == 0
            body, took = drain_one(conn, [queue], deadline=5)
    assert body == "untokened" and took < 5


def test_wake_lists_are_capped_and_go_with_a_purge(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    publish(redis_server, queue, list(range(transport.WAKE_CAP + 20)))
    assert client.llen(queue.name) == transport.WAKE_CAP + 20
    assert client.llen(f"{queue.name}{SEP}wake") == transport.WAKE_CAP
    with connection(redis_server) as conn:
        assert conn.default_channel.queue_purge(queue.name) == transport.WAKE_CAP + 20
    assert not client.exists(f"{queue.name}{SEP}wake")


def test_the_script_is_registered_once_and_called_by_its_sha(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": n} for n in range(20)])
    with connection(redis_server) as conn:
        for _ in range(20):
            drain_one(conn, [queue], deadline=5)
    stats = client.info("commandstats")
    assert "cmdstat_eval" not in stats  # the text is never sent with a pop
    assert stats["cmdstat_evalsha"]["calls"] >= 20
    assert client.script_exists(hashlib.sha1(POP_AND_RECORD.encode()).hexdigest()) == [True]


def test_a_flushed_script_cache_is_reloaded_and_delivery_goes_on(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    with connection(redis_server) as conn:
        publish(redis_server, queue, ["before"])
        assert drain_one(conn, [queue], deadline=5)[0] == "before"
        client.script_flush()  # what a restarted or failed-over Redis has
        publish(redis_server, queue, ["after"])
        assert drain_one(conn, [queue], deadline=5)[0] == "after"
    assert held_count(client) == 0


def test_a_pop_that_finds_the_script_gone_delivers_in_the_same_read(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    """An event loop calls the reader once per readable socket and expects a message or Empty
    (kombu's hub test calls it by hand): a NOSCRIPT reply must not cost the message a turn."""
    got: list[object] = []
    publish(redis_server, queue, ["after a flush"])
    client.script_flush()
    hub = Hub()
    try:
        with (
            connection(redis_server) as conn,
            Consumer(conn, [queue], accept=["json"], callbacks=[lambda b, m: got.append(b)]),
        ):
            conn.register_with_event_loop(hub)
            for tick in hub.on_tick:
                tick()  # sends the pop, which meets NOSCRIPT
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                for fd, _ in hub.poller.poll(0.1):
                    callback, args = hub.readers[fd]
                    callback(*args)  # no Empty out of here
    finally:
        hub.close()
    assert got == ["after a flush"]


def test_an_idle_channel_always_has_its_wait_pending(
    redis_server: RedisServer, queue: Queue
) -> None:
    """As kombu's BRPOP is: Celery's teardown of a half-open connection reads that reply with
    a bounded socket (celery GH-9705, #975), and its tests start from a pending one."""
    pending = []
    with connection(redis_server) as conn:
        for n in range(16):
            publish(redis_server, queue, [n])
            assert drain_one(conn, [queue], deadline=5)[0] == n
            with Consumer(conn, [queue], accept=["json"]) as consumer:
                # After a delivery the waits start short again: drains of different lengths
                # end just after a reply was read, not only when a long wait is cut off.
                with pytest.raises(socket.timeout):
                    conn.drain_events(timeout=0.02 * (n + 1))
                pending.append(bool(consumer.channel._in_poll))
    assert all(pending), pending


def test_a_pop_reply_held_while_the_channel_was_full_is_looked_at_again_after_the_ack(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu leaves a pending reply unread while the channel may take no more messages. An
    empty pop read once credit returns may be stale: a message published meanwhile must come
    in that read, not after a wait and another pop."""
    got: list[Message] = []
    publish(redis_server, queue, ["first"])
    with (
        connection(redis_server) as conn,
        Consumer(
            conn, [queue], accept=["json"], prefetch_count=2, callbacks=[lambda b, m: got.append(m)]
        ) as consumer,
    ):
        conn.drain_events(timeout=5)
        channel = consumer.channel
        conn.transport.cycle.on_poll_start()  # sends the next pop: nothing to find yet
        assert channel._in_poll
        publish(redis_server, queue, ["second"])
        consumer.qos(prefetch_count=1)  # full: kombu holds the pop's reply unread
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.05)
        got[0].ack()
        starts: list[object] = []
        start = channel._brpop_start

        def counted(*args: object) -> None:
            starts.append(args)
            start(*args)

        monkeypatch.setattr(channel, "_brpop_start", counted)
        conn.drain_events(timeout=5)
        assert [m.payload for m in got] == ["first", "second"]
        assert starts == []  # delivered by the read of the held reply
        got[1].ack()
    assert held_count(client) == 0


def test_prefixed_keys_take_the_reliable_path_too(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    options = {"global_keyprefix": "app1:"}
    with Connection(redis_server.url(), transport=Transport, transport_options=options) as conn:
        Producer(conn).publish("hello", routing_key=queue.name, declare=[queue], serializer="json")
        assert client.llen(f"app1:{queue.name}") == 1
        assert client.llen(f"app1:{queue.name}{SEP}wake") == 1
        message = conn.default_channel.basic_get(queue.name, no_ack=False)
        assert message is not None and message.payload == "hello"
        assert held_count(client, "app1:") == 1 and held_count(client) == 0
        assert client.zcard("app1:taskpool.consumers") == 1
        assert client.hlen("app1:unacked_deliveries") == 1
        message.ack()
        assert held_count(client, "app1:") == 0
        assert client.keys("*deliveries") == []  # the count went with the ack


@pytest.mark.parametrize(
    ("version", "refused"),
    [("6.0.16", True), ("5.0.7", True), ("6.2.14", False), ("7.0.15", False)],
)
def test_a_redis_older_than_the_oldest_tested_is_refused(version: str, refused: bool) -> None:
    if refused:
        with pytest.raises(BrokerUnsupported, match=f"Redis {version} at redis://:\\*\\*@h"):
            require_redis(version, "redis://:secret@h:6379/0")
    else:
        require_redis(version, "redis://h:6379/0")


def test_a_consumer_checks_the_server_it_reads_from(
    redis_server: RedisServer, queue: Queue
) -> None:
    version = redis_py.Redis(port=redis_server.port).info("server")["redis_version"]
    with connection(redis_server) as conn, Consumer(conn, [queue], accept=["json"]):
        assert conn.default_channel._seek_limit == seek_limit(version)


def test_a_polling_interval_does_not_make_a_draining_consumer_sleep_between_pops(
    redis_server: RedisServer, queue: Queue
) -> None:
    """kombu sleeps ``polling_interval`` after each empty poll; this transport's idle waits
    are its own (stock uses the interval as its BRPOP timeout and seldom polls empty)."""
    got: list[float] = []

    def record(body: object, message: Message) -> None:
        got.append(time.monotonic())
        message.ack()

    options = {"polling_interval": 5}
    with (
        Connection(redis_server.url(), transport=Transport, transport_options=options) as conn,
        Consumer(conn, [queue], accept=["json"], callbacks=[record]),
    ):
        sender = threading.Timer(0.5, publish, (redis_server, queue, ["soon"]))
        sender.start()
        sent = time.monotonic() + 0.5
        try:
            conn.drain_events(timeout=15)
        finally:
            sender.join()
    assert got and got[0] - sent < 2, got  # 4 to 9 s before


def test_a_queue_with_an_expiry_gives_its_wake_list_the_same(
    redis_server: RedisServer, client: redis_py.Redis
) -> None:
    expiring = Queue("short-lived", Exchange("short-lived"), routing_key="short-lived", expires=30)
    publish(redis_server, expiring, ["bye"])
    ttl = client.pttl(f"short-lived{SEP}wake")
    assert 0 < ttl <= 30_000


# -- acks --------------------------------------------------------------------------------


def unacked(client: redis_py.Redis) -> int:
    return held_count(client) + int(client.zcard("unacked_index"))


def test_an_ack_in_an_event_loop_is_in_redis_before_it_returns(
    redis_server: RedisServer, client: redis_py.Redis, queue: Queue
) -> None:
    """As kombu's: an ack left for the channel's next pop (a round trip saved per message) kept
    the message recorded for whoever read Redis meanwhile (kombu's
    test_hub_pauses_pending_brpop_until_ack reads it right after the ack)."""
    got: list[Message] = []
    publish(redis_server, queue, ["first", "second"])
    hub = Hub()
    try:
        with (
            connection(redis_server) as conn,
            Consumer(
                conn,
                [queue],
                accept=["json"],
                prefetch_count=1,
                callbacks=[lambda b, m: got.append(m)],
            ),
        ):
            conn.register_with_event_loop(hub)
            for expected in (1, 2):
                deadline = time.monotonic() + 5
                while len(got) < expected and time.monotonic() < deadline:
                    hub.run_once()
                assert [m.payload for m in got] == ["first", "second"][:expected]
                assert unacked(client) == 1  # the message delivered, held
                got[-1].ack()
                assert unacked(client) == 0
    finally:
        hub.close()


def test_a_busy_worker_leaves_nothing_unacked_when_redis_forgets_its_script(
    redis_server: RedisServer, client: redis_py.Redis, worker_factory: Callable[..., object]
) -> None:
    worker_factory(redis_server.url(), node_name("busy"))
    app = client_app(redis_server.url(), dispatch="celery")
    square = app.tasks["tasks.square"]
    results = [square.delay(i) for i in range(300)]
    assert [r.get(timeout=60) for r in results[:100]] == [i * i for i in range(100)]
    client.script_flush()  # the next pop meets NOSCRIPT and loads the script again
    assert [r.get(timeout=60) for r in results] == [i * i for i in range(300)]
    wait_for(lambda: unacked(client) == 0, 10, "every message acked in Redis")


def test_an_idle_workers_last_ack_is_not_held_for_a_next_message(
    redis_server: RedisServer, client: redis_py.Redis, worker_factory: Callable[..., object]
) -> None:
    worker_factory(redis_server.url(), node_name("idle-ack"))
    app = client_app(redis_server.url(), dispatch="celery")
    assert app.tasks["tasks.square"].delay(4).get(timeout=30) == 16
    wait_for(lambda: unacked(client) == 0, 2, "the ack recorded while no message follows")


def test_a_warm_shutdown_leaves_every_message_acked_or_back_in_its_queue(
    redis_server: RedisServer, client: redis_py.Redis, tmp_path: Path
) -> None:
    # Celery's default bootsteps: with --without-gossip --without-mingle (the other tests'
    # workers) stock Celery's warm shutdown of a busy worker took over 20 s in half the runs
    # here. It can take 30 s with either: a pool process that finished a task after the main
    # process stopped reading outcomes waits that long for it (billiard), and the task's
    # message is then requeued although its result is stored (skipped as a success later).
    command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork", "-c", "2"]
    worker = CeleryWorker(
        worker_env(redis_server.url()), node_name("warm"), tmp_path / "warm.log", command=command
    )
    app = client_app(redis_server.url(), dispatch="celery")
    try:
        worker.start().wait_ready(app)
        results = [app.tasks["tasks.square"].delay(i) for i in range(2_000)]
        wait_for(lambda: sum(r.ready() for r in results[:50]) == 50, 30, "the worker busy")
        worker.stop(timeout=60)  # SIGTERM: Celery finishes what runs, returns what it holds
        assert worker.process is not None and worker.process.returncode == 0, worker.log_tail()
    finally:
        worker.stop()
    assert unacked(client) == 0  # acked, or put back
    assert sum(r.ready() for r in results) + client.llen("celery") >= 2_000  # none lost


# -- liveness ----------------------------------------------------------------------------


def beat(
    client: redis_py.Redis,
    consumer: str,
    timeout: float,
    first: bool = False,
    queues: tuple[str, ...] = ("celery",),
) -> list:
    script = client.register_script(liveness.LIVENESS)
    keys = liveness.Keys()
    args: list[str | float] = [
        "beat",
        consumer,
        timeout,
        int(first),
        keys.held_prefix,
        transport.WAKE_CAP,
        "\n".join(queues),
    ]
    return list(script(keys=[keys.consumers, keys.clock, keys.queues], args=args))


def test_a_queue_is_served_by_the_live_consumers_that_beat_with_it(
    redis_server: RedisServer, client: redis_py.Redis
) -> None:
    assert liveness.serving(client, "celery") == 0
    beat(client, "both", 60, first=True, queues=("celery", "cpu"))
    beat(client, "brief", 1, first=True, queues=("cpu",))
    beat(client, "other", 60, first=True, queues=("celery-extra",))
    assert [liveness.serving(client, q) for q in ("celery", "cpu", "celery-extra")] == [1, 2, 1]
    time.sleep(1.2)  # "brief" is past its deadline: it serves nothing, and the next beat sweeps it
    assert liveness.serving(client, "cpu") == 1
    beat(client, "both", 60, queues=("cpu",))  # a consumer that cancels a queue beats without it
    assert [liveness.serving(client, q) for q in ("celery", "cpu")] == [0, 1]
    assert set(client.hkeys(liveness.QUEUES)) == {"both", "other"}  # the sweep forgot "brief"


def test_closing_a_consumer_on_a_frozen_redis_returns_at_once_and_leaves_when_it_can(
    redis_factory: Callable[..., RedisServer],
) -> None:
    # A frozen server answers nothing and resets nothing, as a half-open connection: Celery's
    # cold shutdown and reconnection close the channel there, and must not wait on it.
    redis = redis_factory()
    client = redis_py.Redis.from_url(redis.url(), socket_timeout=5)
    heart = liveness.Heart(client, liveness.Keys(), 3.0, transport.WAKE_CAP, lambda: ["celery"])
    heart.start()
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        heart.stop(leave=True)
        assert time.monotonic() - started < 3  # was: one socket timeout and more
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    wait_for(lambda: not client.zcard(liveness.CONSUMERS), 15, "the consumer to leave")
    assert not client.hlen(liveness.QUEUES)
    client.close()


def test_each_consumer_is_judged_by_its_own_liveness_timeout(
    redis_server: RedisServer, client: redis_py.Redis
) -> None:
    """Workers configured apart share a Redis: a 60 s consumer, silent for 2 s, is alive to a
    1 s one, which is itself dead to it past 1 s."""
    assert beat(client, "patient", 60, first=True) == [1]
    assert beat(client, "hasty", 1, first=True) == [1]
    time.sleep(1.5)
    assert beat(client, "patient-2", 60, first=True) == [1, "hasty", 0]
    time.sleep(1.0)
    assert beat(client, "patient-2", 60) == [1]
    assert consumers(client) == ["patient", "patient-2"]
    assert beat(client, "hasty", 1) == [0]  # taken for dead: it must take a new id


def test_a_silence_of_every_consumer_counts_against_none(
    redis_server: RedisServer, client: redis_py.Redis
) -> None:
    """Redis down, failed over or full for longer than the timeout: nobody beat, and the first
    to beat again does not take the others for dead; each keeps the time it had left."""
    assert beat(client, "a", 3, first=True) == [1]
    assert beat(client, "b", 3, first=True) == [1]
    keys = liveness.Keys()
    # As after 100 s without a beat: every deadline and the last beat pushed 100 s back.
    deadlines: Any = client.zrange(keys.consumers, 0, -1, withscores=True)
    client.zadd(keys.consumers, {member: deadline - 100 for member, deadline in deadlines})
    client.hset(keys.clock, "last", float(client.hget(keys.clock, "last") or 0) - 100)
    assert beat(client, "a", 3) == [1]  # b not judged
    assert sorted(consumers(client)) == ["a", "b"]
    for _ in range(2):  # a beats every second, as its thread does; b stays silent
        time.sleep(1.0)
        assert beat(client, "a", 3) == [1]
    time.sleep(1.5)
    assert beat(client, "a", 3) == [1, "b", 0]  # b did not come back within its 3 s


@pytest.mark.parametrize("headers", [{}, {"x-custom": "kept"}])
def test_a_requeued_message_is_marked_redelivered_in_its_text_as_kombu_marks_it(
    redis_server: RedisServer, queue_name: str, queue: Queue, headers: dict[str, str]
) -> None:
    """Any reader sees it, a stock or a no-ack consumer too (kombu's own suite reads it so)."""
    with connection(redis_server) as conn:
        Producer(conn).publish(
            {"n": 5}, routing_key=queue_name, declare=[queue], serializer="json", headers=headers
        )
        channel = conn.default_channel
        message = channel.basic_get(queue_name, no_ack=False)
        assert message is not None and "redelivered" not in message.headers
        message.reject(requeue=True)
        again = channel.basic_get(queue_name, no_ack=True)
        assert again is not None and again.payload == {"n": 5}
        assert again.headers == {**headers, "redelivered": True}
        assert again.delivery_info["redelivered"] is True


#: A body whose message Redis counts above PARK_ABOVE (kombu stores it in base64: larger still).
BIG = {"blob": "x" * (2 * transport.PARK_ABOVE)}


def parked_keys(client: redis_py.Redis) -> list[str]:
    return sorted(client.scan_iter(match=f"{liveness.PARKED}*"))


def test_a_big_message_is_kept_out_of_the_pop_script_and_claimed_under_its_tag(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """Redis copies a value it hands a script several times, and serves no one meanwhile: a
    big message is parked in a list of its own, read there, and its record points at it."""
    publish(redis_server, queue, [BIG, {"n": 1}])
    with connection(redis_server) as conn:
        channel = conn.default_channel
        big = channel.basic_get(queue_name, no_ack=False)
        assert big is not None and big.payload == BIG
        (consumer,) = consumers(client)
        parked = f"{liveness.PARKED}{consumer}:{big.delivery_tag}"
        wake = f"{queue_name}{SEP}wake"
        record = client.hget(f"{HELD}{consumer}", big.delivery_tag)
        assert record == f"@{len(queue_name)}:{queue_name}{len(wake)}:{wake}{parked}"
        (kept,) = client.lrange(parked, 0, -1)
        assert json.loads(kept)["properties"]["delivery_tag"] == big.delivery_tag
        assert parked_keys(client) == [parked]  # the landing list went with the claim
        assert client.hget("unacked_deliveries", big.delivery_tag) == "1"

        small = channel.basic_get(queue_name, no_ack=False)
        assert small is not None and small.payload == {"n": 1}
        assert str(client.hget(f"{HELD}{consumer}", small.delivery_tag))[0].isdigit()  # whole
        big.ack()
        small.ack()
    assert held_count(client) == 0 and parked_keys(client) == []
    assert client.hlen("unacked_deliveries") == 0


def test_a_parked_message_goes_back_whole_and_marked_when_requeued_or_its_channel_closes(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [BIG])
    with connection(redis_server) as conn:
        message = conn.default_channel.basic_get(queue_name, no_ack=False)
        assert message is not None
        message.reject(requeue=True)
        assert parked_keys(client) == [] and client.llen(queue_name) == 1
        assert conn.default_channel.basic_get(queue_name, no_ack=False) is not None
    assert held_count(client) == 0 and parked_keys(client) == []
    with connection(redis_server) as conn:
        again = conn.default_channel.basic_get(queue_name, no_ack=True)
        assert again is not None and again.payload == BIG
        assert again.delivery_info["redelivered"] is True


def pop(
    client: redis_py.Redis, consumer: str, queue_name: str, seek: int = -1, token: bool = True
) -> Any:
    """The pop script's entry for the one message it pops from one queue of one priority, as
    ``consumer``, or its reply when it pops none."""
    keys = liveness.Keys()
    script = client.register_script(POP_AND_RECORD)
    reply = script(
        keys=[queue_name, f"{queue_name}{SEP}wake", keys.consumers, keys.held(consumer),
              "unacked_deliveries", keys.landing(consumer)],
        args=[1, int(token), consumer, seek, transport.PARK_ABOVE],
    )  # fmt: skip
    if isinstance(reply, list):
        (entry,) = reply
        return entry
    return reply


def test_a_parked_message_not_claimed_is_handed_out_again_and_a_dead_consumers_goes_back(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """A worker that lost the pop's reply gets the same message at its next pop; a consumer
    that dies before it claims gives it back through the sweep, as any held message."""
    publish(redis_server, queue, [BIG, {"n": 2}])
    assert beat(client, "lost", 1, first=True) == [1]
    landing = liveness.Keys().landing("lost")
    assert pop(client, "lost", queue_name) == [queue_name, landing]
    assert pop(client, "lost", queue_name) == [queue_name, landing]  # not the next message
    assert client.llen(queue_name) == 1 and client.llen(landing) == 1
    time.sleep(1.2)
    assert beat(client, "sweeper", 60, first=True) == [1, "lost", 1]
    assert parked_keys(client) == [] and client.llen(queue_name) == 2
    restored = json.loads(client.lindex(queue_name, -1) or "")  # at the front
    assert restored["properties"]["delivery_info"]["redelivered"] is True
    assert pop(client, "lost", queue_name) == -1  # taken for dead: it pops nothing


def test_a_pop_reply_lost_with_its_connection_goes_back_uncounted_when_the_channel_closes(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """The read of a pop's reply timed out (a Redis too slow, here stopped) and the pop ran
    after: the message is held and no one knows its tag. Closing the channel, as a worker's
    reconnection does, puts it back at once, with no other consumer's sweep needed, and the
    delivery that never happened does not count toward TASKPOOL_MAX_DELIVERIES."""
    publish(redis_server, queue, [{"n": 1}, {"n": 2}])
    options = {"socket_timeout": 1}
    with (
        Connection(redis_server.url(), transport=Transport, transport_options=options) as conn,
        Consumer(conn, [queue], accept=["json"], callbacks=[lambda b, m: m.ack()]) as consumer,
    ):
        conn.drain_events(timeout=5)  # the first, as usual
        channel = consumer.channel
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            conn.transport.cycle.on_poll_start()  # sends the next pop, as the event loop does
            with pytest.raises(redis_py.exceptions.TimeoutError):
                channel._brpop_read()
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        wait_for(lambda: held_count(client) == 1, timeout=10, what="the pop to run unread")
        assert client.llen(queue_name) == 0
    wait_for(lambda: client.llen(queue_name) == 1, timeout=10, what="the message to go back")
    assert held_count(client) == 0 and consumers(client) == []
    message = json.loads(client.lindex(queue_name, 0) or "")
    assert message["properties"]["delivery_info"]["redelivered"] is True
    assert json.loads(base64.b64decode(message["body"])) == {"n": 2}
    assert client.hget("unacked_deliveries", message["properties"]["delivery_tag"]) is None


def test_an_ack_lost_on_its_way_leaves_the_message_counted_when_the_channel_closes(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """An ack Redis did not take (here refused by an ACL changed meanwhile): the task ran, so
    closing the channel puts the message back with its delivery counted."""
    client.acl_setuser(
        "worker", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    publish(redis_server, queue, [{"n": 1}])
    url = f"redis://worker:secret@127.0.0.1:{redis_server.port}/0"
    with Connection(url, transport=Transport) as conn:
        message = conn.default_channel.basic_get(queue_name, no_ack=False)
        assert message is not None
        client.acl_setuser("worker", enabled=True, commands=["-evalsha"])
        try:
            with pytest.raises(redis_py.exceptions.NoPermissionError):
                message.ack()
        finally:
            client.acl_setuser("worker", enabled=True, commands=["+evalsha"])
        assert held_count(client) == 1
    wait_for(lambda: client.llen(queue_name) == 1, timeout=10, what="the message to go back")
    assert held_count(client) == 0 and consumers(client) == []
    assert client.hget("unacked_deliveries", message.delivery_tag) == "1"


def test_on_redis_6_a_long_queue_hands_even_a_big_message_to_the_script(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """Redis 6.2's SORT walks a list from the head to reach its last message: past the seek
    limit the pop takes it with RPOP, recorded whole, as before."""
    publish(redis_server, queue, [BIG, {"n": 3}])
    assert beat(client, "old", 60, first=True) == [1]
    reply = pop(client, "old", queue_name, seek=1)
    assert len(reply) == 4 and json.loads(reply[1])["body"]  # the message, recorded whole
    assert parked_keys(client) == []
    assert transport.seek_limit("6.2.14") == transport.SEEK_LIMIT_6
    assert transport.seek_limit("7.0.15") == -1


def test_a_big_message_delivered_too_often_is_quarantined_with_its_parked_copy(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [BIG])
    options = {"max_deliveries": 2}
    with Connection(redis_server.url(), transport=Transport, transport_options=options) as conn:
        channel = conn.default_channel
        for _ in range(2):
            message = channel.basic_get(queue_name, no_ack=False)
            assert message is not None
            message.reject(requeue=True)  # counted, as a worker lost under late acks
        assert channel.basic_get(queue_name, no_ack=False) is None
    (entry,) = Quarantine(redis_py.Redis(port=redis_server.port)).entries()
    assert "delivered 2 times" in entry.reason and json.loads(entry.message)["body"]
    assert held_count(client) == 0 and parked_keys(client) == [] and client.llen(queue_name) == 0
    assert client.hlen("unacked_deliveries") == 0


def test_a_full_redis_still_hands_out_a_big_message(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """maxmemory with noeviction refuses a script's first write that may grow memory; the pop
    frees memory first, so it runs to its end, as the ack does. A woken consumer, which took
    the token already, is the case where parking the message would be the first write."""
    publish(redis_server, queue, [BIG])
    assert beat(client, "full", 60, first=True) == [1]
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used)
    try:
        with pytest.raises(redis_py.exceptions.ResponseError, match="maxmemory"):
            client.set("filler", "x" * 4096)
        landing = liveness.Keys().landing("full")
        assert pop(client, "full", queue_name, token=False) == [queue_name, landing]
    finally:
        client.config_set("maxmemory", 0)


def test_a_publish_refused_by_a_full_redis_leaves_its_connection_in_step(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """The message and its token go in one write; every reply is read before the refusal is
    raised, so the next publish on the same connection reads its own replies."""
    with connection(redis_server) as conn:
        producer = Producer(conn)
        producer.publish({"n": 1}, routing_key=queue_name, declare=[queue], serializer="json")
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]))
        try:
            with pytest.raises(redis_py.exceptions.OutOfMemoryError, match="maxmemory"):
                producer.publish({"n": 2}, routing_key=queue_name, serializer="json", retry=False)
        finally:
            client.config_set("maxmemory", 0)
        producer.publish({"n": 3}, routing_key=queue_name, serializer="json", retry=False)
    bodies = [json.loads(m)["body"] for m in client.lrange(queue_name, 0, -1)]
    assert len(bodies) == 2  # n=1 and n=3, newest first
    assert client.llen(f"{queue_name}{SEP}wake") == 2


def test_a_publish_on_a_connection_redis_dropped_reconnects_and_sends_once(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    with connection(redis_server) as conn:
        producer = Producer(conn)
        producer.publish({"n": 1}, routing_key=queue_name, declare=[queue], serializer="json")
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
        producer.publish({"n": 2}, routing_key=queue_name, serializer="json", retry=False)
    assert client.llen(queue_name) == 2
    assert client.llen(f"{queue_name}{SEP}wake") == 2


def test_a_reply_left_unread_on_the_publishing_connection_is_not_taken_for_the_publishs(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """The connection the channel keeps for its publishes is checked before each use as the
    pool checks what it hands out: one that holds a reply no one asked for is made again, and
    the publish reads its own replies (here the left reply is an error, and would be raised)."""
    client.set(f"{queue_name}-text", "x")
    with connection(redis_server) as conn:
        channel = conn.default_channel
        producer = Producer(channel)
        producer.publish({"n": 1}, routing_key=queue_name, declare=[queue])
        pool = channel.pool
        with channel._publishing.use(pool) as kept:
            kept.send_command("LPUSH", f"{queue_name}-text", "y")  # WRONGTYPE, left unread
            wait_for(kept.can_read, timeout=10, what="the reply to arrive")
        producer.publish({"n": 2}, routing_key=queue_name, retry=False)
        with channel._publishing.use(pool) as kept:
            assert not kept.can_read()
    assert client.llen(queue_name) == 2
    assert client.llen(f"{queue_name}{SEP}wake") == 2


def test_threads_publishing_on_one_channel_at_once_each_send_on_a_connection_of_its_own(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """The channel keeps one connection for its publishes (taskpool.kept_connection); a
    publish that finds it in use takes one of the pool's: one connection shared by two
    threads at once would mix their replies. Closing the channel closes them all."""
    threads, each = 6, 150
    start = threading.Barrier(threads)
    failures: list[BaseException] = []
    with connection(redis_server) as conn:
        channel = conn.default_channel
        Producer(channel).publish({"n": -1}, routing_key=queue_name, declare=[queue])
        baseline = len(client.client_list())

        def send(thread: int) -> None:
            try:
                producer = Producer(channel)
                start.wait(timeout=30)
                for n in range(each):
                    producer.publish({"n": thread * each + n}, routing_key=queue_name)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                failures.append(exc)

        workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert not failures
        assert len(client.client_list()) <= baseline + threads - 1  # the pool's, as many as met
        texts = client.lrange(queue_name, 0, -1)
        sent = [json.loads(base64.b64decode(json.loads(text)["body"])) for text in texts]
        assert sorted(item["n"] for item in sent) == list(range(-1, threads * each))
    wait_for(lambda: len(client.client_list()) == 1, timeout=10, what="connections closed")


def test_threads_that_come_and_go_leave_no_connection_behind(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """A thread (or greenlet) per request that publishes once must not leave a connection
    open per thread until the garbage collector finds it: the channel keeps one."""
    threads = 20
    with connection(redis_server) as conn:
        channel = conn.default_channel
        producer = Producer(channel)
        producer.publish({"n": -1}, routing_key=queue_name, declare=[queue])
        baseline = len(client.client_list())
        gc.disable()  # what is closed must be closed without it
        try:
            for n in range(threads):
                worker = threading.Thread(
                    target=producer.publish, args=({"n": n},), kwargs={"routing_key": queue_name}
                )
                worker.start()
                worker.join(timeout=30)
            assert len(client.client_list()) == baseline
        finally:
            gc.enable()
        assert client.llen(queue_name) == threads + 1


@pytest.mark.parametrize("expires", [None, 60], ids=["at-once", "pipeline"])
def test_a_message_in_its_queue_is_not_refused_for_its_wake_token(
    redis_server: RedisServer,
    client: redis_py.Redis,
    queue_name: str,
    expires: int | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the message is in, an error on the wake token alone is logged, not raised: a raise
    has the caller publish the message again (kombu's retry, Celery's publish). On both
    publish paths: an expiring queue's publish (kombu's x-expires) goes as a pipeline."""
    queue = Queue(queue_name, expires=expires)
    client.acl_setuser(
        "sender", enabled=True, passwords=["+secret"], channels=["*"], commands=["+@all"],
        keys=[queue_name, f"{queue_name}{SEP}[0-9]*", "_kombu.*"],  # its lists, not its wake list
    )  # fmt: skip
    url = f"redis://sender:secret@127.0.0.1:{redis_server.port}/0"
    with Connection(url, transport=Transport) as conn, caplog.at_level("WARNING"):
        Producer(conn).publish({"n": 1}, routing_key=queue_name, declare=[queue], retry=False)
    assert client.llen(queue_name) == 1
    assert client.llen(f"{queue_name}{SEP}wake") == 0
    assert "Redis refused its wake token, trim or expiry: this user has no permissions" in (
        caplog.text
    )
    if expires:
        assert 0 < client.pttl(queue_name) <= expires * 1000


def test_a_redis_that_refuses_sort_and_memory_still_delivers_a_big_message(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    """SORT is in ACL's @dangerous, which hardened set-ups deny; MEMORY may be denied too. The
    pop then takes the message into the script, as before parking."""
    client.acl_setuser(
        "worker", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all", "-sort", "-memory"],
    )  # fmt: skip
    url = f"redis://worker:secret@127.0.0.1:{redis_server.port}/0"
    with Connection(url, transport=Transport) as conn:
        Producer(conn).publish(BIG, routing_key=queue_name, declare=[queue], serializer="json")
        message = conn.default_channel.basic_get(queue_name, no_ack=False)
        assert message is not None and message.payload == BIG
        (consumer,) = consumers(client)
        assert str(client.hget(f"{HELD}{consumer}", message.delivery_tag))[0].isdigit()  # whole
        message.ack()
    assert held_count(client) == 0 and parked_keys(client) == []
