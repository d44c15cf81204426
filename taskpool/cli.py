"""The ``taskpool`` command line (also ``python -m taskpool``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

import click

from taskpool.errors import BrokerUnavailable, ConfigError, TaskpoolError
from taskpool.registry import find_task
from taskpool.settings import DISPATCH_MODES, current_settings

if TYPE_CHECKING:
    from taskpool.mapping import MapResults

#: Exit codes, listed in every ``--help`` and in the README.
EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER_UNAVAILABLE = 3

EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    f"  {EXIT_OK}  done\n"
    f"  {EXIT_TASK_FAILED}  a task failed\n"
    f"  {EXIT_USAGE}  usage error (bad option or bad TASKPOOL_* setting)\n"
    f"  {EXIT_BROKER_UNAVAILABLE}  broker unavailable in mode celery (status: broker unreachable)"
)

mode_option = click.option(
    "--mode",
    type=click.Choice(DISPATCH_MODES),
    default=None,
    help="Where tasks run: auto (broker if it answers, else local pool), celery, or local. "
    "Default: TASKPOOL_DISPATCH, else auto.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout, for scripts."
)


def command(**kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """A taskpool subcommand: exit codes in its help, --mode and --json on it."""

    def decorate(func: Callable[..., Any]) -> click.Command:
        return cli.command(epilog=EXIT_CODES_HELP, **kwargs)(mode_option(json_option(func)))

    return decorate


#: The app the commands use unless -A or TASKPOOL_APP names another: the demo's own.
DEFAULT_APP = "taskpool.demo"


@click.group(epilog=EXIT_CODES_HELP)
@click.option(
    "-A",
    "--app",
    "app_name",
    envvar="TASKPOOL_APP",
    default=DEFAULT_APP,
    show_default=True,
    help="The Celery app, as `celery -A` takes it (e.g. tasks, or proj.celery:app). "
    "Default: TASKPOOL_APP, else the examples' own app. `demo` always uses its own.",
)
@click.pass_context
def cli(ctx: click.Context, app_name: str) -> None:
    """taskpool: run Python work in parallel on one machine or many, with the same code.

    Tasks go to Celery workers through Redis when the broker answers, and run on a local
    multiprocessing pool when it does not.

    \b
    Example:
      taskpool demo
    """


@command()
def demo(mode: str | None, as_json: bool) -> None:
    """Run the classic multiprocessing examples through taskpool.

    Computes square(10), squares 1..5 and runs four print_number calls, then says which
    backend ran them: a Celery worker (by node name) or the local pool. Works with no Redis.

    \b
    Example:
      taskpool demo --mode local
    """
    from taskpool.demo import render, run_demo

    with json_stdout(as_json) as emit:
        report = run_demo(mode)
        emit(json.dumps(report.as_dict()) if as_json else render(report))


@command(name="square")
@click.argument("numbers", nargs=-1, required=True, type=int)
def square_command(numbers: tuple[int, ...], mode: str | None, as_json: bool) -> None:
    """Square each NUMBER, one task per number.

    \b
    Example:
      taskpool square 3 4 5          # square(3) = 9 ...
    """
    square = _find_task(_app(), "square")
    with json_stdout(as_json) as emit:
        dispatch = _dispatch(mode)
        pending = [square.apply_async((n,), dispatch=dispatch) for n in numbers]
        results = [result.get(timeout=60) for result in pending]
        if as_json:
            emit(json.dumps({"results": results, "backend": _backend_of(pending)}))
        else:
            emit(
                "\n".join(
                    f"square({n}) = {value}" for n, value in zip(numbers, results, strict=True)
                )
            )


@command(name="print-numbers")
@click.argument("count", type=click.IntRange(min=0))
def print_numbers(count: int, mode: str | None, as_json: bool) -> None:
    """Run print_number for 0 .. COUNT-1 and show which process ran each.

    \b
    Example:
      taskpool print-numbers 4
    """
    print_number = _find_task(_app(), "print_number")
    with json_stdout(as_json) as emit:
        dispatch = _dispatch(mode)
        pending = [print_number.apply_async((n,), dispatch=dispatch) for n in range(count)]
        reports = [result.get(timeout=60) for result in pending]
        if as_json:
            emit(json.dumps({"results": reports, "backend": _backend_of(pending)}))
        else:
            emit("\n".join(
                f"Process ID: {r['pid']} - Number: {r['number']}  (on {r['hostname']})"
                for r in reports
            ))  # fmt: skip


@command(name="map")
@click.argument("task_name", metavar="TASK")
@click.option("--range", "range_", type=click.IntRange(min=0), help="Map over 0 .. N-1.")
@click.option(
    "--input", "input_", type=click.File("r"), help="One JSON value per line; - reads stdin."
)
@click.option(
    "--output", type=click.File("w"), help="Write one JSON result per line, in input order."
)
@click.option(
    "--chunksize", type=click.IntRange(min=1), help="Inputs per message (default: automatic)."
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
@click.option("--return-exceptions", is_flag=True, help="Write failures in place and go on.")
@click.option(
    "--star", is_flag=True, help="Each input is a JSON list of the task's arguments (a starmap)."
)
def map_command(
    task_name: str,
    range_: int | None,
    input_: IO[str] | None,
    output: IO[str] | None,
    chunksize: int | None,
    progress: bool | None,
    return_exceptions: bool,
    star: bool,
    mode: str | None,
    as_json: bool,
) -> None:
    """Map TASK (any task of the app, e.g. square) over many inputs, in chunks, in order.

    Results go to --output, else to stdout one per line (not with --json). A summary (count,
    checksum, seconds, inputs per second, backend) goes to stderr, or to stdout with --json.

    \b
    Examples:
      taskpool map square --range 1000000 --output squares.jsonl
      seq 10 | taskpool map square --input - --json
      printf '[1, 2]\n[3, 4]\n' | taskpool -A proj map proj.tasks.add --input - --star
    """
    from taskpool.mapping import imap

    app = _app()
    inputs: Iterable[Any]
    if range_ is not None and input_ is None:
        inputs = range(range_)
    elif input_ is not None and range_ is None:
        inputs = _json_lines(input_)
    else:
        raise click.UsageError("give exactly one of --range N or --input FILE")
    task = _find_task(app, task_name)
    with json_stdout(as_json) as emit:
        sink = output or (None if as_json else sys.stdout)
        # Before the clock: finding a worker is not mapping. On the broker, the map keeps the
        # mode, so in mode auto it falls back mid-map as taskpool.map does.
        route = _route(mode)
        dispatch = route.mode if route.backend == "broker" else "local"
        started = time.perf_counter()
        results = imap(
            task, inputs, chunksize=chunksize, dispatch=dispatch,
            progress=progress, return_exceptions=return_exceptions, star=star,
        )  # fmt: skip
        count, failed, digest = _write_results(results, sink)
        seconds = time.perf_counter() - started
        summary = {
            "task": task.name,
            "count": count,
            "failed": failed,
            "checksum": digest,
            "seconds": round(seconds, 3),
            "inputs_per_second": round(count / seconds, 1) if seconds else None,
            "backend": ", then ".join(results.backends),
        }
        if as_json:
            emit(json.dumps(summary))
        else:
            click.echo(" ".join(f"{k}={v}" for k, v in summary.items()), err=True)
    if failed:
        raise SystemExit(EXIT_TASK_FAILED)


def _write_results(results: MapResults, sink: IO[str] | None) -> tuple[int, int, str]:
    """Write one JSON line per result; return the count, the failures and a checksum.

    The checksum is the SHA-256 of every line written, so it covers the output as a whole: it
    is fed, like the sink, one chunk of results at a time, as the map hands them back.
    """
    digest = hashlib.sha256()
    count = failed = 0
    for values in results.chunks:
        text, failures = _json_lines_of(values)
        digest.update(text.encode())
        if sink is not None:
            sink.write(text)
        count += len(values)
        failed += failures
    return count, failed, digest.hexdigest()[:16]


def _json_lines_of(values: list[Any]) -> tuple[str, int]:
    """One chunk's results as JSON lines, and how many of them are failures."""
    if not values:
        return "", 0
    if set(map(type, values)) == {int}:
        # json.dumps of an int (not a subclass such as bool) is its repr: one join in C.
        return "\n".join(map(int.__repr__, values)) + "\n", 0
    lines, failed = [], 0
    for value in values:
        if isinstance(value, BaseException):
            failed += 1
            value = {"error": {"type": type(value).__name__, "message": str(value)}}
        lines.append(json.dumps(value))
    return "\n".join(lines) + "\n", failed


