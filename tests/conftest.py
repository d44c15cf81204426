"""Fixtures: a private redis-server on a free port and real Celery workers against it.

The machine's own Redis (if any) is never touched: before any test runs, the broker and result
backend settings point at a port reserved for this session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskpool import Settings
from taskpool.settings import forget_settings
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.failover import Cluster
from taskpool.testing.redis_server import RedisServer, free_port
from tests.support.apps import client_app, close_made_since, made, settings_app
from tests.support.servers import redis_binary, tls_redis_binary

SESSION_REDIS_PORT = free_port()
SESSION_REDIS_URL = f"redis://127.0.0.1:{SESSION_REDIS_PORT}/0"


def pytest_configure(config: pytest.Config) -> None:
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(name, None)
    for name in [n for n in os.environ if n.startswith("TASKPOOL_")]:
        del os.environ[name]
    os.environ["TASKPOOL_BROKER_URL"] = SESSION_REDIS_URL
    os.environ["TASKPOOL_RESULT_BACKEND"] = SESSION_REDIS_URL
    forget_settings()


#: The markers a test carries by its folder: the folder decides, so no file can lack one.
FOLDER_MARKERS = {"integration": ("integration",), "faults": ("integration", "fault")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in FOLDER_MARKERS.get(item.path.parent.name, ()):
            item.add_marker(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's private Redis, on the port the environment already points at."""
    server = RedisServer(redis_binary(), SESSION_REDIS_PORT, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra private Redis servers for one test; all are stopped after it."""
    started: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        binary = tls_redis_binary() if options.get("tls") else redis_binary()
        server = RedisServer(binary, free_port(), tmp_path / f"redis-{len(started)}", **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def close_client_apps() -> Iterator[None]:
    before = made()
    yield
    close_made_since(before)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start real prefork workers for one test; all are stopped (by PID) after it."""
    started: list[CeleryWorker] = []

    def start(
        broker_url: str,
        node: str,
        concurrency: int = 2,
        extra: tuple[str, ...] = (),
        **env: str,
    ) -> CeleryWorker:
        full_env = worker_env(broker_url, **env)
        worker = CeleryWorker(full_env, node, tmp_path / f"{node}.log", concurrency, extra)
        started.append(worker)
        # Pinged with the worker's own settings (a rediss:// worker's CA file, say).
        worker.start().wait_ready(settings_app(Settings.from_env(full_env)))
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def session_worker(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One worker with four pool processes on the session Redis, shared by the tests."""
    logdir = tmp_path_factory.mktemp("worker")
    env = worker_env(redis_server.url(), TASKPOOL_CONCURRENCY="4")
    worker = CeleryWorker(env, node_name("w1"), logdir / "w1.log", 4)
    worker.start()
    try:
        worker.wait_ready(client_app(redis_server.url()))
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Redis primary, a replica and three sentinels on loopback, stopped by PID after."""
    started = Cluster(tmp_path / "cluster", redis_binary())
    try:
        yield started.start()
    finally:
        started.stop()
