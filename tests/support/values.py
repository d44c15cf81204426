"""Argument values the tests build: deeply nested ones."""

from __future__ import annotations


def nested(levels: int, kind: type = list) -> object:
    """``levels`` lists (or dicts, under key "k") one inside the next, around the number 1."""
    value: object = 1
    for _ in range(levels):
        value = [value] if kind is list else {"k": value}
    return value
