"""The common call's quicker publish: Celery's own message, from a template Celery made.

Celery's ``send_task`` and kombu's ``Producer.publish`` spend most of a ``.delay()`` around the
message itself (routing, exec options, the producer's retry wrapper, queue declaration,
signals), and give the same answer for every plain call of a task. So the first such call of
a task goes Celery's way, and taskpool's transport keeps the message it was given
(``transport.capturing_publishes``) as that task's template. Later calls copy it and set only what
differs per call, as Celery's ``as_task_v2`` sets it: the task id (``id``, ``root_id``,
``correlation_id``), the arguments and their reprs, and ``reply_to`` (per thread); the channel
adds the delivery tag as for any message. A message to the anonymous exchange (every plain
call's, since no routes apply) is not built as a dict and encoded whole: the template's
``envelope`` holds the text kombu's channel stores for it, with a place for each of those
values, and the call fills it in (``taskpool.envelope``): a fifth fewer instructions per
``.delay()`` (bench/README.md). The message sent is the one Celery would send
(``tests/integration/test_quick_publish.py`` compares them field by field and key by key).

A call takes this path only if Celery's could give nothing else (``send``): a call with no
option at all (``.delay(*args, **kwargs)``), outside a task, from the process and app
configuration the template was made under (a call after ``app.conf`` changed goes Celery's way
and makes a new one), with no receiver of ``before_task_publish``, ``after_task_publish`` or
``task_sent``, nothing wrapping Celery's ``send_task`` or ``Task.apply_async`` (an error
tracker adding headers), and a template of protocol 2, JSON, no compression, no eta or expiry
(a task-level ``expires`` is a time), no routes (``task_routes`` may route by argument), no
custom ``shadow_name``, no pydantic arguments, and ``task_send_sent_event`` off. Anything
else, and any error while publishing, takes Celery's path.

The Celery private names used here, and why, are in docs/PRIVATE_API.md.
"""

from __future__ import annotations

import inspect
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task, signals
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps
from kombu.utils.uuid import uuid

from taskpool import transport
from taskpool.conf_snapshot import Snapshot
from taskpool.envelope import Envelope

#: The options of Celery's protocol 2 body (``as_task_v2``) for a call with no canvas.
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

#: Headers a plain call leaves unset; a template with any of them set is not one.
UNSET_HEADERS = ("shadow", "eta", "expires", "group", "group_index", "parent_id")

#: Where Celery's own ``send_task`` and ``Task.apply_async`` are defined.
OWN_MODULES = ("celery.app.base", "celery.app.task")


@dataclass(frozen=True)
class Template:
    """One task's message as Celery built it, and what it was built under."""

    pid: int
    conf: Snapshot
    message: dict[str, Any] | None  # None: Celery's path only, under this configuration
    exchange: str = ""
    routing_key: str = ""
    publish_options: tuple[tuple[str, Any], ...] = ()
    maxlevels: int = 3
    argsrepr_maxsize: int = 1024
    kwargsrepr_maxsize: int = 1024
    #: The message's stored text, to fill in (a message to the anonymous exchange only).
    envelope: Envelope | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.publish_options)

    @property
    def ignores_result(self) -> bool:
        return bool(self.message and self.message["headers"].get("ignore_result"))

    def holds(self, app: Celery) -> bool:
        """Whether this process and ``app``'s configuration are those it was made under."""
        return self.pid == os.getpid() and self.conf.holds(app)


_templates: weakref.WeakKeyDictionary[Task, Template] = weakref.WeakKeyDictionary()


def _wrapped(app: Celery) -> bool:
    """Whether something wraps Celery's ``send_task`` or ``Task.apply_async`` (an error tracker
    adding headers, a user's subclass): the quick path would skip it, so calls go through it.
    The answer is kept for the functions it was given for: unwrapping them costs microseconds."""
    global _last_wrapped
    methods = (type(app).send_task, Task.apply_async, vars(app).get("send_task"))
    last = _last_wrapped
    if last is not None and last[0] == methods:
        return last[1]
    send_task, apply_async, own = methods
    wrapped = (
        any(inspect.unwrap(method) is not method for method in (send_task, apply_async))
        or (send_task.__module__, apply_async.__module__) != OWN_MODULES
        # taskpool's guard (fallback.guard_send_task), or a user's
        or (own is not None and not getattr(own, "taskpool_guard", False))
    )
    _last_wrapped = (methods, wrapped)
    return wrapped


