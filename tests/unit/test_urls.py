"""Passwords in URLs never reach a message."""

from __future__ import annotations

import pytest

from taskpool import mask_url
from taskpool.settings import with_redis_password
from taskpool.urls import scrub, split_urls


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),
        ("amqp://guest:s3cret@127.0.0.1:5672//", "amqp://guest:**@127.0.0.1:5672//"),
        ("rediss://user:p%40ss@host:6380/1", "rediss://user:**@host:6380/1"),
        ("redis://:s3cret@host:notaport/0", "redis://:**@host:notaport/0"),
        ("redis://:a@h1:1/0;redis://:b@h2:2/0", "redis://:**@h1:1/0;redis://:**@h2:2/0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user@localhost:6379/0", "redis://user@localhost:6379/0"),
        ("redis://u:Zm9v+YmFy/eg==@h:6379/0", "redis://u:**@h:6379/0"),
        ("redis://:p@ss@host:6379/0", "redis://:**@host:6379/0"),
        # kombu splits a URL at ";", so settings refuse a raw one; its error shows it masked.
        ("redis://:pa;ss@h:1/0", "redis://:**@h:1/0"),
        ("redis://:pa?ss#x@h/0", "redis://:**@h/0"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=**&db=1"),
        ("redis://h/0?sentinel_password=s3cret", "redis://h/0?sentinel_password=**"),
        ("redis://h/0?password=a@b", "redis://h/0?password=**"),
        ("redis://localhost:6379/0?db=1", "redis://localhost:6379/0?db=1"),
        (
            "sentinel://:a@h1:26379;sentinel://:b;c@h2:26380",
            "sentinel://:**@h1:26379;sentinel://:**@h2:26380",
        ),
        (
            "TASKPOOL_BROKER_URL='redis://:pa;ss@h:1/0' is not valid: broker redis://u:x@h2 down",
            "TASKPOOL_BROKER_URL='redis://:**@h:1/0' is not valid: broker redis://u:**@h2 down",
        ),
    ],
)
def test_mask_url_hides_every_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("url", "urls"),
    [
        ("redis://:a@h1/0;redis://:b@h2/0", ["redis://:a@h1/0", "redis://:b@h2/0"]),
        ("redis://:pa;ss@h/0", ["redis://:pa;ss@h/0"]),
        ("sentinel://:a;b@h1:26379;sentinel://h2", ["sentinel://:a;b@h1:26379", "sentinel://h2"]),
    ],
)
def test_a_failover_list_is_split_only_where_a_url_starts(url: str, urls: list[str]) -> None:
    assert split_urls(url) == urls


def test_scrub_removes_each_configured_password_as_written_and_decoded() -> None:
    text = "AUTH failed for pa;ss, p@ss/w and p%40ss%2Fw at redis://:pa;ss@h/0 (token t0k)"
    urls = ("redis://:pa;ss@h/0;redis://:p%40ss%2Fw@h2/0", "redis://h/1?password=t0k")
    scrubbed = scrub(text, *urls)
    assert scrubbed == "AUTH failed for **, ** and ** at redis://:**@h/0 (token **)"


def test_a_password_holding_a_semicolon_gets_the_password_variable_put_nowhere() -> None:
    # A URL with a password keeps it; one ';' inside it does not make a list (it used to recurse).
    assert with_redis_password("redis://:pa;ss@h/0", "other") == "redis://:pa;ss@h/0"
    assert with_redis_password("redis://h/0;redis://h2/0", "s") == "redis://:s@h/0;redis://:s@h2/0"
