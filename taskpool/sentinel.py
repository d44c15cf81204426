"""Redis Sentinel: which Redis is the primary now, and which are its replicas."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel
from redis.utils import str_if_bytes

from taskpool.urls import failover_hosts, mask_url, split_urls

#: Where a sentinel listens unless its URL says otherwise.
SENTINEL_PORT = 26379


@contextmanager
def sentinels(
    url: str,
    timeout: float,
    transport_options: Mapping[str, Any] | None = None,
    tls: Mapping[str, Any] | None = None,
) -> Iterator[tuple[Sentinel, str]]:
    """The sentinels of a ``sentinel://a;sentinel://b`` URL and the master name, as kombu and
    Celery read them (``master_name``, ``sentinel_kwargs`` in the transport options; Redis's
    password and database from the first URL), every wait cut to ``timeout``; closed after.
    ``tls``: redis-py's ``ssl_*`` options (Celery's ``*_use_ssl``) for the Redis servers the
    sentinels name, which are then reached over TLS."""
    options = dict(transport_options or {})
    master = options.get("master_name")
    if not master:
        raise ValueError(f"no master_name in the transport options of {mask_url(url)}")
    # No retries (redis-py's default retries each sentinel three times with backoff).
    bounded = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": None}
    first = urlsplit(split_urls(url)[0])
    redis_options: dict[str, Any] = dict(bounded, db=int(first.path.strip("/") or 0))
    if first.password:
        redis_options["password"] = unquote(first.password)
    if tls:
        redis_options.update(ssl=True, **{k: v for k, v in tls.items() if v is not None})
    found = Sentinel(
        failover_hosts(url, SENTINEL_PORT),
        sentinel_kwargs={**options.get("sentinel_kwargs", {}), **bounded},
        **redis_options,
    )
    try:
        yield found, str(master)
    finally:
        for client in found.sentinels:
            client.close()


def ping_primary(
    url: str,
    timeout: float,
    transport_options: Mapping[str, Any] | None,
    tls: Mapping[str, Any] | None = None,
) -> None:
    """Ask the sentinels for the primary, then PING it; raise if either does not answer."""
    with sentinels(url, timeout, transport_options, tls) as (found, master):
        client: redis.Redis = found.master_for(master)
        try:
            client.ping()
        finally:
            client.close()


def topology(
    url: str, timeout: float, transport_options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The primary's and the replicas' ``host:port`` as the sentinels see them now."""
    with sentinels(url, timeout, transport_options) as (found, master):
        host, port = found.discover_master(master)
        replicas = found.discover_slaves(master)
    return {
        "master_name": master,
        "primary": f"{host}:{port}",
        "replicas": [f"{_text(h)}:{_text(p)}" for h, p in replicas],
    }


def _text(value: Any) -> str:
    """An address part as redis-py 8.2 types it (bytes, or a number) as text."""
    return str(str_if_bytes(value))
