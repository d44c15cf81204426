"""The installed package: one import name, a public API, and imports that run one way."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import taskpool

PACKAGE = Path(taskpool.__file__).parent


def _imports(path: Path) -> set[str]:
    """The ``taskpool.*`` modules ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_taskpool_imports_nothing_of_the_repositorys_own_folders() -> None:
    for name, path in MODULES.items():
        outside = {m for m in _imports(path) if m.split(".")[0] in ("tasks", "workers", "config")}
        assert not outside, f"{name} imports {outside}"


def test_no_two_taskpool_modules_import_each_other_even_indirectly() -> None:
    graph = {
        name: {m for m in _imports(path) if m in MODULES and m != name and m != "taskpool"}
        for name, path in MODULES.items()
    }
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join([*trail, name])
        state[name] = "open"
        for target in sorted(graph[name]):
            visit(target, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_every_logger_is_named_after_its_module() -> None:
    """``logging.getLogger(__name__)`` only: a reader finds what logged a line by its name."""
    named = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func).endswith("getLogger")
        and [ast.unparse(arg) for arg in node.args] != ["__name__"]
    ]
    assert named == []


def test_the_public_names_and_the_lazy_table_list_the_same_names() -> None:
    assert sorted(taskpool.__all__) == sorted(taskpool._EXPORTS)


@pytest.mark.parametrize("name", taskpool.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(taskpool, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'FallbackTsak'"):
        taskpool.FallbackTsak  # noqa: B018 - the lookup itself is under test


def test_importing_taskpool_loads_neither_celery_nor_redis() -> None:
    script = (
        "import sys, taskpool\n"
        "print(sorted(m for m in ('celery', 'kombu', 'redis') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").exists()


def _layout_rows() -> list[list[str]]:
    """The modules of each row of the README's table of taskpool's modules, top row first."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme.split("Inside `taskpool/`, imports run one way", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1] for line in table.splitlines()[2:]]
    return [re.findall(r"`(\w+)\.py`", row) for row in rows if ".py`" in row]


def test_the_readmes_layout_lists_every_module_and_each_imports_only_rows_above_or_its_own() -> (
    None
):
    rows = _layout_rows()
    row_of = {f"taskpool.{name}": n for n, row in enumerate(rows) for name in row}
    top_level = {
        name for name, path in MODULES.items()
        if path.parent == PACKAGE and path.stem not in ("__init__", "__main__")
    }  # fmt: skip
    assert set(row_of) == top_level, "README's layout and taskpool/ differ"
    upward = [
        f"{name} imports {target}"
        for name in sorted(top_level)
        for target in sorted(_imports(MODULES[name]) & set(row_of))
        if row_of[target] > row_of[name]
    ]
    assert not upward, "imports that run up the README's layout: " + "; ".join(upward)
