"""Hostile and broken messages, pushed straight into Redis as someone else's code could.

Each is read by a real prefork worker at the default settings. None may stop the worker or
restart its running tasks: each goes to the quarantine with its reason, once, and the queue and
the unacked records are left empty, so nothing comes round again (docs/RELIABILITY.md,
docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from celery import Celery
from celery.result import AsyncResult

from taskpool.errors import MessageQuarantined
from taskpool.liveness import PARKED
from taskpool.quarantine import Entry, Quarantine
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.held import held_count
from taskpool.testing.probe_tasks import DIED, STARTED
from taskpool.testing.redis_server import RedisServer, free_port
from taskpool.testing.waiting import wait_for
from taskpool.transport import PARK_ABOVE
from tests.support.apps import client_app
from tests.support.values import nested

PROBE = ("-I", "taskpool.testing.probe_tasks")
Message = dict[str, Any]


def captured(app: Celery, client: redis_py.Redis) -> Message:
    """A real task message for ``square(3)``, as Celery and kombu put it in Redis."""
    app.tasks["tasks.square"].apply_async((3,), queue="capture")
    raw = client.rpop("capture")
    assert isinstance(raw, bytes)
    message: Message = json.loads(raw)
    return message


def changed(message: Message, change: Callable[[Message], object]) -> bytes:
    copy = json.loads(json.dumps(message))
    change(copy)
    return json.dumps(copy).encode()


def with_body(message: Message, body: bytes, **headers: object) -> bytes:
    def change(m: Message) -> None:
        m["body"] = base64.b64encode(body).decode()
        m["headers"].update(headers)

    return changed(message, change)


def bomb(inflated: int) -> bytes:
    """zlib data (kombu's ``zlib`` compression) that inflates to ``inflated`` zero bytes."""
    packer = zlib.compressobj(9)
    chunk = bytes(1024 * 1024)
    parts = [packer.compress(chunk) for _ in range(inflated // len(chunk))]
    return b"".join(parts) + packer.flush()


#: Read instead of the message's own properties by a reader that does not decode it all.
DECOY = {"delivery_tag": "decoy", "delivery_info": {"exchange": "", "routing_key": "celery"}}
#: Bytes a hostile or broken client pushes, and what the quarantine entry's reason must say.
POISONS: dict[str, tuple[Callable[[Message], bytes], str]] = {
    "not-utf8": (lambda m: b"\xff\xfe{not json", "not UTF-8"),
    "not-json": (lambda m: b"{this is not json", "not JSON"),
    # Kept out of the pop script, in a list of its own (PARK_ABOVE), until it is read.
    "big-not-json": (lambda m: b"{" + b"x" * (2 * PARK_ABOVE), "not JSON"),
    "json-array": (lambda m: b"[1, 2, 3]", "JSON array, not an object"),
    "nested-2000-deep": (lambda m: b'{"a": ' * 2000 + b"1" + b"}" * 2000, "nested too deep"),
    "no-properties": (lambda m: changed(m, lambda c: c.pop("properties")), "no properties"),
    "no-delivery-tag": (
        lambda m: changed(m, lambda c: c["properties"].pop("delivery_tag")),
        "no delivery_tag",
    ),
    "body-not-base64": (
        lambda m: changed(m, lambda c: c.update(body="@@ not base64 @@")),
        "not base64",
    ),
    "body-not-args-kwargs-embed": (
        lambda m: with_body(m, b'{"x": 1}'),
        "not [args, kwargs, embed]",
    ),
    "timelimit-not-numbers": (
        lambda m: changed(m, lambda c: c["headers"].update(timelimit=["x", "y"])),
        "timelimit",
    ),
    "decoy-properties-after-its-own": (
        lambda m: changed(m, lambda c: c.update(zz={"properties": DECOY})),
        "a second properties object",
    ),
    "args-nested-600-deep": (
        lambda m: with_body(m, json.dumps([[nested(600)], {}, {}]).encode()),
        "args nest deeper than 200 levels",
    ),
    "header-nested-600-deep": (
        lambda m: changed(m, lambda c: c["headers"].update(custom=nested(600))),
        "headers nest deeper than 200 levels",
    ),
    "zlib-bomb-512mb": (
        lambda m: with_body(m, bomb(512 * 1024 * 1024), compression="application/x-gzip"),
        "inflates past 16,777,216 bytes",
    ),
}


@pytest.fixture
def redis_url(redis_factory: Callable[..., RedisServer]) -> str:
    return redis_factory().url()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis_py.Redis]:
    connection = redis_py.Redis.from_url(redis_url)
    yield connection
    connection.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def assert_nothing_left(client: redis_py.Redis) -> None:
    """Nothing of the message is in the queue or the unacked records, to come round again."""
    assert client.llen("celery") == 0
    assert held_count(client) == 0
    assert not list(client.scan_iter(match=f"{PARKED}*"))  # nor where a big one was kept
    assert client.hlen("unacked_deliveries") == 0, client.hgetall("unacked_deliveries")


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_an_unreadable_message_is_quarantined_and_the_worker_goes_on(
    kind: str,
    redis_url: str,
    client: redis_py.Redis,
    worker_factory: Callable[..., CeleryWorker],
) -> None:
    worker = worker_factory(redis_url, node_name(f"poisoned-{kind}"))
    app = client_app(redis_url, dispatch="celery")
    build, reason = POISONS[kind]
    client.lpush("celery", build(captured(app, client)))

    quarantine = Quarantine(client)
    wait_for(lambda: quarantine.count() == 1, 20, f"the {kind} message in the quarantine")
    [entry] = quarantine.entries()
    assert reason in entry.reason, entry.reason
    assert entry.queue == "celery"
    assert_nothing_left(client)
    assert app.tasks["tasks.square"].delay(7).get(timeout=10) == 49  # the worker goes on
    assert worker.process is not None and worker.process.poll() is None
    if entry.task_id is not None:  # the caller's .get() says why, instead of waiting for ever
        with pytest.raises(MessageQuarantined, match="quarantine"):
            AsyncResult(entry.task_id, app=app).get(timeout=10)
    assert worker.log_tail(1_000_000).count("Quarantined a message") == 1
    assert peak_rss_mb(worker.pid) < 300  # the bomb was not inflated in the worker


def test_a_header_holding_a_properties_object_is_read_as_the_message_it_is(
    redis_url: str, client: redis_py.Redis, worker_factory: Callable[..., CeleryWorker]
) -> None:
    """Headers come before the properties: the pop script, which does not decode the message
    whole, must not take a header's object for the message's own."""
    worker_factory(redis_url, node_name("forwarded"))
    app = client_app(redis_url, dispatch="celery")
    message = captured(app, client)
    message["headers"]["forwarded"] = {"properties": {**DECOY, "colour": "red"}}
    client.lpush("celery", json.dumps(message).encode())
    assert AsyncResult(message["headers"]["id"], app=app).get(timeout=20) == 9
    assert Quarantine(client).count() == 0
    wait_for(lambda: held_count(client) == 0, 5, "the ack, which follows the result")
    assert_nothing_left(client)


def test_malformed_envelopes_do_not_restart_running_tasks(
    redis_url: str, client: redis_py.Redis, worker_factory: Callable[..., CeleryWorker]
) -> None:
    """kombu takes a message it cannot wrap for a lost connection; Celery then cancels and
    reruns every running task (worker_cancel_long_running_tasks_on_connection_loss)."""
    worker = worker_factory(redis_url, node_name("envelopes"), extra=PROBE)
    app = client_app(redis_url, dispatch="celery")
    template = captured(app, client)
    results = [app.send_task("probe.record", args=(n, 3.0)) for n in (1, 2)]
    wait_for(lambda: client.llen(STARTED) == 2, 20, "both tasks running")
    for _ in range(3):
        client.lpush("celery", changed(template, lambda c: c.pop("properties")))
        time.sleep(0.5)  # spread over the tasks' run
    assert [r.get(timeout=30) for r in results] == [1, 4]
    assert sorted(client.lrange(STARTED, 0, -1)) == [b"1", b"2"]  # each ran once
    assert Quarantine(client).count() == 3
    wait_for(lambda: held_count(client) == 0, 5, "the acks, which follow the results")
    assert_nothing_left(client)
    assert worker.process is not None and worker.process.poll() is None


def test_a_task_that_kills_its_process_is_quarantined_after_max_deliveries(
    redis_url: str, client: redis_py.Redis, worker_factory: Callable[..., CeleryWorker]
) -> None:
    """Late acks requeue a task whose process died; one that always kills it would loop."""
    worker = worker_factory(redis_url, node_name("crasher"), extra=PROBE)
    app = client_app(redis_url, dispatch="celery")
    result = app.send_task("probe.die", args=(5,))
    with pytest.raises(MessageQuarantined, match="delivered 20 times without an outcome"):
        result.get(timeout=150)
    assert client.llen(DIED) == 20  # TASKPOOL_MAX_DELIVERIES, the default
    [entry] = Quarantine(client).entries()
    assert (entry.task, entry.task_id, entry.deliveries) == ("probe.die", result.id, 20)
    assert_nothing_left(client)
    assert app.tasks["tasks.square"].delay(8).get(timeout=10) == 64
    assert worker.process is not None and worker.process.poll() is None


def taskpool_command(*args: str, broker_url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "taskpool", *args]
    return subprocess.run(
        command, env=worker_env(broker_url), capture_output=True, text=True, timeout=60
    )


def test_the_quarantine_command_lists_replays_and_drops_what_workers_moved_aside(
    redis_url: str, client: redis_py.Redis, worker_factory: Callable[..., CeleryWorker]
) -> None:
    app = client_app(redis_url, dispatch="celery")
    message = captured(app, client)
    worker_factory(redis_url, node_name("quarantine-cli"))
    quarantine = Quarantine(client)
    client.lpush("celery", b"[1, 2, 3]")
    wait_for(lambda: quarantine.count() == 1, 20, "the worker to quarantine the array")
    # A good message, quarantined as a worker does after TASKPOOL_MAX_DELIVERIES: replayable.
    good = Entry.of("celery", json.dumps(message).encode(), "delivered 20 times", 20)
    quarantine.add(good)

    listed = taskpool_command("quarantine", "list", "--json", broker_url=redis_url)
    assert listed.returncode == 0, listed.stderr
    shown = {entry["id"]: entry for entry in json.loads(listed.stdout)["quarantine"]}
    assert len(shown) == 2 and shown[good.id]["task_id"] == message["headers"]["id"]
    assert [e["reason"] for i, e in shown.items() if i != good.id] == [
        "the message is a JSON array, not an object"
    ]
    status = taskpool_command("status", "--json", broker_url=redis_url)
    assert json.loads(status.stdout)["quarantine"] == 2

    replayed = taskpool_command("quarantine", "replay", good.id, broker_url=redis_url)
    assert replayed.returncode == 0 and "replayed 1 message(s)" in replayed.stdout
    assert AsyncResult(message["headers"]["id"], app=app).get(timeout=10) == 9
    unknown = taskpool_command("quarantine", "replay", "no-such-id", broker_url=redis_url)
    assert unknown.returncode == 2 and "no such entry" in unknown.stderr
    dropped = taskpool_command("quarantine", "drop", "--all", broker_url=redis_url)
    assert dropped.returncode == 0 and "dropped 1 message(s)" in dropped.stdout
    assert quarantine.count() == 0
    wait_for(lambda: held_count(client) == 0, 5, "the ack, which follows the result")
    assert_nothing_left(client)
    closed = taskpool_command("quarantine", "list", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    assert closed.returncode == 3 and "unreachable" in closed.stderr  # exit 3: broker unavailable


def test_a_chunk_message_over_a_huge_range_fails_at_once_and_grows_no_pool_process(
    redis_url: str, worker_factory: Callable[..., CeleryWorker]
) -> None:
    """A 1 KB message that would have a pool process build 10**12 results."""
    worker = worker_factory(redis_url, node_name("chunked"))
    app = client_app(redis_url, dispatch="celery")
    hostile = {"range": [0, 10**12, 1]}
    result = app.send_task("taskpool.run_chunk", args=("tasks.square", hostile))
    with pytest.raises(ValueError, match="1,000,000,000,000 inputs, over the 1,000,000"):
        result.get(timeout=20)
    assert max(peak_rss_mb(pid) for pid in worker.pool_pids()) < 300
    assert app.tasks["tasks.square"].delay(5).get(timeout=10) == 25


#: Broadcasts any client of the Redis can PUBLISH to a worker's remote-control channel, each
#: of which stopped the worker ("Unrecoverable error"), and why each is dropped.
BROADCASTS = {
    "a-json-array": (b"[1, 2]", "is a JSON array"),
    "no-properties": (b'{"body": "x"}', "no properties object"),
    "a-bad-type-marker": (b'{"__type__": "bytes", "__value__": 5}', "kombu cannot read"),
    "a-decimal-marker": (b'{"__type__": "decimal", "__value__": "x"}', "kombu cannot read"),
}


def test_broadcasts_that_cannot_be_read_are_dropped_by_name_and_the_worker_goes_on(
    redis_url: str, client: redis_py.Redis, worker_factory: Callable[..., CeleryWorker]
) -> None:
    worker = worker_factory(redis_url, node_name("broadcast"))
    app = client_app(redis_url, dispatch="celery")
    channel = "/0.celery.pidbox"  # kombu's fanout channel for Celery's remote control
    for data, _ in BROADCASTS.values():
        assert client.publish(channel, data) == 1  # the worker receives it
    log = lambda: worker.log_tail(1_000_000)  # noqa: E731
    wait_for(lambda: log().count("Dropped a broadcast") == len(BROADCASTS), 20, "the drops")
    for _, reason in BROADCASTS.values():
        assert reason in log()
    assert worker.process is not None and worker.process.poll() is None
    assert [list(reply) for reply in app.control.ping(timeout=5)] == [[worker.node]]
    assert app.tasks["tasks.square"].delay(7).get(timeout=10) == 49
