"""The compose file, proven without a Docker engine: its own commands, run here against Redis."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from kombu.exceptions import OperationalError

import taskpool
from taskpool import ConfigError, LocalResult, Settings, create_app, mask_url
from taskpool.examples import register
from taskpool.health import BrokerHealth
from taskpool.testing.celery_worker import CeleryWorker, node_name
from taskpool.testing.ci import skip_or_fail
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tests.support import compose
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT

PASSWORD = "compose-" + uuid.uuid4().hex
REDIS_CONF = REPO_ROOT / "config" / "redis.conf"


def compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_the_compose_file_is_valid() -> None:
    cli = compose_cli()
    if cli is None:
        skip_or_fail("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, "REDIS_PASSWORD": PASSWORD, "FLOWER_BASIC_AUTH": "admin:pw"}
    env["SENTINEL_PASSWORD"] = "sentinel-" + PASSWORD
    profiles: list[list[str]] = [[], ["--profile", "monitoring"], ["--profile", "ha"]]
    for profile in profiles:
        done = subprocess.run(
            [*cli, "-f", str(compose.COMPOSE_FILE), *profile, "config", "--quiet"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_the_compose_file_is_production_shaped() -> None:
    services = compose.load()["services"]
    redis, worker, flower = services["redis"], services["worker"], services["flower"]
    assert all(
        port.startswith("127.0.0.1:") for s in services.values() for port in s.get("ports", [])
    )
    assert "--requirepass" in " ".join(redis["command"])
    assert "./config/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert re.search(r"^appendonly yes$", REDIS_CONF.read_text(), flags=re.MULTILINE)
    assert "healthcheck" in redis and "healthcheck" in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["restart"] == "on-failure" and worker["stop_grace_period"] == "330s"
    assert flower["profiles"] == ["monitoring"] and "FLOWER_BASIC_AUTH" in flower["environment"]
    assert PASSWORD not in compose.COMPOSE_FILE.read_text()
    assert "REDIS_PASSWORD=" in (REPO_ROOT / ".env.example").read_text()
    assert worker["build"] == {"context": ".", "dockerfile": "workers/Dockerfile"}
    dockerfile = (REPO_ROOT / "workers" / "Dockerfile").read_text()
    assert "USER taskpool" in dockerfile and "-slim" in dockerfile


@pytest.fixture
def locked_redis(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private Redis that, like the compose one, refuses clients without the password."""
    return redis_factory(password=PASSWORD)


@pytest.fixture
def compose_workers(
    tmp_path: Path, locked_redis: RedisServer
) -> Iterator[Callable[..., CeleryWorker]]:
    """Start the compose file's worker service, as compose would, once per node name."""
    started: list[CeleryWorker] = []

    def start(
        name: str, password: str = PASSWORD, extra: tuple[str, ...] = (), **env: str
    ) -> CeleryWorker:
        command, service_env = compose.service(
            "worker", {"REDIS_PASSWORD": password}, {"redis:6379": f"127.0.0.1:{locked_redis.port}"}
        )
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))
        }
        full_env.update(service_env, **env)
        worker = CeleryWorker(
            full_env, node_name(name), tmp_path / f"{name}.log", command=command, extra=extra
        )
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_the_compose_worker_runs_tasks_against_a_password_protected_redis(
    locked_redis: RedisServer, compose_workers: Callable[..., CeleryWorker]
) -> None:
    worker = compose_workers("compose1")
    app = client_app(locked_redis.url(), dispatch="celery")
    worker.wait_ready(app)
    assert app.tasks["tasks.square"].delay(12).get(timeout=10) == 144
    assert app.tasks["tasks.print_number"].delay(5).get(timeout=10)["hostname"] == worker.node


def test_two_scaled_workers_share_one_queue(
    locked_redis: RedisServer, compose_workers: Callable[..., CeleryWorker]
) -> None:
    first, second = compose_workers("scaled1"), compose_workers("scaled2")
    app = client_app(locked_redis.url(), dispatch="celery")
    first.wait_ready(app)
    second.wait_ready(app)
    pending = [app.tasks["tasks.print_number"].delay(n) for n in range(200)]
    reports = [result.get(timeout=60) for result in pending]
    assert sorted(r["number"] for r in reports) == list(range(200))
    assert {r["hostname"] for r in reports} == {first.node, second.node}
    env = {**first.env}
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout", "5"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ping.returncode == 0, ping.stderr
    assert first.node in ping.stdout and second.node in ping.stdout
    assert PASSWORD not in ping.stdout + ping.stderr