#: The functions ``_wrapped`` last judged, and its answer.
_last_wrapped: tuple[tuple[Any, ...], bool] | None = None


def _signalled() -> bool:
    """Whether a receiver waits for Celery's publish signals (Celery's path sends them)."""
    return bool(
        signals.before_task_publish.receivers
        or signals.after_task_publish.receivers
        or signals.task_sent.receivers
    )


def queue_of(task: Task) -> str | None:
    """The queue a plain call of ``task`` goes to, from its template; None if none holds.
    Celery sends a direct exchange's message to the anonymous exchange with the queue's name
    as the routing key, and a template has no routes that could send it elsewhere."""
    template = _templates.get(task)
    if template is None or template.message is None or template.exchange:
        return None
    return template.routing_key if template.holds(task.app) else None


def send(task: Task, args: Any, kwargs: Any, celery: Callable[[str | None], Any]) -> Any:
    """Publish a plain call of ``task`` (no option at all) quickly from its template, or with
    ``celery`` (Celery's path, given a task id or None), keeping the message as the template
    where none holds."""
    if _signalled() or _wrapped(task.app) or task.app.current_worker_task is not None:
        return celery(None)
    template = _templates.get(task)
    if template is None or not template.holds(task.app):
        with transport.capturing_publishes() as captured:
            result = celery(None)
        record(task, captured)
        return result
    if template.message is None:
        return celery(None)
    task_id = uuid()
    if publish(task, task_id, args, kwargs, template):
        result = task.AsyncResult(task_id)
        result.ignored = template.ignores_result
        return result
    return celery(task_id)


def publish(task: Task, task_id: str, args: Any, kwargs: Any, template: Template) -> bool:
    """Send ``task(*args, **kwargs)`` as ``task_id`` from ``template``; False when the message
    could not be sent. The arguments are checked, and encoded, as Celery's path does, before."""
    args = () if args is None else args
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, (list, tuple)):
        raise TypeError("task args must be a list or tuple")  # as Celery's as_task_v2
    if not isinstance(kwargs, Mapping):
        raise TypeError("task keyword arguments must be a mapping")
    check_arguments = getattr(task, "__header__", None) if task.typing else None
    if check_arguments is not None:
        check_arguments(*args, **kwargs)  # Celery's argument check, as Task.apply_async
    app = task.app
    argsrepr = shown(args, template.argsrepr_maxsize, template.maxlevels)
    kwargsrepr = shown(kwargs, template.kwargsrepr_maxsize, template.maxlevels)
    _, _, body = dumps((args, kwargs, EMBED), serializer="json")
    reply_to = app.thread_oid

    def built() -> dict[str, Any]:
        """The message as Celery's ``as_task_v2`` and kombu's ``prepare_message`` build it."""
        message = template.message
        assert message is not None
        headers = dict(message["headers"])
        headers["id"] = headers["root_id"] = task_id
        headers["argsrepr"] = argsrepr
        headers["kwargsrepr"] = kwargsrepr
        properties = dict(message["properties"])
        properties["correlation_id"] = task_id
        properties["reply_to"] = reply_to
        properties["delivery_info"] = {}
        # prepare_message's keys in prepare_message's order: the pop script finds the
        # properties last, after the body.
        return {
            "body": body,
            "content-encoding": message["content-encoding"],
            "content-type": message["content-type"],
            "headers": headers,
            "properties": properties,
        }

    try:
        if template.ignores_result or getattr(app.backend, "subscribes_without_producer", False):
            # A connection of the app's pool, as Celery's producer pool takes, without the
            # producer it revives around the connection's channel on every call.
            with app.pool.acquire(block=True) as connection:
                if not template.ignores_result:
                    app.backend.on_task_call(None, task_id)
                channel = connection.default_channel
                values = (task_id, argsrepr, kwargsrepr, reply_to)
                if not put_encoded(channel, template, body, *values):
                    channel.basic_publish(
                        built(), template.exchange, template.routing_key, **template.options
                    )
        else:
            with app.producer_or_acquire() as producer:  # a backend that uses the producer
                app.backend.on_task_call(producer, task_id)
                producer.channel.basic_publish(
                    built(), template.exchange, template.routing_key, **template.options
                )
    except Exception:
        # Celery's path then publishes with its retries, and raises what it would (a lost or
        # full broker as kombu's OperationalError, which FallbackTask falls back on).
        return False
    return True


