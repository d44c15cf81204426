"""An existing Celery project of the usual shape adopts taskpool: ``proj/celery.py`` with
``config_from_object("proj.celeryconfig")`` and ``include=[...]``, plus one call,
``taskpool.configure(app)``. taskpool is installed from its wheel into a fresh virtualenv."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.redis_server import RedisServer, free_port
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT
from tests.support.user_project import UserProject, install_project

PROJ = {
    "proj/__init__.py": """
        from proj.celery import app as celery_app

        __all__ = ["celery_app"]
        """,
    "proj/celery.py": """
        from celery import Celery

        import taskpool

        app = Celery("proj", include=["proj.tasks"], task_cls=taskpool.FallbackTask)
        app.config_from_object("proj.celeryconfig")
        taskpool.configure(app)
        """,
    "proj/celeryconfig.py": """
        import os

        broker_url = os.environ.get("PROJECT_REDIS_URL", "redis://127.0.0.1:1/0")
        result_backend = broker_url
        result_expires = 600
        taskpool_dispatch = os.environ.get("PROJECT_DISPATCH", "auto")
        taskpool_worker_pool = os.environ.get("PROJECT_WORKER_POOL", "prefork")
        """,
    "proj/tasks.py": """
        from proj.celery import app


        @app.task(bind=True, max_retries=2)
        def add(self, x, y):
            return x + y
        """,
}

#: The README's example test of a project's own tasks, with the plugin.
README_TEST = re.search(
    r"```python\n(# tests/test_tasks.py\n.*?)```", (REPO_ROOT / "README.md").read_text(), re.DOTALL
)

CALL = (
    "from proj.tasks import add\n"
    "result = add.delay(2, 3)\n"
    "print(type(result).__name__, result.get(timeout=30))\n"
)


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> UserProject:
    assert README_TEST is not None, "the README lost its example test"
    files = {
        **PROJ,
        "pytest.ini": "[pytest]\ntaskpool_app = proj\n",
        "tests/test_tasks.py": README_TEST.group(1),
    }
    return install_project(tmp_path_factory.mktemp("proj"), files)


@contextlib.contextmanager
def project_worker(
    proj: UserProject, url: str, tmp_path: Path, options: tuple[str, ...], **env: str
) -> Iterator[CeleryWorker]:
    """The project's worker (``celery -A proj worker -l info`` and ``options``) on its own
    celeryconfig's broker ``url``, answering pings; stopped on the way out."""
    worker = CeleryWorker(
        proj.env(url, TASKPOOL_BROKER_URL="", **env), node_name("proj"), tmp_path / "worker.log",
        command=[str(proj.python), "-m", "celery", "-A", "proj", "worker", *options, "-l", "info"],
        cwd=proj.root,
    )  # fmt: skip
    try:
        yield worker.start().wait_ready(client_app(url))
    finally:
        worker.stop()


