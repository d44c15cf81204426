"""A Redis connection each thread keeps for its publishes, beside the channel's pool.

Taking a connection from redis-py's pool and giving it back (its lock, its bookkeeping, its
events) cost about a tenth of a publish's client CPU (bench/README.md). A thread that keeps a
connection of its own for its publishes skips that; before each publish it still checks, as
the pool does, that the server has not closed the connection meanwhile.

Each thread gets a connection of its own, made from the pool's own class and arguments (a
Sentinel pool's connections still ask the Sentinels for the master when they connect). It is
made again in a forked child, for a new pool, and after ``close``; it connects again by
itself when its connection was dropped. It is not counted against the pool's
``max_connections``: a thread's publishes take one connection, as through the pool.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import redis


class ThreadConnections:
    """One connection per thread (and process) for a pool's publishes."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: weakref.WeakSet[Any] = weakref.WeakSet()

    def get(self, pool: Any) -> Any:
        """This thread's connection to ``pool``'s server, made on first use."""
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.pool is not pool or local.pid != os.getpid():
            connection = pool.connection_class(**pool.connection_kwargs)
            local.connection, local.pool, local.pid = connection, pool, os.getpid()
            with self._lock:
                self._made.add(connection)
        elif _stale(connection):
            connection.disconnect()  # it connects again when next used
        return connection

    def close(self) -> None:
        """Disconnect every thread's connection made in this process; each thread makes a new
        one on its next use."""
        with self._lock:
            made, self._made = list(self._made), weakref.WeakSet()
        for connection in made:
            connection.disconnect()  # redis-py shuts a socket down only in its own process
        self._local = threading.local()


def _stale(connection: Any) -> bool:
    """Whether a kept connection was closed by the server, or holds data no one asked for, as
    redis-py's pool checks (``ConnectionPool.ensure_connection``)."""
    try:
        return bool(connection.can_read())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return True
