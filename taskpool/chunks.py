"""Chunks of inputs: how they are cut, sized, and run in one go inside a pool process."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import msgpack
from celery import Task, shared_task, states
from celery.exceptions import Retry, SoftTimeLimitExceeded, TimeLimitExceeded

from taskpool.errors import RetryInMap

#: Largest automatic chunk: big enough that per-message costs vanish, small enough that a
#: chunk redelivered after a crash is cheap to redo and one message stays near a megabyte.
MAX_AUTO_CHUNKSIZE = 200_000
#: The most inputs one chunk may hold, on either backend: five times the largest automatic
#: chunk. A worker refuses a chunk message over it, so a small message naming a huge range
#: cannot make a pool process build a list of billions of results.
MAX_CHUNK_ITEMS = 1_000_000
#: Chunk size when the input's length is unknown (a generator). Measured on 2,000,000 squares
#: through the broker: 10,000 per chunk took ~1.9 s, 50,000 ~1.3 s, 100,000 ~1.2 s; 50,000 keeps
#: most of the gain with half the memory in flight.
STREAM_CHUNKSIZE = 50_000


def auto_chunksize(length: int | None, processes: int, chunks_per_process: int) -> int:
    """Pool.map's rule (length / (chunks_per_process x processes), rounded up), capped.

    ``Pool.map`` uses 4 chunks per process. Measured on a million squares (2 processes): the
    local pool is fastest at 8 (0.25 s, against 0.29 s at 4); the broker at 4, where fewer,
    larger messages win (0.37 s, against 0.43 s at 8). Inputs of unknown length use
    STREAM_CHUNKSIZE.
    """
    if length is None:
        return STREAM_CHUNKSIZE
    size, extra = divmod(length, processes * chunks_per_process)
    return max(1, min(MAX_AUTO_CHUNKSIZE, size + bool(extra)))


def chunked(inputs: Iterable[Any], size: int) -> Iterator[Sequence[Any]]:
    """Cut ``inputs`` into chunks of ``size`` items, reading only one chunk ahead.

    Lists and tuples are sliced (a copy at C speed); a range is cut into ranges, which cost
    nothing to build or to send to a local pool process. Other iterables become lists.
    """
    if isinstance(inputs, (list, tuple, range)):
        for start in range(0, len(inputs), size):
            yield inputs[start : start + size]
        return
    iterator = iter(inputs)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class ChunkOutcome:
    """One chunk's results: a value per input, and the failures by position in the chunk."""

    values: list[Any]
    errors: list[tuple[int, BaseException]] = field(default_factory=list)


def run_items(
    task: Task, items: Sequence[Any], hostname: str | None, *, star: bool = False
) -> ChunkOutcome:
    """Run ``task``'s body on each item (``star``: each item a list of its arguments), in
    this process; a failure does not stop the chunk.

    A chunk runs under one task's time limits (the mapped task's, else the app's), on either
    backend: past the soft limit, the input running and every input not run yet fail with
    SoftTimeLimitExceeded, and the chunk returns what it has. Bound tasks (``bind=True``) see a
    request naming the node that runs them.
    """
    body = task.run
    call = itertools.starmap if star else map
    context = _request(task, hostname) if hasattr(body, "__self__") else nullcontext()
    values: list[Any] = []
    errors: list[tuple[int, BaseException]] = []
    with context:
        while len(values) < len(items):
            try:  # list.extend keeps what map() produced before a failure: each item runs once
                values.extend(call(body, itertools.islice(items, len(values), None)))
            except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
                # The chunk's time is up: the input running and those not run fail with it.
                errors += [(position, exc) for position in range(len(values), len(items))]
                values += [None] * (len(items) - len(values))
            except Exception as exc:  # reported per input, the chunk goes on
                errors.append((len(values), _named(task, exc)))
                values.append(None)
    return ChunkOutcome(values, errors)


