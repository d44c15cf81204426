"""The shared slots a fetching pool's processes say what they run in (taskpool/slots.py)."""

from __future__ import annotations

import os

import pytest

from taskpool.slots import SLOT_SIZE, Slots


def test_an_entry_written_is_read_back_with_a_sequence_that_grows_by_two() -> None:
    slots = Slots(2)
    first, empty = slots.read(1)
    assert empty is None
    slots.write(1, {"task": {"id": "a"}})
    second, entry = slots.read(1)
    assert entry == {"task": {"id": "a"}} and second == first + 2
    assert slots.read(0)[1] is None, "a write touches its own slot only"
    slots.clear(1)
    assert slots.read(1) == (first + 4, None)


def test_a_write_in_a_forked_process_is_seen_by_its_parent() -> None:
    slots = Slots(1)
    pid = os.fork()
    if pid == 0:  # the child: write, and leave without running the parent's cleanup
        slots.write(0, {"consumer": "child"})
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert slots.read(0)[1] == {"consumer": "child"}


def test_an_entry_too_big_for_its_slot_is_refused_and_the_slot_keeps_its_last() -> None:
    slots = Slots(1)
    slots.write(0, {"n": 1})
    with pytest.raises(ValueError, match="slot entry of"):
        slots.write(0, {"x": "y" * SLOT_SIZE})
    assert slots.read(0)[1] == {"n": 1}