def _json_lines(stream: IO[str]) -> Iterator[Any]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.UsageError(
                f"--input line {number} is not JSON ({exc.msg}): {line.strip()[:60]!r}"
            ) from None


def _find_task(app: Any, name: str) -> Any:
    try:
        return find_task(app, name)
    except LookupError as exc:
        raise click.UsageError(str(exc)) from None


@command()
def status(mode: str | None, as_json: bool) -> None:  # mode: status asks the broker in every mode
    """Say whether the broker answers, which workers are online, and how deep the queue is.

    Exits 3 when the broker does not answer.

    \b
    Example:
      taskpool status --json
    """
    from taskpool.status import read_status, render_status

    report = read_status(_app())
    click.echo(json.dumps(report) if as_json else render_status(report))
    if not report["broker"]["reachable"]:
        raise SystemExit(EXIT_BROKER_UNAVAILABLE)


@cli.group(epilog=EXIT_CODES_HELP)
def quarantine() -> None:
    """Messages workers moved aside: unreadable, or delivered TASKPOOL_MAX_DELIVERIES times
    without an outcome. List them, send them again, or drop them (kept a week).

    \b
    Example:
      taskpool quarantine list
      taskpool quarantine replay 3f2a...   # once the cause is fixed
    """


@quarantine.command(name="list", epilog=EXIT_CODES_HELP)
@json_option
def quarantine_list(as_json: bool) -> None:
    """Each quarantined message: id, when, queue, task and the reason."""
    from taskpool.quarantine import of_app, render

    with of_app(_app()) as kept:
        entries = kept.entries()
    summaries = [entry.summary() for entry in entries]
    click.echo(json.dumps({"quarantine": summaries}) if as_json else render(summaries))


