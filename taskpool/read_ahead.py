"""Results read ahead: a client that reads one result reads the next ones it sent with it.

A script that sends many tasks and then reads their results one by one (``[r.get() for r in
results]``) spent one round trip to Redis on each, about two thirds of a ``.get()``'s CPU
(bench/README.md). Here the read of one result also takes, in the same round trip, the results
of the tasks this process sent first among those whose ``AsyncResult`` it holds unread: in a
script that reads its results in turn, the next ones. It keeps each success found for its own
``.get()``, which then reads nothing from Redis. Only successes are
kept: a success stored is never overwritten (``store_result.lua``, as Celery's own
``_store_result``), so what was read ahead is still what a read would find; any other state
is read when it is asked for, and a task whose result is not stored yet goes back first in
line, to be read ahead later.

How many are read ahead adapts to what is found: it doubles while every one read ahead is a
success, up to ``MOST``, and halves when fewer than half are, down to none while the client
reads faster than the workers store (``stored`` starts it again). Such a client's wait
subscribes to the next tasks sent with the one it waits for (``pending``,
``taskpool.result_consumer``).

What is kept is bounded: a result larger than ``LARGEST`` is read when asked for, not ahead;
nothing more is read ahead while ``KEPT`` results are kept unasked (at most ``KEPT * LARGEST``
bytes); and a task's entries go when its ``AsyncResult`` does (``forget``, called from Celery's
``remove_pending_result``), so a client that sends and drops its results keeps nothing.

Each step is one operation on a dict, atomic under the GIL, with no lock: ``forget`` runs from
an ``AsyncResult``'s ``__del__``, which the garbage collector may call in any thread, also in
the middle of a read here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from celery import states

#: The most results one read takes ahead of it.
MOST = 32
#: The largest stored result read ahead, in bytes; a larger one is read when asked for.
LARGEST = 16 * 1024
#: Results read ahead and not asked for yet, past which nothing more is read ahead.
KEPT = 256


class ReadAhead:
    """The tasks this process sent and may read, and the successes read ahead for them."""

    def __init__(self) -> None:
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._kept: dict[str, dict[str, Any]] = {}
        self._out: set[str] = set()  # being read ahead (next_ids until found)
        self._size = 1

    def sent(self, task_id: str) -> None:
        """A task sent from this process, whose ``AsyncResult`` it now holds."""
        self._sent[task_id] = None

    def forget(self, task_id: str) -> None:
        """The task's result was read, forgotten, or its ``AsyncResult`` is gone."""
        self._sent.pop(task_id, None)
        self._kept.pop(task_id, None)
        self._out.discard(task_id)

    def take(self, task_id: str) -> dict[str, Any] | None:
        """The success read ahead for ``task_id``, once; None if there is none."""
        return self._kept.pop(task_id, None)

    def next_ids(self, task_id: str) -> list[str]:
        """The tasks to read ahead with ``task_id``'s result: the next ones sent. Each is
        handed to ``found`` with what the read found."""
        self._sent.pop(task_id, None)
        if len(self._kept) >= KEPT:
            return []
        ids = self.pending(self._size)
        self._out.update(ids)
        return ids

    def pending(self, count: int) -> list[str]:
        """Up to ``count`` of the tasks sent first among those not read yet, taken off the
        list."""
        ids: list[str] = []
        while len(ids) < count:
            try:
                ids.append(self._sent.popitem(last=False)[0])
            except KeyError:  # none left
                break
        return ids

    def stored(self) -> None:
        """A read found its own result stored: the workers may have caught up."""
        self._size = self._size or 1

    def found(
        self,
        ids: Sequence[str],
        values: Sequence[Any],
        decode: Callable[[Any], dict[str, Any]],
    ) -> None:
        """Keep the successes among ``values``, read ahead for ``ids`` (a value, or an error
        or a missing key's ``b""`` in its place), and put the tasks whose result is not stored
        yet back first in line; adapt how many are read next."""
        successes, waiting = 0, []
        for task_id, value in zip(ids, values, strict=True):
            meta = _success(value, decode)
            if meta is not None:
                successes += 1
                self._kept[task_id] = meta
            elif value in (b"", ""):
                waiting.append(task_id)
        for task_id in reversed(waiting):
            self._sent[task_id] = None
            self._sent.move_to_end(task_id, last=False)
        for task_id in ids:
            # Its AsyncResult may have gone while it was read (forget): what was put back or
            # kept for it above goes too. Kept or put back first, then checked, so that a
            # forget between any two of these steps is seen.
            try:
                self._out.remove(task_id)
            except KeyError:
                self._sent.pop(task_id, None)
                self._kept.pop(task_id, None)
        if successes == len(ids):
            self._size = min(self._size * 2, MOST)
        elif successes * 2 < len(ids):
            self._size //= 2


def _success(value: Any, decode: Callable[[Any], dict[str, Any]]) -> dict[str, Any] | None:
    """The stored success ``value`` holds whole, decoded; None for anything else: not stored,
    not a string, cut short, not readable, or another state (each read when asked for)."""
    if not isinstance(value, (bytes, str)) or not value or len(value) > LARGEST:
        return None
    try:
        meta = decode(value)
    except Exception:  # noqa: BLE001 - its own read raises what it should
        return None
    return meta if meta.get("status") == states.SUCCESS else None
