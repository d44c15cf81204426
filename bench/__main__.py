"""``python -m bench NAME [OPTIONS]``: runs the benchmark NAME; ``python -m bench list`` names them.

Each benchmark is a module of bench/ (``bench.catalog`` says which) whose ``main()`` reads its
own options, so ``python -m bench NAME --help`` gives that benchmark's options.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable

from bench.catalog import BENCHMARKS, BY_NAME

USAGE = "usage: python -m bench NAME [OPTIONS]   (python -m bench NAME --help: its options)"
#: Exit status for a command line that names no benchmark, as argparse uses.
USAGE_ERROR = 2


def listing() -> str:
    """Every benchmark with its question, minutes and results file, for ``list`` and ``--help``."""
    width = max(len(b.name) for b in BENCHMARKS) + 4
    lines = [USAGE, "", "benchmarks (minutes with the default options; results in bench/results/):"]
    for benchmark in BENCHMARKS:
        about = f"{benchmark.question} Minutes: {benchmark.minutes}. Writes {benchmark.writes}."
        wrapped = textwrap.wrap(about.replace("`", ""), 100 - width)
        lines.append(f"  {benchmark.name:<{width - 2}}{wrapped[0]}")
        lines += [" " * width + line for line in wrapped[1:]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(listing(), file=sys.stderr)
        return USAGE_ERROR
    name, options = argv[0], argv[1:]
    if name in ("list", "help", "-h", "--help"):
        print(listing())
        return 0
    benchmark = BY_NAME.get(name.replace("_", "-"))
    if benchmark is None:
        from bench.compare import WORKLOADS  # Celery and kombu load only on this path

        hint = "python -m bench list names them"
        if name in WORKLOADS:
            hint = f"{name} is a workload of compare: python -m bench compare {name}"
        print(f"{USAGE}\npython -m bench: unknown benchmark {name!r}; {hint}", file=sys.stderr)
        return USAGE_ERROR
    run: Callable[[], None] = importlib.import_module(benchmark.module).main
    # The benchmark's own parser reads sys.argv, and names itself after sys.argv[0] if it
    # names no prog.
    sys.argv = [benchmark.command, *options]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
