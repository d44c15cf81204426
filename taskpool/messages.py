"""What a worker can read: the checks a message from Redis passes before kombu or Celery sees it.

kombu and Celery read a message in the worker's main process, and one they cannot read raises
there: the worker stops ("Unrecoverable error"), or, for a message kombu cannot even wrap,
Celery takes it for a lost connection and restarts every running task. Anyone who can write to
Redis can send such bytes. ``read`` checks what kombu's virtual ``Message`` and Celery's
``Request`` rely on, and raises UnreadableMessage naming the first thing wrong; the transport
moves such a message to the quarantine (``taskpool.quarantine``).

A compressed body (the ``compression`` header) is inflated here only up to ``max_inflated``
bytes (TASKPOOL_MAX_MESSAGE_BYTES, the largest arguments a client sends), so a small message
cannot make the worker inflate gigabytes, as kombu's unbounded ``decompress`` would.

Checked for Celery task messages (protocol 2: a ``task`` header): the ``id`` and ``task``
headers are strings, ``timelimit`` is two numbers or nulls, ``retries`` a whole number, and a
JSON body is ``[args, kwargs, embed]`` (or Celery's hybrid form, a protocol-1 body with
``args``, whose fields are checked as headers). Content types other than JSON are left to
Celery, which refuses them by its ``accept_content``.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any

from kombu.compression import get_encoder
from kombu.utils.json import loads

from taskpool.errors import UnreadableMessage

#: Bounded decompressors for kombu's compression types: each returns at most ``limit`` + 1
#: bytes. Types kombu knows beyond these (brotli, zstd) are refused, not inflated unbounded.
_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "application/x-gzip": zlib.decompressobj,
    "application/x-bz2": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
}
#: The content type whose bodies are checked here; others go to Celery's accept_content.
JSON = "application/json"
#: The deepest nesting of lists and dicts in one argument or header that is sent and read. The
#: worker's main process pickles a task's arguments and headers for its pool process, which
#: fails at about 470 levels (measured with a list argument) and stops the worker; JSON alone
#: would carry about 980. Callers refuse deeper arguments (NestedTooDeep), workers quarantine.
MAX_NESTING = 200


def read(raw: bytes, *, max_inflated: int) -> dict[str, Any]:
    """The message ``raw`` as kombu's transport hands it on; UnreadableMessage if it is not,
    also when a check here fails on it: no message may stop a worker that way either."""
    try:
        return _read(raw, max_inflated)
    except UnreadableMessage:
        raise
    except Exception as exc:
        raise UnreadableMessage(f"reading it failed ({type(exc).__name__}: {exc})") from exc


def _read(raw: bytes, max_inflated: int) -> dict[str, Any]:
    payload = _json(raw, "the message")
    if not isinstance(payload, dict):
        raise UnreadableMessage(f"the message is a JSON {_kind(payload)}, not an object")
    _check_envelope(payload)
    body = _body(payload, max_inflated)
    headers = payload.get("headers") or {}
    if "task" in headers:
        _check_task(headers, body if payload.get("content-type") == JSON else None)
        # A bracket count of the whole text bounds the headers' depth: most need no walk.
        if _brackets(raw) > MAX_NESTING:
            _check_nesting(headers, "headers")
    return payload


def _json(data: bytes, what: str) -> Any:
    """``data`` decoded as kombu's JSON; UnreadableMessage naming ``what`` if it is not."""
    try:
        return loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UnreadableMessage(f"{what} is not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise UnreadableMessage(f"{what} is JSON nested too deep to read") from None
    except ValueError as exc:
        raise UnreadableMessage(f"{what} is not JSON ({exc})") from None
    except Exception as exc:  # kombu's type markers ({"__type__": ...}) raise their own errors
        raise UnreadableMessage(
            f"{what} holds a value kombu cannot read ({type(exc).__name__}: {exc})"
        ) from None


def _check_envelope(payload: dict[str, Any]) -> None:
    """What kombu's virtual Message and its restore read from the envelope."""
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        raise UnreadableMessage("the message has no properties object")
    if not isinstance(properties.get("delivery_tag"), str):
        raise UnreadableMessage("the message's properties have no delivery_tag string")
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(key), str) for key in ("exchange", "routing_key")
    ):
        raise UnreadableMessage("the message's delivery_info is not an exchange and routing key")
    if properties.get("body_encoding") not in (None, "base64"):
        raise UnreadableMessage(
            f"the message's body_encoding {properties['body_encoding']!r:.40} is not base64"
        )
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key, ""), (str, type(None))):
            raise UnreadableMessage(f"the message's {key} is a {_kind(payload[key])}")
    if not isinstance(payload.get("headers") or {}, dict):
        raise UnreadableMessage("the message's headers are not an object")


