"""``taskpool status``'s text."""

from __future__ import annotations

from taskpool.status import render_status


def test_status_shows_the_consumers_alive_and_counts_late_acks() -> None:
    report = {
        "broker": {"url": "redis://127.0.0.1:6379/0", "reachable": True},
        "workers": [],
        "queue": {"name": "celery", "depth": 0},
        "quarantine": 0,
        "liveness": {"consumers": 2, "held": 5, "late_acks": 0},
    }
    shown = render_status(report)
    assert "consumers alive: 2, holding 5 message(s)" in shown
    assert "late acks" not in shown
    report["liveness"] = {"consumers": 1, "held": 0, "late_acks": 3}
    assert "late acks: 3 (acked after their worker was taken for dead" in render_status(report)
