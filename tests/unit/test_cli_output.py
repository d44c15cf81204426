"""The map command's result lines: exactly ``json.dumps`` of each result, a chunk at a time."""

from __future__ import annotations

import enum
import json

from taskpool.cli import _json_lines_of


class Level(enum.IntEnum):
    HIGH = 3


def test_a_chunk_of_plain_ints_reads_as_json_dumps_of_each() -> None:
    values = [0, -7, 49, 2**70]
    assert _json_lines_of(values) == ("".join(f"{json.dumps(v)}\n" for v in values), 0)


def test_ints_beside_other_values_keep_json_spelling_and_failures_are_counted() -> None:
    failure = TypeError("expected an int, got str: 'x'")
    values = [True, 4, Level.HIGH, 2.5, float("nan"), "a\nb", None, {"k": [1]}, failure]
    text, failed = _json_lines_of(values)
    error = {"error": {"type": "TypeError", "message": str(failure)}}
    expected = [json.dumps(v) for v in values[:-1]] + [json.dumps(error)]
    assert text.splitlines() == expected and text.endswith("\n")
    assert text.splitlines()[:3] == ["true", "4", "3"] and failed == 1


def test_an_empty_chunk_writes_nothing() -> None:
    assert _json_lines_of([]) == ("", 0)
