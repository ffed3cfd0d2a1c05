"""Our WebSocket transport: a ``FrameReader`` and an outbound buffer over a ``trio.abc.Stream``.

This module owns the trio side of one server WebSocket connection, from the HTTP upgrade
(``accept_websocket``, which drives the pure ``transport.upgrade``) to the closing handshake
(``WsprotoTransport``). The bytes-level work is pure and lives elsewhere: the request head in
``transport.upgrade``, inbound frames in ``transport.frames`` (a fast path for the common
frame, wsproto for the rest). It implements the ``Transport`` interface of
``transport.base`` with the shape that measured fastest:

* **One reader, whole reads.** ``receive`` does one ``receive_some(65536)`` and returns every
  message that read completed (text as ``str``, binary as ``bytes``), so the core dispatches
  a batch per read. Pings are answered (the pong is queued as priority data).
* **One buffer, one write.** Outbound frames are appended to a per-socket ``bytearray``
  (``send``/``send_priority`` never block) and written with a single ``send_all`` by
  ``flush``. At most one coroutine is inside ``send_all`` (a flag, not a lock): a second
  ``flush`` returns at once and the running one loops until both buffers are empty.
  ``run_writer`` flushes whenever something is queued; the core may also call ``flush``
  itself after dispatching a read.
* **A write that fits is not awaited.** On a TCP ``trio.SocketStream`` a flush first hands
  everything queued to the kernel with one non-blocking ``os.write`` on the socket's file
  descriptor: when the socket's send buffer takes it all (almost always), the write costs one
  system call and no trip through the scheduler (``send_all`` is two checkpoints, a cancel
  scope and a conflict detector). What the kernel does not take stays queued, in front, for
  ``send_all``, as does everything after an error (``send_all`` meets it again and the stream
  is closed there). Such a flush is not a checkpoint: the reader's next ``receive`` is.
* **Frames built once.** ``OutboundMessage.frame`` is computed on first use and the same
  ``bytes`` are appended to every receiver's buffer.

Overflow policy: if queued bytes (priority + normal) would exceed ``max_buffer_bytes`` the
normal buffer is dropped, a close frame 4100 "Slow consumer" is queued, later sends are
ignored, and the write of what is in flight plus the close frame gets ``close_timeout_s``
before the stream is closed regardless; ``receive`` then raises ``TransportClosed(4100)``.

The close state is one field, ``_close`` (``_common.CloseState``: the phase OPEN → CLOSING →
CLOSED and the close decided, ours or the peer's); it, the writer (``run_writer``, ``_drain``)
and the overflow bookkeeping are ``_common``'s, shared with the trio-websocket adapter. The
end of the inbound stream (the peer's close frame, or a protocol failure) is the reader's
``end``; the transport acts on it once, answering and closing the stream.

Close codes that RFC 6455 forbids on the wire (1004-1006, 1015, anything outside 1000-1014
and 3000-4999) are sent as 1000, and the transport reports 1000 for them.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING

import trio

from ._common import (
    _NO_WAITERS,
    STREAM_CLOSED,
    ClosedBy,
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
    UpgradeCheck,
)
from .frames import FrameReader, Message, PeerClose, Ping, close_frame, pong_frame
from .upgrade import (
    HeadReader,
    Refused,
    accept_response,
    handshake_request,
    http_response,
    is_upgrade,
    refusal,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["WsprotoTransport", "accept_websocket"]

_log = logging.getLogger(__name__)

_READ_SIZE = 65536
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_SLOW_CONSUMER_FRAME = close_frame(SLOW_CONSUMER_CLOSE_CODE, "Slow consumer")
_OPEN = State.OPEN  # for the hot path (``send``): one attribute lookup less


class WsprotoTransport(OutboundTransport):
    """The server side of an accepted WebSocket (see the module docstring).

    Built by ``accept_websocket``; ``stream`` is the byte stream after the upgrade and
    ``trailing_data`` what the client sent after its request head.
    """

    __slots__ = (
        "__dict__",  # a test may still replace a method on one transport (a spy)
        "_buf",
        "_prio",
        "_reader",
        "_receiving",
        "_socket",
        "_stream",
        "_stream_closed",
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
        # The socket for the synchronous write and the direct read (module docstring); its
        # fileno() is -1 once the stream is closed, so a closed stream's number (reused by a
        # new connection) is never written to or read from.
        self._socket = _tcp_socket(stream)
        self._reader = FrameReader(
            max_message_bytes=max_message_bytes, fast_path=self._FAST_PATH, buffered=trailing_data
        )
        self._receiving = False
        self._stream_closed: trio.Event | None = None  # made by the first task that waits
        self._unprocessed = bool(trailing_data)  # the reader holds bytes not parsed yet
        self._prio = bytearray()
        self._buf = bytearray()

    # ----------------------------------------------------------------- properties

    @property
    def reader(self) -> FrameReader:
        """The inbound frame parser (its state, for the tests)."""
        return self._reader

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued and not yet handed to ``send_all`` (priority + normal)."""
        return len(self._prio) + len(self._buf)

    def _queued(self) -> bool:
        return bool(self._prio or self._buf)

    # ----------------------------------------------------------------- receiving

    async def receive(self) -> list[Message]:
        """Every complete message that the next read produced (at least one): text frames
        as ``str``, binary frames as ``bytes``.

        Raises ``TransportClosed`` once the connection is closed. Cancellation while waiting
        for data leaves the transport usable (partial messages are kept); cancellation while
        replying to the peer's close or failing the connection closes the stream.
        """
        reader = self._reader
        while True:
            if reader.end is not None and self._close.state is not State.CLOSED:
                await self._act_on_end()
            if self._close.state is State.CLOSED:
                raise self._close.exception()
            if self._receiving:
                if self._close.state is State.OPEN:
                    raise trio.BusyResourceError("another task is already receiving")
                # close() is reading the peer's close frame: wait for it to finish.
                await self._wait_stream_closed()
                raise self._close.exception()
            data: bytes | bytearray
            if self._unprocessed:
                self._unprocessed = False
                data = b""  # the bytes that arrived with the upgrade request are the reader's
            else:
                self._receiving = True
                try:
                    # An idle connection's reader is parked in ``wait_readable`` directly:
                    # five coroutines and a context manager fewer (about 1.5 KB).
                    data = await _read_some(self._stream, self._socket)
                except _STREAM_ERRORS:
                    data = b""
                finally:
                    self._receiving = False
                if not data:
                    await self._close_stream()
                    raise self._close.exception()
            messages = reader.feed(data)
            if reader.controls:
                self._answer_controls()
            if messages and self._close.state is State.OPEN:
                return messages

    def _answer_controls(self) -> None:
        """Queue a pong for every ping (while open); pongs need no answer."""
        controls = self._reader.controls
        if self._close.state is State.OPEN:
            for control in controls:
                if isinstance(control, Ping):
                    self._prio += pong_frame(control.payload)
            if not self._sending:
                self._wake.set()
        controls.clear()

    async def _act_on_end(self) -> None:
        """Answer the peer's close frame, or fail the connection; then close the stream.

        Cancellation closes the stream.
        """
        end = self._reader.end
        assert end is not None
        try:
            if self._close.state is State.OPEN:
                if isinstance(end, PeerClose):
                    # Echo the peer's code (1005 "no status" is echoed as an empty close frame).
                    self._close = self._close.closing(end.code, end.reason, ClosedBy.PEER)
                    frame = close_frame(end.code)
                else:
                    code = sendable_code(end.code)
                    reason = truncate_reason(end.reason)
                    self._close = self._close.closing(code, reason, ClosedBy.PROTOCOL)
                    frame = close_frame(code, reason)
                # After everything queued (replies to the valid messages before the close
                # or the failure): the peer can still read them.
                self._buf += frame
                with trio.move_on_after(self._close_timeout_s):
                    await self._drain()
            # else we had started closing: this is the peer's answer (or garbage after our
            # close), and our decision stands.
        finally:
            await self._close_stream()

    # ----------------------------------------------------------------- sending

    def send(self, message: OutboundMessage) -> None:
        """Queue ``message``'s frame; never blocks. Ignored once closing. Overflow: module doc."""
        if self._close.state is not _OPEN:
            return
        frame = message.frame
        if len(self._buf) + len(self._prio) + len(frame) > self._max_buffer_bytes:
            self._overflow()
            return
        self._buf += frame
        if not self._sending:
            self._wake.set()

    def send_priority(self, message: OutboundMessage, *, write: bool = False) -> None:
        """Queue ``message`` ahead of everything queued by ``send``. Same overflow policy.
        With ``write``, what is queued is handed to the socket at once if it takes it all
        (the writer task is only woken for what it does not take)."""
        self.queue(message, priority=True)
        if self._close.state is not _OPEN:  # closing, or this overflowed (the writer knows)
            return
        if not self._sending and not (write and self._write_now()):
            self._wake.set()

    def queue(self, message: OutboundMessage, *, priority: bool = False) -> None:
        """``send``/``send_priority`` without waking the writer (see ``Transport.queue``)."""
        if self._close.state is not _OPEN:
            return
        frame = message.frame
        if len(self._buf) + len(self._prio) + len(frame) > self._max_buffer_bytes:
            self._overflow()
        elif priority:
            self._prio += frame
        else:
            self._buf += frame

    def write_soon(self) -> None:
        """Write what is queued at once if the socket takes it, else wake the writer."""
        if not self._sending and not self._write_now():
            self._wake.set()

    def _overflow(self) -> None:
        self._buf = bytearray()
        self._prio += _SLOW_CONSUMER_FRAME
        self._slow_consumer()

    async def flush(self) -> None:
        """Write everything queued, one ``send_all`` per round, unless a flush is running.

        Never raises except ``Cancelled``. A broken stream closes the transport
        (``receive`` raises ``TransportClosed(1006)``). Cancellation in the middle of a write
        also closes the stream: a half-written frame cannot be resumed.
        """
        if self._write_now():
            return
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
        while self._close.state is not State.CLOSED:
            await self._wake.wait()
            if self._sending:
                if self._abort_after_flush:
                    await self._bound_write_in_flight()
            elif (self._prio or self._buf) and not self._write_now():
                await self._bounded_flush()

    def write_now(self) -> bool:
        """Public ``_write_now``: what ``flush`` tries first, for a caller that would
        otherwise enter a cancel scope only to find the write done at once."""
        return self._write_now()

    def _write_now(self) -> bool:
        """Hand everything queued to the kernel in one non-blocking write, if the socket
        takes it all (see the module docstring). Returns whether nothing is left queued;
        otherwise what was not written (all of it, after an error) is queued in front.

        Only while open, with no write in flight, on a TCP socket stream.
        """
        sock = self._socket
        if sock is None or self._sending or self._close.state is not _OPEN:
            return False
        fd = sock.fileno()
        if fd < 0:
            return False
        data = self._prio
        if data:
            self._prio = bytearray()
            if self._buf:
                data += self._buf
                self._buf = bytearray()
        elif self._buf:
            data = self._buf
            self._buf = bytearray()
        else:
            return True
        try:
            written = os.write(fd, data)
        except OSError:  # EAGAIN, or a broken connection: send_all decides
            written = 0
        if written == len(data):
            return True
        self._prio = data if not written else bytearray(memoryview(data)[written:])
        return False

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
            await self._close_stream()

    async def _flush(self, bound: trio.CancelScope | None) -> None:
        """``flush``; ``bound`` (if any) is the scope around the writes, for the overflow."""
        if self._sending or self._close.state is State.CLOSED:
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
                await self._close_stream()

    # ----------------------------------------------------------------- closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame after what is queued, wait up to ``close_timeout_s`` (2 s) for
        the peer's close frame, then close the stream. Idempotent.

        Forbidden codes are sent as 1000 (module doc); ``reason`` is cut to 123 UTF-8 bytes.
        Cancellation closes the stream.
        """
        try:
            if self._close.state is State.OPEN:
                code = sendable_code(code)
                reason = truncate_reason(reason)
                self._close = self._close.closing(code, reason, ClosedBy.LOCAL)
                self._buf += close_frame(code, reason)
                if not self._sending:
                    self._wake.set()
            if self._close.state is State.CLOSED:
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
        reader = self._reader
        self._receiving = True
        try:
            if self._unprocessed:
                self._unprocessed = False
                reader.feed(b"")
            while self._close.state is not State.CLOSED and reader.end is None:
                data = await self._stream.receive_some(_READ_SIZE)
                if not data:
                    return
                reader.feed(data)
        except _STREAM_ERRORS:
            return
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the stream at once, without a closing handshake. Idempotent."""
        await self._close_stream()

    async def _close_stream(self) -> None:
        """Mark the transport CLOSED (1006 unless a close was decided) and close the stream;
        if that is under way in another task, wait for it."""
        if self._close.state is State.CLOSED:
            await self._wait_stream_closed()
            return
        self._close = self._close.closed()
        self._prio = bytearray()
        self._buf = bytearray()
        self._wake.set()
        stream = self._stream
        try:
            if type(stream) is trio.SocketStream:
                # ``aclose_forcefully`` without its cancelled scope and the ``Cancelled``
                # raised and caught in it (a fifth of the stop when a drain closes thousands).
                stream.socket.close()
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                await trio.aclose_forcefully(stream)
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
    return Rejection(
        status=426, body="Upgrade Required: this is a WebSocket endpoint", headers=_UPGRADE
    )


