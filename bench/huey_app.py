"""Huey as a peer for ``python -m bench compare``: a ``RedisHuey`` with results in Redis.

The same task body as the project's (``taskpool/examples.py``), and Huey's defaults otherwise,
except ``notify_result=True``: a blocking ``result.get(blocking=True)`` then waits on a BLPOP
that the consumer pushes to when it stores the result, instead of polling the result hash with
a back-off that starts at 50 ms (Huey's documented option for low-latency results; without it
the latency workload measures Huey's poll interval, not its round trip).

The Redis URL comes from ``BENCH_HUEY_URL``, read when ``huey`` is first used
(``huey_consumer bench.huey_app.huey`` or ``from bench.huey_app import huey``), never at
import, and never defaulted: Huey's own default is ``localhost:6379``, which the benchmark must
not touch.

    huey_consumer bench.huey_app.huey -w 2 -k process -q
"""

from __future__ import annotations

import functools
import os
from typing import Any

from huey import RedisHuey

# Plain functions only: importing this module of taskpool loads nothing else of it.
from taskpool import examples

URL_VARIABLE = "BENCH_HUEY_URL"


@functools.cache
def make_huey() -> tuple[RedisHuey, Any]:
    """The Huey instance and its ``square`` task."""
    url = os.environ.get(URL_VARIABLE, "").strip()
    if not url.startswith("redis://127.0.0.1:"):
        raise SystemExit(f"{URL_VARIABLE} must be a loopback redis:// URL, got {url!r}")
    huey = RedisHuey("bench", url=url, results=True, notify_result=True)
    square = huey.task(name="square")(examples.square)
    return huey, square


def __getattr__(name: str) -> Any:
    # PEP 562: `huey_consumer bench.huey_app.huey` and `from bench.huey_app import square`.
    if name == "huey":
        return make_huey()[0]
    if name == "square":
        return make_huey()[1]
    raise AttributeError(name)
