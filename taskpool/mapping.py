"""Bulk work: map a task over any iterable, in chunks and in order, on the broker or locally.

Inputs travel one chunk per message and run in the workers' pool processes (or the local
pool's). At most ``max_in_flight`` chunks are out at once, so a generator of ten million inputs
keeps the caller's and Redis's memory bounded; results stream back in input order. In mode
``auto``, if the broker goes away mid-map, the chunks not yet collected run on the local pool.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import redis
from celery import Celery, Task, states
from tqdm import tqdm

from taskpool import dispatch
from taskpool.arguments import check_items
from taskpool.chunks import (
    ChunkOutcome,
    auto_chunksize,
    check_chunksize,
    chunked,
    pack,
    run_chunk,
    run_items,
    unpack,
)
from taskpool.errors import LOST_CONNECTION, ArgumentTooLarge, BrokerUnavailable, MapItemFailed
from taskpool.health import FREE_MEMORY, FULL
from taskpool.local_pool import submit_chunk
from taskpool.settings import settings_of
from taskpool.urls import mask_url

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.11

#: How often a wait on the broker stops to ask whether the broker is still there.
BROKER_POLL_SECONDS = 1.0
#: How long a chunk may stay unfinished before the map asks whether any worker is left (a
#: ping); every worker gone, the map runs on the local pool (mode auto) or says so (celery).
WORKER_SILENCE_SECONDS = 10.0
#: A chunk's result is polled from 1 ms, doubling to at most 20 ms: quick for fast chunks,
#: at most ~50 reads a second for slow ones.
POLL_FIRST_SECONDS = 0.001
POLL_MAX_SECONDS = 0.02


def imap(
    task: Task,
    inputs: Iterable[Any],
    *,
    chunksize: int | None = None,
    dispatch: str | None = None,
    progress: bool | None = None,
    return_exceptions: bool = False,
    max_in_flight: int | None = None,
    star: bool = False,
) -> MapResults:
    """Yield ``task(item)`` for each input, in input order (``star``: ``task(*item)``, as
    ``Pool.starmap``, for a task of several arguments).

    ``chunksize`` defaults to Pool.map's rule for sized inputs; ``dispatch`` to the settings'
    mode; ``progress`` to a bar on stderr when stderr is a terminal. With ``return_exceptions``
    a failed input's exception takes its place; otherwise the first failure is raised as
    MapItemFailed (also of the task's exception type).
    """
    bulk = _Map(task, inputs, chunksize, dispatch, progress, return_exceptions, max_in_flight, star)
    return MapResults(bulk)


class MapOptions(TypedDict, total=False):
    """``imap``'s options, which ``map`` and ``starmap`` pass on (keyword-only, checked)."""

    chunksize: int | None
    dispatch: str | None
    progress: bool | None
    return_exceptions: bool
    max_in_flight: int | None


def map(  # noqa: A001 - Pool.map's name
    task: Task, inputs: Iterable[Any], *, star: bool = False, **options: Unpack[MapOptions]
) -> list[Any]:
    """``list(imap(task, inputs, ...))``, gathered a chunk at a time."""
    gathered: list[Any] = []
    for values in imap(task, inputs, star=star, **options).chunks:
        gathered.extend(values)
    return gathered


def starmap(
    task: Task, inputs: Iterable[Iterable[Any]], **options: Unpack[MapOptions]
) -> list[Any]:
    """``task(*arguments)`` for each input's arguments, in order, as ``Pool.starmap``."""
    return map(task, inputs, star=True, **options)


class MapResults(Iterator[Any]):
    """The results of one map, in input order; ``backends`` says where its chunks ran."""

    def __init__(self, bulk: _Map) -> None:
        self._bulk = bulk
        #: Each chunk's values, in order; ``values`` (and iterating this object) reads the same.
        self.chunks = bulk.chunk_values()
        # Values leave chunk by chunk; chaining them in C costs far less than a yield per value.
        self.values = itertools.chain.from_iterable(self.chunks)

    def __next__(self) -> Any:
        return next(self.values)

    @property
    def backends(self) -> list[str]:
        """The backends used so far, in order: ``["broker", "local pool"]`` after a switch."""
        return list(self._bulk.backends)


@dataclass
class _Chunk:
    start: int
    items: Sequence[Any]
    handle: Any = None


class _Progress(tqdm):
    """A tqdm bar without tqdm's monitor thread, which every bar starts, even a disabled one.

    The bar is updated once per chunk, so the monitor has nothing to do, and a thread in the
    caller would make the local pool start with the slower fork server (see local_executor).
    """

    monitor_interval = 0


class _BackendLost(Exception):
    """The broker, the result store or every worker went away while a chunk was out."""

    def __init__(self, reason: str, fix: str | None = None) -> None:
        super().__init__(reason)
        self.fix = fix


class _LocalChunks:
    name = "local pool"
    #: Chunks per process (see auto_chunksize) and chunks out at once per process: enough to
    #: keep every process busy while results are collected, few enough to bound memory.
    chunks_per_process = 8
    in_flight_per_process = 2

    def __init__(self, task: Task, star: bool) -> None:
        self.task, self.star = task, star
        self.check_integers = settings_of(task.app).json_safe_integers

    def submit(self, items: Sequence[Any], start: int) -> Any:
        # The pool process checks the inputs (check_items): in parallel, off the caller's path.
        return submit_chunk(
            self.task, items, start, check_integers=self.check_integers, star=self.star
        )

    def collect(self, chunk: _Chunk) -> ChunkOutcome:
        return chunk.handle.get()


class _EagerChunks:
    """Under ``task_always_eager``: each chunk runs in this process, as Celery runs an eager
    call, so a test's patches and fixtures apply to the mapped task too."""

    name = "eager"
    chunks_per_process = 4  # progress moves four times per process's share
    in_flight_per_process = 1

    def __init__(self, task: Task, star: bool) -> None:
        self.task, self.star = task, star

    def submit(self, items: Sequence[Any], start: int) -> ChunkOutcome:
        return run_items(self.task, items, None, star=self.star)

    def collect(self, chunk: _Chunk) -> ChunkOutcome:
        return chunk.handle


class _BrokerChunks:
    name = "broker"
    #: Fewer, larger messages, and more of them out at once to hide each round trip
    #: (a million squares: 0.35 s with 8 out, 0.40 s with 2).
    chunks_per_process = 4
    in_flight_per_process = 4

    def __init__(self, app: Celery, task: Task, star: bool) -> None:
        self.app, self.task = app, task
        #: Sent only when set, so a chunk message reads as before for a plain map.
        self.star_kwargs = {"star": True} if star else {}
        self.health = dispatch.health(app)
        self.check_integers = settings_of(app).json_safe_integers
        self.chunk_task = app.tasks[run_chunk.name]
        # Chunks go where the mapped task is routed, so `-Q` workers for it receive them.
        self.queue = dispatch.queue_of(app, task.name, {}, task)

    def submit(self, items: Sequence[Any], start: int) -> str:
        """Check and publish one chunk (``start``: its first input's index); return its id."""
        if self.check_integers:
            check_items(self.task.name, items, start)
        try:
            return str(
                self.chunk_task.apply_async(
                    (self.task.name, pack(items)),
                    self.star_kwargs,
                    dispatch="celery",
                    queue=self.queue,
                    # No result subscription: collect() reads the stored result itself.
                    ignore_result=True,
                    # Celery would repr every input for monitoring; a summary costs nothing.
                    argsrepr=f"({self.task.name!r}, <{len(items)} inputs>)",
                    # The mapped task's limits, as on the local pool (None: the app's).
                    time_limit=self.task.time_limit,
                    soft_time_limit=self.task.soft_time_limit,
                ).id
            )
        except BrokerUnavailable as exc:
            raise _BackendLost(str(exc)) from exc
        except ArgumentTooLarge as exc:
            raise ArgumentTooLarge(
                f"a chunk of {len(items):,} inputs to {self.task.name} is too large to send: "
                f"{exc}. Pass a smaller chunksize"
            ) from None

    def collect(self, chunk: _Chunk) -> ChunkOutcome:
        """Poll the result store for the chunk's result, then delete it.

        Polling one key beats Celery's pub/sub result consumer here: that consumer buffers every
        result that arrives before its ``get()`` (here: most of them), and some of those
        buffered copies are never released, so a long map grew without bound (measured with
        bench/map_stream.py). A poll is one GET of a missing key until the chunk is done.
        """
        meta = self._wait(chunk.handle)
        self.app.backend.forget(
            chunk.handle
        )  # collected: Redis need not keep it for result_expires
        if meta["status"] != states.SUCCESS:  # the chunk as a whole failed (e.g. its time limit)
            size = len(chunk.items)
            return ChunkOutcome([None] * size, [(i, meta["result"]) for i in range(size)])
        payload = meta["result"]
        rebuild = self.app.backend.exception_to_python
        errors = [(position, rebuild(exc)) for position, exc in payload["errors"]]
        return ChunkOutcome(list(unpack(payload["values"])), errors)

    def _wait(self, task_id: str) -> dict[str, Any]:
        delay, waited = POLL_FIRST_SECONDS, 0.0
        silent_since = time.monotonic()
        while True:
            try:
                meta = self.app.backend.get_task_meta(task_id, cache=False)
            except LOST_CONNECTION as exc:
                self.health.mark_down(exc)
                raise _BackendLost(self.health.reason) from exc
            if meta["status"] in states.READY_STATES:
                return meta
            if waited >= BROKER_POLL_SECONDS:
                waited = 0.0
                if not self.health.is_up():
                    raise _BackendLost(self.health.reason)
                if time.monotonic() - silent_since >= WORKER_SILENCE_SECONDS:
                    self._check_silence()
                    silent_since = time.monotonic()
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, POLL_MAX_SECONDS)

    def _check_silence(self) -> None:
        """A chunk has been out WORKER_SILENCE_SECONDS: _BackendLost if the result store is full
        (a worker gives up storing a result after its retries; a ping cannot be answered
        either), or if no worker is left."""
        client = getattr(self.app.backend, "client", None)  # a Redis result store's
        try:
            memory = client.info("memory") if client is not None else {}
        except LOST_CONNECTION as exc:
            raise _BackendLost(str(exc)) from exc
        except redis.exceptions.ResponseError:  # INFO refused (an ACL user): no memory check
            memory = {}
        limit = int(memory.get("maxmemory") or 0)
        if (
            limit
            and int(memory["used_memory"]) > limit
            and "noeviction" in str(memory.get("maxmemory_policy"))
        ):
            url = mask_url(str(self.app.conf.result_backend))
            raise _BackendLost(f"Redis at {url} {FULL}", fix=FREE_MEMORY)
        if not dispatch.workers_answering(self.app):
            raise _BackendLost(
                f"no worker answered for {WORKER_SILENCE_SECONDS:g} s while a chunk was out",
                fix=dispatch.start_a_worker(self.app),
            )


