"""taskpool installed into someone else's Celery project, as a user would: ``pip install <repo>``.

The project has its own ``tasks.py`` (the module name of Celery's tutorial) and a ``config/``
package (the layout of many Django projects), the two names an earlier layout of taskpool
shadowed. taskpool is installed from a wheel of this repository into a fresh virtualenv; its
dependencies come from the test environment (a ``.pth`` file), so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.redis_server import RedisServer, free_port
from tests.support.apps import client_app
from tests.support.user_project import UserProject, install_project

USER_FILES = {
    "config/__init__.py": "",
    "config/settings.py": """
        import os

        # The project's own settings module; the environment may point it elsewhere.
        broker_url = os.environ.get("PROJECT_REDIS_URL", "redis://127.0.0.1:1/0")
        result_backend = broker_url
        task_serializer = "json"
        accept_content = ["json"]
        """,
    "tasks.py": """
        from celery import Celery

        from taskpool import FallbackTask

        app = Celery("tasks", task_cls=FallbackTask)
        app.config_from_object("config.settings")


        @app.task
        def add(x, y):
            return x + y
        """,
    "test_backends.py": """
        from tasks import add


        def test_a_worker_runs_it_through_the_broker(taskpool_worker):
            assert type(add.delay(2, 3)).__name__ == "AsyncResult"


        def test_the_local_switch_keeps_it_off_the_broker(taskpool_local):
            assert type(add.delay(2, 3)).__name__ == "LocalResult"
        """,
    "pytest.ini": """
        [pytest]
        taskpool_app = tasks
        """,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> UserProject:
    return install_project(tmp_path_factory.mktemp("user-project"), USER_FILES)


def test_installing_taskpool_adds_one_import_name_to_site_packages(project: UserProject) -> None:
    packages = {name for name in project.added if not name.endswith((".dist-info", ".egg-info"))}
    assert packages == {"taskpool"}
    assert (project.site_packages / "taskpool" / "py.typed").exists()
    done = project.run(
        project.python, "-c", "import tasks, config; print(tasks.__file__, config.__file__)",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(project.root / "tasks.py"),
        str(project.root / "config" / "__init__.py"),
    ]


def test_the_users_fallback_task_runs_locally_when_no_broker_answers(
    project: UserProject,
) -> None:
    script = (
        "from tasks import add\n"
        "result = add.delay(2, 3)\n"
        "print(type(result).__name__, result.get(timeout=30))\n"
    )
    done = project.run(project.python, "-c", script, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LocalResult", "5"]


def test_the_users_app_runs_on_its_own_prefork_worker(
    project: UserProject, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(db=3)
    node = node_name("user-project")
    worker = CeleryWorker(
        project.env(url), node, tmp_path / "worker.log", concurrency=2,
        command=[str(project.python), "-m", "celery", "-A", "tasks", "worker", "-P", "prefork",
                 "-c", "2", "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=project.root,
    )  # fmt: skip
    script = (
        "from tasks import add\n"
        "result = add.delay(2, 3)\n"
        "print(type(result).__name__, result.get(timeout=30))\n"
    )
    try:
        worker.start().wait_ready(client_app(url))
        done = project.run(project.python, "-c", script, redis_url=url)
    finally:
        worker.stop()
    assert done.returncode == 0, done.stderr + worker.log_tail()
    assert done.stdout.split() == ["AsyncResult", "5"]


def test_taskpool_demo_finishes_in_the_users_project(project: UserProject) -> None:
    done = project.run("taskpool", "demo", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend: local pool" in done.stdout
    assert "square over [1, 2, 3, 4, 5] = [1, 4, 9, 16, 25]" in done.stdout
    assert done.stdout.count("Process ID: ") == 4
    assert "Traceback" not in done.stderr


def test_the_users_own_tests_pass_with_taskpools_pytest_plugin(project: UserProject) -> None:
    done = project.run(
        project.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
