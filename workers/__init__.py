"""Running tasks outside a Celery worker: the local pool, and the broker-or-local decision."""

from workers.errors import BrokerUnavailable, LocalPoolError
from workers.fallback import FallbackTask
from workers.local_pool import LocalRunner
from workers.mapping import MapItemFailed, MapResults, imap, map
from workers.results import LocalResult, TaskResult

__all__ = [
    "BrokerUnavailable",
    "FallbackTask",
    "LocalPoolError",
    "LocalResult",
    "LocalRunner",
    "MapItemFailed",
    "MapResults",
    "TaskResult",
    "imap",
    "map",
]
