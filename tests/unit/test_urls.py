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
    ],
)
def test_mask_url_hides_every_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked
