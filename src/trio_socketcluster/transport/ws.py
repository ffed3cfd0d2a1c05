"""Our WebSocket transport: wsproto's frame layer driven directly over a ``trio.abc.Stream``.

This module owns the server side of one WebSocket connection, from the HTTP upgrade
(``accept_websocket``) to the closing handshake (``WsprotoTransport``). It implements the
``Transport`` interface of ``transport.base`` with the shape that measured fastest:

* **One reader, whole reads.** ``receive`` does one ``receive_some(65536)`` and returns every
  message that read completed, so the core dispatches a batch per read. Fragments are
  reassembled here; pings are answered (the pong is queued as priority data).
* **Inbound frames: a fast path, wsproto for the rest.** The frame nearly every message
  arrives in (whole in the read, final, masked, text or binary, no RSV bits, a 7- or 16-bit
  length within ``max_message_bytes``, valid UTF-8) is parsed and unmasked here, at C speed
  (big-int XOR; ``translate`` from 1 KiB). Every other frame (control frames, fragments,
  64-bit lengths, frames split across reads, anything invalid) is handed to a wsproto
  ``Connection`` whole, from its first byte to its last, so wsproto always resumes at a frame
  boundary and reports errors with its own codes and reasons. The ``Connection`` is created
  on the first such frame (or close), so most connections never build one.
* **One buffer, one write.** Outbound frames are appended to a per-socket ``bytearray``
  (``send``/``send_priority`` never block) and written with a single ``send_all`` by
  ``flush``. At most one coroutine is inside ``send_all`` (a flag, not a lock): a second
  ``flush`` returns at once and the running one loops until both buffers are empty.
  ``run_writer`` flushes whenever something is queued; the core may also call ``flush``
  itself after dispatching a read.
* **Frames built once.** ``OutboundMessage.frame`` is computed on first use and the same
  ``bytes`` are appended to every receiver's buffer.

Overflow policy: if queued bytes (priority + normal) would exceed ``max_buffer_bytes`` the
normal buffer is dropped, a close frame 4100 "Slow consumer" is queued, later sends are
ignored, and the write of what is in flight plus the close frame gets ``close_timeout_s``
before the stream is closed regardless; ``receive`` then raises ``TransportClosed(4100)``.

Close state lives in two fields: ``_state`` (OPEN → CLOSING → CLOSED) and ``_close`` (the
``TransportClosed`` that ``receive`` raises: the first close decided, ours or the peer's); they,
the writer (``run_writer``, ``_drain``) and the overflow bookkeeping are ``_common``'s, shared
with the trio-websocket adapter.

Close codes that RFC 6455 forbids on the wire (1004-1006, 1015, anything outside 1000-1014
and 3000-4999) are sent as 1000, and the transport reports 1000 for them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import cast

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

from ._common import (
    _NO_WAITERS,
    STREAM_CLOSED,
    OutboundTransport,
    State,
    sendable_code,
    truncate_reason,
)
from .base import (
    SLOW_CONSUMER_CLOSE_CODE,
    HandshakeRequest,
    OutboundMessage,
    Rejection,
    TransportClosed,
    UpgradeCheck,
)

__all__ = ["WsprotoTransport", "accept_websocket"]

_log = logging.getLogger(__name__)

_READ_SIZE = 65536
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytearray:
    """``payload`` XOR the repeated 4-byte ``mask`` (``translate`` beats the big-int XOR above
    about 1 KiB)."""
    data = bytearray(payload)
    for i in range(4):
        data[i::4] = data[i::4].translate(_XOR_TABLES[mask[i]])
    return data


def _frame_size(head: bytes | bytearray) -> int | None:
    """The whole length of the frame ``head`` starts (header, mask and payload), or ``None``
    while ``head`` is too short to say."""
    if len(head) < 2:
        return None
    b1 = head[1]
    n = b1 & 0x7F
    mask = 4 if b1 & 0x80 else 0
    if n == 126:
        if len(head) < 4:
            return None
        return 4 + mask + int.from_bytes(head[2:4], "big")
    if n == 127:
        if len(head) < 10:
            return None
        return 10 + mask + int.from_bytes(head[2:10], "big")
    return 2 + mask + n


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class WsprotoTransport(OutboundTransport):
    """The server side of an accepted WebSocket (see the module docstring).

    Built by ``accept_websocket``; ``conn`` is a wsproto frame-level ``Connection`` in
    state OPEN, ``stream`` the byte stream it runs over.
    """

    __slots__ = (
        "__dict__",  # a test may still replace a method on one transport (a spy)
        "_buf",
        "_byte_parts",
        "_conn",
        "_fragmented",
        "_max_message_bytes",
        "_parts_bytes",
        "_pending_end",
        "_pending_end_is_failure",
        "_prio",
        "_rbuf",
        "_receiving",
        "_slow_head",
        "_slow_left",
        "_stream",
        "_stream_closed",
        "_text_parts",
        "_unprocessed",
    )

    #: Class switch for the tests: False sends every frame through wsproto (the reference).
    _FAST_PATH = True

    def __init__(
        self,
        stream: trio.abc.Stream,
        request: HandshakeRequest,
        *,
        trailing_data: bytes = b"",
        max_message_bytes: int = 16 * 2**20,
        max_buffer_bytes: int = 8 * 2**20,
        close_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(
            request, max_buffer_bytes=max_buffer_bytes, close_timeout_s=close_timeout_s
        )
        self._stream = stream
        self._conn: Connection | None = None  # created on the first frame the fast path skips
        self._max_message_bytes = max_message_bytes

        self._pending_end: TransportClosed | None = None  # peer close / failure seen, not acted on
        self._pending_end_is_failure = False
        self._receiving = False
        self._stream_closed: trio.Event | None = None  # made by the first task that waits
        self._unprocessed = bool(trailing_data)

        # Inbound framing (see "Inbound frames" in the module docstring).
        self._rbuf = bytes(trailing_data)  # unparsed: bytes of the upgrade read, or a held header
        self._slow_left = 0  # bytes wsproto still needs to finish the frame it is parsing
        self._slow_head: bytes | None = None  # that frame's header, while its length is unknown
        self._fragmented = False  # a fragmented message is in progress (in wsproto)

        # Reassembly of the inbound message in progress (frames that went through wsproto).
        self._text_parts: list[str] = []
        self._byte_parts = bytearray()
        self._parts_bytes = 0

        # Outbound (the writer's flags are OutboundTransport's).
        self._prio = bytearray()
        self._buf = bytearray()

    # ----------------------------------------------------------------- properties

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued and not yet handed to ``send_all`` (priority + normal)."""
        return len(self._prio) + len(self._buf)

    def _queued(self) -> bool:
        return bool(self._prio or self._buf)

    # ----------------------------------------------------------------- receiving

    async def receive(self) -> list[str]:
        """Every complete message that the next read produced (at least one).

        Raises ``TransportClosed`` once the connection is closed. Cancellation while waiting
        for data leaves the transport usable (partial messages are kept); cancellation while
        replying to the peer's close or failing the connection closes the stream.
        """
        while True:
            if self._pending_end is not None:
                await self._act_on_end()
            if self._state is State.CLOSED:
                raise self._closed_exc()
            if self._receiving:
                if self._state is State.OPEN:
                    raise trio.BusyResourceError("another task is already receiving")
                # close() is reading the peer's close frame: wait for it to finish.
                await self._wait_stream_closed()
                raise self._closed_exc()
            data: bytes | bytearray
            if self._unprocessed:
                self._unprocessed = False
                data = b""  # the bytes that arrived with the upgrade request are in _rbuf
            else:
                self._receiving = True
                try:
                    data = await self._stream.receive_some(_READ_SIZE)
                except _STREAM_ERRORS:
                    data = b""
                finally:
                    self._receiving = False
                if not data:
                    self._set_close(1006, "")
                    await self._close_stream()
                    raise self._closed_exc()
            try:
                messages = self._feed(data)
            except LocalProtocolError:  # wsproto already CLOSED
                await self._close_stream()
                raise self._closed_exc() from None
            if messages and self._state is State.OPEN:
                return messages

    def _wsproto(self) -> Connection:
        conn = self._conn
        if conn is None:
            conn = self._conn = Connection(ConnectionType.SERVER)
        return conn

    def _feed(self, data: bytes | bytearray) -> list[str]:
        """Parse inbound bytes into complete messages; note a close or failure.

        The fast path takes whole, final, masked text/binary frames (no RSV bits) with a 7- or
        16-bit length within ``max_message_bytes`` and valid UTF-8. Every other frame goes to
        wsproto from its first byte to its last, and nothing else does: wsproto always stands
        at a frame boundary when the fast path takes over again. Only the start of a header
        that may still turn out fast (at most 7 bytes) is held back for the next read.
        """
        out: list[str] = []
        buf = self._rbuf + data if self._rbuf else data
        self._rbuf = b""
        if not self._FAST_PATH:
            if buf:
                self._slow(buf, out)
            return out
        end = len(buf)
        pos = 0
        limit = self._max_message_bytes
        while pos < end and self._pending_end is None:
            if self._slow_left:  # inside a frame that wsproto parses
                n = min(self._slow_left, end - pos)
                self._slow_left -= n
                self._slow(buf[pos : pos + n], out)
                pos += n
                continue
            head = self._slow_head
            if head is not None:  # wsproto's frame, whose length we have yet to learn
                size = _frame_size(head + buf[pos : pos + 10])
                if size is None:
                    self._slow_head = head + buf[pos:end]
                    self._slow(buf[pos:end], out)
                    pos = end
                else:
                    self._slow_head = None
                    self._slow_left = size - len(head)
                continue
            b0 = buf[pos]
            if (b0 == 0x81 or b0 == 0x82) and not self._fragmented:
                if end - pos < 2:
                    break  # hold
                b1 = buf[pos + 1]
                n = b1 & 0x7F
                if b1 & 0x80 and n != 127:
                    if n < 126:
                        start = pos + 6
                    elif end - pos < 4:
                        break  # hold
                    else:
                        n = (buf[pos + 2] << 8) | buf[pos + 3]
                        start = pos + 8 if n > 125 else -1  # wsproto refuses 126 for <= 125
                    if start > end:
                        break  # hold: the rest of the header is still to come
                    stop = start + n
                    if start > 0 and stop <= end and n <= limit:
                        text: str | None = ""
                        if n:
                            mask = buf[start - 4 : start]
                            if n < 1024:
                                raw: bytes | bytearray = (
                                    int.from_bytes(buf[start:stop], "little")
                                    ^ int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
                                ).to_bytes(n, "little")
                            else:
                                raw = _unmask(buf[start:stop], mask)
                            try:
                                text = raw.decode("utf-8")
                            except UnicodeDecodeError:
                                text = None  # wsproto reports it, with its code and reason
                        if text is not None:
                            out.append(text)
                            pos = stop
                            continue
            # Not for the fast path: wsproto's, from this frame boundary to the next.
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                self._fragmented = not b0 & 0x80
            elif opcode == 0 and b0 & 0x80:
                self._fragmented = False
            size = _frame_size(buf[pos : pos + 10])
            if size is None:
                self._slow_head = bytes(buf[pos:end])
                self._slow(buf[pos:end], out)
                pos = end
            else:
                self._slow_left = size
        if pos < end and self._pending_end is None:
            self._rbuf = bytes(buf[pos:end])
        return out

    def _slow(self, data: bytes | bytearray, out: list[str]) -> None:
        self._wsproto().receive_data(bytes(data))
        self._process_events(out)

    def _process_events(self, out: list[str]) -> None:
        """Drain wsproto's events into complete messages; note a close or failure."""
        conn = self._wsproto()
        for event in conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                if not self._add_data(event.data, event.message_finished, out):
                    return
            elif isinstance(event, Ping):
                if self._state is State.OPEN:
                    self._prio += conn.send(event.response())
                    if not self._sending:
                        self._wake.set()
            elif isinstance(event, CloseConnection):
                # wsproto reports its own parse failures as a CloseConnection too; only a
                # real close frame moves it out of OPEN / LOCAL_CLOSING.
                failed = conn.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING)
                self._note_end(event.code, event.reason or "", failure=failed)
                return
            # Pong: nothing to do.
        # Early size check on the frame being received (a private wsproto field; optional).
        decoder = getattr(getattr(conn, "_proto", None), "_frame_decoder", None)
        header = getattr(decoder, "header", None)
        if header is not None and not header.opcode.iscontrol():
            remaining = header.payload_len - getattr(decoder, "payload_consumed", 0)
            if self._parts_bytes + remaining > self._max_message_bytes:
                self._note_end(1009, "Message too big", failure=True)

    def _add_data(self, data: str | bytes | bytearray, finished: bool, out: list[str]) -> bool:
        """Add one (partial) frame's payload; False if the connection must fail."""
        limit = self._max_message_bytes
        if isinstance(data, str):
            if finished and not self._parts_bytes:
                # The common case: a whole text message in one event.
                if len(data) * 4 > limit and _utf8_len(data) > limit:
                    return self._fail(1009, "Message too big")
                out.append(data)
                return True
            self._parts_bytes += _utf8_len(data)
            if self._parts_bytes > limit:
                return self._fail(1009, "Message too big")
            self._text_parts.append(data)
            if finished:
                out.append("".join(self._text_parts))
                self._text_parts = []
                self._parts_bytes = 0
            return True
        if finished and not self._parts_bytes:
            if len(data) > limit:
                return self._fail(1009, "Message too big")
            raw: bytes | bytearray = data
        else:
            self._parts_bytes += len(data)
            if self._parts_bytes > limit:
                return self._fail(1009, "Message too big")
            self._byte_parts += data
            if not finished:
                return True
            raw = self._byte_parts
            self._byte_parts = bytearray()
            self._parts_bytes = 0
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return self._fail(1007, "Invalid UTF-8")
        return True

    def _fail(self, code: int, reason: str) -> bool:
        self._note_end(code, reason, failure=True)
        return False

    def _note_end(self, code: int, reason: str, *, failure: bool) -> None:
        self._pending_end = TransportClosed(code, reason)
        self._pending_end_is_failure = failure
        self._text_parts = []
        self._byte_parts = bytearray()
        self._parts_bytes = 0

    async def _act_on_end(self) -> None:
        """Answer the peer's close frame, or fail the connection; then close the stream."""
        end = self._pending_end
        assert end is not None
        self._pending_end = None
        if self._state is State.OPEN:
            code = end.code
            if self._pending_end_is_failure:
                code = sendable_code(code)
                self._set_close(code, truncate_reason(end.reason))
                frame = self._close_frame(code, truncate_reason(end.reason))
            else:
                # Echo the peer's code (1005 "no status" is echoed as an empty close frame).
                self._set_close(end.code, end.reason)
                frame = self._close_frame(code, "")
            self._state = State.CLOSING
            self._buf = bytearray()
            self._prio += frame
            with trio.move_on_after(self._close_timeout_s):
                await self._drain()
        else:
            # We had started closing: this is the peer's answer (or garbage after our close).
            self._set_close(end.code, end.reason)
        await self._close_stream()

    # ----------------------------------------------------------------- sending

    def send(self, message: OutboundMessage) -> None:
        """Queue ``message``'s frame; never blocks. Ignored once closing. Overflow: module doc."""
        if self._state is not State.OPEN:
            return
        frame = message.frame
        if len(self._buf) + len(self._prio) + len(frame) > self._max_buffer_bytes:
            self._overflow()
            return
        self._buf += frame
        if not self._sending:
            self._wake.set()

    def send_priority(self, message: OutboundMessage) -> None:
        """Queue ``message`` ahead of everything queued by ``send``. Same overflow policy."""
        if self._state is not State.OPEN:
            return
        frame = message.frame
        if len(self._buf) + len(self._prio) + len(frame) > self._max_buffer_bytes:
            self._overflow()
            return
        self._prio += frame
        if not self._sending:
            self._wake.set()

    def _overflow(self) -> None:
        self._buf = bytearray()
        self._prio += self._close_frame(SLOW_CONSUMER_CLOSE_CODE, "Slow consumer")
        self._slow_consumer()

    async def flush(self) -> None:
        """Write everything queued, one ``send_all`` per round, unless a flush is running.

        Never raises except ``Cancelled``. A broken stream closes the transport
        (``receive`` raises ``TransportClosed(1006)``). Cancellation in the middle of a write
        also closes the stream: a half-written frame cannot be resumed.
        """
        if self._send_deadline == math.inf:
            await self._flush(None)  # no cancel scope per write: ``run_writer`` bounds it
        else:
            with trio.CancelScope(deadline=self._send_deadline) as scope:
                await self._flush(scope)

    async def run_writer(self) -> None:
        """Flush whenever something is queued; return (never raise) once closed.

        The writer's own writes run in a cancel scope (entered only when there is something to
        write), to which an overflow gives its deadline. If an overflow happens while another
        task's write is in flight (the reader's ``flush``, which has no scope), the writer
        waits for that write until the deadline, then closes the stream, which ends the write.
        Cancellation leaves the transport as ``flush`` documents.
        """
        while self._state is not State.CLOSED:
            await self._wake.wait()
            if self._sending:
                if self._abort_after_flush:
                    await self._bound_write_in_flight()
            elif self._prio or self._buf:
                await self._bounded_flush()

    async def _bounded_flush(self) -> None:
        with trio.CancelScope() as scope:  # only around real writes: 5 us each
            await self._flush(scope)

    async def _bound_write_in_flight(self) -> None:
        """After an overflow: give another task's write until the deadline, then close."""
        with trio.move_on_at(self._send_deadline):
            while self._sending:
                if self._idle is _NO_WAITERS:
                    self._idle = trio.lowlevel.ParkingLot()
                await self._idle.park()
        if self._sending:
            self._set_close(1006, "")
            await self._close_stream()

    async def _flush(self, bound: trio.CancelScope | None) -> None:
        """``flush``; ``bound`` (if any) is the scope around the writes, for the overflow."""
        if self._sending or self._state is State.CLOSED:
            return
        self._sending = True
        self._send_scope = bound
        if bound is not None and self._send_deadline < bound.deadline:
            bound.deadline = self._send_deadline
        ok = False
        try:
            while self._prio or self._buf:
                if self._prio:
                    data = self._prio
                    self._prio = bytearray()
                    if self._buf:
                        data += self._buf
                        self._buf = bytearray()
                else:
                    data = self._buf
                    self._buf = bytearray()
                await self._stream.send_all(data)
            ok = True
        except _STREAM_ERRORS:
            pass
        finally:
            self._sending = False
            self._send_scope = None
            self._idle.unpark_all()
            if not ok or self._abort_after_flush:
                self._set_close(1006, "")
                await self._close_stream()

    # ----------------------------------------------------------------- closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame after what is queued, wait up to ``close_timeout_s`` (2 s) for
        the peer's close frame, then close the stream. Idempotent.

        Forbidden codes are sent as 1000 (module doc); ``reason`` is cut to 123 UTF-8 bytes.
        Cancellation closes the stream.
        """
        try:
            if self._state is State.OPEN:
                code = sendable_code(code)
                reason = truncate_reason(reason)
                self._set_close(code, reason)
                self._state = State.CLOSING
                self._buf += self._close_frame(code, reason)
                if not self._sending:
                    self._wake.set()
            if self._state is State.CLOSED:
                return
            with trio.move_on_after(self._close_timeout_s):
                await self._drain()
                if self._receiving:
                    await self._wait_stream_closed()
                else:
                    await self._await_peer_close()
        finally:
            await self._close_stream()

    async def _await_peer_close(self) -> None:
        """Read (discarding data) until the peer's close frame, a failure, or EOF."""
        self._receiving = True
        try:
            while self._state is not State.CLOSED and self._pending_end is None:
                data = await self._stream.receive_some(_READ_SIZE)
                if not data:
                    return
                self._feed(cast(bytes, data))
        except (*_STREAM_ERRORS, LocalProtocolError):
            return
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the stream at once, without a closing handshake. Idempotent."""
        self._set_close(1006, "")
        await self._close_stream()

    def _close_frame(self, code: int, reason: str) -> bytes:
        """Our close frame; 1005 (the peer sent no code) is echoed as an empty close frame."""
        event = (
            CloseConnection(code=CloseReason.NO_STATUS_RCVD)
            if code == 1005
            else CloseConnection(code=code, reason=reason or None)
        )
        try:
            return bytes(self._wsproto().send(event))
        except LocalProtocolError:  # wsproto already sent or received its close
            return b""

    async def _close_stream(self) -> None:
        if self._state is State.CLOSED:
            await self._wait_stream_closed()
            return
        self._state = State.CLOSED
        self._set_close(1006, "")
        self._prio = bytearray()
        self._buf = bytearray()
        self._wake.set()
        try:
            await trio.aclose_forcefully(self._stream)
        finally:
            if self._stream_closed is None:
                self._stream_closed = STREAM_CLOSED
            else:
                self._stream_closed.set()

    async def _wait_stream_closed(self) -> None:
        """Wait until ``_close_stream`` (running in another task, or done) has finished."""
        if self._stream_closed is None:
            self._stream_closed = trio.Event()
        await self._stream_closed.wait()


# --------------------------------------------------------------------- the HTTP upgrade


async def _default_http_handler(request: HandshakeRequest) -> Rejection:
    return Rejection(status=426, body="Upgrade Required")


def _http_response(rejection: Rejection) -> bytes:
    body = rejection.body.encode("utf-8")
    try:
        phrase = HTTPStatus(rejection.status).phrase
    except ValueError:
        phrase = ""
    names = {k.lower() for k, _ in rejection.headers}
    lines = [f"HTTP/1.1 {rejection.status} {phrase}"]
    if "content-type" not in names:
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    for k, v in rejection.headers:
        if k.lower() in ("content-length", "connection") or any(c in k + v for c in "\r\n"):
            continue
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace") + body


def _valid_key(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _is_upgrade(req: HandshakeRequest) -> bool:
    upgrade = req.header("upgrade") or ""
    connection = req.header("connection") or ""
    return upgrade.strip().lower() == "websocket" and "upgrade" in {
        t.strip().lower() for t in connection.split(",")
    }


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    sock = getattr(stream, "socket", None)
    try:
        addr = sock.getpeername() if sock is not None else None
    except OSError:
        return None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class _Refused(Exception):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.status)
        self.rejection = rejection


#: What the fast path accepts of a request head: a subset of what h11 accepts (a ``GET``,
#: HTTP/1.1, printable target, header lines without folding or control characters), parsed
#: to the same values. Anything else goes to h11.
_FAST_HEAD = re.compile(
    rb"GET [\x21-\x7e]+ HTTP/1\.1\r\n"
    rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[ \t]*"
    rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?[ \t]*\r\n)*"
    rb"\r\n"
)
_MAX_HEAD_BYTES = 16 * 1024  # h11's limit on an incomplete request head

#: Parsed header lines seen before (``Host: ...``, ``Upgrade: websocket``...), so that the
#: connections of one client share one ``(name, value)`` pair per line instead of holding a
#: copy each (about 1 KB per connection). Bounded: emptied when it reaches the limit.
_HEADER_PAIRS: dict[str, tuple[str, str]] = {}
_HEADER_PAIRS_MAX = 1024


class _Head:
    """The parts of an HTTP request head that the upgrade looks at."""

    __slots__ = ("headers", "method", "target", "trailing", "version")

    def __init__(
        self,
        method: bytes,
        target: str,
        version: bytes,
        headers: tuple[tuple[str, str], ...],
        trailing: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # names lower-cased, values without surrounding blanks
        self.trailing = trailing  # what the client sent after the head (its first frames)


def _fast_head(data: bytes | bytearray) -> _Head | None:
    """Parse a whole, plain upgrade request head; ``None`` leaves it to h11."""
    end = data.find(b"\r\n\r\n", 0, _MAX_HEAD_BYTES)
    if end < 0 or _FAST_HEAD.fullmatch(data, 0, end + 4) is None:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    headers = []
    hosts = 0
    pairs = _HEADER_PAIRS
    for line in lines[1:]:
        pair = pairs.get(line)
        if pair is None:
            name, _, value = line.partition(":")
            pair = (name.lower(), value.strip(" \t"))
            if pair[0] != "sec-websocket-key":  # the one header that differs every time
                if len(pairs) >= _HEADER_PAIRS_MAX:
                    pairs.clear()
                pairs[line] = pair
        name = pair[0]
        if name == "host":
            hosts += 1
        elif name == "content-length" or name == "transfer-encoding":
            return None  # a body: h11 frames it
        headers.append(pair)
    if hosts != 1:
        return None  # h11 refuses it (400)
    return _Head(b"GET", lines[0][4:-9], b"1.1", tuple(headers), bytes(data[end + 4 :]))


async def _read_request(stream: trio.abc.Stream) -> _Head | None:
    """Read one HTTP request head and its (ignored) body; ``None`` on EOF before a request.

    A plain request that arrives whole in the first read is parsed by ``_fast_head``; any
    other goes to h11, which sees every byte read so far.
    """
    data = await stream.receive_some(_READ_SIZE)
    if not data:
        return None
    head = _fast_head(data)
    if head is not None:
        return head
    h = h11.Connection(h11.SERVER)
    h.receive_data(bytes(data))
    request: h11.Request | None = None
    while True:
        try:
            event = h.next_event()
        except h11.RemoteProtocolError:
            raise _Refused(Rejection(status=400, body="Bad Request")) from None
        if event is h11.NEED_DATA and request is None:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return None
            h.receive_data(bytes(data))
        elif isinstance(event, h11.Request):
            request = event
        elif event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            # (NEED_DATA here: a body we will not read.)
            assert request is not None
            return _Head(
                request.method,
                request.target.decode("latin-1"),
                request.http_version,
                tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers),
                bytes(h.trailing_data[0]),
            )
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # h11.Data: a body we do not use.


async def _upgrade(
    stream: trio.abc.Stream,
    *,
    path: str,
    check: UpgradeCheck | None,
    http_handler: Callable[[HandshakeRequest], Awaitable[Rejection]],
    remote_address: tuple[str, int] | None,
) -> tuple[HandshakeRequest, bytes] | None:
    """The HTTP half: read, validate, answer. Returns the request and the bytes after it."""
    head = await _read_request(stream)
    if head is None:
        return None
    req_path, _, query = head.target.partition("?")
    if req_path == path:
        req_path = path  # the configured string, not one copy per connection
    req = HandshakeRequest(
        path=req_path, query=query, headers=head.headers, remote_address=remote_address
    )
    if not _is_upgrade(req):
        raise _Refused(await http_handler(req))
    if head.method != b"GET":
        raise _Refused(Rejection(status=405, body="Method Not Allowed"))
    if req_path != path or head.version != b"1.1":
        raise _Refused(Rejection(status=400, body="Bad Request"))
    key = req.header("sec-websocket-key")
    if req.header("sec-websocket-version") != "13" or not _valid_key(key):
        raise _Refused(
            Rejection(status=400, body="Bad Request", headers=(("Sec-WebSocket-Version", "13"),))
        )
    if check is not None:
        rejection = await check(req)
        if rejection is not None:
            raise _Refused(rejection)
    assert key is not None
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode("ascii")) + b"\r\n\r\n"
    )
    return req, head.trailing


async def accept_websocket(
    stream: trio.abc.Stream,
    *,
    path: str = "/socketcluster/",
    check: UpgradeCheck | None = None,
    http_handler: Callable[[HandshakeRequest], Awaitable[Rejection]] | None = None,
    max_message_bytes: int = 16 * 2**20,
    max_buffer_bytes: int = 8 * 2**20,
    upgrade_timeout_s: float = 10.0,
    remote_address: tuple[str, int] | None = None,
) -> WsprotoTransport | None:
    """Read the HTTP upgrade on ``stream`` and return an open transport, or ``None``.

    * The path must equal ``path`` exactly (else 400 ``Bad Request``); then ``check`` runs
      and may refuse with its ``Rejection`` (status and text/plain body).
    * A request that is not a WebSocket upgrade goes to ``http_handler`` (default: 426
      ``Upgrade Required``); malformed HTTP gets 400.
    * No subprotocol and no extension (permessage-deflate) is negotiated.
    * Everything, ``check`` included, must finish within ``upgrade_timeout_s``.

    Whenever ``None`` is returned the stream has been closed; nothing but ``Cancelled`` is
    raised (an exception from ``check``/``http_handler`` is logged and answered with 500).
    Cancellation closes the stream.
    """
    if remote_address is None:
        remote_address = _peer_address(stream)
    handler = http_handler or _default_http_handler
    result: tuple[HandshakeRequest, bytes] | None = None
    try:
        with trio.move_on_after(upgrade_timeout_s):
            try:
                result = await _upgrade(
                    stream,
                    path=path,
                    check=check,
                    http_handler=handler,
                    remote_address=remote_address,
                )
            except _Refused as refused:
                await stream.send_all(_http_response(refused.rejection))
            except _STREAM_ERRORS:
                pass
            except Exception:
                _log.exception("upgrade check or HTTP handler failed")
                await stream.send_all(_http_response(Rejection(status=500, body="Server Error")))
    except _STREAM_ERRORS:
        pass
    finally:
        if result is None:
            await trio.aclose_forcefully(stream)
    if result is None:
        return None
    request, trailing = result
    return WsprotoTransport(
        stream,
        request,
        trailing_data=trailing,
        max_message_bytes=max_message_bytes,
        max_buffer_bytes=max_buffer_bytes,
    )
