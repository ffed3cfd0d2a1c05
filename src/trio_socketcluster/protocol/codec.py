"""The SocketCluster codec: text frames to packets and packets to UTF-8 bytes.

Inbound (what ``sc-formatter`` does on the reference side, made strict and total):

* ``""`` is a protocol-2 pong, ``"#2"`` a protocol-1 pong, ``"#1"`` a protocol-1 ping;
* text whose first non-blank character is not ``{`` or ``[`` is *raw* (never parsed);
* otherwise JSON; a parse failure (including nesting deeper than the parser allows, or a
  number it cannot represent) is *raw* too; a JSON array is a *batch* of packets;
* a packet is an ``EventPacket`` if it is an object with a string ``event``, a
  ``ResponsePacket`` if it has an integer ``rid``, else ``Raw``.

``decode`` never raises, whatever the input.

Outbound: compact JSON (orjson) as UTF-8 bytes; ``bytes``-like values become
``{"base64": true, "data": "..."}`` as the reference's binary replacer produces; non-string
dictionary keys become strings as ``JSON.stringify`` does. ``encode`` raises ``TypeError`` for
values that have no JSON form.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import base64
import json
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
    "decode",
    "encode",
    "event_bytes",
    "response_bytes",
]

#: A batch longer than this is treated as raw (ignored) instead of being dispatched.
MAX_BATCH_PACKETS: Final = 10_000

PING_P1: Final = b"#1"
PING_P2: Final = b""

_PONG_P1 = Pong(protocol=1)
_PONG_P2 = Pong(protocol=2)
_PING_P1 = Ping(protocol=1)
_OPTS: Final = orjson.OPT_NON_STR_KEYS


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


def response_bytes(rid: int, data: Any = MISSING, error: Any = MISSING) -> bytes:
    """A response packet: ``{"rid", "data"?, "error"?}``; ``error`` already dehydrated."""
    packet: dict[str, Any] = {"rid": rid}
    if data is not MISSING:
        packet["data"] = data
    if error is not MISSING:
        packet["error"] = error
    return encode(packet)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses some valid JSON (numbers beyond a double, 1e400): the slow parser
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return MISSING


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


def decode(text: str) -> list[Inbound]:
    """Every packet in one inbound text message (see the module docstring). Never raises."""
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
    value = _loads(text)
    if value is MISSING:
        return [Raw(value=text)]
    if type(value) is list:
        if len(value) > MAX_BATCH_PACKETS:
            return [Raw(value=text)]
        return [_packet(v) for v in value]
    return [_packet(value)]
