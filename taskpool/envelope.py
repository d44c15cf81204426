"""A template message as kombu's Redis transport stores it, with a place for each call's values.

kombu's virtual channel completes a message before storing it (``_inplace_augment_message``: the
body's encoding, a delivery tag, the exchange and routing key) and kombu's Redis channel stores
its JSON text. For a plain call only a few values differ from one message of a task to the next
(``FIELDS``), so the text is cut once, at those values, into a format string; a call fills it
in, each value JSON-encoded as kombu's encoder spells a string, and the channel stores it
(``transport.Channel.put_encoded``). An envelope is made only when it fills in, for sample
values, to the very text kombu stores for the same message (``Envelope.of``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from kombu.transport.redis import dumps

#: What a call sets: the encoded body and its encoding, the task id (``id``, ``root_id``,
#: ``correlation_id``), the arguments' reprs, ``reply_to`` and the delivery tag.
FIELDS = ("body", "body_encoding", "task_id", "argsrepr", "kwargsrepr", "reply_to", "delivery_tag")

#: Where each field goes, by its place in the message.
PLACES = {
    ("body",): "body",
    ("headers", "id"): "task_id",
    ("headers", "root_id"): "task_id",
    ("headers", "argsrepr"): "argsrepr",
    ("headers", "kwargsrepr"): "kwargsrepr",
    ("properties", "correlation_id"): "task_id",
    ("properties", "reply_to"): "reply_to",
    ("properties", "body_encoding"): "body_encoding",
    ("properties", "delivery_tag"): "delivery_tag",
}

#: A stand-in no message holds: NUL is spelled ``\\u0000`` in the text.
_MARK = "\x00taskpool-field:"
_MARKED = re.compile(r'"\\u0000taskpool-field:(\w+)"')


def quoted(value: str | None) -> str:
    """``value`` in JSON, as kombu's encoder writes it (ASCII only), or ``null``."""
    return "null" if value is None else encode_basestring_ascii(value)


@dataclass(frozen=True)
class Envelope:
    """One task's stored message text, as a format string over ``FIELDS``."""

    form: str

    @classmethod
    def of(cls, message: dict[str, Any], exchange: str, routing_key: str) -> Envelope | None:
        """The envelope of ``message`` (as given to ``basic_publish``, before kombu completes
        it) sent to ``exchange`` with ``routing_key``; None when it would not give kombu's
        text."""
        marked = _completed(copy.deepcopy(message), exchange, routing_key, _marks())
        pieces = _MARKED.split(dumps(marked))
        names = pieces[1::2]
        if sorted(set(names)) != sorted(FIELDS):
            return None
        literal = [piece.replace("{", "{{").replace("}", "}}") for piece in pieces[0::2]]
        form = literal[0] + "".join(
            f"{{{FIELDS.index(name)}}}{piece}"
            for name, piece in zip(names, literal[1:], strict=True)
        )
        envelope = cls(form)
        sample = {name: f'{name}-sample \u00e9"{{0}}\\' for name in FIELDS}
        sample["body_encoding"] = "base64"
        wanted = dumps(_completed(copy.deepcopy(message), exchange, routing_key, sample))
        return envelope if envelope.fill(**sample) == wanted else None

    def fill(self, **values: str | None) -> str:
        """The stored text of the message with these ``FIELDS``' values."""
        return self.text(*(values[name] for name in FIELDS))

    def text(self, *values: str | None) -> str:
        """``fill`` by position, in ``FIELDS`` order: the publish's own, quicker call."""
        return self.form.format(*map(quoted, values))


def _marks() -> dict[str, str]:
    return {name: _MARK + name for name in FIELDS}


def _completed(
    message: dict[str, Any], exchange: str, routing_key: str, values: dict[str, str]
) -> dict[str, Any]:
    """``message`` completed as kombu's ``_inplace_augment_message`` completes it, with
    ``values`` in the places of ``FIELDS``."""
    properties = message["properties"]
    properties.update(body_encoding=None, delivery_tag=None)
    properties["delivery_info"].update(exchange=exchange, routing_key=routing_key)
    for place, name in PLACES.items():
        *path, key = place
        target = message
        for step in path:
            target = target[step]
        target[key] = values[name]
    return message
