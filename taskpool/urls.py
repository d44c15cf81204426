"""Parsing and password-masking of broker and result-backend URLs, and of what holds them."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

#: A URL in text: a scheme, credentials up to an ``@`` (quotes allowed: a password may hold
#: them), then up to whitespace or a quote. A failover list (``a;b``) is one match, split below.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^/@\s]*@)?[^\s'\"]*")
#: Where the next URL of a failover list starts: a ``;`` followed by a scheme. A ``;`` that is
#: not (one in a password, say) belongs to the URL it is in.
_NEXT_URL = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")
#: A secret in a query string: redis-py reads ``?password=``, kombu its transport options.
_QUERY_SECRET = re.compile(r"([?&;][A-Za-z_]*(?:password|passwd|secret|token)=)([^&#]*)", re.I)


def mask_url(text: str) -> str:
    """Return ``text`` with the password of every URL in it replaced by ``**``, safe for
    messages and logs: ``scheme://user:**@host``, ``?password=**``.

    Works on text, so it also masks URLs too broken to parse, URLs inside a message, and
    failover lists (``a;b``). The credentials run to the last ``@`` of each URL, so a password
    holding ``/``, ``@``, ``:``, ``;``, ``?`` or ``#`` is masked whole.
    """
    return _URL.sub(lambda found: ";".join(map(_mask_one, split_urls(found[0]))), text)


def split_urls(url: str) -> list[str]:
    """The URLs of a failover list (``a;b``), split only where a ``;`` starts a URL."""
    return _NEXT_URL.split(url)


def _parts(url: str) -> tuple[str, str | None, str]:
    """One URL as (scheme and user up to the password, the password or None, the rest)."""
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    user, colon, password = rest[: max(at, 0)].partition(":")
    if colon and "/" not in user:  # user:password@ (a user may be empty)
        return f"{scheme}://{user}:", password, rest[at:]
    return f"{scheme}://", None, rest


def _mask_one(url: str) -> str:
    head, password, rest = _parts(url)
    return head + ("" if password is None else "**") + _QUERY_SECRET.sub(r"\1**", rest)


def scrub(text: str, *urls: str) -> str:
    """``text`` with its URLs masked (``mask_url``) and each password of ``urls`` replaced by
    ``**`` wherever it appears, as written or percent-decoded: a server's or a library's error
    may quote it bare."""
    text = mask_url(text)
    for url in urls:
        for one in split_urls(url):
            secrets = [_parts(one)[1], *(found[2] for found in _QUERY_SECRET.finditer(one))]
            for secret in filter(None, secrets):
                for form in {secret, unquote(secret)}:
                    text = text.replace(form, "**")
    return text


#: Keys whose values are secrets wherever they sit in a mapping (``sentinel_kwargs``' password).
_SECRET_KEY = re.compile(r"pass|secret|token", re.I)


def masked(value: Any) -> Any:
    """A copy of ``value`` (mappings, sequences, text) safe to show: the values of keys that
    name a secret are ``**``, and every URL in a string is masked (``mask_url``)."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, dict):
        return {
            k: "**" if isinstance(k, str) and _SECRET_KEY.search(k) and v else masked(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(masked(item) for item in value)
    return value


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
    for part in split_urls(url):
        parts = urlsplit(part)
        if not parts.scheme or "://" not in part:
            raise ValueError("no scheme")
        if ";" in _parts(part)[2].split("/", 1)[0]:  # a host a;b: the URL after ; has no scheme
            raise ValueError("a URL of a failover list has no scheme")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        schemes.add(parts.scheme)
    if len(schemes) != 1:
        raise ValueError("a failover list mixes schemes")
    return schemes.pop()


def failover_hosts(url: str, default_port: int) -> list[tuple[str, int]]:
    """The (host, port) of each URL of a failover list such as a list of sentinels."""
    hosts = []
    for part in split_urls(url):
        parts = urlsplit(part)
        hosts.append((parts.hostname or "localhost", parts.port or default_port))
    return hosts
