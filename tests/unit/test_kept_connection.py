"""taskpool.kept_connection with a stand-in pool: which connection each publish gets."""

from __future__ import annotations

import os
from typing import Any

from taskpool.kept_connection import KeptConnection


class FakeConnection:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.disconnects = 0

    def disconnect(self) -> None:
        self.disconnects += 1


class FakePool:
    connection_class = FakeConnection

    def __init__(self) -> None:
        self.connection_kwargs = {"port": 1}
        self.lent: list[FakeConnection] = []
        self.released: list[FakeConnection] = []

    def get_connection(self) -> FakeConnection:
        self.lent.append(FakeConnection())
        return self.lent[-1]

    def release(self, connection: FakeConnection) -> None:
        self.released.append(connection)


def test_one_connection_is_kept_and_made_from_the_pools_class_and_arguments() -> None:
    kept, pool = KeptConnection(), FakePool()
    with kept.use(pool) as first:
        pass
    with kept.use(pool) as second:
        pass
    assert first is second and first.kwargs == {"port": 1} and pool.lent == []


def test_a_publish_that_finds_it_in_use_borrows_from_the_pool_and_gives_back() -> None:
    kept, pool = KeptConnection(), FakePool()
    with kept.use(pool) as outer, kept.use(pool) as inner:
        assert inner is not outer and pool.lent == [inner]
    assert pool.released == [inner]
    with kept.use(pool) as again:
        assert again is outer


def test_close_and_a_new_pool_replace_it_and_a_forked_child_leaves_the_parents_alone() -> None:
    kept, pool = KeptConnection(), FakePool()
    with kept.use(pool) as first:
        pass
    with kept.use(FakePool()) as second:
        assert second is not first and first.disconnects == 1
    kept.close()
    assert second.disconnects == 1
    with kept.use(pool) as third:
        pass
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports whether it made its own, without closing the parent's
        with kept.use(pool) as child:
            os.write(write, b"1" if child is not third and third.disconnects == 0 else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    with kept.use(pool) as parents:
        assert parents is third
