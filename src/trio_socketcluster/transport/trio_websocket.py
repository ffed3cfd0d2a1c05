"""The embedding adapter: the ``Transport`` interface over a trio-websocket connection.

For applications that already run a ``trio_websocket`` server and want to hand some requests
to SocketCluster. ``accept_trio_websocket`` turns a ``WebSocketRequest`` into a
``HandshakeRequest``, runs the upgrade check and accepts or rejects; ``TrioWebsocketTransport``
adapts the accepted ``WebSocketConnection``:

* ``receive`` returns one message per call (trio-websocket's reader task already split
  them): text as ``str``, binary as ``bytes`` (never decoded here).
* ``send``/``send_priority`` queue messages in two deques (priority first), bounded by
  ``max_buffer_bytes`` counted in payload bytes, with the overflow policy of
  ``transport.base`` (drop, close 4100 "Slow consumer", ignore later sends). ``flush`` and
  ``run_writer`` write them one ``send_message`` at a time; one writer at a time.
* the close state is ``_common``'s one field (``_close``), as in ``transport.ws``;
* trio-websocket's exceptions (``ConnectionClosed``, handshake errors, stream errors,
  exception groups without ``Cancelled``) never leave this module: the core only sees
  ``TransportClosed``.

This path is slower than ``transport.ws`` (a task hop, a lock and a write per message, and a
frame built per receiver); it exists for embedding, not for throughput.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
)

from ._common import ClosedBy, OutboundTransport, State, sendable_code, truncate_reason
from .base import HandshakeRequest, OutboundMessage, UpgradeCheck

if TYPE_CHECKING:
    from .frames import Message

__all__ = ["TrioWebsocketTransport", "accept_trio_websocket"]

_log = logging.getLogger(__name__)

_ERRORS: tuple[type[Exception], ...] = (
    ConnectionClosed,
    HandshakeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


_TEXT_PLAIN = (b"Content-Type", b"text/plain; charset=utf-8")


def _reraise_cancelled(group: BaseExceptionGroup[Any]) -> None:
    """Let a group that carries ``Cancelled`` propagate; anything else is swallowed."""
    if group.subgroup(trio.Cancelled) is not None:
        raise group


def _remote_address(request: WebSocketRequest) -> tuple[str, int] | None:
    remote = getattr(request, "remote", None)
    address = getattr(remote, "address", None)
    port = getattr(remote, "port", None)
    if address is None or not isinstance(port, int):
        return None
    return (str(address), port)


def _handshake_request(request: WebSocketRequest) -> HandshakeRequest:
    target: str = request.path
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    # wsproto keeps Host (and the extension/subprotocol offers) out of ``extra_headers``.
    host = getattr(getattr(request, "_event", None), "host", None)
    if isinstance(host, str):
        headers.append(("host", host))
    for k, v in request.headers:
        headers.append((k.decode("latin-1").lower(), v.decode("latin-1")))
    return HandshakeRequest(
        path=path, query=query, headers=tuple(headers), remote_address=_remote_address(request)
    )


async def accept_trio_websocket(
    request: WebSocketRequest,
    *,
    path: str | None = None,
    check: UpgradeCheck | None = None,
    max_buffer_bytes: int = 8 * 2**20,
) -> TrioWebsocketTransport | None:
    """Accept ``request`` as a SocketCluster connection, or reject it and return ``None``.

    ``path`` (when given) must equal the request path before ``?`` (else 400, with a body
    naming ``path``);
    then ``check`` may return a ``Rejection`` (its status, headers and body are sent). An
    exception from ``check`` is logged and answered with 500. Nothing but ``Cancelled`` is
    raised; cancellation leaves the request to trio-websocket (which closes the stream).
    """
    req = _handshake_request(request)
    try:
        if path is not None and req.path != path:
            body = f"Not a SocketCluster endpoint: connect to {path}".encode()
            await request.reject(400, extra_headers=[_TEXT_PLAIN], body=body)
            return None
        if check is not None:
            try:
                rejection = await check(req)
            except Exception:  # the application's check (or a bug of ours)
                _log.exception("upgrade check failed")
                await request.reject(
                    500, extra_headers=[_TEXT_PLAIN], body=b"Server Error: see the server log"
                )
                return None
            if rejection is not None:
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in rejection.headers]
                if not any(k.lower() == b"content-type" for k, _ in headers):
                    headers.append(_TEXT_PLAIN)
                await request.reject(
                    rejection.status, extra_headers=headers, body=rejection.body.encode("utf-8")
                )
                return None
        ws = await request.accept()
    except _ERRORS:
        return None
    except BaseExceptionGroup as group:
        _reraise_cancelled(group)
        return None
    return TrioWebsocketTransport(ws, req, max_buffer_bytes=max_buffer_bytes)


class TrioWebsocketTransport(OutboundTransport):
    """``Transport`` over an accepted ``trio_websocket.WebSocketConnection``."""

    def __init__(
        self,
        ws: WebSocketConnection,
        request: HandshakeRequest,
        *,
        max_buffer_bytes: int = 8 * 2**20,
        close_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(
            request, max_buffer_bytes=max_buffer_bytes, close_timeout_s=close_timeout_s
        )
        self._ws = ws
        self._prio: deque[OutboundMessage] = deque()
        self._queue: deque[OutboundMessage] = deque()
        self._bytes = 0
        self._ws_closed = trio.Event()

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes queued and not yet handed to ``send_message``."""
        return self._bytes

    def write_now(self) -> bool:
        """Whether nothing is queued: trio-websocket writes only in ``send_message``."""
        return not self._queued()

    def _queued(self) -> bool:
        return bool(self._prio or self._queue)

    # ----------------------------------------------------------------- receiving

    async def receive(self) -> list[Message]:
        """The next message (text as ``str``, binary as ``bytes``), as a one-element list.
        Raises ``TransportClosed`` once closed.

        Cancellation leaves the transport usable (trio-websocket's queue keeps the message).
        """
        while True:
            if self._close.state is State.CLOSED:
                raise self._close.exception()
            try:
                message = await self._ws.get_message()
            except ConnectionClosed as exc:
                self._on_ws_closed(exc.reason)
                raise self._close.exception() from None
            except Exception:  # stream errors, trio-websocket internals
                await self._finish()
                raise self._close.exception() from None
            except BaseExceptionGroup as group:
                _reraise_cancelled(group)
                await self._finish()
                raise self._close.exception() from None
            if self._close.state is State.OPEN:
                return [message]

    def _on_ws_closed(self, reason: CloseReason | None) -> None:
        if reason is None:
            self._close = self._close.closed()
        else:
            code = 1005 if reason.code is None else reason.code
            self._close = self._close.closed_with(code, reason.reason or "", ClosedBy.PEER)
        self._prio.clear()
        self._queue.clear()
        self._bytes = 0
        self._ws_closed.set()
        self._wake.set()

    # ----------------------------------------------------------------- sending

    def send(self, message: OutboundMessage) -> None:
        """Queue ``message``; never blocks. Ignored once closing. Overflow: module doc."""
        self._enqueue(self._queue, message)

    def send_priority(self, message: OutboundMessage, *, write: bool = False) -> None:
        """Queue ``message`` ahead of everything queued by ``send``. Same overflow policy
        (``write`` changes nothing here: the writer task writes it)."""
        self._enqueue(self._prio, message)

    def queue(self, message: OutboundMessage, *, priority: bool = False) -> None:
        """``send``/``send_priority`` without waking the writer (see ``Transport.queue``)."""
        self._enqueue(self._prio if priority else self._queue, message, wake=False)

    def write_soon(self) -> None:
        """Wake the writer for what is queued (trio-websocket writes only in its task)."""
        if self._queued() and not self._sending:
            self._wake.set()

    def _enqueue(
        self, queue: deque[OutboundMessage], message: OutboundMessage, *, wake: bool = True
    ) -> None:
        if self._close.state is not State.OPEN:
            return
        n = len(message.payload)
        if self._bytes + n > self._max_buffer_bytes:
            self._overflow()
            return
        queue.append(message)
        self._bytes += n
        if wake and not self._sending:
            self._wake.set()

    def _overflow(self) -> None:
        self._queue.clear()
        self._bytes = sum(len(m.payload) for m in self._prio)
        self._slow_consumer()

    async def flush(self) -> None:
        """Send what is queued (priority first), unless a flush is already running.

        Never raises except ``Cancelled``; a failed write closes the transport (1006).
        """
        if self._sending or self._close.state is State.CLOSED:
            return
        self._sending = True
        ok = False
        try:
            while self._prio or self._queue:
                message = self._prio.popleft() if self._prio else self._queue.popleft()
                self._bytes -= len(message.payload)
                with trio.CancelScope(deadline=self._send_deadline) as scope:
                    self._send_scope = scope
                    await self._ws.send_message(message.text)
                self._send_scope = None
                if scope.cancelled_caught:
                    break
            else:
                ok = True
        except Exception:
            pass
        except BaseExceptionGroup as group:
            _reraise_cancelled(group)
        finally:
            self._sending = False
            self._send_scope = None
            self._idle.unpark_all()
        if self._abort_after_flush or not ok:
            await self._finish()

    # ----------------------------------------------------------------- closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued, then close with ``code``/``reason`` (forbidden codes become
        1000, the reason is cut to 123 bytes); waits at most ``close_timeout_s`` (2 s) for the
        queue and again for the closing handshake. Idempotent. Cancellation closes the stream.
        """
        if self._close.state is State.OPEN:
            code = sendable_code(code)
            reason = truncate_reason(reason)
            self._close = self._close.closing(code, reason, ClosedBy.LOCAL)
            with trio.move_on_after(self._close_timeout_s):
                await self._drain()
        await self._finish()

    async def aclose(self) -> None:
        """Close the stream at once, without a closing handshake. Idempotent."""
        self._close = self._close.closed()
        try:
            await trio.aclose_forcefully(self._ws)
        except Exception:
            pass
        finally:
            self._ws_closed.set()
            self._wake.set()

    async def _finish(self) -> None:
        """Run trio-websocket's closing handshake with our close code, bounded in time."""
        if self._close.state is State.CLOSED:
            await self._ws_closed.wait()
            return
        close = self._close = self._close.closed()
        assert close.code is not None
        code = sendable_code(close.code)
        reason = truncate_reason(close.reason) or None
        self._prio.clear()
        self._queue.clear()
        self._bytes = 0
        self._wake.set()
        try:
            with trio.move_on_after(self._close_timeout_s):
                await self._ws.aclose(code, reason)
        except Exception:
            pass
        except BaseExceptionGroup as group:
            _reraise_cancelled(group)
        finally:
            self._ws_closed.set()
