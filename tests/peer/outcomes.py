"""A pytest plugin for the peers' suites: one outcome per test, written as JSON.

Loaded in both runs (``-p tests.peer.outcomes``); the file is named by
``PEER_OUTCOMES_FILE``. pytest's ``-rA`` summary names a skipped test by its file and line
only, and a test whose teardown fails twice; here each test id gets exactly one outcome: the
first phase that did not pass decides (setup, call, subtests, teardown), else PASSED.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_outcomes: dict[str, str] = {}


def _outcome(report: pytest.TestReport) -> str | None:
    """PASSED, FAILED, ERROR, SKIPPED, XFAIL or XPASS; None for a phase that passed quietly."""
    xfail = hasattr(report, "wasxfail")
    if report.when != "call":
        if report.failed:
            return "ERROR"
        return "SKIPPED" if report.skipped else None
    if report.failed:
        return "FAILED"  # a strict xfail that passed lands here too, as pytest counts it
    if report.skipped:
        return "XFAIL" if xfail else "SKIPPED"
    return "XPASS" if xfail else "PASSED"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome = _outcome(report)
    if outcome is None:
        return
    # A failed phase is kept over a later one (a teardown after a failed call, a test's own
    # PASSED after one of its subtests failed).
    if _outcomes.get(report.nodeid) in (None, "PASSED"):
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("PEER_OUTCOMES_FILE")
    if path:
        Path(path).write_text(json.dumps(_outcomes, indent=1, sort_keys=True) + "\n")
