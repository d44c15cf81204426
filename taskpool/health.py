"""Is the broker (and the result store) answering? Asked within a bound, remembered briefly."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import redis
from amqp.exceptions import AccessRefused, NotAllowed
from celery import Celery

from taskpool import liveness, sentinel
from taskpool.celery_conf import RELIABLE_TRANSPORTS
from taskpool.errors import ConfigError, redis_full
from taskpool.urls import is_redis, is_sentinel, mask_url, scrub

log = logging.getLogger(__name__)


class BrokerHealth:
    """The remembered verdict on one app's broker and result store.

    A verdict is reused for ``recheck`` seconds, so a burst of calls probes once and a broker
    that comes back is used again soon. Each switch is logged once, at WARNING.
    """

    def __init__(
        self,
        app: Celery,
        timeout: float,
        recheck: float,
        clock: Callable[[], float] = time.monotonic,
        log_switches: bool = True,
    ) -> None:
        self._app = weakref.ref(app)  # the registry below is keyed by the app: no cycle
        self.log_switches = log_switches
        self.timeout = timeout
        self.recheck = recheck
        self.clock = clock
        self._lock = threading.Lock()
        self._up: bool | None = None
        self._checked_at = float("-inf")
        self.reason = ""
        self.full = False
        #: Per queue: how many live workers consume it, and when that was counted.
        self._served: dict[str, tuple[int | None, float]] = {}

    @property
    def app(self) -> Celery:
        app = self._app()
        if app is None:
            raise ReferenceError("the app of this BrokerHealth was freed")
        return app

    def is_up(self) -> bool:
        """Probe unless a fresh verdict exists; True when both broker and result store answer."""
        with self._lock:
            if self.clock() - self._checked_at >= self.recheck:
                self._record(self._probe())
            return bool(self._up)

    def consumers_of(self, queue: str) -> tuple[int | None, bool]:
        """How many live workers consume ``queue``, counted at most every ``recheck`` seconds,
        and whether that is news (none now, some before or never counted). None when the
        broker's workers do not beat (not taskpool's Redis transport) or it cannot be asked."""
        with self._lock:
            now = self.clock()
            count, at = self._served.get(queue, (None, float("-inf")))
            if now - at < self.recheck:
                return count, False
            before = count
            count = count_consumers(self.app, queue, self.timeout)
            self._served[queue] = (count, now)
            return count, count == 0 and before != 0

    def mark_down(self, error: BaseException) -> None:
        """Record a failure seen outside a probe (a publish that failed after a good check)."""
        with self._lock:
            if redis_full(error):
                self._record(f"Redis at {mask_url(self.broker_url)} {FULL}", full=True)
                return
            self._record(
                self.scrub(f"broker {mask_url(self.broker_url)} failed ({_describe(error)})")
            )

    def scrub(self, text: str) -> str:
        """``text`` safe to show: no password of the broker's or result store's URLs."""
        return scrub(text, self.broker_url, self.backend_url)

    @property
    def broker_url(self) -> str:
        return str(self.app.conf.broker_url)

    @property
    def backend_url(self) -> str:
        return str(self.app.conf.result_backend or "")

    def _record(self, failure: str | None, full: bool = False) -> None:
        up = failure is None
        #: Down because Redis is full, not unreachable: the fix is memory, not starting it.
        self.full = full
        if not self.log_switches:
            pass
        elif up and self._up is False:
            log.warning(
                "broker %s answers again: tasks go to the broker", mask_url(self.broker_url)
            )
        elif not up and self._up is not False:
            log.warning("%s; running tasks on the local pool until it answers", failure)
        self._up, self.reason, self._checked_at = up, failure or "", self.clock()

    def _probe(self) -> str | None:
        """Return why the broker or result store is unusable, or None when both answer.

        Raises ConfigError when one answered and refused (``refusal``): no waiting and no
        local pool fixes that, so it is not a verdict to remember.
        """
        try:
            probe_broker(self.app, self.timeout)
        except Exception as exc:
            self._refuse("broker_url", self.broker_url, exc)
            return self.scrub(f"broker {mask_url(self.broker_url)} unreachable ({_describe(exc)})")
        if is_redis(self.backend_url):  # others (rpc://, databases) are not probed
            conf = self.app.conf
            try:
                probe_redis(
                    self.backend_url,
                    self.timeout,
                    conf.redis_backend_use_ssl,
                    conf.result_backend_transport_options,
                )
            except Exception as exc:
                self._refuse("result_backend", self.backend_url, exc)
                return self.scrub(
                    f"result store {mask_url(self.backend_url)} unreachable ({_describe(exc)})"
                )
        return None

    def _refuse(self, key: str, url: str, error: BaseException) -> None:
        why = refusal(error)
        if why is not None:
            raise ConfigError(key, mask_url(url), self.scrub(f"the server answered and {why}"))


#: A server's answer that says our credentials are wrong.
REJECTED = (redis.exceptions.AuthenticationError, AccessRefused)


def refusal(error: BaseException | None) -> str | None:
    """Why a broker or result store that answered refused us, or None when it may yet work.

    A refusal is a configuration error: wrong credentials, a database the server does not
    have, a URL that names no transport. A server that does not answer, restarts or is full
    may come back, and is not one.
    """
    seen = 0
    while error is not None and seen < 10:  # kombu and Celery wrap the server's error
        text = str(error)
        if isinstance(error, REJECTED) or "WRONGPASS" in text or "NOAUTH" in text:
            return "rejected the credentials: authentication failed"
        if "DB index is out of range" in text or "invalid DB index" in text:
            return (
                "has no such database: the number after the host must be below the server's "
                "`databases` setting (16 by default)"
            )
        if isinstance(error, NotAllowed):
            return f"refused the virtual host ({text})"
        if isinstance(error, KeyError) and "No such transport" in text:
            return f"the URL names no transport: {text.strip(chr(39))}"
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def probe_broker(app: Celery, timeout: float) -> None:
    """Connect to ``app``'s broker once, with its own settings and every wait cut to ``timeout``.

    A failover list (``redis://a;redis://b``) is tried URL by URL, each within ``timeout``, as
    the app's own connections go through it; a list of sentinels names one broker: one try.
    """
    bounded: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    sentinel_kwargs = app.conf.broker_transport_options.get("sentinel_kwargs")
    if sentinel_kwargs is not None:  # the sentinels' own clients, bounded alike
        bounded["sentinel_kwargs"] = {**sentinel_kwargs, **bounded}
    with app.connection_for_write(connect_timeout=timeout, transport_options=bounded) as conn:
        tries = 1 if is_sentinel(app.conf.broker_url) else max(1, len(conn.alt))
        conn.ensure_connection(max_retries=tries - 1, timeout=timeout * tries)


def count_consumers(app: Celery, queue: str, timeout: float) -> int | None:
    """How many live consumers take ``queue`` on ``app``'s broker, by their heartbeats
    (``liveness.serving``); None for a broker whose workers do not beat, or on an error."""
    if app.conf.broker_transport not in RELIABLE_TRANSPORTS.values():
        return None
    try:
        with app.pool.acquire(block=True, timeout=timeout) as connection:
            channel = connection.default_channel
            # A plain client: the key names carry kombu's prefix already.
            client = redis.Redis(connection_pool=channel.client.connection_pool)
            return liveness.serving(client, queue, channel.global_keyprefix or "")
    except Exception as exc:  # the publish that follows meets the same failure, and handles it
        log.debug("could not count the consumers of queue %s: %s", queue, _describe(exc))
        return None


def probe_redis(
    url: str,
    timeout: float,
    tls: Mapping[str, Any] | None = None,
    transport_options: Mapping[str, Any] | None = None,
) -> None:
    """PING the Redis at ``url`` once, no retries, every wait cut to ``timeout``.

    ``tls``: the app's ``redis_backend_use_ssl``: redis-py's ``ssl_*`` options, and, as in
    Celery's backend, TLS whatever the URL's scheme once it is set (which apps set it is
    ``celery_conf``'s to decide). For ``sentinel://`` URLs, the sentinels name the primary
    (``transport_options``: the app's ``result_backend_transport_options``), reached over TLS
    when ``tls`` is given.
    """
    if is_sentinel(url):
        sentinel.ping_primary(url, timeout, transport_options, tls)
        return
    options: dict[str, Any] = {k: v for k, v in (tls or {}).items() if v is not None}
    if tls and not url.startswith("rediss://"):
        options["connection_class"] = redis.SSLConnection
    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None, **options
    )
    try:
        client.ping()
    finally:
        client.close()


#: How a full Redis is named in warnings and errors, and what to do about it.
FULL = "is full (used memory over maxmemory, policy noeviction): it refuses new messages"
FREE_MEMORY = "free memory in Redis (a consumer behind, results kept long) or raise its maxmemory"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # Celery's own messages span lines
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: One BrokerHealth per app; weak, so a discarded app (and its health) is freed.
_registry: weakref.WeakKeyDictionary[Celery, BrokerHealth] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def health_of(app: Celery, timeout: float, recheck: float) -> BrokerHealth:
    """The one BrokerHealth of ``app`` in this process."""
    with _registry_lock:
        health = _registry.get(app)
        if health is None:
            health = _registry[app] = BrokerHealth(app, timeout, recheck)
        return health
