"""A Redis failover under load, as the fault test and the failover benchmark run it.

One primary, one replica and three sentinels on loopback (``Cluster``), two prefork workers
reading through ``sentinel://`` URLs, and a client streaming ``probe.logged_square`` calls while
the primary is SIGKILLed (``run_failover``). Every process is stopped by its PID.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_py

from taskpool import LocalResult, Settings, sentinel
from taskpool.testing.apps import close_app, example_app
from taskpool.testing.celery_worker import CeleryWorker, node_name, worker_env
from taskpool.testing.held import held_text
from taskpool.testing.redis_server import RedisServer, free_port, sentinel_config
from taskpool.testing.waiting import wait_for

MASTER = "taskpool"  # as in the compose file's profile "ha"
PASSWORD = "redis-secret"
SENTINEL_PASSWORD = "sentinel-secret"
#: The client sends about this many calls a second, so failovers land mid-stream.
SEND_RATE = 1000
#: The workers run with the default settings: a message whose pop reply or whose consumer was
#: lost with the old primary goes back one liveness timeout after the failover.
REDELIVERY: dict[str, str] = {}


@dataclass
class Cluster:
    """A primary, a replica and three sentinels on loopback, every one stopped by PID."""

    folder: Path
    #: The ``redis-server`` binary each of them runs.
    binary: str
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[RedisServer] = field(default_factory=list)

    def start(self) -> Cluster:
        primary = self._redis("redis-0")
        self._wait_in_sync(self._redis("redis-1", replica_of=primary.port), "the replica in sync")
        for n in range(3):
            config = sentinel_config(
                self.folder / f"sentinel-{n}", MASTER, primary.port, primary_password=PASSWORD
            )
            server = RedisServer(
                self.binary, free_port(), self.folder / f"sentinel-{n}",
                password=SENTINEL_PASSWORD, config_file=config, extra=("--sentinel",),
            )  # fmt: skip
            self.sentinels.append(server.start())
        wait_for(lambda: len(self.topology()["replicas"]) == 1, 20, "the replica in sync")
        # Sentinels find each other through the primary (hello messages every 2 s); killed
        # before that, each would be alone, short of the quorum, and none would fail over.
        wait_for(self._sentinels_acquainted, 30, "the sentinels to know each other")
        return self

    def _sentinels_acquainted(self) -> bool:
        for server in self.sentinels:
            client = redis_py.Redis(port=server.port, password=SENTINEL_PASSWORD, socket_timeout=1)
            try:
                state: Any = client.sentinel_master(MASTER)
            finally:
                client.close()
            if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
        return True

    @property
    def url(self) -> str:
        return ";".join(
            f"sentinel://:{PASSWORD}@127.0.0.1:{server.port}/0" for server in self.sentinels
        )

    @property
    def options(self) -> dict[str, Any]:
        return {"master_name": MASTER, "sentinel_kwargs": {"password": SENTINEL_PASSWORD}}

    def topology(self) -> dict[str, Any]:
        return sentinel.topology(self.url, 1.0, self.options)

    def primary(self) -> RedisServer:
        port = int(self.topology()["primary"].rsplit(":", 1)[1])
        return next(s for s in self.servers if s.port == port and s.process is not None)

    def kill_primary(self) -> tuple[RedisServer, float]:
        """SIGKILL the primary; return it and how long until the sentinels promoted another."""
        victim = self.primary()
        killed_at = time.monotonic()
        victim.kill()
        victim.process = None

        def promoted() -> bool:
            try:
                return self.topology()["primary"] != f"127.0.0.1:{victim.port}"
            except redis_py.RedisError:  # no primary while the old one is only suspected
                return False

        wait_for(promoted, 30, "a replica promoted")
        return victim, time.monotonic() - killed_at

    def restart_as_replica(self, old: RedisServer) -> None:
        """The killed server comes back, as sentinels would make it: a replica of the new one."""
        self.servers.remove(old)
        primary = int(self.topology()["primary"].rsplit(":", 1)[1])
        replica = self._redis(old.workdir.name + "-again", replica_of=primary, port=old.port)
        self._wait_in_sync(replica, "the restarted replica in sync")
        wait_for(lambda: len(self.topology()["replicas"]) >= 1, 30, "a replica again")

    @staticmethod
    def _wait_in_sync(replica: RedisServer, what: str) -> None:
        """In sync, not only connected: promoted mid-sync, a replica would take over with part
        of the data, and a failover then loses what it lacks. Redis 7 starts a new replica's
        diskless sync only after ``repl-diskless-sync-delay`` (5 s)."""
        client = redis_py.Redis(port=replica.port, password=PASSWORD, socket_timeout=5)
        try:
            wait_for(
                lambda: client.info("replication")["master_link_status"] == "up"
                and not client.info("replication")["master_sync_in_progress"],
                60, what,
            )  # fmt: skip
        finally:
            client.close()

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            if server.process is not None:
                server.stop()

    def _redis(
        self, name: str, replica_of: int | None = None, port: int | None = None
    ) -> RedisServer:
        extra: tuple[str, ...] = ("--masterauth", PASSWORD)
        if replica_of is not None:
            extra += ("--replicaof", "127.0.0.1", str(replica_of))
        server = RedisServer(
            self.binary, port or free_port(), self.folder / name,
            password=PASSWORD, appendonly=True, extra=extra,
        )  # fmt: skip
        self.servers.append(server)
        return server.start()


def results_stored(cluster: Cluster, ids: list[str]) -> dict[str, Any]:
    """Results the current primary holds, by task id."""
    host, port = cluster.topology()["primary"].rsplit(":", 1)
    client = redis_py.Redis(host=host, port=int(port), password=PASSWORD, socket_timeout=5)
    found: dict[str, Any] = {}
    try:
        for start in range(0, len(ids), 1000):
            batch = ids[start : start + 1000]
            raws = client.mget([f"celery-task-meta-{i}" for i in batch])
            for task_id, raw in zip(batch, raws, strict=True):
                if raw is not None and json.loads(raw)["status"] == "SUCCESS":
                    found[task_id] = json.loads(raw)["result"]
    finally:
        client.close()
    return found


@dataclass
class FailoverRun:
    """What one run saw: each failover's promotion time, where the tasks ran, what was lost."""

    tasks: int
    #: Seconds from each SIGKILL to the sentinels naming another primary.
    promotions: list[float]
    #: Seconds from the last promotion to the first call that went to the broker again.
    back_on_broker_s: float
    #: Seconds from the last promotion until every result was stored (or the wait gave up).
    all_stored_s: float
    ran_locally: int
    ran_on_workers: int
    lost: list[int]
    wrong: list[int]
    duplicate_runs: int
    #: For each lost task (the first ten): is its message queued, or recorded unacked?
    where: str = ""

    def summary(self) -> str:
        return (
            f"{self.tasks} tasks, {len(self.promotions)} failover(s) promoted in "
            f"{[round(p, 2) for p in self.promotions]} s; calls back on the broker "
            f"{self.back_on_broker_s:.2f} s after the last promotion, every result stored "
            f"{self.all_stored_s:.2f} s after it; {self.ran_locally} ran "
            f"locally, {self.ran_on_workers} on workers; lost {len(self.lost)}, duplicate "
            f"runs {self.duplicate_runs}"
        )


