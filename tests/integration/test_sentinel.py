"""Redis Sentinel for real: a primary, a replica and three sentinels on loopback."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_py
from kombu import Connection, Exchange, Producer, Queue

from taskpool import Settings, quick_publish
from taskpool.errors import NotReplicated
from taskpool.health import BrokerHealth
from taskpool.status import read_status, render_status
from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.failover import MASTER, PASSWORD, SENTINEL_PASSWORD, Cluster
from taskpool.testing.held import held_count, held_text
from taskpool.testing.redis_server import RedisServer
from taskpool.transport import SentinelTransport
from tests.support import compose
from tests.support.apps import settings_app


def redis_at(address: str) -> redis_py.Redis:
    host, port = address.rsplit(":", 1)
    return redis_py.Redis(host=host, port=int(port), password=PASSWORD, decode_responses=True)


def sentinel_settings(cluster: Cluster, **more: object) -> Settings:
    return Settings(
        broker_url=cluster.url, result_backend=cluster.url, sentinel_master=MASTER,
        sentinel_password=SENTINEL_PASSWORD, **more,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_sentinel_path_pops_and_records_in_one_step_on_the_primary(cluster: Cluster) -> None:
    queue = Queue("jobs", Exchange("jobs"), routing_key="jobs")
    with Connection(
        cluster.url, transport=SentinelTransport, transport_options=cluster.options
    ) as conn:
        Producer(conn).publish({"n": 1}, routing_key="jobs", declare=[queue], serializer="json")
        message = conn.default_channel.basic_get("jobs", no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        primary = redis_at(cluster.topology()["primary"])
        try:
            assert held_count(primary) == 1 and message.delivery_tag in held_text(primary)
            message.ack()
            assert held_count(primary) == 0
        finally:
            primary.close()


def test_status_names_the_primary_and_its_replicas_and_hides_passwords(cluster: Cluster) -> None:
    app = settings_app(sentinel_settings(cluster))
    report = read_status(app)
    topology = cluster.topology()
    assert report["broker"]["reachable"]
    assert report["broker"]["primary"] == topology["primary"]
    assert report["broker"]["replicas"] == topology["replicas"] != []
    shown = render_status(report)
    assert f"primary {topology['primary']}" in shown and topology["replicas"][0] in shown
    assert PASSWORD not in shown and SENTINEL_PASSWORD not in shown


def test_the_fallback_asks_the_sentinels_and_sees_no_primary_once_they_are_gone(
    cluster: Cluster,
) -> None:
    app = settings_app(sentinel_settings(cluster))
    health = BrokerHealth(app, timeout=1.0, recheck=0, log_switches=False)
    assert health.is_up(), health.reason
    for server in cluster.sentinels:
        server.stop()
    started = time.monotonic()
    assert not health.is_up()
    assert time.monotonic() - started < 10
    assert PASSWORD not in health.reason and SENTINEL_PASSWORD not in health.reason


def test_a_publish_that_waits_for_a_replica_is_on_the_replica_when_it_returns(
    cluster: Cluster,
) -> None:
    settings = sentinel_settings(cluster, redis_wait_replicas=1, redis_wait_timeout=0.5)
    app = settings_app(settings)
    square = app.tasks["tasks.square"]
    replica = redis_at(cluster.topology()["replicas"][0])
    primary = redis_at(cluster.topology()["primary"])

    def waits() -> int:
        return int(primary.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    try:
        square.apply_async((3,), dispatch="celery")
        assert replica.llen("celery") == 1  # no sleep: WAIT returned once the replica had it
        # The next plain call takes the quick publish (quick_publish.py), which must wait too.
        before = waits()
        square.apply_async((4,), dispatch="celery")
        assert quick_publish.queue_of(square) == "celery"  # a template holds: the quick path
        assert waits() == before + 1
        assert replica.llen("celery") == 2
    finally:
        replica.close()
        primary.close()


def the_replica(cluster: Cluster) -> RedisServer:
    port = int(cluster.topology()["replicas"][0].rsplit(":", 1)[1])
    return next(s for s in cluster.servers if s.port == port)


def test_a_publish_a_connected_replica_does_not_confirm_fails_naming_the_setting(
    cluster: Cluster,
) -> None:
    options = {**cluster.options, "wait_replicas": 1, "wait_timeout": 0.3}
    queue = Queue("jobs", Exchange("jobs"), routing_key="jobs")
    replica = the_replica(cluster)
    with Connection(cluster.url, transport=SentinelTransport, transport_options=options) as conn:
        producer = Producer(conn)
        publish = functools.partial(
            producer.publish, {"n": 1}, routing_key="jobs", declare=[queue], serializer="json",
            retry=False,
        )  # fmt: skip
        publish()
        replica.kill(signal.SIGSTOP)  # connected, and silent
        try:
            started = time.monotonic()
            with pytest.raises(NotReplicated, match="0 of the 1 replica.*WAIT_REPLICAS=1"):
                publish()
            assert time.monotonic() - started < 5
        finally:
            replica.kill(signal.SIGCONT)
        # A primary with no replica at all has no failover to lose a message to: no wait.
        replica.stop()
        started = time.monotonic()
        publish()
        publish()
        assert time.monotonic() - started < 0.3 * 2


def test_the_compose_ha_worker_serves_through_the_sentinels(
    cluster: Cluster, tmp_path: Path
) -> None:
    addresses = {
        f"sentinel-{n + 1}:26379": f"127.0.0.1:{server.port}"
        for n, server in enumerate(cluster.sentinels)
    }
    variables = {"REDIS_PASSWORD": PASSWORD, "SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    command, service_env = compose.service("worker-ha", variables, addresses)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))}
    env.update(service_env)
    worker = CeleryWorker(env, node_name("compose-ha"), tmp_path / "ha.log", command=command)
    try:
        app = settings_app(Settings.from_env(service_env))
        worker.start().wait_ready(app)
        assert app.tasks["tasks.square"].delay(4).get(timeout=20) == 16
        # What Flower's worker page and `celery inspect` show hold neither password.
        for what in ("stats", "conf"):
            shown = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "tasks", "inspect", what,
                 "-d", worker.node, "--timeout", "5"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            output = shown.stdout + shown.stderr
            assert shown.returncode == 0, output[-2000:]
            assert "sentinel_kwargs" in output  # shown, so the check below means something
            assert PASSWORD not in output and SENTINEL_PASSWORD not in output, what
    finally:
        worker.stop()


def test_a_result_write_waits_for_the_replica_too(cluster: Cluster) -> None:
    """Else a result the dying primary took but never passed on is lost: the worker that ran
    the task remembers its success and skips the redelivered message."""
    app = settings_app(sentinel_settings(cluster, redis_wait_replicas=1, redis_wait_timeout=0.3))
    replica = the_replica(cluster)
    reader = redis_at(cluster.topology()["replicas"][0])
    try:
        app.backend.store_result("replicated-id", 5, "SUCCESS")
        assert reader.exists("celery-task-meta-replicated-id")  # no sleep: WAIT returned
    finally:
        reader.close()
    replica.kill(signal.SIGSTOP)
    try:
        with pytest.raises(NotReplicated, match="a result reached 0 of the 1 replica"):
            app.backend.store_result("unconfirmed-id", 5, "SUCCESS")
    finally:
        replica.kill(signal.SIGCONT)
