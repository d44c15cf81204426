"""The taskpool command as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskpool.examples import LOCAL_NODE
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from tests.support.apps import client_app
from tests.support.paths import REPO_ROOT


def taskpool(*args: str, broker_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(broker_url, **env)
    command = [sys.executable, "-m", "taskpool", *args]
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


def test_demo_with_redis_but_no_worker_says_so_and_runs_locally(
    redis_factory: Callable[..., RedisServer],
) -> None:
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


def test_square_prints_each_result_and_json_parses(
    session_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    done = taskpool("square", "3", "4", "5", broker_url=redis_server.url())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["square(3) = 9", "square(4) = 16", "square(5) = 25"]
    as_json = taskpool("square", "7", "--json", broker_url=redis_server.url())
    assert json.loads(as_json.stdout) == {"results": [49], "backend": "broker"}


def test_square_of_a_non_number_is_a_usage_error() -> None:
    done = taskpool("square", "3", "x", broker_url="redis://127.0.0.1:1/0")
    assert done.returncode == 2 and "'x' is not a valid integer" in done.stderr


def test_print_numbers_shows_who_ran_each(
    session_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    done = taskpool("print-numbers", "4", "--json", broker_url=redis_server.url())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["number"] for r in report["results"]] == [0, 1, 2, 3]
    assert {r["hostname"] for r in report["results"]} == {session_worker.node}


def test_map_writes_results_in_order_and_a_summary(
    tmp_path,
    session_worker: CeleryWorker,
    redis_server: RedisServer,
) -> None:
    out = tmp_path / "squares.jsonl"
    done = taskpool(
        "map",
        "square",
        "--range",
        "20000",
        "--output",
        str(out),
        "--json",
        broker_url=redis_server.url(),
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        i * i for i in range(20000)
    ]
    summary = json.loads(done.stdout)
    assert summary["count"] == 20000 and summary["failed"] == 0 and summary["backend"] == "broker"
    assert summary["inputs_per_second"] > 0 and len(summary["checksum"]) == 16


def test_map_checksum_is_the_sha256_of_every_line_it_writes_across_chunks() -> None:
    """The results leave in chunks; the lines and their checksum are the same as one by one."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    done = taskpool(
        "map", "square", "--range", "5000", "--chunksize", "64", "--mode", "local",
        broker_url=closed,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(f"{json.dumps(i * i)}\n" for i in range(5000))
    checksum = hashlib.sha256(done.stdout.encode()).hexdigest()[:16]
    assert f"count=5000 failed=0 checksum={checksum} " in done.stderr
    summary = json.loads(
        taskpool("map", "square", "--range", "5000", "--json", broker_url=closed).stdout
    )
    assert summary["checksum"] == checksum and summary["backend"] == "local pool"