def _quarantine_change(replay: bool) -> Callable[..., None]:
    def change(ids: tuple[str, ...], every: bool) -> None:
        from taskpool.quarantine import of_app

        if bool(ids) == every:
            raise click.UsageError("name the entries by id, or pass --all")
        with of_app(_app()) as kept:
            entries = kept.entries(None if every else dict.fromkeys(ids))  # each id once
            missing = set(ids) - {entry.id for entry in entries}
            if missing:
                raise click.UsageError(f"no such entry in the quarantine: {', '.join(missing)}")
            done = kept.replay(entries) if replay else kept.drop(entries)
        click.echo(f"{'replayed' if replay else 'dropped'} {done} message(s)")

    return change


_entry_ids = click.argument("ids", nargs=-1)
_every = click.option("--all", "every", is_flag=True, help="Every entry in the quarantine.")
quarantine.command(
    name="replay",
    epilog=EXIT_CODES_HELP,
    help="Put the messages back at the end of their queues, with a fresh delivery count.",
)(_entry_ids(_every(_quarantine_change(replay=True))))
quarantine.command(
    name="drop", epilog=EXIT_CODES_HELP, help="Delete the messages from the quarantine for good."
)(_entry_ids(_every(_quarantine_change(replay=False))))


@cli.group(epilog=EXIT_CODES_HELP)
def failed() -> None:
    """Tasks whose last run on a worker failed (kept a week, in a Redis result store): list
    them, send them again with their arguments, or drop them.

    \b
    Example:
      taskpool -A proj failed list
      taskpool -A proj failed retry 3f2a...   # once the cause is fixed
    """


@failed.command(name="list", epilog=EXIT_CODES_HELP)
@json_option
def failed_list(as_json: bool) -> None:
    """Each failed task: id, when, task and arguments, queue and the error."""
    from taskpool.ledger import Ledger, render

    entries = Ledger(_app()).failed()
    click.echo(json.dumps({"failed": entries}) if as_json else render(entries))


def _failed_change(retry: bool) -> Callable[..., None]:
    def change(ids: tuple[str, ...], every: bool) -> None:
        from taskpool.ledger import Ledger

        if bool(ids) == every:
            raise click.UsageError("name the tasks by id, or pass --all")
        ledger = Ledger(_app())
        entries = ledger.failed(None if every else list(dict.fromkeys(ids)))
        missing = set(ids) - {entry["id"] for entry in entries}
        if missing:
            raise click.UsageError(f"no such failed task: {', '.join(sorted(missing))}")
        done = ledger.retry(entries) if retry else ledger.drop(entries)
        click.echo(f"{'sent again' if retry else 'dropped'}: {done} task(s)")

    return change


