"""The ``taskpool`` command line (also ``python -m tasks``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from config import DISPATCH_MODES, ConfigError, TaskpoolError, current_settings
from workers.errors import BrokerUnavailable

#: Exit codes, listed in ``taskpool --help`` and the README.
EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER_UNAVAILABLE = 3

EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    f"  {EXIT_OK}  done\n"
    f"  {EXIT_TASK_FAILED}  a task failed\n"
    f"  {EXIT_USAGE}  usage error (bad option or bad TASKPOOL_* setting)\n"
    f"  {EXIT_BROKER_UNAVAILABLE}  broker unavailable in mode celery"
)

mode_option = click.option(
    "--mode",
    type=click.Choice(DISPATCH_MODES),
    default=None,
    help="Where tasks run: auto (broker if it answers, else local pool), celery, or local. "
    "Default: TASKPOOL_DISPATCH, else auto.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.group(epilog=EXIT_CODES_HELP)
def cli() -> None:
    """taskpool: run Python work in parallel on one machine or many, with the same code.

    Tasks go to Celery workers through Redis when the broker answers, and run on a local
    multiprocessing pool when it does not.

    \b
    Example:
      taskpool demo
    """


@cli.command(epilog=EXIT_CODES_HELP)
@mode_option
@json_option
def demo(mode: str | None, as_json: bool) -> None:
    """Run the classic multiprocessing examples through taskpool.

    Computes square(10), squares 1..5 and runs four print_number calls, then says which
    backend ran them: a Celery worker (by node name) or the local pool. Works with no Redis.

    \b
    Example:
      taskpool demo --mode local
    """
    from tasks import app
    from tasks.demo import render, run_demo

    with json_stdout(as_json) as emit:
        report = run_demo(app, mode or current_settings().dispatch)  # type: ignore[arg-type]
        emit(json.dumps(report.as_dict()) if as_json else render(report))


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
