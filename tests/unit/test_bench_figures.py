"""The benchmark figures README.md and bench/README.md state are those of bench/results/.

Two marks in the Markdown name where a figure comes from (HTML comments: invisible when
rendered):

- ``816<!-- compare_tiny.json: samples.ours.tasks_per_s -->``: the number right before the
  comment is the expression after the colon, worked out on that results file and rounded as
  the number is written. An expression is paths into the JSON (keys joined by dots, a key with
  spaces or dots in double quotes, list positions as numbers), numbers, and ``+ - * / ( )``
  between spaces. A path to a list stands for its median, as the benchmarks' tables give it.
- ``<!-- printed by bench.report.tiny_table from compare_tiny.json -->`` on a line of its own,
  then a blank line: what follows (inside a code fence, if one opens there) is exactly what the
  function prints from that file, or from one key of it (``from cpu_share.json
  summary_ms_per_task``). ``compare_*.json`` passes every such file, by the part the ``*``
  stands for.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
DOCUMENTS = ("README.md", "bench/README.md")

FIGURE = re.compile(
    r"(?P<number>\d[\d,]*(?:\.\d+)?)[a-z%]*<!-- (?P<file>[\w.]+\.json): (?P<expr>.+?) -->"
)
SOURCE = re.compile(r"<!-- [\w.*]+\.json: ")
PRINTED = re.compile(
    r"^<!-- printed by (?P<function>[\w.]+) from (?P<file>[\w.*]+\.json)(?: (?P<key>\S+))? -->\n\n",
    re.MULTILINE,
)
TOKEN = re.compile(r'[-+*/()]|\d+(?:\.\d+)?|(?:"[^"]*"|[^\s."]+)(?:\.(?:"[^"]*"|[^\s."]+))*')


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def resolve(data: Any, path: str) -> Any:
    for part in re.findall(r'"([^"]*)"|([^."]+)', path):
        key = part[0] or part[1]
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def number(value: Any, where: str) -> float:
    """A figure: a number, or the median of a list of them (missing rounds left out)."""
    if isinstance(value, list):
        value = statistics.median(v for v in value if v is not None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssertionError(f"{where} is {value!r}, not a number")
    return float(value)


def evaluate(data: Any, expr: str) -> float:
    values: list[float] = []
    python: list[str] = []
    for token in TOKEN.findall(expr):
        if token in "+-*/()" or re.fullmatch(r"\d+(?:\.\d+)?", token):
            python.append(token)
        else:
            values.append(number(resolve(data, token), token))
            python.append(f"v[{len(values) - 1}]")
    # Only the operators, numbers and v[i] above reach eval.
    return float(eval(" ".join(python), {"__builtins__": {}}, {"v": values}))


def figures() -> list[Any]:
    """Each marked figure: the document, the figure as written, its file and expression."""
    found = []
    for document in DOCUMENTS:
        for match in FIGURE.finditer((ROOT / document).read_text()):
            found.append(
                pytest.param(
                    document,
                    match["number"],
                    match["file"],
                    match["expr"],
                    id=f"{document}:{match['number']}:{match['file']}",
                )
            )
    return found


def printed_tables() -> list[Any]:
    """Each marked table: the document, the function, its file and key, the text after."""
    found = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for match in PRINTED.finditer(text):
            found.append(
                pytest.param(
                    document,
                    match["function"],
                    match["file"],
                    match["key"],
                    text[match.end() :],
                    id=f"{document}:{match['function']}",
                )
            )
    return found


def test_every_mark_of_a_source_follows_a_figure() -> None:
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        marks = len(SOURCE.findall(text))
        assert marks == len(FIGURE.findall(text)), f"{document}: a mark with no number before it"


@pytest.mark.parametrize(
    ("document", "least_figures", "least_tables"),
    [("README.md", 20, 1), ("bench/README.md", 100, 9)],
)
def test_the_documents_keep_their_marks(
    document: str, least_figures: int, least_tables: int
) -> None:
    # A mark lost in an edit would take its figure out of the check without a word.
    assert len([f for f in figures() if f.values[0] == document]) >= least_figures
    assert len([t for t in printed_tables() if t.values[0] == document]) >= least_tables


@pytest.mark.parametrize(("document", "stated", "file", "expr"), figures())
def test_each_marked_figure_is_the_one_in_its_results_file(
    document: str, stated: str, file: str, expr: str
) -> None:
    value = evaluate(load(file), expr)
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    shown = float(stated.replace(",", ""))
    assert abs(shown - value) <= 0.5 * 10**-decimals + 1e-9, (
        f"{document} says {stated} for {file}: {expr}; the file gives {value:.{decimals + 2}f}"
    )


@pytest.mark.parametrize(("document", "function", "file", "key", "after"), printed_tables())
def test_each_marked_table_is_what_its_function_prints_from_the_file(
    document: str, function: str, file: str, key: str | None, after: str
) -> None:
    module, name = function.rsplit(".", 1)
    make = getattr(importlib.import_module(module), name)
    if "*" in file:
        prefix, suffix = file.split("*")
        data: Any = {
            path.name[len(prefix) : -len(suffix)]: json.loads(path.read_text())
            for path in sorted(RESULTS.glob(file))
        }
    else:
        data = load(file)
    expected = make(resolve(data, key) if key else data)
    if after.startswith("```\n"):
        after = after[4:]
        expected += "\n```"
    assert after.startswith(expected + "\n"), (
        f"{document}: the table after the mark is not what {function} prints from {file}:\n"
        f"{expected}"
    )
