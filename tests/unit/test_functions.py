"""The task bodies as plain functions."""

from __future__ import annotations

import io
import os
import sys

import pytest

from taskpool.examples import print_number, square


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (10, 100), (-7, 49), (2**40, 2**80)])
def test_square_of_an_int(n: int, expected: int) -> None:
    assert square(n) == expected


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("4", "str"), (4.0, "float"), (None, "NoneType"), (True, "bool"), ([4], "list")],
)
def test_square_refuses_anything_but_an_int_naming_its_type(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=f"expected an int, got {type_name}"):
        square(value)  # type: ignore[arg-type]  # the wrong type is the point


def test_print_number_prints_the_classic_line_and_says_who_ran_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = print_number(3, hostname="w1@example")
    assert capsys.readouterr().out == f"Process ID: {os.getpid()} - Number: 3\n"
    assert report == {"number": 3, "pid": os.getpid(), "hostname": "w1@example"}


def test_print_number_writes_its_line_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool processes share stdout: a line written in two pieces can be split by another's."""
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr(sys, "stdout", Recording())
    print_number(5, hostname="x")
    assert [w for w in writes if w] == [f"Process ID: {os.getpid()} - Number: 5\n"]


def test_print_number_refuses_a_non_int() -> None:
    with pytest.raises(TypeError, match="got str"):
        print_number("3", hostname="x")  # type: ignore[arg-type]  # the wrong type is the point
