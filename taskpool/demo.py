"""``taskpool demo``: the classic multiprocessing examples, run on whichever backend is there.

The demo has an app of its own (``app`` below; ``celery -A taskpool.demo worker`` serves it),
so it runs from any directory, whatever the project there calls its modules. Its tasks keep
their usual names, so the repository's ``celery -A tasks worker`` serves it too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from taskpool import dispatch
from taskpool.app import create_app
from taskpool.examples import register
from taskpool.settings import settings_of

#: How long the demo waits for any one result.
RESULT_TIMEOUT = 30.0

app = create_app("taskpool.demo")
square, print_number, sum_of_squares = register(app)


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


def run_demo(mode: str | None = None) -> DemoReport:
    """square(10), square over [1..5], and four print_number calls showing who ran them.

    The broker is used only when a worker answers too; otherwise the work would wait.
    """
    route = dispatch.route(app, mode, need_worker=True)
    if route.backend == "local":
        processes = settings_of(app).processes
        detail = f"{route.reason}; using {processes} local processes"
    else:
        detail = route.reason
    report = DemoReport(
        backend="broker" if route.backend == "broker" else "local pool", detail=detail
    )
    via = route.dispatch
    report.square_of_10 = square.apply_async((10,), dispatch=via).get(timeout=RESULT_TIMEOUT)
    pending = [square.apply_async((n,), dispatch=via) for n in [1, 2, 3, 4, 5]]
    report.squares = [result.get(timeout=RESULT_TIMEOUT) for result in pending]
    printing = [print_number.apply_async((n,), dispatch=via) for n in range(4)]
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
