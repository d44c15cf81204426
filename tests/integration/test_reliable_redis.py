"""The reliable Redis transport against a real redis-server: pop and record are one step."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import redis as redis_py
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from taskpool import Settings, celery_config
from taskpool.testing.redis_server import RedisServer
from taskpool.transport import Transport

pytestmark = pytest.mark.integration


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


def test_a_message_is_recorded_unacked_in_the_same_step_that_pops_it(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": 1}])
    with connection(redis_server) as conn:
        channel = conn.default_channel
        message = channel.basic_get(queue_name, no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        assert client.llen(queue_name) == 0
        # kombu's own format, so its restore reads it: [payload, exchange, routing key]
        payload, exchange, routing_key = json.loads(
            str(client.hget("unacked", message.delivery_tag))
        )
        delivery = message.delivery_info
        assert (exchange, routing_key) == (delivery["exchange"], delivery["routing_key"])
        assert routing_key == queue_name
        assert payload["properties"]["delivery_tag"] == message.delivery_tag
        assert client.zscore("unacked_index", message.delivery_tag) is not None
        message.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_an_unacked_message_comes_back_through_kombus_restore(
    redis_server: RedisServer, client: redis_py.Redis, queue_name: str, queue: Queue
) -> None:
    publish(redis_server, queue, [{"n": 2}])
    with connection(redis_server) as conn:
        assert conn.default_channel.basic_get(queue_name, no_ack=False) is not None
    # Closing without an ack restores it, as kombu does: back on the queue, marked redelivered.
    assert client.hlen("unacked") == 0
    restored = json.loads(str(client.lindex(queue_name, 0)))
    assert restored["properties"]["delivery_info"]["redelivered"] is True


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
    assert client.llen(queue_name) == 0 and client.hlen("unacked") == 0


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
    assert client.hlen("unacked") == 0


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