class _Map:
    """One map in progress: a window of chunks out, collected in order."""

    def __init__(
        self,
        task: Task,
        inputs: Iterable[Any],
        chunksize: int | None,
        requested: str | None,
        progress: bool | None,
        return_exceptions: bool,
        max_in_flight: int | None,
        star: bool = False,
    ) -> None:
        self.task, self.app, self.star = task, task.app, star
        settings = settings_of(self.app)
        route = dispatch.route(
            self.app, requested, queue=lambda: dispatch.queue_of(self.app, task.name, {}, task)
        )
        self.mode = route.mode
        #: Where the chunks run now: a map that loses the broker moves on to the local pool.
        self.runner: _LocalChunks | _BrokerChunks | _EagerChunks
        if route.backend == "broker":
            self.runner = _BrokerChunks(self.app, task, star)
        elif route.backend == "eager":
            self.runner = _EagerChunks(task, star)
        else:
            self.runner = _LocalChunks(task, star)
        self.backends = [self.runner.name]
        length = len(inputs) if isinstance(inputs, Sized) else None
        processes = settings.processes
        self.chunksize = chunksize or auto_chunksize(
            length, processes, self.runner.chunks_per_process
        )
        if self.chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, got {self.chunksize}")
        check_chunksize(self.chunksize)
        self.max_in_flight = max_in_flight or self.runner.in_flight_per_process * processes
        self.inputs, self.length = inputs, length
        self.return_exceptions = return_exceptions
        self.show_progress = sys.stderr.isatty() if progress is None else progress

    def chunk_values(self) -> Iterator[list[Any]]:
        """Each chunk's list of values, in input order."""
        window: deque[_Chunk] = deque()
        bar = _Progress(
            total=self.length, unit="item", disable=not self.show_progress, file=sys.stderr
        )
        with bar:
            start = 0
            for items in chunked(self.inputs, self.chunksize):
                window.append(self._submit(_Chunk(start, items), window))
                start += len(items)
                if len(window) >= self.max_in_flight:
                    yield self._finish(window, bar)
            while window:
                yield self._finish(window, bar)

    def _submit(self, chunk: _Chunk, window: deque[_Chunk]) -> _Chunk:
        try:
            chunk.handle = self.runner.submit(chunk.items, chunk.start)
        except _BackendLost as lost:
            self._go_local(window, lost)
            chunk.handle = self.runner.submit(chunk.items, chunk.start)
        return chunk

    def _finish(self, window: deque[_Chunk], bar: _Progress) -> list[Any]:
        chunk = window[0]
        try:
            outcome = self.runner.collect(chunk)
        except _BackendLost as lost:
            self._go_local(window, lost)
            outcome = self.runner.collect(chunk)
        window.popleft()
        bar.update(len(chunk.items))
        return self._values(chunk, outcome)

    def _go_local(self, window: deque[_Chunk], lost: _BackendLost) -> None:
        """Re-run every chunk not yet collected on the local pool (mode auto), or give up."""
        if isinstance(self.runner, _LocalChunks):
            raise BrokerUnavailable(str(lost)) from lost
        try:
            dispatch.fall_back(self.app, self.mode, str(lost), fix=lost.fix)
        except BrokerUnavailable as unavailable:
            raise unavailable from lost
        self.runner = _LocalChunks(self.task, self.star)
        self.backends.append(self.runner.name)
        for chunk in window:
            chunk.handle = self.runner.submit(chunk.items, chunk.start)

    def _values(self, chunk: _Chunk, outcome: ChunkOutcome) -> list[Any]:
        values = outcome.values
        for position, error in outcome.errors:
            if not self.return_exceptions:
                index = chunk.start + position
                raise _item_error(index, chunk.items[position], error)
            values[position] = error
        return values


def _item_error(index: int, item: Any, error: BaseException) -> MapItemFailed:
    """A MapItemFailed that is also of the task's own exception type, where Python allows it."""
    try:
        kind = type(f"{type(error).__name__}AtInput", (MapItemFailed, type(error)), {})
        failure: MapItemFailed = kind(index, item, error)
    except TypeError:  # an exception type that cannot be mixed in (layout conflict)
        failure = MapItemFailed(index, item, error)
    failure.__cause__ = error
    return failure
