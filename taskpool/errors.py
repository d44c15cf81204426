"""Every exception taskpool raises on its own account, in one tree.

::

    TaskpoolError
    ├── ConfigError (ValueError)          a setting holds a value taskpool cannot use
    ├── BrokerUnavailable                 mode ``celery``, and no broker or result store answers
    │   (kombu.exceptions.OperationalError)
    ├── NoWorker (RuntimeError)           no live worker consumes the task's queue, and
    │                                     TASKPOOL_NO_WORKER is ``raise``
    ├── ResultStoreUnavailable            ``.get()`` outlasted by a result store that stopped
    │   (celery.exceptions.TimeoutError)  answering: the task may have run
    ├── BrokerUnsupported (RuntimeError)  the broker lacks what taskpool needs (Redis < 6.2)
    ├── RedisFull                         Redis refused a write: memory over maxmemory
    │   (redis.exceptions.OutOfMemoryError)
    ├── NotReplicated                     a publish no replica confirmed in time (Redis WAIT)
    │   (redis.exceptions.ConnectionError)
    ├── LocalPoolError (RuntimeError)     the local pool cannot run what was asked of it
    ├── RetryInMap (RuntimeError)         ``self.retry()`` in a mapped input, which cannot be
    │                                     rescheduled
    ├── UnsafeInteger (ValueError)        an argument JSON would not carry exactly
    ├── UnreadableMessage (ValueError)    a message from the broker no worker can read
    ├── MessageQuarantined                a task whose message was moved to the quarantine
    ├── ArgumentTooLarge (ValueError)     arguments over TASKPOOL_MAX_MESSAGE_BYTES
    ├── NestedTooDeep                     arguments nested deeper than a worker can pass on
    │   (kombu.exceptions.EncodeError)
    └── MapItemFailed                     one input of a map failed (also of the task's own type)

Each also derives from the built-in (or kombu) exception named beside it, so code written for
Celery's errors catches taskpool's too.
"""

from __future__ import annotations

from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import EncodeError, OperationalError


class TaskpoolError(Exception):
    """Base class of every error taskpool raises on its own account."""


class ConfigError(TaskpoolError, ValueError):
    """Raised when a setting holds a value taskpool cannot use.

    The message names the variable, the (password-masked) value and what is allowed.
    """

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is not valid: {allowed}")


class BrokerUnavailable(TaskpoolError, OperationalError):
    """Raised in dispatch mode ``celery`` when the broker or result store cannot be reached.

    It subclasses kombu's (and Celery's) ``OperationalError``, so code that already catches
    Celery's connection errors catches this too.
    """


class NoWorker(TaskpoolError, RuntimeError):
    """Raised by a call when the broker answers but no live worker consumes the task's queue,
    with ``TASKPOOL_NO_WORKER=raise``; the message names the queue and the broker."""


class ResultStoreUnavailable(TaskpoolError, CeleryTimeoutError):
    """Raised by ``.get()`` when the result store stopped answering and did not come back
    within the wait's timeout (or ``taskpool.result_consumer.OUTAGE_PATIENCE`` without one).

    The task was sent, so it may have run, or may still run: read its result again with its id
    once the store answers, rather than sending it again. It is also Celery's TimeoutError,
    which code that waits with a timeout already handles.
    """


class BrokerUnsupported(TaskpoolError, RuntimeError):
    """Raised when a consumer starts against a broker too old for taskpool's transport."""


class RedisFull(TaskpoolError, redis.exceptions.OutOfMemoryError):
    """Raised when Redis refuses a write because its memory is over ``maxmemory`` (with the
    ``noeviction`` policy): a worker retries its result write with back-off (``redis_full``
    tells such an error from others, in whichever form Redis 6 or 7 gave it)."""


#: What a lost broker or result store raises to a client: Celery wraps the broker's errors in
#: kombu's OperationalError; the result store's (redis-py's) may come raw.
LOST_CONNECTION = (
    OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


def redis_full(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised from, is Redis refusing a write for lack of
    memory: Redis 7 names it OutOfMemoryError, Redis 6 a script's ResponseError "-OOM ..."."""
    for _ in range(10):  # a chain of causes, bounded
        if error is None:
            return False
        text = str(error)
        if isinstance(error, redis.exceptions.OutOfMemoryError) or "> 'maxmemory'" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


class NotReplicated(TaskpoolError, redis.exceptions.ConnectionError):
    """Raised when a publish was not confirmed by TASKPOOL_REDIS_WAIT_REPLICAS replicas in time.

    A connection error to kombu, which retries the publish: the message may then be queued
    twice, and run twice (at least once), but a failover cannot lose it.
    """


class LocalPoolError(TaskpoolError, RuntimeError):
    """Raised when the local pool cannot run a task (unknown task, or an option it refuses)."""


class RetryInMap(TaskpoolError, RuntimeError):
    """Raised, as one input's failure, when a task run by ``taskpool.map`` calls
    ``self.retry()``: a map runs each input as a direct call (as Celery's ``chunks`` do), which
    has no message to send again."""


class UnsafeInteger(TaskpoolError, ValueError):
    """Raised before sending an integer that JSON would not carry exactly to other readers."""


class ArgumentTooLarge(TaskpoolError, ValueError):
    """Raised before sending arguments larger than TASKPOOL_MAX_MESSAGE_BYTES."""


class UnreadableMessage(TaskpoolError, ValueError):
    """Raised when a message taken from the broker cannot be read as kombu and Celery would.

    The message says what is wrong with it; the worker moves the message to the quarantine
    with that reason (``taskpool.quarantine``) instead of stopping.
    """


class MessageQuarantined(TaskpoolError):
    """Raised by ``.get()`` of a task whose message a worker moved to the quarantine: it could
    not be read, or it was delivered TASKPOOL_MAX_DELIVERIES times without an outcome.

    ``taskpool quarantine list`` shows it, ``taskpool quarantine replay`` sends it again.
    """


class NestedTooDeep(TaskpoolError, EncodeError):
    """Raised before sending arguments nested deeper than ``taskpool.messages.MAX_NESTING``.

    JSON encodes deeper ones (stock Celery refuses past about 980 levels, with this same base
    class), but a prefork worker hands a task's arguments to its pool process by pickling, which
    fails at about 470 levels and stops the worker. A worker quarantines such a message.
    """


class MapItemFailed(TaskpoolError):
    """Raised when one input of a map failed.

    The raised object is also an instance of the task's own exception type, with the task's
    message, and names the input's index: ``except TypeError`` still catches it.
    """

    def __init__(self, index: int, item: Any, error: BaseException) -> None:
        self.index, self.item, self.error = index, item, error
        super().__init__(f"input {index} ({item!r:.60}) failed: {type(error).__name__}: {error}")
