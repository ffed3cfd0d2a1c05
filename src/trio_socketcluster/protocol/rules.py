"""Wire rules shared by the server and the client: which close codes may be sent, how long a
close reason may be, and the reason a code carries when nobody gave one.

RFC 6455 §5.5 limits a control frame's payload to 125 bytes, so a close reason (after the
two-byte code) is at most 123 UTF-8 bytes; §7.4 lists the codes an endpoint may send.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_REASONS",
    "MAX_CLOSE_REASON_BYTES",
    "close_reason",
    "sendable_code",
    "truncate_reason",
]

#: A close frame's reason, in UTF-8 bytes (125 bytes of payload minus the 2-byte code).
MAX_CLOSE_REASON_BYTES = 123


def sendable_code(code: int) -> int:
    """``code`` if RFC 6455 lets an endpoint send it, else 1000."""
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1000


def truncate_reason(reason: str) -> str:
    """``reason`` cut to 123 UTF-8 bytes without splitting a character."""
    raw = reason.encode("utf-8")
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return raw[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")


#: The texts of the reference's ``sc-errors`` for the close codes it names.
DEFAULT_REASONS: dict[int, str] = {
    1000: "Socket closed normally",
    1001: "Socket was disconnected",
    1002: "A WebSocket protocol error was encountered",
    1003: "Server terminated socket because it received invalid data",
    1007: "Message format was incorrect",
    1008: "Encountered a policy violation",
    1009: "Message was too big to process",
    1011: "Server encountered an unexpected fatal condition",
    4000: "Server ping timed out",
    4001: "Client pong timed out",
    4002: "Server failed to sign auth token",
    4003: "Failed to complete handshake",
    4004: "Client failed to save auth token",
    4005: "Did not receive #handshake from client before timeout",
    4006: "Failed to bind socket to message broker",
    4007: "Client connection establishment timed out",
    4008: "Server rejected handshake from client",
    4009: "Server received a message before the client handshake",
}

#: The reason of a code the reference does not name (application codes).
FALLBACK_REASON = "Socket closed by the server"


def close_reason(code: int, reason: str = "") -> str:
    """``reason``, or the default text for ``code`` when it is empty: every close carries one."""
    return reason or DEFAULT_REASONS.get(code, FALLBACK_REASON)
