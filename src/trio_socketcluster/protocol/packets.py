"""The SocketCluster packets as small frozen dataclasses (inbound side) and ``MISSING``.

* ``EventPacket``: ``{"event", "data", "cid"?}``; ``cid`` is kept only when it is an integer
  (any other ``cid`` makes the packet a transmit, as protocol 2 servers treat it).
* ``ResponsePacket``: ``{"rid", "data"?, "error"?}`` with an integer ``rid``.
* ``Ping`` / ``Pong``: the heartbeat messages, with the protocol they belong to.
* ``Raw``: anything else (ignored by the server).

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MISSING", "EventPacket", "Inbound", "Ping", "Pong", "Raw", "ResponsePacket"]


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


#: "No value" (distinct from ``None``, which is JSON ``null``).
MISSING: Final = _Missing.MISSING


@dataclass(frozen=True, kw_only=True, slots=True)
class EventPacket:
    event: str
    data: Any = None
    cid: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponsePacket:
    rid: int
    data: Any = None
    error: Any = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ping:
    protocol: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Pong:
    protocol: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Raw:
    value: Any


Inbound = EventPacket | ResponsePacket | Ping | Pong | Raw
