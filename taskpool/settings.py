"""The one settings object: typed, frozen, read from ``TASKPOOL_*`` environment variables."""

from __future__ import annotations

import datetime
import difflib
import functools
import math
import os
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote, urlsplit, urlunsplit

from celery.app.backends import BACKEND_ALIASES
from kombu.transport import TRANSPORT_ALIASES

from taskpool.errors import ConfigError
from taskpool.urls import (
    REDIS_SCHEMES,
    is_redis,
    is_sentinel,
    mask_url,
    split_urls,
    url_scheme,
)

DispatchMode = Literal["auto", "celery", "local"]
DISPATCH_MODES: tuple[DispatchMode, ...] = ("auto", "celery", "local")
#: How the local pool starts its processes; ``auto`` forks a caller that runs one thread and
#: holds no open socket, and uses the fork server otherwise (see taskpool/local_executor.py).
LocalStartMethod = Literal["auto", "fork", "forkserver", "spawn"]
LOCAL_START_METHODS: tuple[LocalStartMethod, ...] = ("auto", "fork", "forkserver", "spawn")
#: What a call does when the broker answers and no live worker consumes its queue: run on the
#: local pool (mode auto; mode celery waits), wait in the queue with a warning, or raise NoWorker.
NoWorkerPolicy = Literal["local", "wait", "raise"]
NO_WORKER_POLICIES: tuple[NoWorkerPolicy, ...] = ("local", "wait", "raise")
#: The worker's pool: Celery's prefork, or processes that fetch their own messages
#: (taskpool/fetching.py), by Celery's name for it (``worker_pool``).
WorkerPool = Literal["prefork", "fetching"]
WORKER_POOL_NAMES: tuple[WorkerPool, ...] = ("prefork", "fetching")
WORKER_POOLS = {"prefork": "prefork", "fetching": "taskpool.fetching:TaskPool"}

#: Where a laptop's Redis listens; broker and result backend share it by default.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: A refused port answers at once; this bounds a broker that accepts and never answers.
DEFAULT_BROKER_TIMEOUT = 0.5
#: How long a broker verdict is trusted: a burst of calls probes once,
#: and a broker that comes back is used again soon.
DEFAULT_BROKER_RECHECK = 2.0
#: Hard limit per task run; the worker child is replaced past it, so nothing runs forever.
DEFAULT_TASK_TIME_LIMIT = 300.0
#: An unset soft limit follows the hard one, at 90 % of it, so setting TASKPOOL_TASK_TIME_LIMIT
#: alone stays consistent.
SOFT_LIMIT_SHARE = 0.9
#: Results are kept a day, then Redis drops them.
DEFAULT_RESULT_EXPIRES = 86_400
#: A worker's consumer silent this long is dead, and the messages it held go back to their
#: queues (taskpool.liveness): a killed worker's tasks run again within about this plus a beat.
DEFAULT_LIVENESS_TIMEOUT = 3.0
#: Only for messages stock Celery workers on the same Redis took (kombu's ``unacked`` hash):
#: they go back after this long, as stock's own sweep does (kombu's default, one hour).
DEFAULT_VISIBILITY_TIMEOUT = 3600
#: Bounds every Redis read and write, so no call blocks forever on a server that stopped answering.
DEFAULT_SOCKET_TIMEOUT = 5.0
#: Messages each worker process reserves ahead. Measured with bench/prefetch.py (3,000 tiny
#: tasks, concurrency 2): 1 -> 453/s, 4 -> 464/s, 16 -> 438/s, 64 -> 409/s. 4 is the fastest,
#: and a small value keeps few messages reserved by a worker that may die or be slow.
DEFAULT_PREFETCH_MULTIPLIER = 4
#: How often a worker looks for messages stock workers took and left past the visibility timeout,
#: and puts them back on the queue. kombu's default sweep is every ~100 s.
DEFAULT_RESTORE_INTERVAL = 10.0
#: Largest serialized arguments of one call. Map chunks are sized far below it (a chunk of
#: 50,000 ints is about 0.4 MB); compose caps Redis's bulk length at 32 MB behind it.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: A message taken from the queue this many times without an outcome (its task kills the process
#: running it, say) goes to the quarantine on the next: RabbitMQ quorum queues' default limit.
DEFAULT_MAX_DELIVERIES = 20
#: A pool process whose resident memory exceeds this after a task is replaced, so one huge
#: task does not leave the worker large for good.
DEFAULT_MAX_MEMORY_PER_CHILD_MB = 512

