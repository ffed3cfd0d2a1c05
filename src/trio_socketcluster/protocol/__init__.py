"""Sans-IO SocketCluster protocol: packets, codec and the per-connection state machine."""

from .codec import decode, encode, event_bytes, response_bytes
from .packets import MISSING, EventPacket, Inbound, Ping, Pong, Raw, ResponsePacket
from .state import Action, Close, Machine, State

__all__ = [
    "MISSING",
    "Action",
    "Close",
    "EventPacket",
    "Inbound",
    "Machine",
    "Ping",
    "Pong",
    "Raw",
    "ResponsePacket",
    "State",
    "decode",
    "encode",
    "event_bytes",
    "response_bytes",
]