_UPGRADE = (("Upgrade", "websocket"),)


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    sock = getattr(stream, "socket", None)
    try:
        addr = sock.getpeername() if sock is not None else None
    except OSError:
        return None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


def _tcp_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    return stream.socket if isinstance(stream, trio.SocketStream) else None


async def _read_some(
    stream: trio.abc.Stream, sock: trio.socket.SocketType | None, *, fair: bool = True
) -> bytes | bytearray:
    """``receive_some(65536)``, or on a TCP socket stream (``sock``) the same done here with
    ``os.read`` on the socket's file descriptor and ``wait_readable``, with trio's
    checkpoints (cancellation is checked before the read; after an immediate read the task
    yields, shielded, unless ``fair`` is false: the upgrade's one read, where the task
    waits for the client's next message soon after anyway)."""
    if sock is None:
        return await stream.receive_some(_READ_SIZE)
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    while True:
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            data: bytes | None = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            data = None  # waited for outside the handler: no exception kept while parked
        if data is None:
            await trio.lowlevel.wait_readable(sock)
            waited = True
            continue
        if fair and not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data


async def _write_all(
    stream: trio.abc.Stream, sock: trio.socket.SocketType | None, data: bytes
) -> None:
    """``send_all(data)``; on a TCP socket stream first one non-blocking ``os.write``, which
    takes a short answer whole (``send_all`` then writes what is left, if anything)."""
    written = 0
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        try:
            written = os.write(fd, data)
        except OSError:  # EAGAIN, or a broken connection: send_all decides
            written = 0
    if written < len(data):
        await stream.send_all(memoryview(data)[written:])


