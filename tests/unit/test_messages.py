"""taskpool.messages: which raw messages a worker cannot read, and the reason it gives."""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from taskpool import messages
from taskpool.errors import UnreadableMessage
from taskpool.messages import MAX_NESTING, read
from tests.support.values import nested

LIMIT = 1000


def message(body: bytes = b"[[3], {}, {}]", **headers: Any) -> dict[str, Any]:
    """A protocol-2 task message as kombu's Redis transport stores it."""
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "tasks.square", "id": "a1", "timelimit": [None, None]}
        | headers,
        "properties": {
            "correlation_id": "a1",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "t1",
        },
    }


def without_timelimit(payload: dict[str, Any]) -> dict[str, Any]:
    del payload["headers"]["timelimit"]
    return payload


def raw(payload: object) -> bytes:
    return json.dumps(payload).encode()


def changed(change: Callable[[dict[str, Any]], object]) -> bytes:
    payload = message()
    change(payload)
    return raw(payload)


def test_a_task_message_as_celery_sends_it_is_read_unchanged() -> None:
    assert read(raw(message()), max_inflated=LIMIT) == message()


@pytest.mark.parametrize(
    ("compression", "compress"),
    [("application/x-gzip", zlib.compress), ("zlib", zlib.compress), ("bzip2", bz2.compress),
     ("application/x-lzma", lzma.compress)],
)  # fmt: skip
def test_compressed_bodies_within_the_bound_are_read(
    compression: str, compress: Callable[[bytes], bytes]
) -> None:
    body = compress(b"[[3], {}, {}]")
    assert read(raw(message(body, compression=compression)), max_inflated=LIMIT)


def test_celerys_hybrid_body_a_protocol_1_body_under_protocol_2_headers_is_read() -> None:
    hybrid = message(b'{"args": [3], "kwargs": {}, "timelimit": [null, 5]}')
    assert read(raw(hybrid), max_inflated=LIMIT)


def test_a_message_of_another_content_type_is_left_to_celerys_accept_content() -> None:
    pickled = changed(lambda m: m.update({"content-type": "application/x-python-serialize"}))
    assert read(pickled, max_inflated=LIMIT)


def test_a_message_that_is_no_task_message_is_checked_as_an_envelope_only() -> None:
    plain = changed(lambda m: m.update(headers={}, body=base64.b64encode(b"hello").decode()))
    assert read(plain, max_inflated=LIMIT)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe{", "the message is not UTF-8 text"),
        (b"{nope", "the message is not JSON"),
        (b"[1, 2]", "the message is a JSON array, not an object"),
        (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "nested too deep"),
        (changed(lambda m: m.pop("properties")), "no properties object"),
        (changed(lambda m: m.update(properties=[])), "no properties object"),
        (changed(lambda m: m["properties"].pop("delivery_tag")), "no delivery_tag string"),
        (changed(lambda m: m["properties"].update(delivery_tag=7)), "no delivery_tag string"),
        (changed(lambda m: m["properties"].pop("delivery_info")), "delivery_info"),
        (
            changed(lambda m: m["properties"]["delivery_info"].update(routing_key=None)),
            "delivery_info",
        ),
        (changed(lambda m: m["properties"].update(body_encoding="rot13")), "not base64"),
        (changed(lambda m: m.update({"content-type": 5})), "content-type is a number"),
        (changed(lambda m: m.update(headers=[1])), "headers are not an object"),
        (changed(lambda m: m.update(body=["x"])), "body is a JSON array, not a string"),
        (changed(lambda m: m.update(body="@@ not base64 @@")), "body is not base64"),
        (changed(lambda m: m["headers"].update(id=None)), "id header is not a string"),
        (changed(lambda m: m["headers"].update(task=["x"])), "task header is not a string"),
        (changed(lambda m: m["headers"].update(timelimit=["x", "y"])), "timelimit"),
        (changed(lambda m: m["headers"].update(timelimit=[1])), "timelimit"),
        (changed(lambda m: m["headers"].update(timelimit=[True, None])), "timelimit"),
        (changed(lambda m: m["headers"].update(retries="2")), "retries '2' is not a number"),
        (raw(message(b'{"x": []}')), "body object is not [args, kwargs, embed]"),
        (raw(message(b'{"args": {}}')), "not [args, kwargs, embed]"),
        (raw(message(b'{"args": [], "kwargs": []}')), "not [args, kwargs, embed]"),
        (raw(without_timelimit(message(b'{"args": [], "timelimit": ["x", 1]}'))), "timelimit"),
        (raw(message(b"[[], {}]")), "body array is not [args, kwargs, embed]"),
        (raw(message(b"[{}, {}, {}]")), "not [args, kwargs, embed]"),
        (raw(message(b"[[], [], {}]")), "not [args, kwargs, embed]"),
        (raw(message(b"[[], {}, 5]")), "not [args, kwargs, embed]"),
        (raw(message(b"\xff")), "body is not UTF-8"),
        (raw(message(b"[[")), "body is not JSON"),
        (raw(message(b"[" * 5000 + b"]" * 5000)), "body is JSON nested too deep"),
        (
            changed(lambda m: m["headers"].update(custom=nested(MAX_NESTING + 1, dict))),
            f"headers nest deeper than {MAX_NESTING} levels",
        ),
        (
            raw(message(zlib.compress(bytes(LIMIT + 1)), compression="application/x-gzip")),
            f"inflates past {LIMIT:,} bytes (TASKPOOL_MAX_MESSAGE_BYTES)",
        ),
        (raw(message(b"not zlib", compression="zlib")), "does not inflate as application/x-gzip"),
        (raw(message(b"x", compression="brotli")), "cannot be inflated within a bound"),
        (raw(message(b"x", compression="no-such")), "cannot be inflated within a bound"),
    ],
)
def test_an_unreadable_message_is_refused_naming_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableMessage) as caught:
        read(data, max_inflated=LIMIT)
    assert reason in str(caught.value)


def test_headers_full_of_brackets_in_strings_but_shallow_are_read() -> None:
    """The bracket count that spares most messages the walk of their headers only bounds the
    depth: past it, the headers are walked, and shallow ones pass."""
    payload = message(note="[{" * MAX_NESTING, custom=nested(MAX_NESTING - 1, dict))
    assert read(raw(payload), max_inflated=LIMIT) == payload


def test_a_bomb_is_not_inflated_past_the_bound() -> None:
    """1 GB of zeros in about 1 MB: refused after inflating LIMIT + 1 bytes, not 1 GB."""
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    data = b"".join(packer.compress(chunk) for _ in range(1024)) + packer.flush()
    with pytest.raises(UnreadableMessage, match="inflates past"):
        read(raw(message(data, compression="zlib")), max_inflated=LIMIT)


def test_a_check_that_fails_on_a_message_makes_it_unreadable_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(payload: dict[str, Any]) -> None:
        raise KeyError("a case no check foresaw")

    monkeypatch.setattr(messages, "_check_envelope", broken)
    with pytest.raises(UnreadableMessage, match=r"reading it failed \(KeyError: "):
        read(raw(message()), max_inflated=LIMIT)
