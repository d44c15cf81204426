"""What a fetching pool's process copies into its slot for its parent, and what the parent
rebuilds from it when the process dies mid-task (``fetching_process.copied``,
``message_copy``; ``fetching.rebuilt``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from kombu.transport.redis import dumps, loads

from taskpool import fetching_process
from taskpool.fetching import rebuilt
from taskpool.fetching_process import MESSAGE_ROOM, copied, message_copy


def stored(args: tuple[Any, ...], **headers: Any) -> tuple[Any, bytes]:
    """A task message as kombu's Redis transport stores it (completed by kombu's own channel
    code, then encoded), and its channel: kombu's in-memory one, which reads it as Redis's does."""
    app = Celery(set_as_current=False)
    task = app.amqp.as_task_v2("an-id", "tasks.square", args=args, kwargs={}, **headers)
    channel = Connection("memory://").default_channel
    message = channel.prepare_message(
        dumps(task.body), 0, "application/json", "utf-8", task.headers,
        {"correlation_id": "an-id", "reply_to": "a-reply-to"},
    )  # fmt: skip
    channel._inplace_augment_message(message, "", "celery")
    return channel, dumps(message).encode()


def delivered(channel: Any, text: bytes, *, kept: bool = True) -> Any:
    """The message as the channel hands it on; its text kept as taskpool's channel keeps it."""
    message = channel.Message(loads(text), channel=channel)
    channel.last_text = (message.delivery_tag, text) if kept else None
    return message


def read_back(task: dict[str, Any]) -> dict[str, Any]:
    copy = message_copy(task)
    assert copy is not None
    return copy


def parts(message: Any) -> dict[str, Any]:
    body = message.body if isinstance(message.body, bytes) else message.body.encode()
    return {
        "body": body, "content_type": message.content_type,
        "content_encoding": message.content_encoding, "headers": message.headers,
        "properties": message.properties, "delivery_info": message.delivery_info,
    }  # fmt: skip


def test_the_stored_text_is_copied_and_rebuilds_the_message_its_parts_rebuild() -> None:
    channel, text = stored((7, "ünï {q}"), stamped_headers=["batch"], batch="b1")
    message = delivered(channel, text)
    copy = copied(message)
    assert copy == text.decode()
    by_text = rebuilt(read_back({"message": json.loads(json.dumps(copy))}), "tag")
    by_parts = rebuilt(read_back({"message": copied(delivered(channel, text, kept=False))}), "tag")
    assert parts(by_text) == parts(by_parts) == parts(message)
    assert by_text.headers["stamps"] == {"batch": "b1"}


def test_the_text_of_another_message_is_not_copied() -> None:
    channel, text = stored((7,))
    message = delivered(channel, text)
    channel.last_text = ("another-tag", text)
    assert isinstance(copied(message), dict)


def test_a_message_too_big_for_the_slot_is_copied_without_its_arguments() -> None:
    channel, text = stored(("x" * MESSAGE_ROOM,))
    copy = copied(delivered(channel, text))
    assert isinstance(copy, dict)
    assert json.loads(copy["body"])[0] == []
    assert copy["headers"]["task"] == "tasks.square"


def test_a_task_with_no_message_copied_has_none() -> None:
    assert message_copy({"id": "an-id"}) is None


@pytest.mark.parametrize("kept", [True, False])
def test_either_copy_fits_in_a_slot_entry(kept: bool) -> None:
    channel, text = stored((1,) * 100)
    entry = {"task": {"message": copied(delivered(channel, text, kept=kept))}}
    assert len(json.dumps(entry)) < fetching_process.SLOT_SIZE