_every_failed = click.option("--all", "every", is_flag=True, help="Every failed task.")
failed.command(
    name="retry", epilog=EXIT_CODES_HELP,
    help="Send the tasks again, with their arguments, to their queues.",
)(_entry_ids(_every_failed(_failed_change(retry=True))))  # fmt: skip
failed.command(name="drop", epilog=EXIT_CODES_HELP, help="Forget the failed tasks.")(
    _entry_ids(_every_failed(_failed_change(retry=False)))
)


@command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...], mode: str | None, as_json: bool) -> None:
    """Start the worker of the app with the settings: `celery -A APP worker -P prefork`
    (TASKPOOL_WORKER_POOL=fetching: processes that fetch their own messages).

    Arguments after the options go to Celery (e.g. -n w1@%h -Q cpu). --json prints the
    command line instead of running it. A worker always consumes from the broker, so --mode
    local is refused.

    \b
    Example:
      taskpool worker -- -n w1@%h --loglevel info
    """
    if mode == "local":
        raise click.UsageError("a worker consumes from the broker; --mode local does not apply")
    current_settings()  # a bad TASKPOOL_* value stops here with one clear line
    app_name = click.get_current_context().find_root().params["app_name"]
    argv = [sys.executable, "-m", "celery", "-A", app_name, "worker", "-P", "prefork", *celery_args]
    if as_json:
        click.echo(json.dumps({"argv": argv}))
        return
    os.execv(sys.executable, argv)


def _app() -> Any:
    """The app named by -A (or TASKPOOL_APP), imported as `celery -A` would."""
    from celery.app.utils import find_app

    name = click.get_current_context().find_root().params["app_name"]
    if name != DEFAULT_APP and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `celery -A` does: the app may live in this directory
    try:
        app = find_app(name)
        # The modules of its `include` and `imports`, as a worker imports them: their tasks.
        app.loader.import_default_modules()
    except (ImportError, AttributeError) as exc:
        raise click.UsageError(f"cannot load the app {name!r} (-A / TASKPOOL_APP): {exc}") from None
    return app


def _dispatch(mode: str | None) -> str:
    """Where a command's tasks go: the broker only when a worker answers too."""
    return _route(mode).dispatch


def _route(mode: str | None) -> Any:
    """The route of a command's tasks, asking for a worker too.

    With Redis up but no worker, a published task would wait for ever; in mode auto the
    command then uses the local pool, and in mode celery it stops with exit code 3.
    """
    from taskpool import dispatch

    return dispatch.route(_app(), mode, need_worker=True)


def _backend_of(results: list[Any]) -> str:
    from taskpool.results import LocalResult

    kinds = {"local pool" if isinstance(r, LocalResult) else "broker" for r in results}
    return ", ".join(sorted(kinds)) or "none"


@contextlib.contextmanager
def json_stdout(as_json: bool) -> Iterator[Callable[[str], None]]:
    """Keep stdout for the JSON document alone when ``as_json``.

    Tasks on the local pool print from pool processes that share this process's stdout; while
    the command runs, file descriptor 1 points at stderr, so their lines cannot break the JSON.
    """
    if not as_json:
        yield click.echo
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(saved, "w", closefd=False) as real_stdout:
            yield lambda text: print(text, file=real_stdout, flush=True)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: map taskpool's errors onto the documented exit codes."""
    try:
        return cli.main(args=argv, prog_name="taskpool", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_TASK_FAILED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except ConfigError as exc:
        click.echo(f"taskpool: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except BrokerUnavailable as exc:
        click.echo(f"taskpool: {exc}", err=True)
        sys.exit(EXIT_BROKER_UNAVAILABLE)
    except TaskpoolError as exc:
        click.echo(f"taskpool: {exc}", err=True)
        sys.exit(EXIT_TASK_FAILED)
    except Exception as exc:  # a task's own error, raised by .get()
        click.echo(f"taskpool: task failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_TASK_FAILED)
