"""The ``argsrepr`` the quick publish writes is Celery's ``saferepr``, character for character."""

from __future__ import annotations

import random
from typing import Any

import pytest
from celery.utils.saferepr import saferepr

from taskpool.quick_publish import shown

SCALARS: list[Any] = [0, 7, -3, 2**53, -(2**200), True, False, None, 0.5, -1e300, float("inf")]


def _values(seed: int) -> list[Any]:
    """Flat lists and tuples of numbers, some too long for the limit, and what is not one."""
    draw = random.Random(seed)
    values: list[Any] = [(), [], {}, {"a": 1}, ("a\nb",), (1, "x"), ([1],), (1.5,), [None]]
    for _ in range(400):
        items = [draw.choice(SCALARS) for _ in range(draw.randint(0, 300))]
        values.append(tuple(items) if draw.random() < 0.5 else items)
    return values


@pytest.mark.parametrize("maxsize", [1024, 64, 8])
def test_shown_is_celerys_saferepr(maxsize: int) -> None:
    for value in _values(maxsize):
        assert shown(value, maxsize, 3) == saferepr(value, maxsize, maxlevels=3), value


def test_a_value_past_the_limit_is_cut_as_saferepr_cuts_it() -> None:
    value = tuple(range(1000))
    assert len(repr(value)) > 1024
    assert shown(value, 1024, 3) == saferepr(value, 1024, maxlevels=3) != repr(value)
