"""The SocketCluster codec: inbound messages to JSON values and packets, packets to UTF-8 bytes.

Inbound (what ``sc-formatter`` does on the reference side, made strict and total):

* ``""`` is a protocol-2 pong, ``"#2"`` a protocol-1 pong, ``"#1"`` a protocol-1 ping;
* text whose first non-blank character is not ``{`` or ``[`` is *raw* (never parsed);
* otherwise JSON; a parse failure (including nesting deeper than the parser allows, or a
  number it cannot represent) is *raw* too; a JSON array is a *batch* of packets;
* a packet is an ``EventPacket`` if it is an object with a string ``event``, a
  ``ResponsePacket`` if it has an integer ``rid``, else ``Raw``;
* a binary message (``bytes``) is read as its UTF-8 text (the reference JSON-parses the
  buffer); bytes that are not UTF-8 are *raw*;
* JSON whose strings hold a lone surrogate (``"\\ud800"``) has no UTF-8 form: nothing built
  from it could ever be sent on, so ``loads`` flags it (``Loaded.clean`` is false) and the
  packet that holds it is raw for ``decode`` and ``Invalid`` for the server's machine.

``decode`` and ``loads`` never raise, whatever the input.

Outbound: compact JSON (orjson) as UTF-8 bytes; ``bytes``-like values become
``{"base64": true, "data": "..."}`` as the reference's binary replacer produces; non-string
dictionary keys become strings as ``JSON.stringify`` does. ``encode`` raises ``TypeError`` for
values that have no JSON form. Every frame the server sends is built here: ``event_bytes``,
``response_bytes``, ``publish_bytes``, ``disconnect_bytes``, ``set_auth_token_bytes``,
``kick_out_bytes`` and the constant ``REMOVE_AUTH_TOKEN``/pings.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Final

import orjson

from .packets import (
    MISSING,
    EventPacket,
    Inbound,
    Ping,
    Pong,
    Raw,
    ResponsePacket,
)

__all__ = [
    "MAX_BATCH_PACKETS",
    "PING_P1",
    "PING_P2",
    "REMOVE_AUTH_TOKEN",
    "decode",
    "disconnect_bytes",
    "encode",
    "event_bytes",
    "has_utf8_form",
    "kick_out_bytes",
    "loads",
    "publish_bytes",
    "response_bytes",
    "set_auth_token_bytes",
    "text_of",
]

#: A batch longer than this is treated as raw (ignored) instead of being dispatched.
MAX_BATCH_PACKETS: Final = 10_000

PING_P1: Final = b"#1"
PING_P2: Final = b""

_PONG_P1 = Pong(protocol=1)
_PONG_P2 = Pong(protocol=2)
_PING_P1 = Ping(protocol=1)
_OPTS: Final = orjson.OPT_NON_STR_KEYS


# ------------------------------------------------------------------------------ outbound


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": True, "data": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(value: Any) -> bytes:
    """Compact JSON of ``value`` as UTF-8 bytes (see the module docstring)."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTS)
    except orjson.JSONEncodeError as exc:
        # Integers beyond 64 bits, for instance: fall back to the standard library.
        try:
            return json.dumps(
                value, default=_default, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        except (TypeError, ValueError, RecursionError):
            raise TypeError(str(exc)) from None


def event_bytes(event: str, data: Any = MISSING, cid: int | None = None) -> bytes:
    """An event packet: ``{"event", "data"?, "cid"?}``."""
    packet: dict[str, Any] = {"event": event}
    if data is not MISSING:
        packet["data"] = data
    if cid is not None:
        packet["cid"] = cid
    return encode(packet)


def response_bytes(rid: int | float, data: Any = MISSING, error: Any = MISSING) -> bytes:
    """A response packet: ``{"rid", "data"?, "error"?}``; ``error`` already dehydrated.

    ``rid`` is echoed as the client sent it (any JSON number); a non-finite one (``1e400``
    read as infinity) becomes ``null``, as ``JSON.stringify`` writes it.
    """
    if type(rid) is float and not math.isfinite(rid):
        rid_value: Any = None
    else:
        rid_value = rid
    packet: dict[str, Any] = {"rid": rid_value}
    if data is not MISSING:
        packet["data"] = data
    if error is not MISSING:
        packet["error"] = error
    return encode(packet)


def publish_bytes(channel: str, data: Any) -> bytes:
    """The ``#publish`` packet for ``channel``/``data`` (``TypeError``: no JSON form)."""
    return encode({"event": "#publish", "data": {"channel": channel, "data": data}})


def disconnect_bytes(code: int, reason: str) -> bytes:
    """The ``#disconnect`` packet a protocol-1 client reads before the close frame."""
    data: dict[str, Any] = {"code": code}
    if reason:
        data["data"] = reason
    return encode({"event": "#disconnect", "data": data})


def set_auth_token_bytes(signed: str) -> bytes:
    """``#setAuthToken`` (a transmit) carrying a signed token."""
    return encode({"event": "#setAuthToken", "data": {"token": signed}})


def kick_out_bytes(channel: str, message: str | None) -> bytes:
    """``#kickOut`` for ``channel``; ``message`` omitted when ``None`` (as the reference)."""
    data: dict[str, Any] = {"message": message, "channel": channel}
    if message is None:
        del data["message"]
    return encode({"event": "#kickOut", "data": data})


#: ``#removeAuthToken`` with ``"data": null``, as the protocol-1 server sends it.
REMOVE_AUTH_TOKEN: Final = event_bytes("#removeAuthToken", None)


# ------------------------------------------------------------------------------- inbound


def text_of(message: str | bytes) -> str | None:
    """A message's text: ``str`` as it is, ``bytes`` decoded as UTF-8 (``None`` if not)."""
    if isinstance(message, str):
        return message
    try:
        return bytes(message).decode("utf-8")
    except UnicodeDecodeError:
        return None


def has_utf8_form(value: Any) -> bool:
    """Whether every string (and key) in the JSON ``value`` encodes as UTF-8 (no lone
    surrogate). Only needed for values the standard-library parser produced."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except (ValueError, RecursionError):  # nesting too deep for the encoder: walk it
        return _walk_has_utf8_form(value)
    return True


def _walk_has_utf8_form(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is str:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
    return True


def loads(text: str) -> tuple[Any, bool]:
    """``(value, clean)`` of JSON ``text``; ``(MISSING, True)`` if it is not JSON.

    ``clean`` is false when the value holds a lone surrogate somewhere (only the fallback
    parser lets one through; orjson refuses them, so the fast path is always clean).
    """
    try:
        return orjson.loads(text), True
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses some valid JSON (numbers beyond a double, 1e400): the slow parser
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return MISSING, True
    if "\\" not in text:  # a lone surrogate in JSON text is always an escape
        return value, True
    return value, has_utf8_form(value)


def _not_json(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON (``JSON.parse`` refuses them): the text is raw."""
    raise ValueError(f"{name} is not JSON")


def _packet(value: Any) -> Inbound:
    if type(value) is dict:
        event = value.get("event")
        if type(event) is str:
            cid = value.get("cid")
            return EventPacket(
                event=event,
                data=value.get("data"),
                cid=cid if type(cid) is int else None,
            )
        rid = value.get("rid")
        if type(rid) is int:
            return ResponsePacket(rid=rid, data=value.get("data"), error=value.get("error", None))
    return Raw(value=value)


def decode(message: str | bytes) -> list[Inbound]:
    """Every packet in one inbound message (see the module docstring). Never raises."""
    text = text_of(message)
    if text is None:
        return [Raw(value=message)]
    if not text:
        return [_PONG_P2]
    first = text[0]
    if first == "#":
        if text == "#2":
            return [_PONG_P1]
        if text == "#1":
            return [_PING_P1]
        return [Raw(value=text)]
    if first not in "{[":
        stripped = text.lstrip(" \n\r\t")
        if not stripped or stripped[0] not in "{[":
            return [Raw(value=text)]
    value, clean = loads(text)
    if value is MISSING:
        return [Raw(value=text)]
    if type(value) is list:
        if len(value) > MAX_BATCH_PACKETS:
            return [Raw(value=text)]
        if clean:
            return [_packet(v) for v in value]
        return [_packet(v) if has_utf8_form(v) else Raw(value=v) for v in value]
    if not clean:
        return [Raw(value=value)]
    return [_packet(value)]
