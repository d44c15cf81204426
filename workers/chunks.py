"""Chunks of inputs: how they are cut, sized, and run in one go inside a pool process."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import msgpack
from celery import Task, shared_task

#: Largest automatic chunk: big enough that per-message costs vanish, small enough that a
#: chunk redelivered after a crash is cheap to redo and progress moves often.
MAX_AUTO_CHUNKSIZE = 100_000
#: Chunk size when the input's length is unknown (a generator), tuned in bench/map_throughput.py.
STREAM_CHUNKSIZE = 10_000
#: Chunks per process when the length is known, as ``multiprocessing.Pool.map`` does (4).
CHUNKS_PER_PROCESS = 8


def auto_chunksize(length: int | None, processes: int) -> int:
    """Pool.map's rule (length / (4 x processes), rounded up), capped; a fixed size for streams."""
    if length is None:
        return STREAM_CHUNKSIZE
    size, extra = divmod(length, processes * CHUNKS_PER_PROCESS)
    return max(1, min(MAX_AUTO_CHUNKSIZE, size + bool(extra)))


def chunked(inputs: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Cut ``inputs`` into lists of ``size`` items, reading only one chunk ahead."""
    iterator = iter(inputs)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class ChunkOutcome:
    """One chunk's results: a value per input, and the failures by position in the chunk."""

    values: list[Any]
    errors: list[tuple[int, BaseException]] = field(default_factory=list)


def run_items(task: Task, items: list[Any], hostname: str | None) -> ChunkOutcome:
    """Run ``task``'s body on each item, in this process; a failure does not stop the chunk.

    Bound tasks (``bind=True``) see a request naming the node that runs them.
    """
    body = task.run
    context = _request(task, hostname) if hasattr(body, "__self__") else nullcontext()
    values: list[Any] = []
    errors: list[tuple[int, BaseException]] = []
    append = values.append
    with context:
        while len(values) < len(items):
            try:  # one try around the loop, resumed after each failure: each item runs once
                for item in itertools.islice(items, len(values), None):
                    append(body(item))
            except Exception as exc:  # reported per input, the chunk goes on
                errors.append((len(values), exc))
                append(None)
    return ChunkOutcome(values, errors)


class _request:
    def __init__(self, task: Task, hostname: str | None) -> None:
        self.task, self.hostname = task, hostname

    def __enter__(self) -> None:
        self.task.push_request(hostname=self.hostname, is_eager=self.hostname is None)

    def __exit__(self, *_: object) -> None:
        self.task.pop_request()


def pack(values: list[Any]) -> dict[str, Any]:
    """Wrap a list for a JSON message: msgpack in base64 when msgpack can carry it, else as is.

    Measured in bench/map_throughput.py: JSON-encoding a million ints per direction cost more
    than the work. msgpack is a data-only format (decoding it runs no code, unlike pickle), and
    a base64 string passes through JSON at memcpy speed. Ints beyond 64 bits, and anything else
    msgpack refuses, travel as plain JSON.
    """
    try:
        return {"msgpack": base64.b64encode(msgpack.packb(values)).decode("ascii")}
    except (TypeError, ValueError, OverflowError):
        return {"json": values}


def unpack(packed: dict[str, Any]) -> list[Any]:
    """The list that ``pack`` wrapped."""
    if "msgpack" in packed:
        return msgpack.unpackb(base64.b64decode(packed["msgpack"]), strict_map_key=False)  # type: ignore[no-any-return]
    return packed["json"]  # type: ignore[no-any-return]


@shared_task(name="taskpool.run_chunk", bind=True)
def run_chunk(self: Task, task_name: str, items: dict[str, Any]) -> dict[str, Any]:
    """The generic chunk task: runs a registered task over packed inputs on a worker."""
    outcome = run_items(self.app.tasks[task_name], unpack(items), hostname=self.request.hostname)
    prepare = self.app.backend.prepare_exception
    return {
        "values": pack(outcome.values),
        "errors": [[position, prepare(exc, "json")] for position, exc in outcome.errors],
    }
