"""The per-connection protocol state machine: what each inbound message means in each state.

States: ``CONNECTING`` (WebSocket open, no ``#handshake`` accepted yet), ``OPEN`` (handshake
done), ``CLOSED``. The machine decides; the trio layer acts. ``Machine.receive(message)``
takes one inbound message (``str``, or ``bytes`` from a binary frame) and returns the events it
means (``events.py``), in order. Decisions (strict handshake, as protocol 2 servers do by
default):

=================  ===========================================  ==========================
state              packet                                       event
=================  ===========================================  ==========================
CONNECTING         ``#handshake`` with a finite numeric cid     ``Handshake`` (→ OPEN when
                                                                the trio layer calls
                                                                ``handshake_done``)
CONNECTING         ``#handshake`` without one                   ``Close(4008)``
CONNECTING         anything else (event, response, pong, raw,   ``Close(4009)``
                   text with a lone surrogate)
OPEN               pong ``#2`` / ``""``                         ``Pong`` (locks the
                                                                protocol)
OPEN               ``#disconnect``                              ``ClientDisconnect``
                                                                (locks protocol 1)
OPEN               any other event or response packet           its event (``events.py``),
                                                                ``Invalid`` if malformed
OPEN               ping ``#1``, raw                             ``Ping`` / ``Raw``
CLOSED             anything                                     nothing
=================  ===========================================  ==========================

A ``Close`` ends the message: the packets after it in a batch are not looked at, and the
machine is ``CLOSED``. Packets of one message are all judged in the state the message found
(a batch ``[#handshake, #subscribe]`` closes with 4009: the handshake is not accepted yet).

Binary messages: bytes that are valid UTF-8 are read as that text (the reference parses the
buffer as JSON); other bytes are one ``Raw`` message (ignored once open).

Protocol detection: until the first pong the server does not know whether the client speaks
protocol 1 (pings ``#1``, pongs ``#2``) or 2 (``""`` both ways); ``ping_payloads()`` then
returns both pings, and the first pong (or a ``#disconnect``) locks the protocol.

``CloseIntent`` is how one connection is to end (code, reason, whether a protocol-1
``#disconnect`` goes first, and who decided): the trio layer keeps exactly one, the first.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from .codec import MAX_BATCH_PACKETS, PING_P1, PING_P2, has_utf8_form, loads, text_of
from .events import (
    EARLY_MESSAGE_REASON,
    MALFORMED_HANDSHAKE_REASON,
    ClientDisconnect,
    Close,
    Event,
    Handshake,
    handshake_event,
    open_event,
    unclean_event,
)
from .packets import MISSING, Ping, Pong, Raw

__all__ = ["CloseIntent", "Initiator", "Machine", "State"]


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class Initiator(enum.Enum):
    """Who ended the connection."""

    LOCAL = "local"  # we did: the application, a protocol violation, a timeout, shutdown
    REMOTE = "remote"  # the peer's close frame (or its stream ended)


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseIntent:
    """How a connection ends. ``notify``: send ``#disconnect`` (for protocol-1 clients)
    before the close frame; only meaningful for ``Initiator.LOCAL``."""

    code: int
    reason: str
    notify: bool
    initiator: Initiator


_PONG_P1: Final = Pong(protocol=1)
_PONG_P2: Final = Pong(protocol=2)
_PING_P1: Final = Ping(protocol=1)
_EARLY: Final = Close(code=4009, reason=EARLY_MESSAGE_REASON)
_MALFORMED_HANDSHAKE: Final = Close(code=4008, reason=MALFORMED_HANDSHAKE_REASON)


class Machine:
    """One connection's protocol state. ``protocol`` is ``None`` until detected."""

    __slots__ = ("protocol", "state")

    def __init__(self, protocol: int | None = None) -> None:
        self.state = State.CONNECTING
        self.protocol: int | None = protocol

    def receive(self, message: str | bytes) -> list[Event]:
        """The events one inbound message means (see the module docstring). Never raises."""
        state = self.state
        if state is State.CLOSED:
            return []
        text = message if type(message) is str else text_of(message)
        if text is None:  # binary, not UTF-8
            return self._other(Raw(value=message))
        if not text:
            return self._pong(_PONG_P2)
        first = text[0]
        if first == "#":
            if text == "#2":
                return self._pong(_PONG_P1)
            return self._other(_PING_P1 if text == "#1" else Raw(value=text))
        if first != "{" and first != "[":
            stripped = text.lstrip(" \n\r\t")
            if not stripped or stripped[0] not in "{[":
                return self._other(Raw(value=text))
        value, clean = loads(text)
        if value is MISSING:
            return self._other(Raw(value=text))
        if type(value) is list:
            if len(value) > MAX_BATCH_PACKETS:
                return self._other(Raw(value=text))
            values: list[Any] = value
        else:
            values = [value]
        if state is State.OPEN:
            if clean:
                out = [open_event(v) for v in values]
            else:
                out = [open_event(v) if has_utf8_form(v) else unclean_event(v) for v in values]
            if self.protocol is None:
                for event in out:
                    if type(event) is ClientDisconnect:
                        self.protocol = 1
                        break
            return out
        return self._connecting(values, clean)

    def _connecting(self, values: list[Any], clean: bool) -> list[Event]:
        out: list[Event] = []
        for v in values:
            event = handshake_event(v)
            if event is None:
                event = _EARLY
            elif type(event) is Handshake and not (clean or has_utf8_form(v)):
                event = _MALFORMED_HANDSHAKE
            out.append(event)
            if type(event) is Close:
                self.state = State.CLOSED
                break
        return out

    def _pong(self, pong: Pong) -> list[Event]:
        if self.state is State.OPEN:
            if self.protocol is None:
                self.protocol = pong.protocol
            return [pong]
        self.state = State.CLOSED
        return [_EARLY]

    def _other(self, event: Ping | Raw) -> list[Event]:
        if self.state is State.OPEN:
            return [event]
        self.state = State.CLOSED
        return [_EARLY]

    def handshake_done(self) -> None:
        """The handshake was accepted: the connection is open."""
        if self.state is State.CONNECTING:
            self.state = State.OPEN

    def close(self) -> None:
        self.state = State.CLOSED

    def ping_payloads(self) -> tuple[bytes, ...]:
        """The ping message(s) to send now: both until the protocol is known."""
        if self.protocol == 1:
            return (PING_P1,)
        if self.protocol == 2:
            return (PING_P2,)
        return (PING_P1, PING_P2)