def _named(task: Task, error: Exception) -> Exception:
    """The error an input failed with; Celery's ``Retry`` (``self.retry()`` in a direct call,
    which cannot reschedule anything) as RetryInMap, saying so. A retry given an exception
    (``exc=``, ``autoretry_for``) raises that exception instead, and it is kept."""
    if not isinstance(error, Retry):
        return error
    return RetryInMap(
        f"{task.name} called self.retry(), and taskpool.map cannot reschedule one input: it "
        "runs each input as a direct call, as Celery's chunks do. Retry inside the function, "
        "or send the inputs that need Celery's retries with .delay()"
    )


class _request:
    def __init__(self, task: Task, hostname: str | None) -> None:
        self.task, self.hostname = task, hostname

    def __enter__(self) -> None:
        self.task.push_request(hostname=self.hostname, is_eager=self.hostname is None)

    def __exit__(self, *_: object) -> None:
        self.task.pop_request()


def pack(values: Sequence[Any]) -> dict[str, Any]:
    """Wrap a list for a JSON message: msgpack in base64 when msgpack can carry it, else as is.

    Measured in bench/map_throughput.py: JSON-encoding a million ints per direction cost more
    than the work. msgpack is a data-only format (decoding it runs no code, unlike pickle), and
    a base64 string passes through JSON at memcpy speed. Ints beyond 64 bits, and anything else
    msgpack refuses, travel as plain JSON. A range travels as its start, stop and step.
    """
    if isinstance(values, range):
        return {"range": [values.start, values.stop, values.step]}
    if not isinstance(values, list):
        values = list(values)  # a tuple chunk: both formats want a list
    try:
        return {"msgpack": base64.b64encode(msgpack.packb(values)).decode("ascii")}
    except (TypeError, ValueError, OverflowError):
        return {"json": values}


def unpack(packed: dict[str, Any]) -> Sequence[Any]:
    """The list (or range) that ``pack`` wrapped; ValueError past MAX_CHUNK_ITEMS."""
    if "range" in packed:
        start, stop, step = packed["range"]
        items: Sequence[Any] = range(start, stop, step)
    elif "msgpack" in packed:
        data = base64.b64decode(packed["msgpack"])
        try:  # refused before a list of 16 million one-byte items is built
            items = msgpack.unpackb(data, strict_map_key=False, max_array_len=MAX_CHUNK_ITEMS)
        except ValueError as exc:
            if "max_array_len" in str(exc):
                raise _too_many("a chunk message holds more inputs than allowed,") from None
            raise
    else:
        items = packed["json"]
    check_chunksize(len(items), "a chunk message holds")
    return items


def check_chunksize(size: int, what: str = "chunksize") -> None:
    """ValueError for a chunk of more than MAX_CHUNK_ITEMS inputs."""
    if size > MAX_CHUNK_ITEMS:
        raise _too_many(f"{what} {size:,} inputs,")


def _too_many(what: str) -> ValueError:
    return ValueError(
        f"{what} over the {MAX_CHUNK_ITEMS:,} one chunk may hold "
        "(taskpool.chunks.MAX_CHUNK_ITEMS): pass a smaller chunksize"
    )


@shared_task(name="taskpool.run_chunk", bind=True, store_errors_even_if_ignored=True)
def run_chunk(self: Task, task_name: str, items: dict[str, Any], star: bool = False) -> None:
    """The generic chunk task: runs a registered task over packed inputs on a worker.

    Maps publish it with ``ignore_result`` (no result subscription on the caller's side), so
    it stores its own result, for the caller to poll; a failure of the whole chunk (its time
    limit, say) is still stored by Celery (``store_errors_even_if_ignored``).
    """
    task = self.app.tasks[task_name]
    outcome = run_items(task, unpack(items), hostname=self.request.hostname, star=star)
    prepare = self.app.backend.prepare_exception
    payload = {
        "values": pack(outcome.values),
        "errors": [[position, prepare(exc, "json")] for position, exc in outcome.errors],
    }
    self.backend.store_result(self.request.id, payload, states.SUCCESS, request=self.request)
