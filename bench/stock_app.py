"""Stock Celery for comparison: a plain ``Celery(broker=..., backend=...)`` with default settings.

The same task bodies as the project (``tasks/functions.py``), registered under the same names,
and nothing else: no FallbackTask, no taskpool settings. The broker and result store URL comes
from ``BENCH_STOCK_URL``, read when ``app`` is first used (``celery -A bench.stock_app worker``
or ``from bench.stock_app import app``), never at import, and never defaulted: stock Celery's
own default broker is ``amqp://localhost``, which the benchmark must not touch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery

URL_VARIABLE = "BENCH_STOCK_URL"


FUNCTIONS = Path(__file__).resolve().parents[1] / "tasks" / "functions.py"


def plain_functions() -> ModuleType:
    """tasks/functions.py loaded by path: ``import tasks.functions`` would run the ``tasks``
    package, whose app registers shared tasks (and imports taskpool) into every app."""
    name = "bench._stock_functions"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FUNCTIONS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@functools.cache
def make_app() -> Celery:
    url = os.environ.get(URL_VARIABLE, "").strip()
    if not url.startswith("redis://127.0.0.1:"):
        raise SystemExit(f"{URL_VARIABLE} must be a loopback redis:// URL, got {url!r}")
    app = Celery("bench.stock_app", broker=url, backend=url)
    functions = plain_functions()
    app.task(name="tasks.square")(functions.square)
    app.task(name="tasks.sum_of_squares")(functions.sum_of_squares)
    return app


def __getattr__(name: str) -> Any:
    # PEP 562: `celery -A bench.stock_app` and `from bench.stock_app import app` build it here.
    if name in ("app", "celery"):
        return make_app()
    raise AttributeError(name)