def _body(payload: dict[str, Any], max_inflated: int) -> bytes:
    """The body as kombu will hand it to Celery: base64-decoded and inflated."""
    body = payload.get("body") or ""
    if not isinstance(body, str):
        raise UnreadableMessage(f"the message's body is a JSON {_kind(body)}, not a string")
    data = body.encode("utf-8")
    if payload["properties"].get("body_encoding") == "base64":
        try:
            data = base64.b64decode(data)
        except binascii.Error as exc:
            raise UnreadableMessage(f"the message's body is not base64 ({exc})") from None
    compression = (payload.get("headers") or {}).get("compression")
    return _inflate(data, compression, max_inflated) if compression else data


def _inflate(data: bytes, compression: object, limit: int) -> bytes:
    try:
        _, kind = get_encoder(compression)  # kombu's name for an alias (zlib -> x-gzip)
    except (KeyError, TypeError):
        kind = None
    make = _DECOMPRESSORS.get(kind) if kind else None
    if make is None:
        raise UnreadableMessage(
            f"the message's compression {compression!r:.40} cannot be inflated within a bound "
            "here: send zlib, bzip2 or lzma"
        )
    try:
        inflated = make().decompress(data, limit + 1)
    except (OSError, ValueError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UnreadableMessage(f"the message's body does not inflate as {kind} ({exc})") from None
    if len(inflated) > limit:
        raise UnreadableMessage(
            f"the message's body inflates past {limit:,} bytes (TASKPOOL_MAX_MESSAGE_BYTES)"
        )
    return bytes(inflated)


def _check_task(headers: dict[str, Any], body: bytes | None) -> None:
    """What Celery's Request reads in the worker's main process (protocol 2)."""
    _check_task_fields(headers)
    if body is not None:
        _check_task_body(body, headers)


def _check_task_fields(headers: dict[str, Any]) -> None:
    for key in ("id", "task"):
        if not isinstance(headers.get(key), str):
            raise UnreadableMessage(f"the task message's {key} header is not a string")
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list) and len(limits) == 2 and all(map(_is_limit, limits))
    ):
        raise UnreadableMessage(
            f"the task message's timelimit {limits!r:.60} is not [hard, soft] seconds or nulls"
        )
    retries = headers.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)):
        raise UnreadableMessage(f"the task message's retries {retries!r:.40} is not a number")


def _check_task_body(body: bytes, headers: dict[str, Any]) -> None:
    decoded = _json(body, "the task message's body")
    if isinstance(decoded, dict) and "args" in decoded:
        # Celery's hybrid message: a protocol-1 body, whose fields the headers override.
        _check_task_fields({**decoded, **headers})
        decoded = [decoded["args"], decoded.get("kwargs", {}), None]
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
        and isinstance(decoded[2], (dict, type(None)))
    ):
        raise UnreadableMessage(
            f"the task message's body {_kind(decoded)} is not [args, kwargs, embed]"
        )
    # A bracket count bounds the depth: most bodies need no walk.
    if _brackets(body) > MAX_NESTING:
        _check_nesting(decoded[0], "args")
        _check_nesting(decoded[1], "kwargs")


def _check_nesting(value: list[Any] | dict[str, Any], name: str) -> None:
    """UnreadableMessage if a value in ``value`` nests deeper than MAX_NESTING."""
    stack = [(value, 0)]
    while stack:
        container, level = stack.pop()
        if level > MAX_NESTING:
            raise UnreadableMessage(
                f"the task message's {name} nest deeper than {MAX_NESTING} levels, more than "
                "a worker can pass to its pool process"
            )
        items = container.values() if isinstance(container, dict) else container
        stack += [(item, level + 1) for item in items if isinstance(item, (list, dict))]


def _brackets(text: bytes) -> int:
    """The lists and objects opened in JSON ``text``, strings' brackets too: at least the
    depth of any value in it."""
    return text.count(b"[") + text.count(b"{")


def _is_limit(value: object) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _kind(value: object) -> str:
    """A JSON value's kind, as a message names it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