def test_the_projects_settings_module_is_taskpools_too(
    proj: UserProject, redis_server: RedisServer
) -> None:
    # Redis answers and no worker runs: taskpool_dispatch = "local" in celeryconfig keeps the
    # call off the broker; its broker comes from celeryconfig alone (no TASKPOOL_BROKER_URL).
    url = redis_server.url(db=5)
    done = proj.run(
        proj.python, "-c", CALL, redis_url=url, TASKPOOL_BROKER_URL="", PROJECT_DISPATCH="local"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LocalResult", "5"]
    client = client_app(url)
    with client.connection_for_read() as connection:
        assert connection.default_channel.client.llen("celery") == 0


def test_the_environment_wins_over_the_settings_module(proj: UserProject) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = proj.run(
        proj.python, "-c", CALL, redis_url=dead, PROJECT_DISPATCH="local",
        TASKPOOL_DISPATCH="celery",
    )  # fmt: skip
    assert done.returncode == 1
    assert "BrokerUnavailable" in done.stderr


def test_taskpool_concurrency_sizes_a_configured_apps_worker(
    proj: UserProject, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(db=6)
    options = ("-P", "prefork", "--without-gossip", "--without-mingle")
    with project_worker(proj, url, tmp_path, options, TASKPOOL_CONCURRENCY="1") as worker:
        done = proj.run(proj.python, "-c", CALL, redis_url=url, TASKPOOL_BROKER_URL="")
        status = proj.run(
            proj.python.parent / "taskpool", "-A", "proj", "status", "--json",
            redis_url=url, TASKPOOL_BROKER_URL="",
        )  # fmt: skip
        log = worker.log_tail()
    assert done.returncode == 0, done.stderr + log
    assert done.stdout.split() == ["AsyncResult", "5"]
    assert "concurrency: 1 (prefork)" in log
    # The project's broker (its celeryconfig's), its worker and the queue it consumes.
    report = json.loads(status.stdout)
    assert report["app"] == "proj" and report["broker"]["url"] == url, status.stderr
    assert [w["node"] for w in report["workers"]] == [worker.node]
    assert {"name": "celery", "waiting": 0, "reserved": 0, "running": 0, "consumers": 1} in (
        report["queues"]
    )
    with client_app(url).connection_for_read() as connection:
        # taskpool's transport beat there (taskpool.liveness); stock kombu's writes no such key.
        assert connection.default_channel.client.exists("taskpool.liveness")


def test_a_project_that_chooses_the_fetching_pool_in_its_settings_gets_it(
    proj: UserProject, redis_server: RedisServer, tmp_path: Path
) -> None:
    """``taskpool_worker_pool = "fetching"`` in celeryconfig, and Celery's default worker
    options otherwise (gossip, mingle, a process per CPU)."""
    url = redis_server.url(db=7)
    with project_worker(proj, url, tmp_path, (), PROJECT_WORKER_POOL="fetching") as worker:
        done = proj.run(proj.python, "-c", CALL, redis_url=url, TASKPOOL_BROKER_URL="")
        log = worker.log_tail()
    assert done.returncode == 0, done.stderr + log
    assert done.stdout.split() == ["AsyncResult", "5"]
    assert "(fetching)" in log
    # Run by one of the pool's processes, each a worker of its own, not by the parent.
    assert re.search(r"/FetchingProcess-\d\] Task proj\.tasks\.add\[[-0-9a-f]+\] succeeded", log), (
        log
    )
    assert worker.process is not None and worker.process.returncode == 0, log


def test_with_redis_up_and_no_worker_a_call_runs_here_and_its_result_is_stored(
    proj: UserProject, redis_server: RedisServer
) -> None:
    # The web app's way: enqueue, keep the id, read it later from another process.
    url = redis_server.url(db=13)
    done = proj.run(
        proj.python, "-c", CALL + "print(result.id)\n", redis_url=url, TASKPOOL_BROKER_URL=""
    )
    assert done.returncode == 0, done.stderr
    kind, value, task_id = done.stdout.split()
    assert (kind, value) == ("LocalResult", "5")
    assert "no live worker consumes queue 'celery'" in done.stderr
    read = (
        "from celery.result import AsyncResult\n"
        "from proj import celery_app\n"
        f"print(AsyncResult({task_id!r}, app=celery_app).get(timeout=10))\n"
    )
    later = proj.run(proj.python, "-c", read, redis_url=url, TASKPOOL_BROKER_URL="")
    assert later.returncode == 0 and later.stdout.split() == ["5"], later.stderr


def test_a_misspelt_variable_stops_a_script_and_a_worker_naming_it(proj: UserProject) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = proj.run(
        proj.python, "-c", CALL, redis_url=url, TASKPOOL_BROKER_URI="redis://:hunter2@x:1/0"
    )
    assert done.returncode == 1
    assert "TASKPOOL_BROKER_URI" in done.stderr
    assert "did you mean TASKPOOL_BROKER_URL?" in done.stderr
    worker = proj.run(
        proj.python, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", redis_url=url,
        TASKPOOL_BROKER_URI="redis://:hunter2@x:1/0", timeout=60,
    )  # fmt: skip
    assert worker.returncode == 2
    lines = worker.stderr.strip().splitlines()
    assert lines[-1].startswith("taskpool: TASKPOOL_BROKER_URI="), worker.stderr
    assert "hunter2" not in done.stderr + worker.stderr + worker.stdout


REFUSALS = [
    ("password", "rejected the credentials"),
    ("database", "has no such database"),
    ("scheme", "with a scheme among"),
]


@pytest.mark.parametrize(("wrong", "said"), REFUSALS, ids=[w for w, _ in REFUSALS])
def test_a_broker_that_refuses_is_a_configuration_error_not_an_outage(
    proj: UserProject,
    redis_factory: Callable[..., RedisServer],
    tmp_path: Path,
    wrong: str,
    said: str,
) -> None:
    server = redis_factory(password="right-one")
    url = {
        "password": server.url().replace("right-one", "wrong-one"),
        "database": server.url(db=99),
        "scheme": server.url().replace("redis://", "redsi://"),
    }[wrong]
    # Mode auto ran such calls on the local pool, saying only that the broker was unreachable.
    done = proj.run(proj.python, "-c", CALL, redis_url=url, TASKPOOL_BROKER_URL="")
    assert done.returncode == 1
    assert "ConfigError" in done.stderr and said in done.stderr, done.stderr
    assert "LocalResult" not in done.stdout
    assert "wrong-one" not in done.stderr
    if wrong == "scheme":
        return  # the settings refuse the scheme before any worker starts (exit 2)
    worker = CeleryWorker(
        proj.env(url, TASKPOOL_BROKER_URL=""), node_name(f"refused-{wrong}"),
        tmp_path / "worker.log",
        command=[str(proj.python), "-m", "celery", "-A", "proj", "worker", "-P", "prefork",
                 "-c", "1", "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=proj.root,
    )  # fmt: skip
    worker.start()
    try:
        assert worker.wait_exit(timeout=30) == 78  # EX_CONFIG, not retried for ever
    finally:
        worker.stop()
    assert said in worker.log_tail()
    assert "wrong-one" not in worker.log_tail()


def test_the_map_command_finds_the_projects_tasks_and_stars_their_arguments(
    proj: UserProject,
) -> None:
    # No broker answers: the map runs on the local pool, with the tasks `include` names.
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [str(proj.python.parent / "taskpool"), "-A", "proj", "map", "proj.tasks.add",
         "--input", "-", "--star"],
        input="[1, 2]\n[3, 4]\n[5, 6]\n", cwd=proj.root, env=proj.env(url, TASKPOOL_BROKER_URL=""),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "7", "11"]
    assert "backend=local pool" in done.stderr


def test_the_readmes_plugin_example_passes_in_the_project_and_its_worker_stops_promptly(
    proj: UserProject,
) -> None:
    started = time.monotonic()
    done = proj.run(
        proj.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
        redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
    assert time.monotonic() - started < 60  # does not hang (the stall: test_worker.py, drained)