#: How a ``rediss://`` server's certificate is checked (Python's ssl.CERT_* names, lowercased).
TlsVerify = Literal["required", "optional", "none"]
TLS_VERIFY: tuple[TlsVerify, ...] = ("required", "optional", "none")

#: How long a publish waits for its replicas (TASKPOOL_REDIS_WAIT_REPLICAS) before failing.
DEFAULT_WAIT_TIMEOUT = 1.0

#: How a yes/no variable may be spelled.
FLAG_WORDS = ("1", "true", "yes", "on", "0", "false", "no", "off")

#: Every variable taskpool reads, for docs and error messages.
VARIABLES = (
    "TASKPOOL_BROKER_URL",
    "TASKPOOL_RESULT_BACKEND",
    "TASKPOOL_DISPATCH",
    "TASKPOOL_NO_WORKER",
    "TASKPOOL_CONCURRENCY",
    "TASKPOOL_WORKER_POOL",
    "TASKPOOL_BROKER_TIMEOUT",
    "TASKPOOL_BROKER_RECHECK",
    "TASKPOOL_TASK_TIME_LIMIT",
    "TASKPOOL_TASK_SOFT_TIME_LIMIT",
    "TASKPOOL_RESULT_EXPIRES",
    "TASKPOOL_LIVENESS_TIMEOUT",
    "TASKPOOL_VISIBILITY_TIMEOUT",
    "TASKPOOL_SOCKET_TIMEOUT",
    "TASKPOOL_PREFETCH_MULTIPLIER",
    "TASKPOOL_RESTORE_INTERVAL",
    "TASKPOOL_MAX_MESSAGE_BYTES",
    "TASKPOOL_MAX_DELIVERIES",
    "TASKPOOL_MAX_MEMORY_PER_CHILD_MB",
    "TASKPOOL_MAX_TASKS_PER_CHILD",
    "TASKPOOL_REDIS_PASSWORD",
    "TASKPOOL_ROUTES",
    "TASKPOOL_LOCAL_START_METHOD",
    "TASKPOOL_JSON_SAFE_INTEGERS",
    "TASKPOOL_REDIS_TLS_CA_FILE",
    "TASKPOOL_REDIS_TLS_CERT_FILE",
    "TASKPOOL_REDIS_TLS_KEY_FILE",
    "TASKPOOL_REDIS_TLS_VERIFY",
    "TASKPOOL_SENTINEL_MASTER",
    "TASKPOOL_SENTINEL_PASSWORD",
    "TASKPOOL_SENTINEL_TLS",
    "TASKPOOL_REDIS_WAIT_REPLICAS",
    "TASKPOOL_REDIS_WAIT_TIMEOUT",
    # Read by the `taskpool` command only: the app its commands use (like `celery -A`).
    "TASKPOOL_APP",
)

#: Read by the `taskpool` command only, never from an app's configuration.
COMMAND_ONLY = ("TASKPOOL_APP",)

#: Variables whose app.conf key is Celery's own, so a project's ``broker_url`` or
#: ``task_time_limit`` is taskpool's too. Every other variable's key is its name in lower case
#: (TASKPOOL_DISPATCH -> ``taskpool_dispatch``).
CELERY_KEYS = {
    "TASKPOOL_BROKER_URL": "broker_url",
    "TASKPOOL_RESULT_BACKEND": "result_backend",
    "TASKPOOL_CONCURRENCY": "worker_concurrency",
    "TASKPOOL_TASK_TIME_LIMIT": "task_time_limit",
    "TASKPOOL_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "TASKPOOL_RESULT_EXPIRES": "result_expires",
    "TASKPOOL_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "TASKPOOL_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
}

#: Celery's own variables that name the broker and result store; as in Celery, they win over
#: the app's configuration (TASKPOOL_BROKER_URL and TASKPOOL_RESULT_BACKEND win over them).
CELERY_VARIABLES = {
    "TASKPOOL_BROKER_URL": "CELERY_BROKER_URL",
    "TASKPOOL_RESULT_BACKEND": "CELERY_RESULT_BACKEND",
}


def conf_key(variable: str) -> str:
    """The app.conf key of a ``TASKPOOL_*`` variable."""
    return CELERY_KEYS.get(variable, variable.lower())


