"""Our WebSocket transport: wsproto's frame layer driven directly over a ``trio.abc.Stream``.

This module owns the server side of one WebSocket connection, from the HTTP upgrade
(``accept_websocket``) to the closing handshake (``WsprotoTransport``). It implements the
``Transport`` interface of ``transport.base`` with the shape that measured fastest:

* **One reader, whole reads.** ``receive`` does one ``receive_some(65536)``, feeds wsproto
  and returns every message that read completed, so the core dispatches a batch per read.
  Fragments are reassembled here; pings are answered (the pong is queued as priority data).
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

from ._common import OutboundTransport, State, sendable_code, truncate_reason
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


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class WsprotoTransport(OutboundTransport):
    """The server side of an accepted WebSocket (see the module docstring).

    Built by ``accept_websocket``; ``conn`` is a wsproto frame-level ``Connection`` in
    state OPEN, ``stream`` the byte stream it runs over.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        request: HandshakeRequest,
        *,
        max_message_bytes: int = 16 * 2**20,
        max_buffer_bytes: int = 8 * 2**20,
        close_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(
            request, max_buffer_bytes=max_buffer_bytes, close_timeout_s=close_timeout_s
        )
        self._stream = stream
        self._conn = conn
        self._max_message_bytes = max_message_bytes

        self._pending_end: TransportClosed | None = None  # peer close / failure seen, not acted on
        self._pending_end_is_failure = False
        self._unprocessed = True  # bytes that arrived with the upgrade request
        self._receiving = False
        self._stream_closed = trio.Event()

        # Reassembly of the inbound message in progress.
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
                await self._stream_closed.wait()
                raise self._closed_exc()
            if self._unprocessed:
                self._unprocessed = False
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
                    self._conn.receive_data(cast(bytes, data))
                except LocalProtocolError:  # wsproto already CLOSED
                    await self._close_stream()
                    raise self._closed_exc() from None
            messages = self._process_events()
            if messages and self._state is State.OPEN:
                return messages

    def _process_events(self) -> list[str]:
        """Drain wsproto's events into complete messages; note a close or failure."""
        out: list[str] = []
        conn = self._conn
        for event in conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                if not self._add_data(event.data, event.message_finished, out):
                    return out
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
                return out
            # Pong: nothing to do.
        # Early size check on the frame being received (a private wsproto field; optional).
        decoder = getattr(getattr(conn, "_proto", None), "_frame_decoder", None)
        header = getattr(decoder, "header", None)
        if header is not None and not header.opcode.iscontrol():
            remaining = header.payload_len - getattr(decoder, "payload_consumed", 0)
            if self._parts_bytes + remaining > self._max_message_bytes:
                self._note_end(1009, "Message too big", failure=True)
        return out

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
        if self._sending or self._state is State.CLOSED:
            return
        self._sending = True
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
                with trio.CancelScope(deadline=self._send_deadline) as scope:
                    self._send_scope = scope
                    await self._stream.send_all(data)
                self._send_scope = None
                if scope.cancelled_caught:
                    break
            else:
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
                    await self._stream_closed.wait()
                else:
                    await self._await_peer_close()
        finally:
            await self._close_stream()

    async def _await_peer_close(self) -> None:
        """Read (discarding data) until the peer's close frame or EOF."""
        self._receiving = True
        try:
            while self._state is not State.CLOSED and self._pending_end is None:
                data = await self._stream.receive_some(_READ_SIZE)
                if not data:
                    return
                self._conn.receive_data(cast(bytes, data))
                for event in self._conn.events():
                    if isinstance(event, CloseConnection):
                        return
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
            return bytes(self._conn.send(event))
        except LocalProtocolError:  # wsproto already sent or received its close
            return b""

    async def _close_stream(self) -> None:
        if self._state is State.CLOSED:
            await self._stream_closed.wait()
            return
        self._state = State.CLOSED
        self._set_close(1006, "")
        self._prio = bytearray()
        self._buf = bytearray()
        self._wake.set()
        try:
            await trio.aclose_forcefully(self._stream)
        finally:
            self._stream_closed.set()


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


async def _read_request(stream: trio.abc.Stream) -> tuple[h11.Request, h11.Connection] | None:
    """Read one HTTP request head and its (ignored) body; ``None`` on EOF before a request."""
    h = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    while True:
        try:
            event = h.next_event()
        except h11.RemoteProtocolError:
            raise _Refused(Rejection(status=400, body="Bad Request")) from None
        if event is h11.NEED_DATA:
            if request is not None:  # a body we will not read
                return request, h
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return None
            h.receive_data(cast(bytes, data))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            assert request is not None
            return request, h
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
    got = await _read_request(stream)
    if got is None:
        return None
    h_request, h = got
    target = h_request.target.decode("latin-1")
    req_path, _, query = target.partition("?")
    req = HandshakeRequest(
        path=req_path,
        query=query,
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in h_request.headers),
        remote_address=remote_address,
    )
    if not _is_upgrade(req):
        raise _Refused(await http_handler(req))
    if h_request.method != b"GET":
        raise _Refused(Rejection(status=405, body="Method Not Allowed"))
    if req_path != path or h_request.http_version != b"1.1":
        raise _Refused(Rejection(status=400, body="Bad Request"))
    if req.header("sec-websocket-version") != "13" or not _valid_key(
        req.header("sec-websocket-key")
    ):
        raise _Refused(
            Rejection(status=400, body="Bad Request", headers=(("Sec-WebSocket-Version", "13"),))
        )
    if check is not None:
        rejection = await check(req)
        if rejection is not None:
            raise _Refused(rejection)
    key = req.header("sec-websocket-key")
    assert key is not None
    accept = generate_accept_token(key.encode("ascii")).decode("ascii")
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode("ascii") + b"\r\n\r\n"
    )
    trailing, _closed = h.trailing_data
    return req, bytes(trailing)


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
    conn = Connection(ConnectionType.SERVER, trailing_data=trailing)
    return WsprotoTransport(
        stream,
        conn,
        request,
        max_message_bytes=max_message_bytes,
        max_buffer_bytes=max_buffer_bytes,
    )
