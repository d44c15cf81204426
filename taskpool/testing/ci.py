"""A test whose setup lacks a piece (a redis-server, network namespaces, Docker's compose) is
skipped on a developer's machine and fails under CI (``CI`` set to 1, true or yes), where a
skip would hide what CI was meant to run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; fail with it under CI."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)
