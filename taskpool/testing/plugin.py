"""taskpool's pytest plugin: real parts for users' own tests, loaded when taskpool is installed.

Fixtures (all opt-in; loading the plugin starts nothing and imports neither Celery nor redis):

- ``taskpool_redis``: a private ``redis-server`` on a free loopback port for the session, and
  the environment pointed at it (``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND``, which
  Celery reads before any configured URL, and the ``TASKPOOL_*`` ones). Request it before the
  app first connects.
- ``taskpool_worker``: a real ``celery -A APP worker -P prefork`` subprocess against that
  Redis, started once per session and stopped by PID. APP comes from ``--taskpool-app`` or the
  ``taskpool_app`` ini option (no default: the project names its app) and is found from the
  rootdir, as ``celery -A`` finds it from the working directory.
- ``taskpool_local`` / ``taskpool_celery``: every call and map of the test runs on the local
  pool / only on the broker, whatever the settings say.

Celery's own ``celery.contrib.pytest`` runs its worker in a thread of the test process; this
one runs the real thing, in its own process with its own pool processes.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from taskpool.testing.ci import skip_or_fail

if TYPE_CHECKING:
    from taskpool.testing.celery_worker import CeleryWorker
    from taskpool.testing.redis_server import RedisServer

#: The environment variables ``taskpool_redis`` points at the private server.
URL_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "TASKPOOL_BROKER_URL",
    "TASKPOOL_RESULT_BACKEND",
)
#: Bound on a worker's start, from the command to its first answered ping.
WORKER_START_TIMEOUT = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "taskpool_app", "The app taskpool_worker starts, as `celery -A` takes it", default=""
    )
    parser.getgroup("taskpool").addoption(
        "--taskpool-app", default=None, help="The app taskpool_worker starts (overrides the ini)"
    )


def _forget_settings() -> None:
    """Make taskpool read the environment again (its settings are read once and kept)."""
    settings = sys.modules.get("taskpool.settings")
    if settings is not None:
        settings.forget_settings()


@pytest.fixture(scope="session")
def taskpool_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the session; the environment points at it meanwhile."""
    from taskpool.testing.redis_server import RedisServer, find_redis_server, free_port

    binary = find_redis_server()
    if binary is None:
        skip_or_fail(
            "no redis-server on PATH or in the venv (pip install 'celery-taskpool[pytest]')"
        )
    server = RedisServer(binary, free_port(), tmp_path_factory.mktemp("taskpool-redis")).start()
    patch = pytest.MonkeyPatch()
    try:
        for name in URL_VARIABLES:
            patch.setenv(name, server.url())
        _forget_settings()
        yield server
    finally:
        patch.undo()
        _forget_settings()
        server.stop()


@pytest.fixture(scope="session")
def taskpool_worker(
    taskpool_redis: RedisServer,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CeleryWorker]:
    """A real prefork worker of the project's app, on ``taskpool_redis``; stopped by PID."""
    from celery.app.utils import find_app

    from taskpool.testing.celery_worker import CeleryWorker

    name = pytestconfig.getoption("taskpool_app") or pytestconfig.getini("taskpool_app")
    if not name:
        raise pytest.UsageError(
            "taskpool_worker needs your Celery app: set taskpool_app in the [pytest] ini "
            "(taskpool_app = proj, as `celery -A proj` takes it), or pass --taskpool-app proj"
        )
    root = pytestconfig.rootpath
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    app = find_app(name)
    node = f"taskpool-test-{os.getpid()}@{socket.gethostname()}"
    logfile = tmp_path_factory.mktemp("taskpool-worker") / "worker.log"
    worker = CeleryWorker(dict(os.environ), node, logfile, concurrency=2, app=name, cwd=root)
    try:
        worker.start().wait_ready(app, timeout=WORKER_START_TIMEOUT)
        yield worker
    finally:
        worker.stop(drain=app)


@pytest.fixture
def taskpool_local() -> Iterator[None]:
    """Every call and map in the test runs on the local pool; no broker is asked."""
    from taskpool.dispatch import forced

    with forced("local"):
        yield


@pytest.fixture
def taskpool_celery() -> Iterator[None]:
    """Every call and map in the test goes to the broker, or raises BrokerUnavailable."""
    from taskpool.dispatch import forced

    with forced("celery"):
        yield
