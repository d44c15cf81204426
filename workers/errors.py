"""Errors raised when running tasks: broker trouble and local-pool misuse."""

from __future__ import annotations

from kombu.exceptions import OperationalError

from config.errors import TaskpoolError


class BrokerUnavailable(TaskpoolError, OperationalError):
    """Raised in dispatch mode ``celery`` when the broker or result store cannot be reached.

    It subclasses kombu's (and Celery's) ``OperationalError``, so code that already catches
    Celery's connection errors catches this too.
    """


class LocalPoolError(TaskpoolError, RuntimeError):
    """Raised when the local pool cannot run a task (unknown task, or a call from a bad place)."""


class UnsafeInteger(TaskpoolError, ValueError):
    """Raised before sending an integer that JSON would not carry exactly to other readers."""


class ArgumentTooLarge(TaskpoolError, ValueError):
    """Raised before sending arguments larger than TASKPOOL_MAX_MESSAGE_BYTES."""
