"""The per-connection protocol state machine: what each inbound packet means in each state.

States: ``CONNECTING`` (WebSocket open, no ``#handshake`` yet), ``OPEN`` (handshake done),
``CLOSED``. The machine decides; the trio layer acts. ``Machine.receive(text)`` decodes one
message and returns ``(Action, packet)`` pairs. Decisions (strict handshake, as protocol 2
servers do by default):

=================  ===========================================  ==========================
state              packet                                       action
=================  ===========================================  ==========================
CONNECTING         ``#handshake`` with integer cid              HANDSHAKE (→ OPEN when the
                                                                trio layer calls
                                                                ``handshake_done``)
CONNECTING         ``#handshake`` without cid                   CLOSE 4008
CONNECTING         anything else (event, response, pong, raw)   CLOSE 4009
OPEN               pong ``#2`` / ``""``                         PONG (locks the protocol)
OPEN               ``#handshake``                               DUPLICATE_HANDSHAKE
OPEN               ``#authenticate``                            AUTHENTICATE
OPEN               ``#removeAuthToken``                         REMOVE_AUTH_TOKEN
OPEN               ``#subscribe`` / ``#unsubscribe``            SUBSCRIBE / UNSUBSCRIBE
OPEN               ``#publish``                                 PUBLISH
OPEN               ``#disconnect``                              CLIENT_DISCONNECT (locks
                                                                protocol 1)
OPEN               any other event                              EMIT
OPEN               response packet                              RESPONSE
OPEN               ping ``#1``, raw                             IGNORE
CLOSED             anything                                     IGNORE
=================  ===========================================  ==========================

Protocol detection: until the first pong the server does not know whether the client speaks
protocol 1 (pings ``#1``, pongs ``#2``) or 2 (``""`` both ways); ``ping_payloads()`` then
returns both pings, and the first pong (or a ``#disconnect``) locks the protocol.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .codec import PING_P1, PING_P2, decode
from .packets import EventPacket, Inbound, Pong, ResponsePacket

__all__ = ["Action", "Close", "Machine", "State"]


class State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class Action(enum.Enum):
    HANDSHAKE = "handshake"
    DUPLICATE_HANDSHAKE = "duplicate_handshake"
    AUTHENTICATE = "authenticate"
    REMOVE_AUTH_TOKEN = "remove_auth_token"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    CLIENT_DISCONNECT = "client_disconnect"
    EMIT = "emit"
    RESPONSE = "response"
    PONG = "pong"
    CLOSE = "close"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Close:
    """The packet that made the machine decide to close, and the close code to use."""

    code: int
    packet: Inbound


_RESERVED: dict[str, Action] = {
    "#handshake": Action.DUPLICATE_HANDSHAKE,
    "#authenticate": Action.AUTHENTICATE,
    "#removeAuthToken": Action.REMOVE_AUTH_TOKEN,
    "#subscribe": Action.SUBSCRIBE,
    "#unsubscribe": Action.UNSUBSCRIBE,
    "#publish": Action.PUBLISH,
    "#disconnect": Action.CLIENT_DISCONNECT,
}

Decision = tuple[Action, Inbound | Close]


class Machine:
    """One connection's protocol state. ``protocol`` is ``None`` until detected."""

    __slots__ = ("protocol", "state")

    def __init__(self, protocol: int | None = None) -> None:
        self.state = State.CONNECTING
        self.protocol: int | None = protocol

    def receive(self, text: str) -> list[Decision]:
        """Decode one inbound message and decide what each packet in it means."""
        out: list[Decision] = []
        for packet in decode(text):
            decision = self.classify(packet)
            out.append(decision)
            if decision[0] is Action.CLOSE:
                self.state = State.CLOSED
                break
        return out

    def classify(self, packet: Inbound) -> Decision:
        state = self.state
        if state is State.OPEN:
            tp = type(packet)
            if tp is EventPacket:
                assert isinstance(packet, EventPacket)
                action = _RESERVED.get(packet.event, Action.EMIT)
                if action is Action.CLIENT_DISCONNECT and self.protocol is None:
                    self.protocol = 1
                return (action, packet)
            if tp is ResponsePacket:
                return (Action.RESPONSE, packet)
            if tp is Pong:
                assert isinstance(packet, Pong)
                if self.protocol is None:
                    self.protocol = packet.protocol
                return (Action.PONG, packet)
            return (Action.IGNORE, packet)
        if state is State.CONNECTING:
            if isinstance(packet, EventPacket) and packet.event == "#handshake":
                if packet.cid is None:
                    return (Action.CLOSE, Close(4008, packet))
                return (Action.HANDSHAKE, packet)
            return (Action.CLOSE, Close(4009, packet))
        return (Action.IGNORE, packet)

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
