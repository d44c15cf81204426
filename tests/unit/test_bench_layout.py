"""bench/: one entry point for every benchmark, and no imports from the test tree."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from bench.catalog import BENCHMARKS

BENCH = Path(__file__).resolve().parents[2] / "bench"
#: Modules of bench/ with a main() that are not benchmarks: the dispatcher, and the clients the
#: benchmarks start in fresh interpreters.
NOT_BENCHMARKS = {"bench.__main__", "bench.clients"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_benchmark_module_imports_the_tests() -> None:
    for path in sorted(BENCH.rglob("*.py")):
        from_tests = {m for m in _imported_modules(path) if m.split(".")[0] == "tests"}
        assert not from_tests, f"{path.relative_to(BENCH.parent)} imports {from_tests}"


def test_every_module_with_a_main_is_a_benchmark_in_the_catalog() -> None:
    with_main = {
        f"bench.{path.stem}"
        for path in BENCH.glob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "main" for node in _tree(path).body
        )
    }
    assert with_main - NOT_BENCHMARKS == {b.module for b in BENCHMARKS}


def test_each_benchmark_is_named_after_its_module() -> None:
    for benchmark in BENCHMARKS:
        assert benchmark.module == "bench." + benchmark.name.replace("-", "_")


def test_bench_readme_opens_with_the_catalog_as_a_table() -> None:
    text = (BENCH / "README.md").read_text()
    header = "| question | command | minutes | writes |\n| --- | --- | --- | --- |\n"
    assert header in text
    table = text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()
    expected = [f"| {b.question} | `{b.command}` | {b.minutes} | {b.writes} |" for b in BENCHMARKS]
    assert table == expected


def test_list_names_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    dispatcher = importlib.import_module("bench.__main__")
    assert dispatcher.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # A benchmark's first line starts with its name; the lines wrapped after it, with spaces.
    listed = [line.split()[0] for line in lines[3:] if not line.startswith("   ")]
    assert listed == [b.name for b in BENCHMARKS]


def test_a_workload_name_alone_points_to_compare(capsys: pytest.CaptureFixture[str]) -> None:
    dispatcher = importlib.import_module("bench.__main__")
    assert dispatcher.main(["tiny"]) == 2
    assert "python -m bench compare tiny" in capsys.readouterr().err
