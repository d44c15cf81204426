"""The project's exceptions that the settings layer raises, and their common base."""

from __future__ import annotations


class TaskpoolError(Exception):
    """Base class of every error taskpool raises on its own account."""


class ConfigError(TaskpoolError, ValueError):
    """Raised when an environment variable holds a value taskpool cannot use.

    The message names the variable, the (password-masked) value and what is allowed.
    """

    def __init__(self, variable: str, value: str, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"{variable}={value!r} is not valid: {allowed}")