def run_failover(
    cluster: Cluster, folder: Path, tasks: int, failovers: int, wait_replicas: int | None
) -> FailoverRun:
    """Stream ``tasks`` calls while ``failovers`` primaries are killed one after another."""
    env = {
        "TASKPOOL_SENTINEL_MASTER": MASTER,
        "TASKPOOL_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        **REDELIVERY,
    }
    if wait_replicas:
        env["TASKPOOL_REDIS_WAIT_REPLICAS"] = str(wait_replicas)
    settings = Settings.from_env({**env, "TASKPOOL_BROKER_URL": cluster.url})
    app = example_app(settings)
    from taskpool.testing import file_probe  # registers the task on the client's app too

    workers: list[CeleryWorker] = []
    try:
        for n in range(2):
            node = node_name(f"failover{n}")
            worker = CeleryWorker(
                worker_env(cluster.url, **env), node, folder / f"{node}.log",
                extra=("-I", "taskpool.testing.file_probe"),
            )  # fmt: skip
            workers.append(worker)
            worker.start().wait_ready(app)
        run = _stream(cluster, app, app.tasks[file_probe.logged_square.name], folder, tasks,
                      failovers)  # fmt: skip
        for worker in workers:
            assert worker.process is not None and worker.process.poll() is None, (
                f"worker {worker.node} died in the failover:\n{worker.log_tail()}"
            )
        return run
    finally:
        for worker in workers:
            worker.stop()
        close_app(app)


