"""The one decision: does work go to the broker or to the local pool?

Single calls (``FallbackTask.apply_async``), bulk maps (``taskpool.map``) and the ``taskpool``
command all ask ``route`` and, when a publish fails after a good verdict, ``fall_back``. The
dispatch mode (``TASKPOOL_DISPATCH``, or ``dispatch=`` per call) decides what happens when the
broker does not answer: ``auto`` runs locally, ``celery`` raises BrokerUnavailable, ``local``
never asks the broker at all. A broker that answers while no live worker consumes the work's
queue is TASKPOOL_NO_WORKER's to decide (``no_worker``). Celery's ``task_always_eager`` comes
first: work takes Celery's own eager path, asking nothing (``eager``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery, Task
from celery.signals import beat_init

from taskpool.conf_snapshot import Snapshot
from taskpool.errors import BrokerUnavailable, NoWorker
from taskpool.health import FREE_MEMORY, BrokerHealth, health_of
from taskpool.settings import DispatchMode, Settings, check_dispatch, settings_of
from taskpool.urls import mask_url

log = logging.getLogger(__name__)

#: ``eager``: Celery's own path under ``task_always_eager`` (a call runs in this process).
Backend = Literal["broker", "local", "eager"]

#: How long ``route(..., need_worker=True)`` waits for any worker to answer a ping.
WORKER_PING_TIMEOUT = 1.0
#: True while FallbackTask publishes a call it routed to the broker, so the app's
#: ``send_task`` (which Celery's ``apply_async`` calls) does not decide again.
routed: ContextVar[bool] = ContextVar("taskpool_routed", default=False)


@dataclass(frozen=True)
class Route:
    """Where work goes, and why (a line for people: the broker and workers, or the failure)."""

    backend: Backend
    mode: DispatchMode
    reason: str
    #: A local run's outcome also goes to the result store: it answers, and callers elsewhere
    #: may read the task by its id (no worker consumed the queue).
    store: bool = False

    @property
    def dispatch(self) -> DispatchMode:
        """The per-call ``dispatch=`` that sends work the same way without asking again."""
        return "celery" if self.backend == "broker" else "local"


_forced: DispatchMode | None = None
_forced_lock = threading.Lock()
#: Set when this process is ``celery beat``: its scheduled tasks must reach the workers, and a
#: local run there would drop their results, so beat never falls back.
_in_beat = False


def _mark_beat(**_: object) -> None:
    global _in_beat
    _in_beat = True


beat_init.connect(_mark_beat, weak=False)


@contextmanager
def forced(mode: str) -> Iterator[None]:
    """Within the block, every call and map of this process uses ``mode``, whatever it asks.

    For tests (the pytest plugin's ``taskpool_local`` fixture); blocks do not nest.
    """
    global _forced
    checked = check_dispatch(mode)
    with _forced_lock:
        if _forced is not None:
            raise RuntimeError(f"dispatch is already forced to {_forced!r}")
        _forced = checked
    try:
        yield
    finally:
        _forced = None


#: Per app: its ``task_always_eager``, and the configuration it was read under.
_eager: weakref.WeakKeyDictionary[Celery, tuple[Snapshot, bool]] = weakref.WeakKeyDictionary()


def always_eager(app: Celery) -> bool:
    """``app.conf.task_always_eager``, read again only once the configuration changed: every
    call asks, and Celery's lookup costs a third of the rest of ``route``."""
    kept = _eager.get(app)
    if kept is not None and kept[0].holds(app):
        return kept[1]
    snapshot = Snapshot.of(app)
    eager = bool(app.conf.task_always_eager)
    _eager[app] = (snapshot, eager)
    return eager


def health(app: Celery, settings: Settings | None = None) -> BrokerHealth:
    """``app``'s remembered broker verdict, with the timeouts from its settings."""
    settings = settings or settings_of(app)
    return health_of(app, settings.broker_timeout, settings.broker_recheck)


def route(
    app: Celery,
    dispatch: str | None = None,
    *,
    need_worker: bool = False,
    queue: Callable[[], str | None] | None = None,
) -> Route:
    """Decide where ``app``'s work goes now.

    Inside a Celery worker (a retry, a task calling a task) mode ``auto`` stays on the broker:
    a local result would never reach the result store its caller waits on; so does ``celery
    beat``, whose scheduled tasks are meant for the workers. With ``queue`` (what names the
    queue the work is routed to, asked only when the broker answers), a broker where no live
    worker consumes it is handled by TASKPOOL_NO_WORKER (``no_worker``). ``need_worker`` also
    asks for any worker to answer a ping, for callers that would otherwise wait on a queue
    nobody consumes (the ``taskpool`` command).
    """
    settings = settings_of(app)
    # A forced mode wins over the call's, which wins over the settings'.
    mode = _forced or check_dispatch(dispatch or settings.dispatch)
    if always_eager(app):
        return Route("eager", mode, "task_always_eager: Celery runs the work in this process")
    if mode == "local":
        return Route("local", mode, "dispatch mode local")
    in_fleet = _in_beat or app.current_worker_task is not None
    if mode == "auto" and in_fleet:
        mode = "celery"
    verdict = health(app, settings)
    if not verdict.is_up():
        return fall_back(app, mode, verdict.reason)
    name = queue() if queue is not None and not in_fleet else None
    if name is not None:
        served, news = verdict.consumers_of(name)
        if served == 0:
            return no_worker(app, mode, settings, name, warn=news)
    if not need_worker:
        return Route("broker", mode, "the broker answers")  # no URL: this is every call's path
    broker = mask_url(verdict.broker_url)
    workers = workers_answering(app)
    if not workers:
        return fall_back(app, mode, f"no worker answered on {broker}", fix=start_a_worker(app))
    return Route("broker", mode, f"{broker}, workers: {', '.join(workers)}")


def no_worker(
    app: Celery, mode: DispatchMode, settings: Settings, queue: str, *, warn: bool
) -> Route:
    """The broker answers and no live worker consumes ``queue``: TASKPOOL_NO_WORKER decides.

    ``local`` runs the work on the local pool in mode auto (mode celery never runs locally, and
    waits); ``wait`` leaves it in the queue for a worker to come; ``raise`` raises NoWorker.
    Every choice but ``raise`` is logged at WARNING once, when the queue is first found with no
    worker.
    """
    if settings.no_worker == "raise":
        raise NoWorker(
            f"{_unserved(app, queue)}: {start_a_worker(app)} with that queue, or set "
            "TASKPOOL_NO_WORKER=local to run such calls on the local pool, or wait to leave them "
            "queued"
        )
    if settings.no_worker == "local" and mode == "auto":
        why = _unserved(app, queue)
        if warn:
            log.warning("%s; running its tasks on the local pool until one beats", why)
        return Route("local", mode, why, store=True)
    if warn:
        log.warning(
            "%s; its tasks wait in the queue until a worker starts (TASKPOOL_NO_WORKER=%s)",
            _unserved(app, queue), settings.no_worker,
        )  # fmt: skip
    # Every call to an unserved queue comes here: its reason leaves out the broker's URL, which
    # costs a tenth of such a call to read from Celery's configuration and mask.
    return Route("broker", mode, f"no live worker consumes queue {queue!r}; its tasks wait")


def _unserved(app: Celery, queue: str) -> str:
    return f"no live worker consumes queue {queue!r} on {mask_url(str(app.conf.broker_url))}"


#: A task's own routing attributes, which Celery's ``send_task`` puts under a call's options
#: (its exec options) before it asks the router.
ROUTING_ATTRIBUTES = ("queue", "routing_key", "exchange")


def queue_of(
    app: Celery, name: str, options: Mapping[str, Any], task: Task | None = None
) -> str | None:
    """The queue Celery will route a call of task ``name`` (``task``, when registered here)
    with ``options`` to."""
    own = {key: getattr(task, key, None) for key in ROUTING_ATTRIBUTES}
    merged = {key: value for key, value in own.items() if value is not None} | dict(options)
    queue = app.amqp.router.route(merged, name, task_type=task).get("queue")
    return getattr(queue, "name", queue)


def workers_answering(app: Celery) -> list[str]:
    """The nodes that answer a ping within WORKER_PING_TIMEOUT, sorted."""
    return sorted(name for reply in app.control.ping(timeout=WORKER_PING_TIMEOUT) for name in reply)


def start_a_worker(app: Celery) -> str:
    """What to do when no worker answers."""
    return f"start a worker (celery -A {app.main} worker)"


def fall_back(app: Celery, mode: DispatchMode, reason: str, *, fix: str | None = None) -> Route:
    """The broker cannot take the work: the local pool in mode ``auto``, else BrokerUnavailable."""
    if mode != "celery":
        return Route("local", mode, reason)
    if fix is None and health(app).full:
        fix = FREE_MEMORY
    fix = fix or (
        f"start the broker ({mask_url(str(app.conf.broker_url))}; e.g. `docker compose up redis`)"
    )
    raise BrokerUnavailable(
        f"{reason}. Dispatch mode celery does not fall back: {fix}, "
        "or set TASKPOOL_DISPATCH=auto to run on the local pool meanwhile"
    )


def publish_failed(app: Celery, mode: DispatchMode, error: BaseException) -> Route:
    """A publish (or a result read) failed after a good verdict: remember it, then fall back."""
    verdict = health(app)
    verdict.mark_down(error)
    return fall_back(app, mode, verdict.reason)
