"""Stock Celery for comparison: a plain ``Celery(broker=..., backend=...)`` with default settings.

The same task bodies as the project (``taskpool/examples.py``), registered under the same names,
and nothing else: no FallbackTask, no taskpool settings. The broker and result store URL comes
from ``BENCH_STOCK_URL``, read when ``app`` is first used (``celery -A bench.stock_app worker``
or ``from bench.stock_app import app``), never at import, and never defaulted: stock Celery's
own default broker is ``amqp://localhost``, which the benchmark must not touch.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from celery import Celery

# Plain functions only: importing this module of taskpool loads nothing else of it.
from taskpool import examples

URL_VARIABLE = "BENCH_STOCK_URL"


@functools.cache
def make_app() -> Celery:
    url = os.environ.get(URL_VARIABLE, "").strip()
    if not url.startswith("redis://127.0.0.1:"):
        raise SystemExit(f"{URL_VARIABLE} must be a loopback redis:// URL, got {url!r}")
    app = Celery("bench.stock_app", broker=url, backend=url)
    app.task(name="tasks.square")(examples.square)
    app.task(name="tasks.sum_of_squares")(examples.sum_of_squares)
    return app


def __getattr__(name: str) -> Any:
    # PEP 562: `celery -A bench.stock_app` and `from bench.stock_app import app` build it here.
    if name in ("app", "celery"):
        return make_app()
    raise AttributeError(name)