def put_encoded(
    channel: Any,
    template: Template,
    body: str,
    task_id: str,
    argsrepr: str,
    kwargsrepr: str,
    reply_to: str,
) -> bool:
    """Store the call's message through the template's envelope, completed as kombu's channel
    completes a message (its body encoding, a delivery tag); False when it must go through
    ``basic_publish`` (no envelope, another transport, a publish the channel pipelines)."""
    envelope = template.envelope
    put = getattr(channel, "put_encoded", None)
    if envelope is None or put is None:
        return False
    encoded, encoding = channel.encode_body(body, channel.body_encoding)
    tag = channel._next_delivery_tag()
    text = envelope.text(encoded, encoding, task_id, argsrepr, kwargsrepr, reply_to, tag)
    return bool(put(template.routing_key, template.message, text))


#: The types whose values Celery's ``saferepr`` spells as ``repr`` does, in a flat list or tuple
#: (a string is not one: ``saferepr`` leaves its newlines unescaped).
NUMBERS = frozenset({int, float, bool, type(None)})


def shown(value: Any, maxsize: int, maxlevels: int) -> str:
    """Celery's ``saferepr(value, maxsize, maxlevels=maxlevels)``, the ``argsrepr`` Flower
    shows: a flat list or tuple of numbers that fits in ``maxsize`` is its ``repr``, about a
    tenth of the cost (``tests/unit/test_quick_publish.py`` compares the two)."""
    kind = type(value)
    if kind is dict and not value:
        return "{}"
    if (kind is tuple or kind is list) and all(type(item) in NUMBERS for item in value):
        text = repr(value)
        if len(text) <= maxsize:
            return text
    return saferepr(value, maxsize, maxlevels=maxlevels)


def record(task: Task, captured: list[tuple[Any, ...]]) -> None:
    """Keep what Celery's path just sent for ``task`` as its template (``captured``: each
    ``basic_publish`` of the call), or remember that its calls take Celery's path."""
    app = task.app
    conf = app.conf
    message = None
    if len(captured) == 1 and _plain(task, conf):
        message, exchange, routing_key, options = captured[0]
        if not _plain_message(message, options):
            message = None
    snapshot = Snapshot.of(app)
    if message is None:
        _templates[task] = Template(os.getpid(), snapshot, None)
        return
    _templates[task] = Template(
        os.getpid(),
        snapshot,
        message,
        exchange,
        routing_key,
        tuple(sorted(options.items())),
        conf.task_repr_maxlevels,
        app.amqp.argsrepr_maxsize,
        app.amqp.kwargsrepr_maxsize,
        None if exchange else Envelope.of(message, exchange, routing_key),
    )


def _plain(task: Task, conf: Any) -> bool:
    """Whether Celery's path gives every plain call of ``task`` the same message."""
    return (
        conf.task_protocol == 2
        and not conf.task_routes
        and not conf.task_send_sent_event
        and not conf.task_inherit_parent_priority
        and type(task).shadow_name is Task.shadow_name
        and not task.__v2_compat__
        and task._dump_pydantic_arguments is None
    )


def _plain_message(message: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether a captured message is a plain call's: JSON, uncompressed, no time in it."""
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    return (
        list(message) == ["body", "content-encoding", "content-type", "headers", "properties"]
        and message["content-type"] == "application/json"
        and "compression" not in headers
        and "expiration" not in properties
        and not any(headers.get(name) is not None for name in UNSET_HEADERS)
        and headers.get("stamped_headers") is None
        and headers.get("stamps") == {}
        and headers.get("retries") == 0
        and headers.get("replaced_task_nesting") == 0
        and properties.get("delivery_info") == {}
        and not options.get("mandatory")
        and not options.get("immediate")
    )
