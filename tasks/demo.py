"""The classic multiprocessing examples, run through taskpool on whichever backend is there."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from celery import Celery

from config import DispatchMode, mask_url, settings_of
from tasks.definitions import print_number, square
from workers.broker_health import health_of
from workers.errors import BrokerUnavailable

#: How long the demo waits for any worker to answer a ping before using the local pool.
WORKER_PING_TIMEOUT = 1.0
#: How long the demo waits for any one result.
RESULT_TIMEOUT = 30.0


@dataclass
class DemoReport:
    """What the demo computed, and where."""

    backend: str
    detail: str
    square_of_10: int = 0
    squares: list[int] = field(default_factory=list)
    printed: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_dispatch(app: Celery, mode: DispatchMode) -> tuple[DispatchMode, str, str]:
    """Pick the backend: the broker when it and a worker answer, else (in ``auto``) the local pool.

    Returns the dispatch mode to use, a backend name and a line saying why.
    """
    settings = settings_of(app)
    local_pool = f"{settings.processes} local processes"
    if mode == "local":
        return "local", "local pool", local_pool
    health = health_of(app, settings.broker_timeout, settings.broker_recheck)
    if not health.is_up():
        if mode == "celery":
            raise BrokerUnavailable(health.reason)
        return "local", "local pool", f"{health.reason}; using {local_pool}"
    broker = mask_url(health.broker_url)
    workers = sorted(_node_names(app))
    if workers:
        return "celery", "broker", f"{broker}, workers: {', '.join(workers)}"
    if mode == "celery":
        raise BrokerUnavailable(f"no worker answered on {broker}; start: celery -A tasks worker")
    return "local", "local pool", f"no worker answered on {broker}; using {local_pool}"


def _node_names(app: Celery) -> list[str]:
    return [name for reply in app.control.ping(timeout=WORKER_PING_TIMEOUT) for name in reply]


def run_demo(app: Celery, mode: DispatchMode) -> DemoReport:
    """square(10), square over [1..5], and four print_number calls showing who ran them."""
    dispatch, backend, detail = choose_dispatch(app, mode)
    report = DemoReport(backend=backend, detail=detail)
    report.square_of_10 = square.apply_async((10,), dispatch=dispatch).get(timeout=RESULT_TIMEOUT)
    pending = [square.apply_async((n,), dispatch=dispatch) for n in [1, 2, 3, 4, 5]]
    report.squares = [result.get(timeout=RESULT_TIMEOUT) for result in pending]
    printing = [print_number.apply_async((n,), dispatch=dispatch) for n in range(4)]
    report.printed = [result.get(timeout=RESULT_TIMEOUT) for result in printing]
    return report


def render(report: DemoReport) -> str:
    """The demo's report as a person reads it."""
    lines = [
        f"backend: {report.backend} ({report.detail})",
        f"square(10) = {report.square_of_10}",
        f"square over [1, 2, 3, 4, 5] = {report.squares}",
        "print_number over 0..3 (each prints its own 'Process ID' line where it runs):",
    ]
    lines += [
        f"  print_number({row['number']}) ran in process {row['pid']} on {row['hostname']}"
        for row in report.printed
    ]
    pids = {row["pid"] for row in report.printed}
    lines.append(f"{len(pids)} distinct process(es) ran the four print_number calls")
    return "\n".join(lines)
