"""What each process of a fetching pool is running, in memory its parent reads without asking.

One slot per process, in an anonymous shared mapping made before the fork. A process writes
its slot when a task starts and clears it when the task ends; the parent reads every slot a few
times a second to enforce time limits, find a task by id and settle the task of a process that
died. Neither waits for the other: a write bumps a sequence number to odd, writes, and bumps it
to even again, and a read that saw the number odd or changed reads again (a seqlock).
"""

from __future__ import annotations

import json
import mmap
import struct
from typing import Any

#: Bytes per slot: the header (sequence number, length) and the JSON of what runs, with a copy
#: of its message (``taskpool.fetching_process.copied``).
SLOT_SIZE = 64 * 1024
HEADER = struct.Struct("<QI")
#: How often a read tries again while the process is writing (writes take microseconds).
READ_TRIES = 1000


class Slots:
    """``count`` slots in memory shared with every process forked after it was made."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._memory = mmap.mmap(-1, SLOT_SIZE * count)

    def write(self, index: int, running: dict[str, Any] | None) -> None:
        """Say what process ``index`` runs now (None: nothing). Only that process writes it."""
        data = b"" if running is None else json.dumps(running).encode()
        if len(data) > SLOT_SIZE - HEADER.size:
            raise ValueError(f"slot entry of {len(data)} bytes: at most {SLOT_SIZE - HEADER.size}")
        at = index * SLOT_SIZE
        sequence, _ = HEADER.unpack_from(self._memory, at)
        HEADER.pack_into(self._memory, at, sequence + 1, 0)
        self._memory[at + HEADER.size : at + HEADER.size + len(data)] = data
        HEADER.pack_into(self._memory, at, sequence + 2, len(data))

    def read(self, index: int) -> tuple[int, dict[str, Any] | None]:
        """What process ``index`` runs, and the sequence number it was read at (it grows by
        two with each write, so a task that ended meanwhile is told from one still running)."""
        at = index * SLOT_SIZE
        for _ in range(READ_TRIES):
            sequence, length = HEADER.unpack_from(self._memory, at)
            if sequence % 2:
                continue
            data = bytes(self._memory[at + HEADER.size : at + HEADER.size + length])
            if HEADER.unpack_from(self._memory, at)[0] == sequence:
                return sequence, json.loads(data) if data else None
        raise RuntimeError(f"slot {index} was being written through {READ_TRIES} reads")

    def clear(self, index: int) -> None:
        """Empty the slot of a process that is gone, for the one that replaces it."""
        self.write(index, None)

    def close(self) -> None:
        self._memory.close()
