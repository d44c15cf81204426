"""bench/: benchmarks that run from a checkout without the test tree."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_benchmark_module_imports_the_tests() -> None:
    for path in sorted(BENCH.rglob("*.py")):
        from_tests = {m for m in _imported_modules(path) if m.split(".")[0] == "tests"}
        assert not from_tests, f"{path.relative_to(BENCH.parent)} imports {from_tests}"
