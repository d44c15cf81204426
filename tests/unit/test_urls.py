"""Passwords in URLs never reach a message."""

from __future__ import annotations

import pytest

from taskpool import mask_url


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
