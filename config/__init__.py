"""Settings from the environment, and the Celery configuration derived from them."""

from config.celery_config import celery_config
from config.errors import ConfigError, TaskpoolError
from config.settings import (
    DISPATCH_MODES,
    DispatchMode,
    Settings,
    check_dispatch,
    current_settings,
    settings_of,
)
from config.urls import mask_url

__all__ = [
    "DISPATCH_MODES",
    "ConfigError",
    "DispatchMode",
    "Settings",
    "TaskpoolError",
    "celery_config",
    "check_dispatch",
    "current_settings",
    "mask_url",
    "settings_of",
]