def http_text(url: str, auth: str) -> str:
    request = urllib.request.Request(
        url, headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback only
        return str(response.read().decode())


def http_json(url: str, auth: str) -> Any:
    return json.loads(http_text(url, auth))


def test_flower_sees_the_workers_and_the_task_results(
    tmp_path: Path, locked_redis: RedisServer, compose_workers: Callable[..., CeleryWorker]
) -> None:
    worker = compose_workers("flowered")
    auth = "admin:" + uuid.uuid4().hex
    command, env = compose.service(
        "flower",
        {"REDIS_PASSWORD": PASSWORD, "FLOWER_BASIC_AUTH": auth},
        {"redis:6379": f"127.0.0.1:{locked_redis.port}"},
    )
    port = free_port()
    command = [
        {"--address=0.0.0.0": "--address=127.0.0.1", "--port=5555": f"--port={port}"}.get(
            part, part
        )
        for part in command
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))}
    full_env.update(env)
    with (tmp_path / "flower.log").open("wb") as log:
        flower = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        app = client_app(locked_redis.url(), dispatch="celery")
        worker.wait_ready(app)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/api/workers", auth), 30, "Flower's HTTP API")
        results = [app.tasks["tasks.square"].delay(n) for n in range(5)]
        assert [r.get(timeout=10) for r in results] == [0, 1, 4, 9, 16]

        def tasks_seen() -> bool:
            tasks = http_json(f"{base}/api/tasks", auth)
            return all(tasks.get(r.id, {}).get("state") == "SUCCESS" for r in results)

        wait_for(tasks_seen, 30, "Flower to list the five tasks as succeeded")
        tasks = http_json(f"{base}/api/tasks", auth)
        assert tasks[results[3].id]["result"] == "9"
        assert worker.node in http_json(f"{base}/api/workers?refresh=1", auth)
        # The broker page and queue lengths: Flower picks them by the broker URI's scheme.
        lengths = http_json(f"{base}/api/queues/length", auth)
        assert [q["name"] for q in lengths["active_queues"]] == ["celery"], lengths
        assert lengths["active_queues"][0]["messages"] == 0
        page = http_text(f"{base}/broker", auth)
        assert "not supported" not in page and "celery" in page
        assert PASSWORD not in page
        with pytest.raises(urllib.error.HTTPError) as refused:
            http_json(f"{base}/api/workers", "admin:wrong")
        assert refused.value.code == 401
        refused.value.close()
    finally:
        flower.send_signal(signal.SIGTERM)
        try:
            flower.wait(15)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait(15)
    assert PASSWORD not in (tmp_path / "flower.log").read_text(errors="replace")


def _answers(url: str, auth: str) -> bool:
    try:
        http_json(url, auth)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True


def test_a_wrong_password_stops_the_worker_within_seconds_without_printing_it(
    locked_redis: RedisServer, compose_workers: Callable[..., CeleryWorker]
) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    started = time.monotonic()
    worker = compose_workers("locked-out", password=wrong)
    assert worker.wait_exit(timeout=10) == 78
    assert time.monotonic() - started < 10
    log = worker.log_tail(100_000)
    assert "authentication failed" in log
    assert wrong not in log and PASSWORD not in log


def test_a_wrong_password_in_mode_celery_raises_a_clear_error_fast(
    locked_redis: RedisServer,
) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    url = f"redis://:{wrong}@127.0.0.1:{locked_redis.port}/0"
    app = client_app(url, dispatch="celery")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:  # not "start the broker": it is up, and refuses
        app.tasks["tasks.square"].delay(1)
    assert time.monotonic() - started < 3
    assert "rejected the credentials" in str(caught.value)
    assert wrong not in str(caught.value)


def test_routes_send_tasks_to_the_queue_a_worker_consumes(
    locked_redis: RedisServer, compose_workers: Callable[..., CeleryWorker]
) -> None:
    routes = {"TASKPOOL_ROUTES": "tasks.print_number=cpu"}
    cpu = compose_workers("cpu-only", extra=("-Q", "cpu"), **routes)
    default = compose_workers("default-only", extra=("-Q", "celery"), **routes)
    url = locked_redis.url()
    app = create_app(
        "tasks",
        settings=Settings.from_env(
            {"TASKPOOL_BROKER_URL": url, "TASKPOOL_DISPATCH": "celery", **routes}
        ),
    )
    register(app)
    cpu.wait_ready(app)
    default.wait_ready(app)
    assert {
        app.tasks["tasks.print_number"].delay(n).get(timeout=10)["hostname"] for n in range(6)
    } == {cpu.node}
    assert app.tasks["tasks.square"].delay(7).get(timeout=10) == 49
    # A bulk map's chunks follow the mapped task's route too.
    reports = taskpool.map(app.tasks["tasks.print_number"], range(10), chunksize=3)
    assert {r["hostname"] for r in reports} == {cpu.node}
    assert "Task tasks.square[" not in cpu.log_tail(200_000)
    assert "Task tasks.square[" in default.log_tail(200_000)


RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def test_rabbitmq_as_broker_with_redis_for_results(
    tmp_path: Path, redis_server: RedisServer, worker_factory: Callable[..., Any]
) -> None:
    if not rabbitmq_answers():
        skip_or_fail("no RabbitMQ answers on 127.0.0.1:5672")
    queue = (
        "taskpool-test-" + uuid.uuid4().hex[:12]
    )  # our own queue: other users of the broker never see it
    routes = f"tasks.square={queue},tasks.print_number={queue}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))} | {
        "TASKPOOL_BROKER_URL": RABBITMQ_URL,
        "TASKPOOL_RESULT_BACKEND": redis_server.url(),
        "TASKPOOL_ROUTES": routes,
    }
    app = create_app("tasks", settings=Settings.from_env(env | {"TASKPOOL_DISPATCH": "celery"}))
    register(app)
    assert BrokerHealth(app, timeout=2, recheck=0).is_up()
    worker = CeleryWorker(env, node_name("rabbit"), tmp_path / "rabbit.log", extra=("-Q", queue))
    try:
        worker.start().wait_ready(app)
        assert app.tasks["tasks.square"].delay(11).get(timeout=20) == 121
        assert app.tasks["tasks.print_number"].delay(2).get(timeout=20)["hostname"] == worker.node
    finally:
        worker.stop()
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
    closed = create_app(
        "tasks",
        settings=Settings(
            broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
            result_backend=redis_server.url(),
        ),
    )
    register(closed)
    closed.finalize()
    result = closed.tasks["tasks.square"].delay(3)
    assert isinstance(result, LocalResult) and result.get(timeout=5) == 9
    assert "guest:**@" in mask_url(RABBITMQ_URL)


def test_the_compose_redis_config_is_accepted_by_a_real_redis_server(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory(config_file=REDIS_CONF)
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


def test_the_compose_redis_caps_message_size_behind_the_callers_limit() -> None:
    cap = re.search(r"^proto-max-bulk-len (\d+)mb$", REDIS_CONF.read_text(), flags=re.MULTILINE)
    assert cap is not None, "the compose Redis must cap bulk length"
    # A message at the callers' limit is base64-encoded inside its envelope: 4/3 plus headers.
    assert int(cap.group(1)) * 1024 * 1024 > Settings().max_message_bytes * 4 / 3 + 65536


def test_a_message_over_redis_bulk_cap_fails_the_publish_and_nothing_is_queued(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """The second guard, for clients that skip taskpool's own check (plain send_task)."""
    redis = redis_factory(extra=("--proto-max-bulk-len", "1mb"))
    app = client_app(redis.url(), dispatch="celery")
    started = time.monotonic()
    # Redis closes the connection on the oversized bulk; kombu reports the broken write.
    with pytest.raises(OperationalError):
        app.send_task("tasks.square", args=("x" * 2_000_000,))
    assert time.monotonic() - started < 10
    client = redis_py.Redis(port=redis.port)
    assert client.llen("celery") == 0
    client.close()
    assert app.send_task("tasks.square", args=(3,)).id  # a normal message still goes through


def test_the_password_never_shows_in_inspect_conf_report_status_or_logs(
    locked_redis: RedisServer, compose_workers: Callable[..., CeleryWorker]
) -> None:
    worker = compose_workers("discreet")
    worker.wait_ready(client_app(locked_redis.url(), dispatch="celery"))
    _, service_env = compose.service(
        "worker", {"REDIS_PASSWORD": PASSWORD}, {"redis:6379": f"127.0.0.1:{locked_redis.port}"}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))}
    env.update(service_env)
    celery = [sys.executable, "-m", "celery", "-A", "tasks"]
    commands = {
        "inspect conf": [*celery, "inspect", "conf", "-d", worker.node, "--timeout", "5"],
        "report": [*celery, "report"],
        "status": [sys.executable, "-m", "taskpool", "-A", "tasks", "status"],
    }
    outputs = {}
    for name, command in commands.items():
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        outputs[name] = done.stdout + done.stderr
        assert done.returncode == 0, f"{name} failed:\n{outputs[name][-2000:]}"
        assert PASSWORD not in outputs[name], f"{name} printed the password"
    # Each did show the connection settings, masked: the check above is not vacuous.
    assert "broker_url" in outputs["inspect conf"] and "broker_url" in outputs["report"]
    assert f"127.0.0.1:{locked_redis.port}" in outputs["status"]
    assert PASSWORD not in worker.log_tail(1_000_000)


def test_the_ha_profile_is_a_primary_a_replica_three_sentinels_and_waiting_workers() -> None:
    services = compose.load()["services"]
    ha = {name for name, spec in services.items() if spec.get("profiles") == ["ha"]}
    assert ha == {
        "redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "worker-ha",
    }  # fmt: skip
    assert "--replicaof redis-primary 6379" in " ".join(services["redis-replica"]["command"])
    sentinel = " ".join(services["sentinel-1"]["command"])
    assert "sentinel monitor taskpool redis-primary 6379 2" in sentinel
    assert "requirepass $$SENTINEL_PASSWORD" in sentinel
    assert services["sentinel-2"] == services["sentinel-3"] == services["sentinel-1"]
    env = services["worker-ha"]["environment"]
    assert env["TASKPOOL_BROKER_URL"].count("sentinel://") == 3
    assert env["TASKPOOL_SENTINEL_MASTER"] == "taskpool"
    assert env["TASKPOOL_REDIS_WAIT_REPLICAS"] == "1"
    assert "SENTINEL_PASSWORD=" in (REPO_ROOT / ".env.example").read_text()
    assert not any(spec.get("ports") for name, spec in services.items() if name in ha)
