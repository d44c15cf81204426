"""The Redis connection a channel keeps for its publishes, and a result store for its writes,
beside their pool.

Taking a connection from redis-py's pool and giving it back (its lock, its bookkeeping, its
events, its check of deprecated arguments) cost about a tenth of a publish's client CPU
(bench/README.md), and about as much of a fetching pool process's result write. A channel
keeps one connection for its publishes, and a result store one for its result script and its
reads, and skip that; each use still has the pool check the connection first
(``ConnectionPool.ensure_connection``, as for a connection the pool hands out).

One thread at a time uses it: a publish that finds it in use (threads, greenlets) takes a
connection from the pool and gives it back, as kombu's publish does, so a channel never holds
more than one connection outside its pool's ``max_connections``, however many threads come and
go. The kept connection is made from the pool's own class and arguments (a Sentinel pool's
connections still ask the Sentinels for the primary when they connect); it is made again for a
new pool, after ``close`` and in a forked child (which leaves the parent's socket alone).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis


class _Kept(NamedTuple):
    pool: Any
    connection: Any
    lock: threading.Lock


class KeptConnection:
    """One connection a channel keeps for its publishes, for one thread at a time."""

    def __init__(self) -> None:
        self._kept: _Kept | None = None
        self._making = threading.Lock()
        _instances.add(self)

    @contextmanager
    def use(self, pool: Any) -> Iterator[Any]:
        """A connection to ``pool``'s server for one publish: the kept one if no one else is
        using it, else one of the pool's."""
        kept = self._kept
        if kept is None or kept.pool is not pool:
            kept = self._make(pool)
        if not kept.lock.acquire(blocking=False):
            connection = pool.get_connection()
            try:
                yield connection
            finally:
                pool.release(connection)
            return
        try:
            yield kept.connection
        finally:
            kept.lock.release()

    def send(self, pool: Any, pack: Callable[[Any], list[bytes]], replies: int) -> list[Any]:
        """Send what ``pack`` packs on a connection of ``pool``'s server (``use``), in one write,
        and read ``replies`` replies, an error reply as its exception (in its place: every reply
        is read, so the connection stays in step).

        Adapted from redis-py 8.2.0's pipeline: a connection error disconnects and the whole is
        sent again under the connection's retry policy; any other failure disconnects, since a
        reply may be left unread.
        """
        with self.use(pool) as connection:

            def send() -> list[Any]:
                # Connected, and dropped first if the server closed it or it holds a reply no
                # one asked for, as the pool checks what it hands out; not left to redis-py's
                # send, which would connect a Sentinel's connection without asking for the
                # primary (to localhost).
                pool.ensure_connection(connection)
                connection.send_packed_command(pack(connection))
                read: list[Any] = []
                for _ in range(replies):
                    try:
                        read.append(connection.read_response())
                    except redis.exceptions.ResponseError as exc:
                        read.append(exc)
                return read

            try:
                return list(
                    connection.retry.call_with_retry(send, lambda _: connection.disconnect())
                )
            except BaseException:
                connection.disconnect()
                raise

    def _make(self, pool: Any) -> _Kept:
        with self._making:
            kept = self._kept
            if kept is None or kept.pool is not pool:
                old, kept = (
                    kept,
                    _Kept(pool, pool.connection_class(**pool.connection_kwargs), threading.Lock()),
                )
                self._kept = kept
                if old is not None and old.lock.acquire(blocking=False):
                    old.connection.disconnect()  # in use: its publish finishes on it first
                    old.lock.release()
            return kept

    def close(self) -> None:
        """Disconnect the kept connection; the next publish makes a new one."""
        with self._making:
            kept, self._kept = self._kept, None
        if kept is not None:
            kept.connection.disconnect()

    def forget(self) -> None:
        # In a forked child: the parent's socket is not this process's to close, and a lock
        # held by a thread of the parent at the fork would never be released here.
        self._kept = None
        self._making = threading.Lock()


_instances: weakref.WeakSet[KeptConnection] = weakref.WeakSet()


def _forget_all() -> None:
    for instance in list(_instances):
        instance.forget()


os.register_at_fork(after_in_child=_forget_all)
