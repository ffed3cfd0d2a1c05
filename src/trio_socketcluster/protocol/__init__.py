"""Sans-IO SocketCluster protocol.

* ``packets``: the wire packets (what the client reads) and ``MISSING``;
* ``codec``: JSON in and out, and every frame the server sends;
* ``events``: what each inbound packet means to the server, validated (one event per action);
* ``state``: the per-connection machine (states, the table, protocol detection) and the
  connection's ``CloseIntent``;
* ``rules``: close codes and reasons.
"""

from .codec import decode, encode, event_bytes, publish_bytes, response_bytes
from .events import (
    Authenticate,
    Cid,
    ClientDisconnect,
    Close,
    Emit,
    Event,
    Fault,
    Handshake,
    Invalid,
    Publish,
    RemoveAuthToken,
    Response,
    Subscribe,
    Unsubscribe,
)
from .packets import MISSING, EventPacket, Inbound, Ping, Pong, Raw, ResponsePacket
from .state import CloseIntent, Initiator, Machine, State

__all__ = [
    "MISSING",
    "Authenticate",
    "Cid",
    "ClientDisconnect",
    "Close",
    "CloseIntent",
    "Emit",
    "Event",
    "EventPacket",
    "Fault",
    "Handshake",
    "Inbound",
    "Initiator",
    "Invalid",
    "Machine",
    "Ping",
    "Pong",
    "Publish",
    "Raw",
    "RemoveAuthToken",
    "Response",
    "ResponsePacket",
    "State",
    "Subscribe",
    "Unsubscribe",
    "decode",
    "encode",
    "event_bytes",
    "publish_bytes",
    "response_bytes",
]