def test_map_reads_json_lines_from_stdin_and_reports_a_failure_by_index() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    feed = '1\n2\n"three"\n4\n'
    env = worker_env(closed)
    done = subprocess.run(
        [sys.executable, "-m", "taskpool", "map", "square", "--input", "-"],
        cwd=REPO_ROOT, env=env, input=feed, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "input 2 ('three') failed: TypeError" in done.stderr
    kept = subprocess.run(
        [sys.executable, "-m", "taskpool", "map", "square", "--input", "-", "--return-exceptions"],
        cwd=REPO_ROOT, env=env, input=feed, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert kept.returncode == 1
    lines = [json.loads(line) for line in kept.stdout.splitlines()]
    assert lines[:2] == [1, 4] and lines[3] == 16
    assert lines[2]["error"]["type"] == "TypeError"
    assert "backend=local pool" in kept.stderr


def test_map_usage_errors_exit_2() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert taskpool("map", "cube", "--range", "3", broker_url=closed).returncode == 2
    assert taskpool("map", "square", broker_url=closed).returncode == 2
    both = taskpool("map", "square", "--range", "3", "--input", "-", broker_url=closed)
    assert both.returncode == 2 and "exactly one of" in both.stderr


def test_status_lists_workers_with_pool_size_and_queue_depth(
    session_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    done = taskpool("status", "--json", broker_url=redis_server.url())
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["broker"] == {"url": redis_server.url(), "reachable": True}
    assert {"node": session_worker.node, "pool": 4} in report["workers"]
    assert report["queue"]["depth"] == 0
    alive = report["liveness"]
    assert alive["consumers"] >= 1 and alive["held"] == 0 and alive["late_acks"] == 0


def test_status_of_an_unreachable_broker_exits_3_with_the_password_masked() -> None:
    done = taskpool("status", broker_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert done.returncode == 3
    assert "unreachable" in done.stdout and "s3cret" not in done.stdout + done.stderr


def test_worker_json_shows_the_celery_command_it_runs() -> None:
    done = taskpool("worker", "--json", "--", "-n", "w9@%h", broker_url="redis://127.0.0.1:1/0")
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)["argv"]
    assert argv[1:] == [
        "-m", "celery", "-A", "taskpool.demo", "worker", "-P", "prefork", "-n", "w9@%h",
    ]  # fmt: skip
    named = taskpool(
        "-A", "tasks", "worker", "--json", broker_url="redis://127.0.0.1:1/0", TASKPOOL_APP="x"
    )
    assert json.loads(named.stdout)["argv"][3:5] == ["-A", "tasks"]
    from_env = taskpool(
        "worker", "--json", broker_url="redis://127.0.0.1:1/0", TASKPOOL_APP="tasks"
    )
    assert json.loads(from_env.stdout)["argv"][3:5] == ["-A", "tasks"]
    refused = taskpool("worker", "--mode", "local", broker_url="redis://127.0.0.1:1/0")
    assert refused.returncode == 2


@pytest.mark.parametrize("name", ["demo", "square", "print-numbers", "map", "status", "worker"])
def test_every_command_explains_itself_with_an_example_and_takes_mode_and_json(name: str) -> None:
    done = taskpool(name, "--help", broker_url="redis://127.0.0.1:1/0")
    assert done.returncode == 0
    assert "Example" in done.stdout and "--mode" in done.stdout and "--json" in done.stdout
    assert "3  broker unavailable" in done.stdout


def test_map_with_redis_but_no_worker_runs_locally_instead_of_waiting(
    redis_factory: Callable[..., RedisServer],
) -> None:
    lonely = redis_factory()
    done = taskpool("map", "square", "--range", "100", "--json", broker_url=lonely.url())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["backend"] == "local pool"
    strict = taskpool("map", "square", "--range", "3", "--mode", "celery", broker_url=lonely.url())
    assert strict.returncode == 3 and "no worker answered" in strict.stderr


SECRET = "Zq7-s3cret"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:{secret}@127.0.0.1:{port}/0",
        "redis://user:{secret}@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password={secret}",
        "redis://:p@ss/{secret}@127.0.0.1:{port}/0",  # / and @ in the password
        "redis://:pa;{secret}@127.0.0.1:{port}/0",  # a raw ; which kombu would split at
        "sentinel://:{secret}@127.0.0.1:{port};sentinel://:{secret}@127.0.0.1:{port}",
    ],
)
def test_no_output_holds_the_password_whatever_form_the_url_gives_it(url: str) -> None:
    """Every command's output, both streams: settings errors, fallback warnings,
    BrokerUnavailable, status (text and JSON), the demo."""
    broker_url = url.format(secret=SECRET, port=free_port())
    runs = [
        ("status",),
        ("status", "--json"),
        ("demo", "--mode", "auto"),
        ("square", "3", "--mode", "celery"),
        ("square", "3", "--mode", "auto"),
        ("quarantine", "list"),
    ]
    outputs = []
    for args in runs:
        done = taskpool(*args, broker_url=broker_url, TASKPOOL_SENTINEL_MASTER="mymaster")
        output = done.stdout + done.stderr
        assert SECRET not in output, f"{args} printed the password:\n{output[-1500:]}"
        outputs.append(output)
    # The URL was shown (masked), so the checks above mean something.
    assert any("127.0.0.1:" in output and "**" in output for output in outputs)


def test_the_map_command_falls_back_mid_map_in_mode_auto_as_the_api_does(
    tmp_path: Path,
    redis_factory: Callable[..., RedisServer],
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    redis = redis_factory()
    worker_factory(redis.url(), node_name("cli-lost"))
    sizes = [1_500_000 + n for n in range(40)]
    inputs = tmp_path / "sizes.jsonl"
    inputs.write_text("".join(f"{n}\n" for n in sizes))
    command = [sys.executable, "-m", "taskpool", "-A", "tasks", "map", "sum_of_squares",
               "--input", str(inputs), "--chunksize", "2", "--no-progress"]  # fmt: skip
    with subprocess.Popen(
        command, cwd=REPO_ROOT, env=worker_env(redis.url()), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as mapping:  # fmt: skip
        assert mapping.stdout is not None and mapping.stderr is not None
        try:
            first = mapping.stdout.readline()  # the broker is serving this map
            redis.kill()
            # The same buffered file: communicate() would skip what readline() buffered. The
            # test's timeout bounds the reads.
            rest, errors = mapping.stdout.read(), mapping.stderr.read()
            mapping.wait(10)
        finally:
            if mapping.poll() is None:
                mapping.kill()
    assert mapping.returncode == 0, errors
    assert [int(line) for line in [first, *rest.splitlines()]] == [
        sum(i * i for i in range(n)) for n in sizes
    ]
    assert "backend=broker, then local pool" in errors


def test_status_shows_every_queue_with_waiting_reserved_running_and_consumers(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory()
    worker_factory(
        redis.url(), node_name("queues"), concurrency=1,
        extra=("-Q", "celery,cpu", "-I", "taskpool.testing.probe_tasks"),
    )  # fmt: skip
    app = client_app(redis.url(), dispatch="celery")
    for _ in range(8):  # one runs, prefetch 4 x 1 holds three more, four wait
        app.send_task("probe.sleep", (3,), queue="cpu")
    report: dict[str, Any] = {}

    def one_running() -> bool:
        done = taskpool("status", "--json", broker_url=redis.url())
        report.update(json.loads(done.stdout))
        queues = {q["name"]: q for q in report["queues"]}
        return "cpu" in queues and queues["cpu"]["running"] == 1

    wait_for(one_running, 30, "status to show the running task")
    queues = {q["name"]: q for q in report["queues"]}
    assert queues["cpu"] == {
        "name": "cpu", "waiting": 4, "reserved": 3, "running": 1, "consumers": 1
    }  # fmt: skip
    assert queues["celery"] == {
        "name": "celery", "waiting": 0, "reserved": 0, "running": 0, "consumers": 1
    }  # fmt: skip
    shown = taskpool("status", broker_url=redis.url()).stdout  # the app checked is named
    assert shown.startswith(f"app 'taskpool.demo', broker {redis.url()}: reachable")
    line = r"queue 'cpu': \d waiting, \d reserved and 1 running on workers, 1 consumer\(s\) alive"
    assert re.search(line, shown), shown


def test_failed_tasks_are_listed_sent_again_and_dropped(
    redis_factory: Callable[..., RedisServer], worker_factory: Callable[..., CeleryWorker]
) -> None:
    redis = redis_factory()
    worker_factory(redis.url(), node_name("failing"))
    app = client_app(redis.url(), dispatch="celery")
    result = app.send_task("tasks.sum_of_squares", ("ten",))
    with pytest.raises(TypeError):
        result.get(timeout=30)

    def listed() -> list[dict[str, Any]]:
        done = taskpool("failed", "list", "--json", broker_url=redis.url())
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout)["failed"])

    wait_for(lambda: listed(), 10, "the failure to be recorded")
    [entry] = listed()
    assert (entry["id"], entry["task"], entry["args"]) == (
        result.id,
        "tasks.sum_of_squares",
        ["ten"],
    )
    assert entry["queue"] == "celery" and entry["error"].startswith("TypeError")
    assert (
        "tasks.sum_of_squares('ten',)" in taskpool("failed", "list", broker_url=redis.url()).stdout
    )

    sent = taskpool("failed", "retry", result.id, broker_url=redis.url())
    assert sent.returncode == 0 and "sent again: 1 task(s)" in sent.stdout, sent.stderr
    # It ran again on the worker and failed again: a new entry, under the new call's id.
    wait_for(lambda: [e["id"] for e in listed()] not in ([], [result.id]), 30, "the rerun")
    [again] = listed()
    assert again["args"] == ["ten"] and again["id"] != result.id
    assert taskpool("failed", "retry", "nope", broker_url=redis.url()).returncode == 2

    dropped = taskpool("failed", "drop", "--all", broker_url=redis.url())
    assert "dropped: 1 task(s)" in dropped.stdout
    assert listed() == []
