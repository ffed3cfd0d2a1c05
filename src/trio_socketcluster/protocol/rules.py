"""Wire rules shared by the server and the client: which close codes may be sent, and how
long a close reason may be.

RFC 6455 §5.5 limits a control frame's payload to 125 bytes, so a close reason (after the
two-byte code) is at most 123 UTF-8 bytes; §7.4 lists the codes an endpoint may send.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

__all__ = ["MAX_CLOSE_REASON_BYTES", "sendable_code", "truncate_reason"]

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