#: app.conf key -> the variable it stands for.
CONF_KEYS = {conf_key(name): name for name in VARIABLES if name not in COMMAND_ONLY}

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything taskpool can be told, validated once when read."""

    broker_url: str = DEFAULT_REDIS_URL
    result_backend: str = DEFAULT_REDIS_URL
    dispatch: DispatchMode = "auto"
    no_worker: NoWorkerPolicy = "local"
    local_start_method: LocalStartMethod = "auto"
    concurrency: int | None = None
    worker_pool: WorkerPool = "prefork"
    broker_timeout: float = DEFAULT_BROKER_TIMEOUT
    broker_recheck: float = DEFAULT_BROKER_RECHECK
    task_time_limit: float = DEFAULT_TASK_TIME_LIMIT
    #: Raises SoftTimeLimitExceeded inside the task first, so it can clean up. None: follows
    #: the hard limit (SOFT_LIMIT_SHARE of it), however the settings were built.
    task_soft_time_limit: float | None = None
    result_expires: int = DEFAULT_RESULT_EXPIRES
    liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    prefetch_multiplier: int = DEFAULT_PREFETCH_MULTIPLIER
    restore_interval: float = DEFAULT_RESTORE_INTERVAL
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    max_memory_per_child_mb: int = DEFAULT_MAX_MEMORY_PER_CHILD_MB
    #: None: a pool process runs any number of tasks.
    max_tasks_per_child: int | None = None
    #: Task name -> queue name; workers started with ``-Q`` consume only the queues named.
    routes: tuple[tuple[str, str], ...] = ()
    #: Refuse integers past ±(2**53 - 1) before sending, for readers in other languages
    #: (Python's JSON, and so stock Celery, carry any integer exactly).
    json_safe_integers: bool = False
    #: For ``rediss://`` URLs: the CA bundle that signs the server's certificate (None: the
    #: system's), a client certificate and key if the server asks for one, and the check.
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_tls_verify: TlsVerify = "required"
    #: For ``sentinel://`` URLs (a list of sentinels, ``;``-separated): the name the sentinels
    #: monitor (``sentinel monitor NAME ...``), and the sentinels' own password if they have one
    #: (Redis's password goes in the URL or TASKPOOL_REDIS_PASSWORD, as for ``redis://``).
    sentinel_master: str | None = None
    sentinel_password: str | None = None
    #: TLS to the sentinels and to the Redis servers they name, with the TASKPOOL_REDIS_TLS_*
    #: files (a ``sentinel://`` URL has no TLS form of its own, as ``rediss://`` is).
    sentinel_tls: bool = False
    #: Each publish waits until this many replicas hold the message (Redis WAIT), so a
    #: failover right after it cannot lose it; a publish not replicated within
    #: ``redis_wait_timeout`` seconds fails (and is retried). None: no wait, Redis's default.
    redis_wait_replicas: int | None = None
    redis_wait_timeout: float = DEFAULT_WAIT_TIMEOUT

    def __repr__(self) -> str:
        """Every field, with the passwords in URLs masked (the sentinels' one is left out)."""
        shown = {
            name: mask_url(value) if name in ("broker_url", "result_backend") else value
            for name, value in vars(self).items()
            if name != "sentinel_password"
        }
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def __post_init__(self) -> None:
        """The same checks however the settings were built: ``from_env`` or ``Settings(...)``."""
        _check_choice("TASKPOOL_DISPATCH", self.dispatch, DISPATCH_MODES)
        _check_choice("TASKPOOL_NO_WORKER", self.no_worker, NO_WORKER_POLICIES)
        _check_choice("TASKPOOL_WORKER_POOL", self.worker_pool, WORKER_POOL_NAMES)
        _check_choice("TASKPOOL_LOCAL_START_METHOD", self.local_start_method, LOCAL_START_METHODS)
        _check_url("TASKPOOL_BROKER_URL", self.broker_url, TRANSPORT_ALIASES)
        _check_url("TASKPOOL_RESULT_BACKEND", self.result_backend, BACKEND_ALIASES)
        _check_choice("TASKPOOL_REDIS_TLS_VERIFY", self.redis_tls_verify, TLS_VERIFY)
        sentinel = [url for url in (self.broker_url, self.result_backend) if is_sentinel(url)]
        if sentinel and not self.sentinel_master:
            raise ConfigError(
                "TASKPOOL_SENTINEL_MASTER",
                "",
                f"must name the Redis the sentinels monitor for {mask_url(sentinel[0])} "
                "(the NAME of their `sentinel monitor NAME host port quorum`)",
            )
        if self.sentinel_tls and not sentinel:
            raise ConfigError(
                "TASKPOOL_SENTINEL_TLS",
                "yes",
                "applies to sentinel:// URLs, and neither TASKPOOL_BROKER_URL nor "
                "TASKPOOL_RESULT_BACKEND is one (for TLS to one Redis, use rediss://)",
            )
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, f"redis_tls_{name}")
            if path is not None:
                _check_file(f"TASKPOOL_REDIS_TLS_{name.upper()}", path)
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ConfigError(
                "TASKPOOL_REDIS_TLS_CERT_FILE",
                str(self.redis_tls_cert_file),
                "a client certificate needs its key (TASKPOOL_REDIS_TLS_KEY_FILE), and a key "
                "its certificate",
            )
        for name in _POSITIVE:
            value = getattr(self, name)
            if value is not None:
                _check_positive(f"TASKPOOL_{name.upper()}", value)
        self._check_limits()

    @property
    def processes(self) -> int:
        """How many processes a pool gets: the configured concurrency, else one per CPU."""
        return self.concurrency or os.cpu_count() or 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from any mapping of variable names (``os.environ`` or a test's dict)."""
        return cls.from_sources(env, None)

    @classmethod
    def from_sources(
        cls, env: Mapping[str, str], conf: Mapping[str, Any] | None, *, namespace: str | None = None
    ) -> Settings:
        """Settings from the environment, then an app's configuration, then the defaults.

        ``conf`` holds Celery settings (``app.conf``, or what ``config_from_object`` loaded);
        each variable's key there is ``conf_key(name)``, with Celery's ``namespace`` prefix
        (``CELERY_TASKPOOL_DISPATCH`` for Django's ``namespace="CELERY"``) also accepted. A
        ``TASKPOOL_*`` variable or ``taskpool_*`` key that taskpool does not know is refused.
        """
        check_names(env, conf, namespace)
        merged: dict[str, str] = {}
        sources: dict[str, str] = {}
        for key, variable in CONF_KEYS.items():
            value = None if conf is None else conf_value(conf, key, namespace)
            celery_variable = CELERY_VARIABLES.get(variable, "")
            if value is not None and not env.get(celery_variable, "").strip():
                merged[variable] = value
                sources[variable] = f"app.conf {key}"
        for name, value in env.items():
            if value.strip():
                merged[name] = value
                sources.pop(name, None)
        return cls._read(_Reader(merged, sources))

    @classmethod
    def _read(cls, read: _Reader) -> Settings:
        env = read.env
        broker_url = read.url(
            "TASKPOOL_BROKER_URL", "CELERY_BROKER_URL", DEFAULT_REDIS_URL, TRANSPORT_ALIASES
        )
        result_backend = read.url(
            "TASKPOOL_RESULT_BACKEND",
            "CELERY_RESULT_BACKEND",
            _default_backend(broker_url),
            BACKEND_ALIASES,
        )
        password = env.get("TASKPOOL_REDIS_PASSWORD", "")
        return cls(
            broker_url=with_redis_password(broker_url, password),
            result_backend=with_redis_password(result_backend, password),
            routes=read.routes("TASKPOOL_ROUTES"),
            dispatch=read.choice("TASKPOOL_DISPATCH", DISPATCH_MODES, "auto"),
            no_worker=read.choice("TASKPOOL_NO_WORKER", NO_WORKER_POLICIES, "local"),
            local_start_method=read.choice(
                "TASKPOOL_LOCAL_START_METHOD", LOCAL_START_METHODS, "auto"
            ),
            concurrency=read.number("TASKPOOL_CONCURRENCY", int, None),
            worker_pool=read.choice("TASKPOOL_WORKER_POOL", WORKER_POOL_NAMES, "prefork"),
            broker_timeout=read.number("TASKPOOL_BROKER_TIMEOUT", float, DEFAULT_BROKER_TIMEOUT),
            broker_recheck=read.number("TASKPOOL_BROKER_RECHECK", float, DEFAULT_BROKER_RECHECK),
            task_time_limit=read.number("TASKPOOL_TASK_TIME_LIMIT", float, DEFAULT_TASK_TIME_LIMIT),
            task_soft_time_limit=read.number("TASKPOOL_TASK_SOFT_TIME_LIMIT", float, None),
            result_expires=read.number("TASKPOOL_RESULT_EXPIRES", int, DEFAULT_RESULT_EXPIRES),
            liveness_timeout=read.number(
                "TASKPOOL_LIVENESS_TIMEOUT", float, DEFAULT_LIVENESS_TIMEOUT
            ),
            visibility_timeout=read.number(
                "TASKPOOL_VISIBILITY_TIMEOUT", int, DEFAULT_VISIBILITY_TIMEOUT
            ),
            socket_timeout=read.number("TASKPOOL_SOCKET_TIMEOUT", float, DEFAULT_SOCKET_TIMEOUT),
            prefetch_multiplier=read.number(
                "TASKPOOL_PREFETCH_MULTIPLIER", int, DEFAULT_PREFETCH_MULTIPLIER
            ),
            restore_interval=read.number(
                "TASKPOOL_RESTORE_INTERVAL", float, DEFAULT_RESTORE_INTERVAL
            ),
            max_message_bytes=read.number(
                "TASKPOOL_MAX_MESSAGE_BYTES", int, DEFAULT_MAX_MESSAGE_BYTES
            ),
            max_deliveries=read.number("TASKPOOL_MAX_DELIVERIES", int, DEFAULT_MAX_DELIVERIES),
            max_memory_per_child_mb=read.number(
                "TASKPOOL_MAX_MEMORY_PER_CHILD_MB", int, DEFAULT_MAX_MEMORY_PER_CHILD_MB
            ),
            max_tasks_per_child=read.number("TASKPOOL_MAX_TASKS_PER_CHILD", int, None),
            json_safe_integers=read.flag("TASKPOOL_JSON_SAFE_INTEGERS", False),
            redis_tls_ca_file=read.file("TASKPOOL_REDIS_TLS_CA_FILE"),
            redis_tls_cert_file=read.file("TASKPOOL_REDIS_TLS_CERT_FILE"),
            redis_tls_key_file=read.file("TASKPOOL_REDIS_TLS_KEY_FILE"),
            redis_tls_verify=read.choice("TASKPOOL_REDIS_TLS_VERIFY", TLS_VERIFY, "required"),
            sentinel_master=env.get("TASKPOOL_SENTINEL_MASTER", "").strip() or None,
            sentinel_password=env.get("TASKPOOL_SENTINEL_PASSWORD", "") or None,
            sentinel_tls=read.flag("TASKPOOL_SENTINEL_TLS", False),
            redis_wait_replicas=read.number("TASKPOOL_REDIS_WAIT_REPLICAS", int, None),
            redis_wait_timeout=read.number(
                "TASKPOOL_REDIS_WAIT_TIMEOUT", float, DEFAULT_WAIT_TIMEOUT
            ),
        )

    def _check_limits(self) -> None:
        """Derive an unset soft limit from the hard one; reject limits that contradict."""
        if self.task_soft_time_limit is None:
            object.__setattr__(  # frozen: set once, here, as it is built
                self, "task_soft_time_limit", self.task_time_limit * SOFT_LIMIT_SHARE
            )
        assert self.task_soft_time_limit is not None
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ConfigError(
                "TASKPOOL_TASK_SOFT_TIME_LIMIT",
                str(self.task_soft_time_limit),
                f"must be below TASKPOOL_TASK_TIME_LIMIT ({self.task_time_limit:g} s), "
                "so a task is warned before it is killed",
            )


def check_dispatch(requested: str) -> DispatchMode:
    """A dispatch mode given per call (``dispatch=``), refused unless it is one of the modes."""
    _check_choice("dispatch", requested, DISPATCH_MODES)
    return cast(DispatchMode, requested)


def with_redis_password(url: str, password: str) -> str:
    """Put ``password`` into a Redis URL that has none, so URLs and the secret can live apart.

    Compose files and manifests then carry ``redis://redis:6379/0`` and the password comes from
    a secret (TASKPOOL_REDIS_PASSWORD); a password already in the URL wins. In a list of
    sentinels, each URL gets it: Celery and kombu read it from the first.
    """
    if len(split_urls(url)) > 1:
        return ";".join(with_redis_password(part, password) for part in split_urls(url))
    parts = urlsplit(url)
    if not password or parts.scheme not in REDIS_SCHEMES or parts.password is not None:
        return url
    user = parts.username or ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _default_backend(broker_url: str) -> str:
    """A Redis broker stores results too; any other broker uses the laptop Redis for results."""
    return broker_url if is_redis(broker_url) else DEFAULT_REDIS_URL


def check_names(
    env: Mapping[str, str], conf: Mapping[str, Any] | None, namespace: str | None
) -> None:
    """Refuse a ``TASKPOOL_*`` variable or a ``taskpool_*`` app.conf key taskpool does not
    read: a misspelt name would otherwise be ignored without a word."""
    for name in env:
        if name.startswith("TASKPOOL_") and name not in VARIABLES:
            raise ConfigError(name, "…", "taskpool has no such variable" + _hint(name, VARIABLES))
    prefix = f"{namespace.upper()}_" if namespace else ""
    for key in conf or ():
        plain = key[len(prefix) :].lower() if prefix and key.startswith(prefix) else key
        if plain.startswith("taskpool_") and plain not in CONF_KEYS:
            raise ConfigError(
                f"app.conf {key}", "…", "taskpool has no such setting" + _hint(plain, CONF_KEYS)
            )


def _hint(name: str, known: Collection[str]) -> str:
    unprefixed = name.removeprefix("taskpool_")  # taskpool_broker_url for Celery's broker_url
    close = [unprefixed] if unprefixed in known else difflib.get_close_matches(name, list(known), 1)
    return f" (did you mean {close[0]}?)" if close else ""


def conf_value(conf: Mapping[str, Any], key: str, namespace: str | None) -> str | None:
    """A setting from an app's configuration as a variable would spell it; None if unset."""
    value = conf.get(key)
    if value is None and namespace:
        value = conf.get(f"{namespace.upper()}_{key.upper()}")
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime.timedelta):
        return str(int(value.total_seconds()))
    if isinstance(value, (list, tuple)) and key in ("broker_url", "result_backend"):
        return ";".join(map(str, value))
    if isinstance(value, Mapping) and key == "taskpool_routes":
        return ",".join(f"{task}={queue}" for task, queue in value.items())
    return str(value)


