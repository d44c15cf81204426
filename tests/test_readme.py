"""The README's commands are the ones that run: CI's, and the scripts users paste."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from taskpool.testing.celery_worker import CeleryWorker, worker_env
from taskpool.testing.redis_server import RedisServer, free_port
from tests.support.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
SCRIPTS = re.findall(r'^python -c "(.+)"$', README, flags=re.MULTILINE)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = "pip install -e '.[test]' && pytest"
    assert f"\n{command}\n" in README
    assert f"\n{command}\n" in (REPO_ROOT / ".ci" / "run").read_text()


def test_the_readme_installs_this_project_by_its_distribution_name() -> None:
    # The index's "taskpool" is another project with the same import name.
    project = re.search(r'^name = "(.+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert project is not None
    name = project[1]
    named = re.findall(r"pip install '?([A-Za-z][\w.-]*)", README)
    assert name != "taskpool"
    assert named and set(named) == {name}


def test_the_readme_shows_both_task_scripts() -> None:
    assert len(SCRIPTS) == 2


def run(script: str, broker_url: str) -> tuple[str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=worker_env(broker_url),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1], done.stderr, time.monotonic() - started


@pytest.mark.integration
@pytest.mark.parametrize("script", SCRIPTS)
def test_readme_scripts_print_the_answer_through_a_worker(
    script: str, session_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    last, _, _ = run(script, redis_server.url())
    assert last == "100" or (
        f"'hostname': '{session_worker.node}'" in last and "'number': 3" in last
    )


@pytest.mark.integration
@pytest.mark.parametrize("script", SCRIPTS)
def test_readme_scripts_print_the_answer_with_no_broker(script: str) -> None:
    last, stderr, seconds = run(script, f"redis://127.0.0.1:{free_port()}/0")
    assert last == "100" or ("'hostname': 'local-pool@" in last and "'number': 3" in last)
    assert stderr.count("running tasks on the local pool") == 1
    assert seconds < 5  # interpreter start included; the call itself is bounded in test_fallback
