"""What a write with TASKPOOL_REDIS_WAIT_REPLICAS does while its replica is in its first sync:
it does not wait for it (the replica holds no copy yet and confirms nothing until the sync
ends), on Redis 6.2 and 7 alike; once the replica is online, each write waits for it."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis as redis_py
from kombu import Connection, Exchange, Producer, Queue

from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from taskpool.transport import Transport

#: A primary that starts a new replica's sync (diskless) only after this many seconds, as
#: Redis 7 does by default: a window in which the replica is connected and holds nothing.
SYNC_DELAY = 5


def test_a_write_does_not_wait_for_a_replica_in_its_first_sync_and_waits_once_it_is_online(
    redis_factory: Callable[..., RedisServer],
) -> None:
    primary = redis_factory(
        extra=("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", str(SYNC_DELAY))
    )
    client = redis_py.Redis(port=primary.port, decode_responses=True)
    replica = redis_factory(extra=("--replicaof", "127.0.0.1", str(primary.port)))
    reader = redis_py.Redis(port=replica.port, decode_responses=True)
    queue = Queue("jobs", Exchange("jobs"), routing_key="jobs")
    options = {"wait_replicas": 1, "wait_timeout": 0.5}
    try:
        wait_for(lambda: "slave0" in client.info("replication"), 10, "the replica connected")
        assert client.info("replication")["slave0"]["state"] != "online"  # in its first sync
        with Connection(primary.url(), transport=Transport, transport_options=options) as conn:
            producer = Producer(conn)
            started = time.monotonic()
            producer.publish("early", routing_key="jobs", declare=[queue], serializer="json")
            assert time.monotonic() - started < SYNC_DELAY  # no wait for the sync to end
            assert client.llen("jobs") == 1
            wait_for(
                lambda: client.info("replication")["slave0"]["state"] == "online",
                60, "the replica's sync to end",
            )  # fmt: skip
            time.sleep(1.1)  # the count of replicas online is asked again after a second
            producer.publish("late", routing_key="jobs", declare=[queue], serializer="json")
            assert reader.llen("jobs") == 2  # no sleep: the write waited for the replica
    finally:
        client.close()
        reader.close()
