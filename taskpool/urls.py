"""Parsing and password-masking of broker and result-backend URLs."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: ``scheme://user:password@``, with everything up to the password's colon as group 1. The
#: password runs to the last ``@`` of the URL (``;`` separates failover URLs), so one holding
#: ``/`` or ``@`` is masked whole.
_CREDENTIALS = re.compile(r"(://[^/@;:]*:)[^;]*@")


def mask_url(url: str) -> str:
    """Return ``url`` with every password replaced by ``**``, safe for messages and logs.

    Works on text, so it also masks URLs too broken to parse and failover lists (``a;b``).
    """
    return _CREDENTIALS.sub(r"\1**@", url)


#: The URL schemes of a Redis: plain, TLS, and a list of sentinels that name the primary.
REDIS_SCHEMES = ("redis", "rediss", "sentinel")


def is_redis(url: str) -> bool:
    """A Redis URL, or a list of them (``sentinel://a;sentinel://b``)."""
    return url.split("://", 1)[0] in REDIS_SCHEMES


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def url_scheme(url: str) -> str:
    """Return the scheme of ``url``, or raise ValueError when it has none or a bad port.

    A failover list (``sentinel://a:26379;sentinel://b:26379``) has one scheme throughout.
    """
    schemes = set()
    for part in url.split(";"):
        parts = urlsplit(part)
        if not parts.scheme or "://" not in part:
            raise ValueError("no scheme")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        schemes.add(parts.scheme)
    if len(schemes) != 1:
        raise ValueError("a failover list mixes schemes")
    return schemes.pop()


def failover_hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    """The (host, port) of each URL of a failover list such as a list of sentinels."""
    hosts = []
    for part in url.split(";"):
        parts = urlsplit(part)
        hosts.append((parts.hostname or "localhost", parts.port or default_port))
    return hosts
