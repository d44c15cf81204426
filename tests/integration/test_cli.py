"""The taskpool command as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks import LOCAL_NODE
from tests.conftest import worker_env
from tests.support.celery_worker import REPO_ROOT, CeleryWorker
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration


def taskpool(*args: str, broker_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(broker_url, **env)
    command = [sys.executable, "-m", "tasks", *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_demo_runs_on_the_local_pool_with_no_redis_at_all() -> None:
    done = taskpool("demo", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "backend: local pool" in out
    assert "square(10) = 100" in out
    assert "square over [1, 2, 3, 4, 5] = [1, 4, 9, 16, 25]" in out
    assert out.count("Process ID: ") == 4  # printed by the pool processes themselves
    assert out.count(f"on {LOCAL_NODE}") == 4


def test_demo_json_stays_parseable_while_local_pool_processes_print() -> None:
    done = taskpool(
        "demo", "--json", "--mode", "local", broker_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "local pool" and report["squares"] == [1, 4, 9, 16, 25]
    assert done.stderr.count("Process ID: ") == 4


def test_demo_uses_the_worker_when_one_answers(
    session_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    done = taskpool("demo", "--json", broker_url=redis_server.url())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "broker" and session_worker.node in report["detail"]
    assert report["square_of_10"] == 100 and report["squares"] == [1, 4, 9, 16, 25]
    assert {row["hostname"] for row in report["printed"]} == {session_worker.node}
    assert {row["pid"] for row in report["printed"]} <= session_worker.pool_pids()


def test_demo_with_redis_but_no_worker_says_so_and_runs_locally(redis_factory) -> None:  # type: ignore[no-untyped-def]
    lonely = redis_factory()
    done = taskpool("demo", "--json", broker_url=lonely.url())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "local pool" and "no worker answered" in report["detail"]


def test_mode_celery_without_a_broker_exits_3_with_a_masked_url() -> None:
    done = taskpool(
        "demo", "--mode", "celery", broker_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    )
    assert done.returncode == 3
    assert "unreachable" in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_a_bad_setting_exits_2_naming_the_variable() -> None:
    done = taskpool("demo", broker_url="redis://127.0.0.1:1/0", TASKPOOL_CONCURRENCY="-4")
    assert done.returncode == 2
    assert "TASKPOOL_CONCURRENCY='-4'" in done.stderr and "greater than 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_explains_the_command_with_an_example_and_the_exit_codes() -> None:
    done = taskpool("demo", "--help", broker_url="redis://127.0.0.1:1/0")
    assert done.returncode == 0
    assert "Example:" in done.stdout and "taskpool demo" in done.stdout
    assert "3  broker unavailable in mode celery" in done.stdout
