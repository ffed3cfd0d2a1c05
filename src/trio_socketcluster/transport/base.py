"""The frame-level interface between the connection core and a WebSocket implementation.

The core never touches wsproto or trio-websocket: it sees a ``Transport`` that

* yields every inbound *message* that one read from the network produced, as a list
  (``receive``), so the core dispatches a whole read without a task switch per message: a
  text frame as ``str``, a binary frame as ``bytes`` (never decoded or refused here: what
  binary means is the protocol layer's business);
* takes outbound messages without blocking (``send``/``send_priority``) into one bounded
  per-socket buffer, flushed by a single ``send_all`` either by the caller (``flush``, used
  by the reader once it has dispatched a read) or by the transport's writer task
  (``run_writer``, started in the connection's nursery when a write first does not go out
  at once: ``start_writer_in``);
* closes with a code and reason (``close``) and reports the peer's close as
  ``TransportClosed``.

``OutboundMessage`` is built once per logical message and shared by every receiver: its
encoded WebSocket frame is computed at most once, so a publish to 10,000 subscribers encodes
and frames once.

Overflow policy (every implementation): when the bytes waiting in the outbound buffer would
exceed ``max_buffer_bytes`` (a client that stopped reading), the buffer is dropped, the socket
is closed with ``SLOW_CONSUMER_CLOSE_CODE`` (4100) and later sends are ignored; memory per
socket therefore stays bounded by ``max_buffer_bytes`` plus one message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "MAX_BODY_BYTES",
    "SLOW_CONSUMER_CLOSE_CODE",
    "HandshakeRequest",
    "OutboundMessage",
    "Rejection",
    "Transport",
    "TransportClosed",
    "UpgradeCheck",
    "build_text_frame",
]

#: The largest body a plain HTTP request on the WebSocket port may carry (``http_handler``).
MAX_BODY_BYTES = 64 * 1024

#: Close code used when a socket's outbound buffer overflows (documented in docs/protocol.md).
SLOW_CONSUMER_CLOSE_CODE = 4100


@dataclass(frozen=True, kw_only=True, slots=True)
class HandshakeRequest:
    """The HTTP upgrade request, as the handshake-WS middleware sees it."""

    path: str
    """The request target's path, before any ``?``."""
    query: str
    """The raw query string after ``?`` (``""`` when absent)."""
    headers: tuple[tuple[str, str], ...]
    """Header names lower-cased, in request order."""
    remote_address: tuple[str, int] | None = None
    method: str = "GET"
    """The HTTP method (an upgrade is always ``GET``; a plain request may be anything)."""
    body: bytes = b""
    """The body of a plain HTTP request, at most ``MAX_BODY_BYTES`` (a larger one is answered
    413 before any handler runs); always empty for an upgrade."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lname = name.lower()
        for k, v in self.headers:
            if k == lname:
                return v
        return None

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header (``Sec-WebSocket-Origin`` for protocol version 8)."""
        return self.header("origin") or self.header("sec-websocket-origin")


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection:
    """Refuse an upgrade with an HTTP status and a plain-text body."""

    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = field(default=())


#: Decides on an upgrade: ``None`` accepts, a ``Rejection`` refuses.
UpgradeCheck = Callable[[HandshakeRequest], Awaitable[Rejection | None]]


class TransportClosed(Exception):
    """The WebSocket is closed; ``code``/``reason`` are the close frame's (1006: no frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def build_text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented RFC 6455 text frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class OutboundMessage:
    """One outbound text message, encoded once, framed at most once, shared by receivers."""

    __slots__ = ("_frame", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload  # UTF-8 text
        self._frame: bytes | None = None

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def frame(self) -> bytes:
        """The server-side WebSocket frame for this message (computed once)."""
        f = self._frame
        if f is None:
            f = self._frame = build_text_frame(self.payload)
        return f

    def __repr__(self) -> str:
        return f"OutboundMessage({self.payload[:80]!r})"


class TaskStarter(Protocol):
    """Where a transport starts its writer task: a ``trio.Nursery``."""

    def start_soon(self, async_fn: Callable[[], Awaitable[object]], /) -> object: ...


class Transport(Protocol):
    """What the connection core needs from a WebSocket. See the module docstring."""

    @property
    def request(self) -> HandshakeRequest: ...

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting in the outbound buffer."""
        ...

    async def receive(self) -> list[str | bytes]:
        """Every complete message that the next read produced (at least one): text as
        ``str``, binary as ``bytes``.

        Raises ``TransportClosed`` once the connection is closed (by the peer, by ``close``, by
        a protocol error such as an oversized message (1009) or invalid UTF-8 in a text frame
        (1007), or by an outbound overflow (4100)). Cancellation leaves the transport usable.
        """
        ...

    def send(self, message: OutboundMessage) -> None:
        """Queue a message; never blocks. Ignored once closing. Overflow: see module doc."""
        ...

    def send_priority(self, message: OutboundMessage, *, write: bool = False) -> None:
        """Queue a control message (ping, close notice, auth change) ahead of queued data;
        with ``write``, hand it to the socket at once if the transport can (a ping from the
        server's heartbeat task, so that the connection's writer task need not wake)."""
        ...

    def queue(self, message: OutboundMessage, *, priority: bool = False) -> None:
        """``send`` (or with ``priority``, ``send_priority``) without waking the writer: the
        caller writes it soon itself (``write_now``, then ``flush``), or calls
        ``write_soon``."""
        ...

    def write_soon(self) -> None:
        """Write what is queued now if the socket takes it all, else have the writer write
        it (started if it was not yet: ``start_writer_in``)."""
        ...

    def write_now(self) -> bool:
        """Hand everything queued to the connection at once, without blocking, if the
        transport can and the socket takes it all; whether nothing is left queued (else
        ``flush`` writes the rest)."""
        ...

    async def flush(self) -> None:
        """Write what is queued with one ``send_all``, unless a flush is already running."""
        ...

    async def run_writer(self) -> None:
        """Flush whenever something is queued, until the transport closes. Run it in the
        connection's nursery; it returns (never raises) when the transport is closed."""
        ...

    def start_writer_in(self, nursery: TaskStarter) -> None:
        """Instead of running ``run_writer`` from the start: start it in ``nursery`` the
        first time something queued is not written at once (an idle connection then has no
        writer task). Call it once, before the first ``send``."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (after queued priority messages, dropping nothing already
        flushed), wait briefly for the peer's, and close the stream. Idempotent."""
        ...

    async def aclose(self) -> None:
        """Close the underlying stream at once without a close handshake. Idempotent."""
        ...
