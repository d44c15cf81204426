"""What ``taskpool status`` reports: the app and its broker (with Sentinel, its primary and
replicas), the workers online, every queue (waiting, reserved and running, the workers that
consume it), the consumers alive and what they hold, the messages in the quarantine."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from taskpool import liveness, quarantine, sentinel
from taskpool.health import BrokerHealth
from taskpool.ledger import Ledger
from taskpool.settings import settings_of
from taskpool.urls import is_redis, is_sentinel, mask_url

#: How long to wait for workers to answer an inspect broadcast.
INSPECT_TIMEOUT = 1.0


def read_status(app: Celery) -> dict[str, Any]:
    """Probe the broker afresh, then (if it answers) ask the workers and the queue."""
    settings = settings_of(app)
    health = BrokerHealth(app, settings.broker_timeout, recheck=0, log_switches=False)
    reachable = health.is_up()
    report: dict[str, Any] = {
        "app": app.main,
        "broker": {"url": mask_url(health.broker_url), "reachable": reachable},
        "workers": [],
        "queue": {"name": app.conf.task_default_queue, "depth": None},
        "queues": [],
        "quarantine": None,
        "liveness": None,
        "local_runs": None,
        "failed": None,
    }
    if not reachable:
        report["broker"]["reason"] = health.reason
        return report
    if is_sentinel(health.broker_url):
        report["broker"].update(
            sentinel.topology(
                health.broker_url, settings.broker_timeout, app.conf.broker_transport_options
            )
        )
    inspect = app.control.inspect(timeout=INSPECT_TIMEOUT)
    with ThreadPoolExecutor(3) as asking:  # three broadcasts, one wait
        stats, active, reserved = (
            future.result() or {}
            for future in [asking.submit(inspect.stats), asking.submit(inspect.active),
                           asking.submit(inspect.reserved)]
        )  # fmt: skip
    report["workers"] = [
        {"node": node, "pool": info.get("pool", {}).get("max-concurrency")}
        for node, info in sorted(stats.items())
    ]
    consumers: Counter[str] = Counter()
    if is_redis(health.broker_url):  # the quarantine is kept in a Redis broker
        with quarantine.of_app(app) as kept:
            report["quarantine"] = kept.count()
            report["liveness"] = liveness.summary(kept.client, kept.prefix)
            consumers = liveness.consumers_by_queue(kept.client, kept.prefix)
    running, waiting_on_worker = _by_queue(active), _by_queue(reserved)
    names = {app.conf.task_default_queue, *consumers, *running, *waiting_on_worker}
    names |= {queue.name for queue in app.conf.task_queues or ()}
    names |= {queue for _, queue in settings.routes}
    report["local_runs"], report["failed"] = _ledger(app)
    waiting = _queue_depths(app, sorted(names))
    report["queue"]["depth"] = waiting[app.conf.task_default_queue]
    report["queues"] = [
        {
            "name": name,
            "waiting": waiting[name],
            "reserved": waiting_on_worker[name],
            "running": running[name],
            "consumers": consumers[name],
        }
        for name in waiting
    ]
    return report


def _ledger(app: Celery) -> tuple[dict[str, int] | None, int | None]:
    """Calls run on the local pool for want of a worker, by task, and tasks that failed on
    workers; None where the result store is not Redis or does not answer."""
    try:
        ledger = Ledger(app)
        return ledger.local_runs(), ledger.failed_count()
    except Exception:  # noqa: BLE001 - status reports what it can read
        return None, None


def _by_queue(tasks_by_node: dict[str, Any]) -> Counter[str]:
    """How many of the tasks workers listed (``inspect active`` or ``reserved``) came from
    each queue."""
    counts: Counter[str] = Counter()
    for tasks in tasks_by_node.values():
        for task in tasks or ():
            info = task.get("delivery_info") or {}
            counts[str(info.get("routing_key") or "?")] += 1
    return counts


def _queue_depths(app: Celery, queues: list[str]) -> dict[str, int]:
    """The messages waiting in each of ``queues``, in that order, over one connection."""
    depths: dict[str, int] = {}
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # no such queue yet (on Redis: an empty one): nothing waits
                depths[queue] = 0
    return depths


def render_status(report: dict[str, Any]) -> str:
    broker = report["broker"]
    if not broker["reachable"]:
        return str(broker.get("reason", f"broker {broker['url']}: unreachable"))
    lines = [f"app {report.get('app')!r}, broker {broker['url']}: reachable"]
    if "primary" in broker:
        replicas = ", ".join(broker["replicas"]) or "none"
        lines.append(
            f"  sentinel master {broker['master_name']!r}: primary {broker['primary']}, "
            f"replicas: {replicas}"
        )
    workers = report["workers"]
    lines.append(f"workers online: {len(workers)}")
    lines += [f"  {w['node']} (pool of {w['pool']})" for w in workers]
    for queue in report.get("queues") or [dict(report["queue"], waiting=report["queue"]["depth"])]:
        line = f"queue {queue['name']!r}: {queue['waiting']} waiting"
        if "running" in queue:
            line += (
                f", {queue['reserved']} reserved and {queue['running']} running on workers, "
                f"{queue['consumers']} consumer(s) alive"
            )
        lines.append(line)
    alive = report["liveness"]
    if alive is not None:
        lines.append(f"consumers alive: {alive['consumers']}, holding {alive['held']} message(s)")
        if alive["late_acks"]:
            lines.append(
                f"late acks: {alive['late_acks']} (acked after their worker was taken for "
                "dead: those tasks may have run twice)"
            )
    if report.get("local_runs"):
        runs = ", ".join(f"{name} {count}" for name, count in sorted(report["local_runs"].items()))
        lines.append(f"run on the local pool for want of a worker: {runs}")
    if report.get("failed"):
        lines.append(f"failed on workers: {report['failed']} task(s) (`taskpool failed list`)")
    if report["quarantine"]:
        lines.append(f"quarantine: {report['quarantine']} message(s) (`taskpool quarantine list`)")
    return "\n".join(lines)
