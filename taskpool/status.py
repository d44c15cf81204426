"""What ``taskpool status`` reports: the broker (with Sentinel, its primary and replicas), the
workers online, the queue's depth, the consumers alive and what they hold, the messages in the
quarantine."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from taskpool import liveness, quarantine, sentinel
from taskpool.health import BrokerHealth
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
        "broker": {"url": mask_url(health.broker_url), "reachable": reachable},
        "workers": [],
        "queue": {"name": app.conf.task_default_queue, "depth": None},
        "quarantine": None,
        "liveness": None,
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
    stats = app.control.inspect(timeout=INSPECT_TIMEOUT).stats() or {}
    report["workers"] = [
        {"node": node, "pool": info.get("pool", {}).get("max-concurrency")}
        for node, info in sorted(stats.items())
    ]
    report["queue"]["depth"] = _queue_depth(app, app.conf.task_default_queue)
    if is_redis(health.broker_url):  # the quarantine is kept in a Redis broker
        with quarantine.of_app(app) as kept:
            report["quarantine"] = kept.count()
            report["liveness"] = liveness.summary(kept.client, kept.prefix)
    return report


def _queue_depth(app: Celery, queue: str) -> int:
    with app.connection_for_write() as connection:
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except ChannelError:  # no such queue yet (on Redis: an empty one), so nothing waits
            return 0
        return int(declared.message_count)


def render_status(report: dict[str, Any]) -> str:
    broker = report["broker"]
    if not broker["reachable"]:
        return str(broker.get("reason", f"broker {broker['url']}: unreachable"))
    lines = [f"broker {broker['url']}: reachable"]
    if "primary" in broker:
        replicas = ", ".join(broker["replicas"]) or "none"
        lines.append(
            f"  sentinel master {broker['master_name']!r}: primary {broker['primary']}, "
            f"replicas: {replicas}"
        )
    workers = report["workers"]
    lines.append(f"workers online: {len(workers)}")
    lines += [f"  {w['node']} (pool of {w['pool']})" for w in workers]
    queue = report["queue"]
    lines.append(f"queue {queue['name']!r}: {queue['depth']} message(s) waiting")
    alive = report["liveness"]
    if alive is not None:
        lines.append(f"consumers alive: {alive['consumers']}, holding {alive['held']} message(s)")
        if alive["late_acks"]:
            lines.append(
                f"late acks: {alive['late_acks']} (acked after their worker was taken for "
                "dead: those tasks may have run twice)"
            )
    if report["quarantine"]:
        lines.append(f"quarantine: {report['quarantine']} message(s) (`taskpool quarantine list`)")
    return "\n".join(lines)
