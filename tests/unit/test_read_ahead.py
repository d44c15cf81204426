"""taskpool.read_ahead's bookkeeping: which tasks a read takes ahead, what it keeps, and the
bounds on both. The reads themselves, on a real Redis: tests/integration/test_result_store.py."""

from __future__ import annotations

import json
from typing import Any

from celery import states

from taskpool import read_ahead
from taskpool.read_ahead import LARGEST, MOST, ReadAhead


def success(value: Any) -> bytes:
    return json.dumps({"status": states.SUCCESS, "result": value}).encode()


def sent(count: int) -> ReadAhead:
    ahead = ReadAhead()
    for n in range(count):
        ahead.sent(f"t{n}")
    return ahead


def test_the_next_tasks_sent_are_read_ahead_in_order_and_the_read_one_is_not() -> None:
    ahead = sent(6)
    ahead._size = 3
    assert ahead.next_ids("t2") == ["t0", "t1", "t3"]
    assert ahead.next_ids("t4") == ["t5"]
    assert ahead.next_ids("t9") == []


def test_a_success_read_ahead_is_taken_once() -> None:
    ahead = sent(2)
    ahead.found(ahead.next_ids("t0"), [success(4)], json.loads)
    assert ahead.take("t1") == {"status": states.SUCCESS, "result": 4}
    assert ahead.take("t1") is None
    assert ahead._kept == {}


def test_only_a_whole_stored_success_is_kept() -> None:
    ahead = sent(7)
    ahead._size = 6
    ids = ahead.next_ids("t0")
    failure = json.dumps({"status": states.FAILURE, "result": {}}).encode()
    started = json.dumps({"status": states.STARTED, "result": None}).encode()
    cut_short = success("x" * LARGEST)[: LARGEST + 1]  # as GETRANGE 0 LARGEST returns it
    values = [b"", failure, started, cut_short, b"not json", ValueError("WRONGTYPE")]
    ahead.found(ids, values, json.loads)
    assert ahead._kept == {}


def test_how_many_are_read_ahead_follows_what_is_found() -> None:
    ahead = sent(1000)
    sizes = []
    for _ in range(8):  # every one found a success
        ids = ahead.next_ids("none")
        sizes.append(len(ids))
        ahead.found(ids, [success(1)] * len(ids), json.loads)
        for task_id in ids:
            ahead.take(task_id)
    assert sizes == [1, 2, 4, 8, 16, 32, MOST, MOST]
    ids = ahead.next_ids("none")
    ahead.found(ids, [b""] * len(ids), json.loads)  # none stored yet: the workers are behind
    ids = ahead.next_ids("none")
    assert len(ids) == MOST // 2
    while ids:
        ahead.found(ids, [b""] * len(ids), json.loads)
        ids = ahead.next_ids("none")
    assert ahead.next_ids("none") == []  # none read ahead while the client is ahead of them
    ahead.stored()  # until a read finds its own result stored
    assert len(ahead.next_ids("none")) == 1


def test_the_tasks_sent_first_are_handed_out_once_each() -> None:
    ahead = sent(5)
    assert ahead.pending(2) == ["t0", "t1"]
    ahead.forget("t2")
    assert ahead.pending(9) == ["t3", "t4"]
    assert ahead.pending(1) == []


def test_nothing_more_is_read_ahead_while_as_many_as_kept_are_unasked(monkeypatch: Any) -> None:
    monkeypatch.setattr(read_ahead, "KEPT", 3)
    ahead = sent(10)
    ahead._size = 4
    ahead.found(ahead.next_ids("none"), [success(n) for n in range(4)], json.loads)
    assert len(ahead._kept) == 4 and ahead.next_ids("none") == []
    ahead.take("t0")
    ahead.forget("t1")
    assert ahead.next_ids("none") == ["t4", "t5", "t6", "t7", "t8", "t9"][: ahead._size]


def test_a_task_forgotten_is_neither_read_ahead_nor_kept() -> None:
    ahead = sent(3)
    ahead._size = 1
    ahead.found(ahead.next_ids("none"), [success(0)], json.loads)  # t0 kept
    ahead.forget("t0")
    ahead.forget("t1")
    assert ahead.take("t0") is None and ahead._kept == {}
    assert ahead.next_ids("none") == ["t2"]


def test_a_task_not_stored_yet_goes_back_first_in_line() -> None:
    ahead = sent(4)
    ahead._size = 3
    ids = ahead.next_ids("none")
    ahead.found(ids, [b"", success(1), b""], json.loads)
    assert ahead.pending(9) == ["t0", "t2", "t3"]


def test_a_task_forgotten_while_it_is_read_ahead_is_not_kept_nor_put_back() -> None:
    ahead = sent(3)
    ahead._size = 2
    ids = ahead.next_ids("none")
    ahead.forget("t0")  # its AsyncResult gone while the read was on its way
    ahead.forget("t1")
    ahead.found(ids, [b"", success(1)], json.loads)
    assert (ahead._kept, ahead.pending(9), ahead._out) == ({}, ["t2"], set())
