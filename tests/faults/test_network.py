"""A worker host cut off from the network, with Linux network namespaces.

The worker runs in a namespace of its own, joined to this host by a veth pair (its own test
host on a /30 of its own; nothing leaves the machine). Cutting the link strands its tasks
mid-run; its consumer falls silent, the liveness timeout hands them to a second worker, and
all complete. When the link comes back, the cut-off worker learns it was taken for dead and
overwrites none of the results the second worker stored.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py
from celery.result import AsyncResult

from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.ci import skip_or_fail
from taskpool.testing.held import consumers
from taskpool.testing.probe_tasks import STARTED
from taskpool.testing.redis_server import RedisServer
from taskpool.testing.waiting import wait_for
from tests.support.apps import FAST_REDELIVERY, client_app
from tests.support.paths import REPO_ROOT

CUT_OFF_WORKER = {
    **FAST_REDELIVERY,
    "TASKPOOL_SOCKET_TIMEOUT": "2",
    "PYTHONPATH": str(REPO_ROOT),
}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class WorkerHost:
    """A network namespace joined to this host by a veth pair; removed with its links."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:3]}"
        self.namespace = f"tp-{tag}"
        self.host_link, self.worker_link = f"tph{tag}", f"tpw{tag}"
        subnet = os.getpid() % 250 + 1
        self.host_address, self.worker_address = f"10.251.{subnet}.1", f"10.251.{subnet}.2"

    def create(self) -> WorkerHost:
        ip("netns", "add", self.namespace)
        ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.worker_link)
        ip("link", "set", self.worker_link, "netns", self.namespace)
        ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        ip("link", "set", self.host_link, "up")
        inside = ("netns", "exec", self.namespace, "ip")
        ip(*inside, "addr", "add", f"{self.worker_address}/30", "dev", self.worker_link)
        ip(*inside, "link", "set", self.worker_link, "up")
        ip(*inside, "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        """Take the link down: no FIN, no RST, the peer just stops answering."""
        ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_link, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)


@pytest.fixture
def worker_host() -> Iterator[WorkerHost]:
    host = WorkerHost()
    try:
        host.create()
    except (OSError, subprocess.CalledProcessError) as exc:
        host.remove()
        skip_or_fail(f"network namespaces are not permitted here: {exc}")
    yield host
    host.remove()


def test_a_worker_cut_off_from_the_network_has_its_tasks_finished_elsewhere(
    tmp_path: Path,
    worker_host: WorkerHost,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    password = uuid.uuid4().hex
    redis = redis_factory(
        password=password, extra=("--bind", "127.0.0.1", worker_host.host_address)
    )
    remote_url = f"redis://:{password}@{worker_host.host_address}:{redis.port}/0"
    celery = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork"]
    command = ["ip", "netns", "exec", worker_host.namespace, *celery, "-c", "2", "-l", "info"]
    remote = CeleryWorker(
        worker_env(remote_url, **CUT_OFF_WORKER),
        node_name("remote"),
        tmp_path / "remote.log",
        command=[*command, "--without-gossip", "--without-mingle"],
        extra=("-I", "taskpool.testing.probe_tasks"),
    )
    app = client_app(redis.url(), dispatch="celery")
    client = redis_py.Redis(port=redis.port, password=password, decode_responses=True)
    try:
        remote.start().wait_ready(app)
        results = [app.send_task("probe.where", args=(n, 3.0)) for n in range(6)]
        wait_for(lambda: client.llen(STARTED) >= 2, 20, "the remote worker to start tasks")
        # Its loop pops the other four after handing out the first two, and a loaded machine
        # can run both tasks' first lines before that: the queue is read until it is empty.
        wait_for(lambda: client.llen("celery") == 0, 20, "the remote worker to hold all six")

        worker_host.cut()
        cut_at = time.monotonic()
        survivor = worker_factory(
            redis.url(),
            node_name("survivor"),
            extra=("-I", "taskpool.testing.probe_tasks"),
            **CUT_OFF_WORKER,
        )
        assert [r.get(timeout=60) for r in results] == [survivor.node] * 6
        assert time.monotonic() - cut_at < 60
        assert remote.process is not None and remote.process.poll() is None  # it never knew

        worker_host.restore()
        # Back: it consumes again under a new consumer id (its old one was taken for dead).
        wait_for(lambda: len(consumers(client)) == 2, 60, "the cut-off worker to consume again")
        time.sleep(2)  # its result writes, if any, come after it reconnects
        stored = [AsyncResult(r.id, app=app).get(timeout=5) for r in results]
        assert stored == [survivor.node] * 6, "the cut-off worker overwrote a stored success"
    finally:
        client.close()
        remote.stop(timeout=5)