class _Reader:
    """Reads and validates single variables; empty strings count as unset. ``sources`` names
    where a variable's value came from, when that was not the environment."""

    def __init__(self, env: Mapping[str, str], sources: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.sources = sources or {}

    def raw(self, *names: str) -> tuple[str, str] | None:
        """The first of ``names`` that is set: the name to show in errors, and its value."""
        for name in names:
            value = self.env.get(name, "").strip()
            if value:
                return self.sources.get(name, name), value
        return None

    def url(self, name: str, alias: str, default: str, schemes: Collection[str]) -> str:
        found = self.raw(name, alias)
        if found is None:
            return default
        _check_url(*found, schemes)
        return found[1]

    def routes(self, name: str) -> tuple[tuple[str, str], ...]:
        """``task=queue`` pairs, comma-separated: ``tasks.sum_of_squares=cpu,tasks.square=fast``."""
        found = self.raw(name)
        if found is None:
            return ()
        pairs = []
        for item in found[1].split(","):
            task, sep, queue = item.strip().partition("=")
            if not (sep and task.strip() and queue.strip()):
                raise ConfigError(
                    found[0],
                    found[1],
                    "expected task=queue pairs separated by commas, e.g. tasks.square=fast",
                )
            pairs.append((task.strip(), queue.strip()))
        return tuple(pairs)

    def choice(self, name: str, allowed: tuple[T, ...], default: T) -> T:
        found = self.raw(name)
        if found is None:
            return default
        value = found[1].lower()
        _check_choice(found[0], value, allowed, shown=found[1])
        return cast(T, value)

    def file(self, name: str) -> str | None:
        found = self.raw(name)
        if found is None:
            return None
        _check_file(*found)
        return found[1]

    def flag(self, name: str, default: bool) -> bool:
        found = self.raw(name)
        if found is None:
            return default
        value = found[1].lower()
        _check_choice(found[0], value, FLAG_WORDS, shown=found[1])
        return value in ("1", "true", "yes", "on")

    def number(self, name: str, kind: Callable[[str], T], default: T) -> T:
        found = self.raw(name)
        if found is None:
            return default
        try:
            value = kind(found[1])
        except ValueError:
            raise ConfigError(found[0], found[1], _positive_rule(kind is int)) from None
        _check_positive(found[0], value, shown=found[1])
        return value


#: Fields that must be greater than 0 (None, where allowed, means "no limit" or "per CPU").
_POSITIVE = (
    "concurrency",
    "broker_timeout",
    "broker_recheck",
    "task_time_limit",
    "task_soft_time_limit",
    "result_expires",
    "liveness_timeout",
    "visibility_timeout",
    "socket_timeout",
    "prefetch_multiplier",
    "restore_interval",
    "max_message_bytes",
    "max_deliveries",
    "max_memory_per_child_mb",
    "max_tasks_per_child",
    "redis_wait_replicas",
    "redis_wait_timeout",
)


def _positive_rule(whole: bool) -> str:
    return f"expected {'a whole number' if whole else 'a number'} greater than 0"


def _check_positive(name: str, value: object, shown: str | None = None) -> None:
    whole = isinstance(value, int)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value > 0 and math.isfinite(value))
    ):
        raise ConfigError(name, str(value) if shown is None else shown, _positive_rule(whole))


