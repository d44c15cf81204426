"""taskpool: Celery tasks on a prefork worker pool, or on a local pool when no broker answers.

Everything another Celery project uses is importable from here::

    from taskpool import FallbackTask, map, imap, LocalRunner, BrokerUnavailable

Names load on first use (``import taskpool`` itself imports neither Celery nor redis).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "ArgumentTooLarge": "taskpool.errors",
    "BrokerUnavailable": "taskpool.errors",
    "ConfigError": "taskpool.errors",
    "LocalPoolError": "taskpool.errors",
    "MapItemFailed": "taskpool.errors",
    "MessageQuarantined": "taskpool.errors",
    "NestedTooDeep": "taskpool.errors",
    "NoWorker": "taskpool.errors",
    "ResultStoreUnavailable": "taskpool.errors",
    "RetryInMap": "taskpool.errors",
    "TaskpoolError": "taskpool.errors",
    "UnsafeInteger": "taskpool.errors",
    "Settings": "taskpool.settings",
    "current_settings": "taskpool.settings",
    "celery_config": "taskpool.celery_conf",
    "mask_url": "taskpool.urls",
    "FallbackTask": "taskpool.fallback",
    "LocalResult": "taskpool.results",
    "TaskResult": "taskpool.results",
    "LocalRunner": "taskpool.runner",
    "MapResults": "taskpool.mapping",
    "imap": "taskpool.mapping",
    "map": "taskpool.mapping",
    "starmap": "taskpool.mapping",
    "TaskpoolCelery": "taskpool.app",
    "create_app": "taskpool.app",
    "configure": "taskpool.app",
}

__all__ = [
    "ArgumentTooLarge",
    "BrokerUnavailable",
    "ConfigError",
    "FallbackTask",
    "LocalPoolError",
    "LocalResult",
    "LocalRunner",
    "MapItemFailed",
    "MapResults",
    "MessageQuarantined",
    "NestedTooDeep",
    "NoWorker",
    "ResultStoreUnavailable",
    "RetryInMap",
    "Settings",
    "TaskResult",
    "TaskpoolCelery",
    "TaskpoolError",
    "UnsafeInteger",
    "celery_config",
    "configure",
    "create_app",
    "current_settings",
    "imap",
    "map",
    "mask_url",
    "starmap",
]

if TYPE_CHECKING:
    from taskpool.app import TaskpoolCelery, configure, create_app
    from taskpool.celery_conf import celery_config
    from taskpool.errors import (
        ArgumentTooLarge,
        BrokerUnavailable,
        ConfigError,
        LocalPoolError,
        MapItemFailed,
        MessageQuarantined,
        NestedTooDeep,
        NoWorker,
        ResultStoreUnavailable,
        RetryInMap,
        TaskpoolError,
        UnsafeInteger,
    )
    from taskpool.fallback import FallbackTask
    from taskpool.mapping import MapResults, imap, map, starmap
    from taskpool.results import LocalResult, TaskResult
    from taskpool.runner import LocalRunner
    from taskpool.settings import Settings, current_settings
    from taskpool.urls import mask_url


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
