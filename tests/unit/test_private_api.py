"""docs/PRIVATE_API.md lists every private name of another library that taskpool uses, and each
one it lists is still there, with the parameters it records, in the installed library.

The table is the one source: these tests read it. The scan finds a private name (one starting
with ``_``, or a dunder Python itself does not define) used on another library's object:

- ``self._x`` (read, set or called, ``super()._x`` too) in a class of taskpool's, when a library
  class it derives from has ``_x``; a mixin counts its subclasses' library bases. Any other
  ``self._x`` is taskpool's own, derived from the classes themselves rather than listed;
- ``def _x`` or ``_x = ...`` in the body of such a class, when a library base has ``_x``;
- ``obj._x`` and ``getattr(obj, "_x")`` on any object but ``self``, ``cls`` and ``super()``;
- ``"_x"`` as a string (``vars(app)["_x"]``, ``kwargs.pop("_x")``) and ``_x=`` as a keyword;
- ``from lib import _x``, and any import from a private module (``from lib._m import x``).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import inspect
import pkgutil
import platform
import re
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import taskpool
from tests.support.paths import REPO_ROOT

TABLE = REPO_ROOT / "docs" / "PRIVATE_API.md"
PACKAGE = Path(taskpool.__file__).parent

#: The table's kinds; a method or function also has its parameters recorded.
KINDS = {
    "method overridden",
    "method overridden, called",
    "method called",
    "function called",
    "function imported",
    "attribute read",
    "attribute set",
    "attribute read, set",
    "keyword argument",
    "module name",
}
CALLABLE_KINDS = {kind for kind in KINDS if kind.startswith(("method", "function"))}

#: Dunders that are Python's own, not a library's: those of its core objects and protocols,
#: the names a module gets, and those the language gives (``__main__``, ``__future__``).
PYTHON_OBJECTS = (object, type, int, list, dict, iter(()), BaseException, types.ModuleType("m"))
PYTHON_CALLABLES = (types.FunctionType, types.MethodType, types.GeneratorType)
LANGUAGE_DUNDERS = frozenset(
    {name for thing in PYTHON_OBJECTS + PYTHON_CALLABLES for name in dir(thing)}
    | {"__main__", "__future__", "__file__", "__all__", "__path__", "__getattr__"}
    | {"__enter__", "__exit__"}
)


@dataclass(frozen=True)
class Row:
    owner: str
    name: str
    kind: str
    signature: str  # "(self, queue)", or "—"
    where: tuple[str, ...]  # modules, relative to taskpool/
    checked: str  # "kombu 5.7.0", "Python 3.11.7"

    def __str__(self) -> str:
        return f"{self.owner}.{self.name}"


def _cell(text: str) -> str:
    return text.strip().strip("`")


def read_table(text: str) -> list[Row]:
    lines = [line.strip() for line in text.splitlines() if line.startswith("|")]
    header = [_cell(cell) for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        rows.append(
            Row(
                owner=_cell(cells["owner"]),
                name=_cell(cells["name"]),
                kind=cells["kind"],
                signature=_cell(cells["signature"]),
                where=tuple(_cell(module) for module in cells["where"].split(",")),
                checked=cells["checked against"],
            )
        )
    return rows


TEXT = TABLE.read_text()
ROWS = read_table(TEXT)


def is_private(name: str) -> bool:
    if name.startswith("__") and name.endswith("__"):
        return name not in LANGUAGE_DUNDERS
    return name.startswith("_") and name.strip("_") != ""


def resolve(owner: str) -> Any:
    """The module, class or function a dotted name is, importing the longest module in it."""
    parts = owner.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(owner)


@functools.cache
def names_in(thing: Any) -> frozenset[str]:
    """What a module's or class's own code names: its attributes, and in its source every
    attribute (``self._x``, ``obj._x``), string and function name."""
    names = set(vars(thing))
    try:
        source = textwrap.dedent(inspect.getsource(thing))
    except (OSError, TypeError):  # built in: no source
        return frozenset(names)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
    return frozenset(names)


def named_by(owner: Any, name: str) -> bool:
    """Whether ``owner`` has ``name``, or its code (a class's: along its bases) names it."""
    if hasattr(owner, name):
        return True
    if isinstance(owner, type):
        return any(name in names_in(cls) for cls in owner.__mro__ if cls is not object)
    return name in names_in(owner)


def parameters(func: Any) -> str:
    """A callable's parameter names as the table writes them: ``(self, queue, *args, **kw)``."""
    shown: list[str] = []
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            shown.append(f"*{param.name}")
        elif param.kind is param.VAR_KEYWORD:
            shown.append(f"**{param.name}")
        else:
            if param.kind is param.KEYWORD_ONLY and not any(s.startswith("*") for s in shown):
                shown.append("*")
            shown.append(param.name)
    return f"({', '.join(shown)})"


def installed(row: Row) -> str:
    """The installed version of what ``row`` was checked against, for failure messages."""
    project = row.checked.split()[0]
    if project == "Python":
        return f"Python {platform.python_version()}"
    return f"{project} {importlib.metadata.version(project)}"


# -- the scan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    module: str  # relative to taskpool/, as the table's "where" writes it
    line: int
    name: str
    how: str

    def __str__(self) -> str:
        return f"taskpool/{self.module}:{self.line}: {self.name} ({self.how})"


def _own_classes() -> dict[tuple[str, str], type]:
    """taskpool's classes, by (module path as the table writes it, qualified name)."""
    found: dict[tuple[str, str], type] = {}
    for info in pkgutil.walk_packages(taskpool.__path__, "taskpool."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line
        module = importlib.import_module(info.name)
        path = Path(inspect.getfile(module)).relative_to(PACKAGE).as_posix()
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == info.name:
                found[path, value.__qualname__] = value
    return found


def _library_names(classes: dict[tuple[str, str], type]) -> dict[tuple[str, str], frozenset[str]]:
    """For each of taskpool's classes, the names its library bases define. A mixin's methods
    run on its subclasses' instances, so it gets the names of their library bases too."""
    result: dict[tuple[str, str], frozenset[str]] = {}
    for key, cls in classes.items():
        names: set[str] = set()
        for user in classes.values():
            if cls in user.__mro__:
                for base in user.__mro__:
                    if not base.__module__.startswith("taskpool"):
                        names |= names_in(base)
        result[key] = frozenset(names)
    return result


class _Scan:
    """The private names one module uses on other libraries' objects."""

    def __init__(self, module: str, library: dict[tuple[str, str], frozenset[str]]) -> None:
        self.module, self.library = module, library
        self.uses: list[Use] = []
        self.seen: set[int] = set()  # string constants already counted (getattr's)

    def add(self, node: ast.AST, name: str, how: str) -> None:
        self.uses.append(Use(self.module, getattr(node, "lineno", 0), name, how))

    def bases_have(self, cls: str | None, name: str) -> bool:
        return cls is not None and name in self.library.get((self.module, cls), frozenset())

    def on(self, receiver: ast.expr, name: str, cls: str | None, node: ast.AST) -> None:
        """``receiver._name``: ``self``'s, ``cls``'s or ``super()``'s only if a library base of
        the class has the name; any other object's always."""
        ours = (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")) or (
            isinstance(receiver, ast.Call) and ast.unparse(receiver.func) == "super"
        )
        if not ours:
            self.add(node, name, f"on {ast.unparse(receiver)}")
        elif self.bases_have(cls, name):
            self.add(node, name, f"on {ast.unparse(receiver)}, a library base's")

    def visit(self, node: ast.AST, cls: str | None) -> None:
        if isinstance(node, ast.ClassDef):
            inner = f"{cls}.{node.name}" if cls else node.name
            for statement in node.body:
                self.defined_in_class(statement, inner)
            for child in ast.iter_child_nodes(node):
                self.visit(child, inner)
            return
        if isinstance(node, ast.JoinedStr):
            return  # an f-string's text is not a name
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            self.on(node.value, node.attr, cls, node)
        elif isinstance(node, ast.Call):
            self.visit_call(node, cls)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in self.seen and node.value.isidentifier() and is_private(node.value):
                self.add(node, node.value, "a string")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            self.visit_import(node)
        for child in ast.iter_child_nodes(node):
            self.visit(child, cls)

    def visit_call(self, node: ast.Call, cls: str | None) -> None:
        for keyword in node.keywords:
            if keyword.arg and is_private(keyword.arg):
                self.add(keyword, keyword.arg, "a keyword argument")
        accessors = ("getattr", "hasattr", "setattr", "delattr")
        if isinstance(node.func, ast.Name) and node.func.id in accessors and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                self.seen.add(id(name))
                if is_private(name.value):
                    self.on(node.args[0], name.value, cls, node)

    def visit_import(self, node: ast.Import | ast.ImportFrom) -> None:
        module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
        if (isinstance(node, ast.ImportFrom) and node.level) or module.startswith("taskpool"):
            return
        for alias in node.names:
            dotted = f"{module}.{alias.name}" if module else alias.name
            if alias.name.startswith("taskpool"):
                continue
            if any(is_private(part) for part in dotted.split(".")):
                self.add(node, alias.name, f"imported from {module or dotted}")

    def defined_in_class(self, statement: ast.stmt, cls: str) -> None:
        """A method or class attribute that a library base of ``cls`` has: an override."""
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [statement.name]
        elif isinstance(statement, ast.Assign):
            names = [t.id for t in statement.targets if isinstance(t, ast.Name)]
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names = [statement.target.id]
        else:
            return
        for name in names:
            if is_private(name) and self.bases_have(cls, name):
                self.add(statement, name, f"overrides a library base's, in {cls}")


@functools.cache
def library_uses() -> tuple[Use, ...]:
    library = _library_names(_own_classes())
    uses: list[Use] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        scan = _Scan(path.relative_to(PACKAGE).as_posix(), library)
        scan.visit(ast.parse(path.read_text()), None)
        uses += scan.uses
    return tuple(uses)


def _listed() -> Iterator[tuple[str, str]]:
    for row in ROWS:
        for module in row.where:
            yield module, row.name


# -- the tests -----------------------------------------------------------------------------


def test_the_table_is_well_formed_and_its_count_is_the_number_of_rows() -> None:
    assert sum(line.startswith("| owner |") for line in TEXT.splitlines()) == 1, "one table"
    stated = re.search(r"(\d+) names in all", TEXT)
    assert stated and int(stated[1]) == len(ROWS), "the intro's count is the number of rows"
    assert len({(row.owner, row.name) for row in ROWS}) == len(ROWS), "a row for each name"
    for row in ROWS:
        assert row.kind in KINDS, f"{row}: kind {row.kind!r}, not one of {sorted(KINDS)}"
        callable_kind = row.kind in CALLABLE_KINDS
        assert callable_kind == row.signature.startswith("("), f"{row}: signature {row.signature}"
        for module in row.where:
            assert (PACKAGE / module).is_file(), f"{row}: no module taskpool/{module}"


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_each_listed_name_is_still_in_its_library_with_the_parameters_recorded(row: Row) -> None:
    versions = f"checked against {row.checked}, installed {installed(row)}"
    owner = resolve(row.owner)
    if row.kind in CALLABLE_KINDS:
        func = getattr(owner, row.name, None)
        assert callable(func), f"{row} is gone ({versions}); see docs/PRIVATE_API.md"
        assert parameters(func) == row.signature, (
            f"{row} now takes {parameters(func)}, not {row.signature} ({versions}): check "
            "taskpool's use of it (docs/PRIVATE_API.md), then update the table's signature"
        )
    else:
        assert named_by(owner, row.name), f"{row} is gone ({versions}); see docs/PRIVATE_API.md"


def test_every_private_name_of_another_library_that_taskpool_uses_is_listed() -> None:
    listed = set(_listed())
    unlisted = [str(use) for use in library_uses() if (use.module, use.name) not in listed]
    assert not unlisted, (
        "private names of other libraries with no row for their module in "
        "docs/PRIVATE_API.md; add one (owner, why, could go), or use a public name:\n"
        + "\n".join(unlisted)
    )


def test_every_row_is_still_used_where_the_table_says() -> None:
    used = {(use.module, use.name) for use in library_uses()}
    stale = [
        f"{name} in taskpool/{module}" for module, name in _listed() if (module, name) not in used
    ]
    assert not stale, "rows of docs/PRIVATE_API.md no longer used there: " + ", ".join(stale)