async def _upgrade(
    stream: trio.abc.Stream,
    *,
    path: str,
    check: UpgradeCheck | None,
    http_handler: Callable[[HandshakeRequest], Awaitable[Rejection]],
    remote_address: tuple[str, int] | None,
) -> tuple[HandshakeRequest, bytes] | None:
    """The HTTP half: read, validate, answer. Returns the request and the bytes after it,
    or ``None`` on EOF before a whole request head; raises ``Refused``."""
    reader = HeadReader()
    sock = _tcp_socket(stream)
    while True:
        data = await _read_some(stream, sock, fair=False)
        if not data:
            return None
        head = reader.feed(data)
        if head is not None:
            break
    req = handshake_request(head, path=path, remote_address=remote_address)
    if not is_upgrade(req):
        raise Refused(await http_handler(req), head=req.method == "HEAD")
    rejection = refusal(head, req, path=path)
    if rejection is None and check is not None:
        rejection = await check(req)
    if rejection is not None:
        raise Refused(rejection)
    await _write_all(stream, sock, accept_response(req))
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

    * The path must equal ``path`` exactly (else 400, with a body naming ``path``); then
      ``check`` runs and may refuse with its ``Rejection`` (status and text/plain body).
    * A request that is not a WebSocket upgrade goes to ``http_handler`` (default: 426
      ``Upgrade Required``); malformed HTTP gets 400. Every refusal has a short text body
      saying what is wrong (``transport.upgrade.refusal``).
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
            except Refused as refused:
                await stream.send_all(http_response(refused.rejection, head=refused.head))
            except _STREAM_ERRORS:
                pass
            except Exception:  # the application's http_handler or check (or a bug of ours)
                _log.exception("upgrade check or HTTP handler failed")
                await stream.send_all(
                    http_response(Rejection(status=500, body="Server Error: see the server log"))
                )
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