def _stream(
    cluster: Cluster, app: Any, task: Any, folder: Path, tasks: int, failovers: int
) -> FailoverRun:
    log = str(folder / "runs.log")
    results: list[Any] = []
    promotions: list[float] = []
    promoted_at: list[float] = []
    back_at: list[float] = []

    def fail_over_along() -> None:
        for round_ in range(failovers):
            due = tasks * (round_ + 0.3) / failovers
            wait_for(lambda: len(results) > due, 120, "tasks streaming")  # noqa: B023
            victim, promotion = cluster.kill_primary()
            promotions.append(promotion)
            promoted_at.append(time.monotonic())
            if round_ + 1 < failovers:
                cluster.restart_as_replica(victim)

    def send(n: int) -> Any:
        result = task.delay(n, log)
        if len(promoted_at) == failovers and not back_at and not isinstance(result, LocalResult):
            back_at.append(time.monotonic())
        return result

    killer = threading.Thread(target=fail_over_along, daemon=True)
    killer.start()
    started = time.monotonic()
    for n in range(tasks):
        results.append(send(n))
        if n % 50 == 49:
            time.sleep(max(0.0, started + (n + 1) / SEND_RATE - time.monotonic()))
    killer.join(300)
    assert len(promoted_at) == failovers, "a failover did not happen"
    # Past the stream's end, calls go on until one reaches the broker.
    extra = itertools.count(tasks)

    def back_on_broker() -> bool:
        if not back_at:
            results.append(send(next(extra)))
        return bool(back_at)

    wait_for(back_on_broker, 60, "calls going to the broker again")

    local = {r.id: r.get(timeout=60) for r in results if isinstance(r, LocalResult)}
    remote_ids = [r.id for r in results if not isinstance(r, LocalResult)]
    deadline = time.monotonic() + 60 + tasks // 100
    stored = results_stored(cluster, remote_ids)
    while len(stored) < len(remote_ids) and time.monotonic() < deadline:
        time.sleep(1)
        stored = results_stored(cluster, remote_ids)
    all_stored_s = time.monotonic() - promoted_at[-1]
    values = {**stored, **local}
    lines = Path(log).read_text().splitlines()
    runs = collections.Counter(int(line.split()[0]) for line in lines)
    return FailoverRun(
        tasks=len(results),
        promotions=promotions,
        back_on_broker_s=back_at[0] - promoted_at[-1],
        all_stored_s=all_stored_s,
        ran_locally=len(local),
        ran_on_workers=len(remote_ids),
        lost=[n for n, r in enumerate(results) if r.id not in values],
        wrong=[n for n, r in enumerate(results) if r.id in values and values[r.id] != n * n],
        duplicate_runs=sum(count - 1 for count in runs.values() if count > 1),
        where=where_are(cluster, [r.id for r in results if r.id not in values]),
    )


def where_are(cluster: Cluster, missing: list[str]) -> str:
    """Where the lost tasks' messages are on the primary now, for the failure message."""
    if not missing:
        return ""
    host, port = cluster.topology()["primary"].rsplit(":", 1)
    client = redis_py.Redis(host=host, port=int(port), password=PASSWORD, socket_timeout=5)
    try:
        queued = str(client.lrange("celery", 0, -1))
        unacked = held_text(client)
    finally:
        client.close()
    return "; ".join(
        f"{task_id}: queued={task_id in queued} unacked={task_id in unacked}"
        for task_id in missing[:10]
    )
