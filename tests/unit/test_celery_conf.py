"""The Celery configuration derived from settings, and an app that reads nothing at import."""

from __future__ import annotations

import subprocess
import sys

from taskpool import Settings, celery_config, create_app
from tests.support.paths import REPO_ROOT


def test_only_json_is_ever_accepted() -> None:
    conf = celery_config(Settings())
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"


def test_late_acks_requeue_the_task_of_a_killed_child() -> None:
    conf = celery_config(Settings())
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    # ...and a redelivered message whose task had already succeeded is not run twice.
    assert conf["worker_deduplicate_successful_tasks"] is True


def test_settings_flow_into_celery_names() -> None:
    settings = Settings(
        broker_url="redis://127.0.0.1:7001/1",
        result_backend="redis://127.0.0.1:7002/2",
        concurrency=3,
        task_time_limit=100,
        task_soft_time_limit=90,
        visibility_timeout=200,
        result_expires=50,
        broker_timeout=0.3,
        socket_timeout=4,
        prefetch_multiplier=2,
        restore_interval=3,
        max_memory_per_child_mb=100,
        max_tasks_per_child=50,
    )
    conf = celery_config(settings)
    assert conf["broker_url"] == "redis://127.0.0.1:7001/1"
    assert conf["result_backend"] == "redis://127.0.0.1:7002/2"
    assert conf["worker_concurrency"] == 3
    assert conf["worker_pool"] == "prefork"
    assert (conf["task_time_limit"], conf["task_soft_time_limit"]) == (100, 90)
    assert conf["broker_transport_options"]["visibility_timeout"] == 200
    assert conf["broker_transport_options"]["socket_timeout"] == 4
    assert conf["broker_connection_timeout"] == 0.3
    assert conf["redis_socket_timeout"] == 4
    assert conf["result_expires"] == 50
    assert conf["worker_prefetch_multiplier"] == 2
    assert conf["broker_transport_options"]["unacked_restore_interval"] == 3
    assert conf["broker_transport_options"]["unacked_restore_throttle"] == 1
    assert conf["worker_max_memory_per_child"] == 100 * 1024  # Celery counts KiB
    assert conf["worker_max_tasks_per_child"] == 50
    assert conf["result_backend_transport_options"]["retry_policy"]["max_retries"] <= 3


def test_an_app_is_configured_from_its_settings_on_first_use() -> None:
    app = create_app(
        "tasks",
        settings=Settings(
            broker_url="redis://127.0.0.1:7003/0", result_backend="redis://127.0.0.1:7003/0"
        ),
    )
    assert not app.configured
    assert app.conf.broker_url == "redis://127.0.0.1:7003/0"
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True


def test_importing_tasks_reads_no_settings_and_starts_nothing() -> None:
    script = (
        "import os, tasks, taskpool, taskpool.settings\n"
        "print(tasks.app.configured, taskpool.settings.current_settings.cache_info().currsize,"
        " open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read().split())\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "TASKPOOL_DISPATCH": "not-a-mode",
    }  # a bad value is not read yet
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "0", "[]"]


def test_sentinels_take_the_reliable_sentinel_transport_with_their_options() -> None:
    sentinels = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"
    conf = celery_config(
        Settings(
            broker_url=sentinels, result_backend=sentinels, sentinel_master="jobs",
            sentinel_password="s3ntinel", redis_wait_replicas=1,
        )
    )  # fmt: skip
    assert conf["broker_transport"] == "taskpool.transport:SentinelTransport"
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "jobs"
        # The sentinels' clients: the password, bounded waits, and no retries of their own.
        assert options["sentinel_kwargs"]["password"] == "s3ntinel"
        assert options["sentinel_kwargs"]["retry"] is None
        assert options["sentinel_kwargs"]["socket_timeout"] == Settings().socket_timeout
    assert conf["broker_transport_options"]["wait_replicas"] == 1
    # No TLS unless asked for: a sentinel:// URL has no TLS form of its own.
    assert conf["broker_use_ssl"] is None and conf["redis_backend_use_ssl"] is None
    assert "ssl" not in conf["broker_transport_options"]["sentinel_kwargs"]
    plain = celery_config(Settings())
    assert "master_name" not in plain["broker_transport_options"]
    assert "master_name" not in plain["result_backend_transport_options"]


def test_the_transport_gets_the_delivery_limit_and_the_inflated_size_bound() -> None:
    conf = celery_config(Settings.from_env({"TASKPOOL_MAX_DELIVERIES": "5"}))
    options = conf["broker_transport_options"]
    assert options["max_deliveries"] == 5
    assert options["max_inflated"] == Settings().max_message_bytes
    assert celery_config(Settings())["broker_transport_options"]["max_deliveries"] == 20


def test_the_worker_pool_is_prefork_unless_the_fetching_pool_is_chosen() -> None:
    assert celery_config(Settings.from_env({}))["worker_pool"] == "prefork"
    chosen = Settings.from_env({"TASKPOOL_WORKER_POOL": "Fetching"})
    assert celery_config(chosen)["worker_pool"] == "taskpool.fetching:TaskPool"