def _check_choice(
    name: str, value: object, allowed: tuple[T, ...], shown: str | None = None
) -> None:
    if value not in allowed:
        raise ConfigError(
            name, str(value) if shown is None else shown,
            "expected one of " + ", ".join(map(str, allowed)),
        )  # fmt: skip


def _check_file(name: str, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(name, path, "expected the path of a readable file (PEM)")


def _check_url(name: str, url: str, schemes: Collection[str]) -> None:
    try:
        scheme = url_scheme(url)
    except ValueError:
        scheme = ""
    if scheme in REDIS_SCHEMES and not all(map(_has_database_path, split_urls(url))):
        raise ConfigError(
            name,
            mask_url(url),
            "the part after the host must be a database number (redis://host:6379/0); a / or "
            "@ in the password must be percent-encoded (%2F, %40), or the password given in "
            "TASKPOOL_REDIS_PASSWORD",
        )
    if scheme not in schemes:
        raise ConfigError(
            name,
            mask_url(url),
            "expected a URL such as redis://[:password@]host:6379/0, "
            "sentinel://host1:26379;sentinel://host2:26379 or "
            "amqp://user:password@host:5672// (percent-encode / @ : ; in a password), "
            "with a scheme among " + ", ".join(sorted(schemes)),
        )


def _has_database_path(url: str) -> bool:
    """A Redis URL's path is empty or ``/N``: anything else is a password's raw ``/``."""
    path = urlsplit(url).path
    return path in ("", "/") or path[1:].isdigit()


@functools.cache
def current_settings() -> Settings:
    """The process's settings, read from ``os.environ`` on first use (never at import)."""
    return Settings.from_env(os.environ)


#: Bumped by ``forget_settings``: settings an app read from the environment before are read
#: again at their next use.
_generation = 0


def forget_settings() -> None:
    """Read the environment again at the next use, for every app whose settings came from it
    (tests that change the environment; settings are otherwise read once and kept)."""
    global _generation
    _generation += 1
    current_settings.cache_clear()


#: Each app's settings, and the ``_generation`` they were read in (None: given to the app,
#: never read again); weak, so a discarded app is freed.
_app_settings: weakref.WeakKeyDictionary[object, tuple[Settings, int | None]] = (
    weakref.WeakKeyDictionary()
)


def bind_settings(app: object, settings: Settings, *, given: bool = False) -> None:
    """Make ``settings`` the ones ``settings_of(app)`` returns; ``given`` ones are kept for
    good, others until ``forget_settings``."""
    _app_settings[app] = (settings, None if given else _generation)


def _bound(app: object) -> Settings | None:
    entry = _app_settings.get(app)
    if entry is None or entry[1] not in (None, _generation):
        return None
    return entry[0]


def settings_of(app: object) -> Settings:
    """The settings of ``app``, read when its configuration is first needed.

    An app of ``create_app`` or ``taskpool.configure`` binds them as its configuration loads;
    any other app (a plain ``task_cls=FallbackTask`` one) gets the environment's and its
    ``app.conf`` ``taskpool_*`` keys, read once.
    """
    bound = _bound(app)
    if bound is not None:
        return bound
    conf = getattr(app, "conf", None)
    if conf is not None:
        conf.get("broker_url")  # reading a value loads the configuration, which may bind
    bound = _bound(app)
    if bound is not None:
        return bound
    if conf is None:
        return current_settings()
    settings = Settings.from_sources(os.environ, conf, namespace=getattr(app, "namespace", None))
    bind_settings(app, settings)
    return settings
