"""An envelope fills in to the very text kombu's Redis transport stores for the same message."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from kombu.transport.redis import dumps

from taskpool.envelope import FIELDS, Envelope


def prepared(headers_extra: dict[str, Any] | None = None, priority: int | None = 0) -> Any:
    """A plain call's message as Celery's ``as_task_v2`` and kombu's ``prepare_message`` build
    it, before a channel completes it; and the channel (kombu's in-memory one, which completes
    a message as its Redis one does)."""
    app = Celery(set_as_current=False)
    task = app.amqp.as_task_v2("an-id", "tasks.square", args=(7,), kwargs={})
    headers = {**task.headers, **(headers_extra or {})}
    channel = Connection("memory://").default_channel
    message = channel.prepare_message(
        dumps(task.body),
        priority,
        "application/json",
        "utf-8",
        headers,
        {"correlation_id": "an-id", "reply_to": "a-reply-to"},
    )
    return message, channel


def kombus_text(message: Any, channel: Any, values: dict[str, Any]) -> str:
    """What kombu's Redis channel stores: the message, with ``values`` (the body not yet
    encoded), completed by kombu's own ``_inplace_augment_message`` (which encodes the body and
    gives the delivery tag), as JSON."""
    message = copy.deepcopy(message)
    message["body"] = values["body"]
    message["headers"].update(
        id=values["task_id"], root_id=values["task_id"],
        argsrepr=values["argsrepr"], kwargsrepr=values["kwargsrepr"],
    )  # fmt: skip
    message["properties"].update(correlation_id=values["task_id"], reply_to=values["reply_to"])
    channel.body_encoding = values["body_encoding"]
    channel._next_delivery_tag = lambda: values["delivery_tag"]
    channel._inplace_augment_message(message, "", "celery")
    return dumps(message)


@pytest.mark.parametrize(
    "values",
    [
        {
            "body": "W1s3XSwge30sIHt9XQ==", "body_encoding": "base64", "task_id": "6f1c",
            "argsrepr": "(7,)", "kwargsrepr": "{}", "reply_to": "b2c0", "delivery_tag": "d4e5",
        },
        {
            "body": '[["é", "{0}"], {"a": "\\"}"}]', "body_encoding": None,
            "task_id": "id with \"quotes\" and {braces}", "argsrepr": "('é\\n', '{1}')",
            "kwargsrepr": "{'a': '}'}", "reply_to": "\u2603", "delivery_tag": "\\u0000",
        },
    ],
    ids=["base64", "awkward"],
)  # fmt: skip
def test_an_envelope_fills_in_to_kombus_stored_text(values: dict[str, Any]) -> None:
    message, channel = prepared()
    envelope = Envelope.of(message, "", "celery")
    assert envelope is not None
    expected = kombus_text(message, channel, values)
    encoded = channel.encode_body(values["body"], values["body_encoding"])[0]
    filled = {**values, "body": encoded}
    assert envelope.fill(**filled) == expected
    assert envelope.text(*(filled[name] for name in FIELDS)) == expected


def test_constant_braces_in_a_header_are_kept() -> None:
    message, channel = prepared({"x-trace": "{span}"})
    envelope = Envelope.of(message, "", "celery")
    assert envelope is not None
    values = {**dict.fromkeys(FIELDS, "v"), "body_encoding": None}
    assert '"x-trace": "{span}"' in envelope.fill(**values)
    assert envelope.fill(**values) == kombus_text(message, channel, values)


def test_a_message_that_would_not_fill_in_to_kombus_text_has_no_envelope() -> None:
    """The check ``Envelope.of`` makes: here a header holds the very stand-in a field is
    marked with, so the filled-in text would differ from kombu's."""
    message, _ = prepared({"x-odd": "\x00taskpool-field:body"})
    assert Envelope.of(message, "", "celery") is None


def test_an_envelope_leaves_the_template_as_it_was() -> None:
    message, _ = prepared()
    before = copy.deepcopy(message)
    Envelope.of(message, "", "celery")
    assert message == before
