"""The Trio SocketCluster client, on trio-websocket.

Shape (all structured; nothing outlives the ``async with`` block)::

    connect(url) / connect_stream(open_stream)        the caller's task, its nursery:
      Client._run                                     the reconnect loop
        _session                                      one WebSocket: a session nursery with
          trio-websocket's reader task                  (owned by trio-websocket)
          _Connection.writer                            the one task that writes frames
          _Connection.run                               the protocol scope:
            read loop (in run itself)                   pings, responses, server events
            handshake task, ping watchdog               and one task per #subscribe
            one task per server invoke handled          / per handler call

Every frame leaves through the connection's outbox and its writer task, so a cancelled
``invoke`` or ``transmit`` never cuts a frame in half; pongs and the handshake jump the queue.
The writer lives outside the protocol scope: closing a connection stops the protocol tasks,
lets the writer drain what was queued, then sends the close frame.

Errors reach the application as ``SocketClusterError`` subclasses only: the server's errors
hydrated (``hydrate_error``; a plain-string error becomes ``RemoteError`` whose ``message`` is
the string and whose ``name`` is ``"Error"``), ``TimeoutError`` for a missing acknowledgement,
``BadConnectionError`` when the connection (or the client) closed first. trio's and
trio-websocket's exceptions are mapped once, where they arise (``_CONNECT_ERRORS``,
``_CLOSED_ERRORS``), and never escape. Exception groups never escape either: the client's
own tasks never raise into the caller's nursery; a failure among them (a token store that
raises, a bug) is recorded, cancels the ``async with`` block, and ``connect`` raises that one
exception, unchanged (see ``_one_exception``).

Protocol detection (``protocol="auto"``): a ``''`` ping means protocol 2 at once; a ``#1``
ping is answered ``#2`` only if no ``''`` ping follows within ``PROBE_WAIT_S`` (our server,
and any server following the same recommendation, probes with ``#1`` then ``''``: the client
picks 2; a protocol-1-only server such as socketcluster-server 14 sends ``#1`` alone).
"""

from __future__ import annotations

import enum
import logging
import math
import random as _random
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import trio
import trio_websocket

from ..auth import decode_unverified
from ..errors import (
    BadConnectionError,
    InvalidActionError,
    InvalidArgumentsError,
    InvalidMessageError,
    NoHandlerError,
    RemoteError,
    SocketClusterError,
    TimeoutError,
    UnknownError,
    hydrate_error,
)
from ..protocol.codec import PING_P2, decode, encode, event_bytes, response_bytes
from ..protocol.packets import MISSING, EventPacket, Ping, Pong, ResponsePacket
from ..protocol.rules import sendable_code, truncate_reason
from .backoff import ReconnectPolicy, reconnect_delay_s
from .channel import Channel, ChannelState, KickedOut
from .inbox import Inbox
from .tokens import MemoryTokenStore, TokenStore

__all__ = [
    "AuthStatus",
    "Client",
    "ClientState",
    "CloseInfo",
    "Protocol",
    "StreamFactory",
    "connect",
    "connect_stream",
]

log = logging.getLogger("trio_socketcluster.client")

StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]
Protocol = Literal["auto", 1, 2]
HandlerFn = Callable[[Any], Any]
F = TypeVar("F", bound=HandlerFn)

DEFAULT_PATH = "/socketcluster/"

#: With ``protocol="auto"``, how long a ``#1`` ping waits for a ``''`` ping that would mean the
#: server speaks protocol 2 too, before it is answered with ``#2`` (protocol 1); at most a
#: quarter of the server's ``pingTimeout``.
PROBE_WAIT_S = 1.0

_PONG_P1 = b"#2"  # the answer to a protocol-1 ping; protocol 2 answers "" with ""

#: Opening the stream or upgrading it failed: the attempt ends as a lost connection (1006).
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
)
#: Writing to a WebSocket that is closing or gone: the connection is over.
_CLOSED_ERRORS: tuple[type[BaseException], ...] = (
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


class ClientState(enum.Enum):
    CONNECTING = "connecting"
    """Opening a connection, handshaking, or waiting to reconnect."""
    OPEN = "open"
    """The handshake succeeded; invokes and transmits go out at once."""
    CLOSED = "closed"
    """For good: the server closed with 1000 or >= 4500, ``disconnect()`` was called,
    reconnecting is off, or the ``async with`` block ended."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseInfo:
    """How a connection ended. ``by_client``: the client chose the code (ping timeout 4000,
    handshake failure 4003 or the server's status code, connect timeout 4007,
    ``disconnect()``); otherwise it is the server's close code, or the code of a protocol-1
    ``#disconnect`` packet (then ``reason`` is its data), or 1006 for a lost connection."""

    code: int
    reason: str
    by_client: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthStatus:
    """The server's answer to ``authenticate()`` (or the handshake)."""

    authenticated: bool
    auth_error: SocketClusterError | None = None


def _as_error(value: Any) -> SocketClusterError:
    hydrated = hydrate_error(value)
    return hydrated if isinstance(hydrated, SocketClusterError) else RemoteError(hydrated)


# ----------------------------------------------------------------------------------------------


class _Outbox:
    """Frames waiting for the writer: urgent ones (pongs, handshake, responses) first.

    Normal frames are bounded by ``max_bytes`` of queued text: ``put`` waits for room
    (backpressure on the application); urgent frames are never refused. Closing wakes
    everyone; the writer still gets what was queued.
    """

    def __init__(self, max_bytes: int) -> None:
        self._urgent: deque[str] = deque()
        self._normal: deque[str] = deque()
        self._bytes = 0
        self._max = max_bytes
        self._writer = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self.closed = False

    def put_urgent(self, text: str) -> None:
        if self.closed:
            raise BadConnectionError("The connection is closed")
        self._urgent.append(text)
        self._writer.unpark_all()

    async def put(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        while self._bytes >= self._max and not self.closed:
            await self._space.park()
        if self.closed:
            raise BadConnectionError("The connection is closed")
        self._normal.append(text)
        self._bytes += len(text)
        self._writer.unpark_all()

    async def get(self) -> str | None:
        while True:
            if self._urgent:
                return self._urgent.popleft()
            if self._normal:
                text = self._normal.popleft()
                self._bytes -= len(text)
                self._space.unpark_all()
                return text
            if self.closed:
                return None
            await self._writer.park()

    def close(self) -> None:
        self.closed = True
        self._writer.unpark_all()
        self._space.unpark_all()


class _Pending:
    __slots__ = ("data", "done", "error", "lost")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: Any = None
        self.error: Any = None
        self.lost = False


class _Connection:
    """One WebSocket connection's protocol state (see the module docstring)."""

    def __init__(self, client: Client, ws: Any) -> None:
        self.client = client
        self.ws = ws
        self.outbox = _Outbox(client.max_buffer_bytes)
        self.pending: dict[int, _Pending] = {}
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.open = False
        self.protocol: int | None = (
            None if client.protocol_option == "auto" else int(client.protocol_option)
        )
        self.ping_timeout_s: float | None = None
        self.ping_deadline = math.inf
        self.close_info: CloseInfo | None = None
        self.disconnect_packet: tuple[int, str] | None = None
        self.writer_done = trio.Event()
        self.probe_scope: trio.CancelScope | None = None  # a #1 ping waiting for a '' one

    # ------------------------------------------------------------------ sending

    def send_urgent(self, payload: bytes) -> None:
        """Queue ``payload`` ahead of application data; dropped if the connection is ending."""
        if not self.outbox.closed:
            self.outbox.put_urgent(payload.decode("utf-8"))

    async def send(self, payload: bytes) -> None:
        await self.outbox.put(payload.decode("utf-8"))

    async def invoke(self, event: str, data: Any = MISSING, *, urgent: bool = False) -> _Pending:
        """Send an invoke and wait for its response (no timeout here).

        Raises ``BadConnectionError`` if the connection ends first. Cancellation forgets the
        call (a late response is dropped).
        """
        cid = self.client._next_cid()
        pending = self.pending[cid] = _Pending()
        try:
            payload = event_bytes(event, data, cid)
            if urgent:
                self.send_urgent(payload)
            else:
                await self.send(payload)
            await pending.done.wait()
        finally:
            self.pending.pop(cid, None)
        if pending.lost:
            raise BadConnectionError(f"Event '{event}' was aborted due to a bad connection")
        return pending

    def respond(self, cid: int | None, data: Any = MISSING, error: Any = MISSING) -> None:
        if cid is None or self.outbox.closed:
            return
        try:
            payload = response_bytes(cid, data, error)
        except TypeError:
            payload = response_bytes(
                cid, error=UnknownError("The response has no JSON form").to_wire()
            )
        self.send_urgent(payload)

    async def writer(self) -> None:
        try:
            while (text := await self.outbox.get()) is not None:
                try:
                    await self.ws.send_message(text)
                except _CLOSED_ERRORS:
                    self.outbox.close()
                    return
        finally:
            self.writer_done.set()

    # ------------------------------------------------------------------ lifecycle

    def finish(self, code: int, reason: str, *, by_client: bool) -> None:
        """End this connection with ``code`` (the first call wins). Never blocks."""
        if self.close_info is None:
            if not by_client and self.disconnect_packet is not None:
                code, reason = self.disconnect_packet
            self.close_info = CloseInfo(code=code, reason=reason, by_client=by_client)
        self.scope.cancel()

    async def run(self) -> CloseInfo:
        """Handshake, then serve the connection until it ends; close it gracefully."""
        client = self.client
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._handshake)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            self.open = False
            for pending in self.pending.values():
                pending.lost = True
                pending.done.set()
            self.pending.clear()
            self.outbox.close()
            info = self.close_info
            if info is not None:  # a graceful end: flush, then the close handshake
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + client.close_timeout_s
                    await self.writer_done.wait()
                    code = sendable_code(info.code) if info.by_client else 1000
                    reason = truncate_reason(info.reason)
                    with suppress(*_CLOSED_ERRORS):
                        await self.ws.aclose(code, (reason or None) if info.by_client else None)
        return info if info is not None else CloseInfo(code=1006, reason="", by_client=False)

    async def _handshake(self) -> None:
        client = self.client
        token = await client.token_store.load()
        pending: _Pending | None = None
        with trio.move_on_after(client.ack_timeout_s):
            try:
                pending = await self.invoke("#handshake", {"authToken": token}, urgent=True)
            except BadConnectionError:
                return  # the read loop records how it ended
        if pending is None:
            self.finish(4003, "Failed to complete handshake", by_client=True)
            return
        if pending.error is not None:
            error = _as_error(pending.error)
            code = 4003
            status_code = error.fields.get("statusCode")
            data_code = pending.data.get("code") if isinstance(pending.data, Mapping) else None
            if type(status_code) is int:
                code = status_code
            elif type(data_code) is int:
                code = data_code
            client.handshake_error = error
            self.finish(code, f"{error.name}: {error.message}", by_client=True)
            return
        status = pending.data if isinstance(pending.data, Mapping) else {}
        ping_timeout_ms = status.get("pingTimeout")
        if isinstance(ping_timeout_ms, int | float) and not isinstance(ping_timeout_ms, bool):
            self.ping_timeout_s = ping_timeout_ms / 1000
            self.ping_deadline = trio.current_time() + self.ping_timeout_s
            assert self.nursery is not None
            self.nursery.start_soon(self._watchdog)
        self.open = True
        client._on_open(self, status, token)

    async def _watchdog(self) -> None:
        while True:
            await trio.sleep_until(self.ping_deadline)
            if trio.current_time() >= self.ping_deadline:
                self.finish(4000, "Server ping timed out", by_client=True)
                return

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                code = reason.code if reason is not None else 1006
                text = (reason.reason or "") if reason is not None else ""
                self.finish(code, text, by_client=False)
                return
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
            for packet in decode(message):
                match packet:
                    case ResponsePacket():
                        self._on_response(packet)
                    case EventPacket():
                        await self._on_event(packet)
                    case Ping(protocol=1):
                        self._on_ping(1)
                    case Pong(protocol=2):  # the empty message: a protocol-2 *ping* to us
                        self._on_ping(2)
                    case _:
                        pass

    def _on_ping(self, protocol: int) -> None:
        if self.protocol is None:  # auto, undecided
            if self.ping_timeout_s is not None:
                self.ping_deadline = trio.current_time() + self.ping_timeout_s
            if protocol == 1:
                if self.probe_scope is None and self.nursery is not None:
                    self.probe_scope = trio.CancelScope()
                    self.nursery.start_soon(self._answer_p1_later, self.probe_scope)
                return
            if self.probe_scope is not None:  # '' after #1: the server speaks both
                self.probe_scope.cancel()
            self.protocol = 2
            self.send_urgent(PING_P2)
            self.client._notify()
            return
        if self.protocol != protocol:
            return  # the other protocol's ping is a raw message, as for the JS clients
        if self.ping_timeout_s is not None:
            self.ping_deadline = trio.current_time() + self.ping_timeout_s
        self.send_urgent(_PONG_P1 if protocol == 1 else PING_P2)

    async def _answer_p1_later(self, scope: trio.CancelScope) -> None:
        """Auto: a ``#1`` ping with no ``''`` ping within ``PROBE_WAIT_S``: protocol 1."""
        with scope:
            wait_s = PROBE_WAIT_S
            if self.ping_timeout_s is not None:
                wait_s = min(wait_s, self.ping_timeout_s / 4)
            await trio.sleep(wait_s)
            if self.protocol is None:
                self.protocol = 1
                self.send_urgent(_PONG_P1)
                self.client._notify()

    def _on_response(self, packet: ResponsePacket) -> None:
        pending = self.pending.pop(packet.rid, None)
        if pending is None:
            return
        pending.data = packet.data
        pending.error = packet.error
        pending.done.set()

    async def _on_event(self, packet: EventPacket) -> None:
        client = self.client
        data, cid = packet.data, packet.cid
        match packet.event:
            case "#setAuthToken":
                token = data.get("token") if isinstance(data, Mapping) else None
                if not isinstance(token, str):
                    self.respond(
                        cid,
                        error=InvalidMessageError(
                            "No token data provided by #setAuthToken event"
                        ).to_wire(),
                    )
                    return
                await client.token_store.save(token)
                client._become_authenticated(token)
                self.respond(cid)
            case "#removeAuthToken":
                await client.token_store.remove()
                client._become_unauthenticated()
                self.respond(cid)
            case "#publish":
                if isinstance(data, Mapping) and isinstance(data.get("channel"), str):
                    client._deliver(
                        data["channel"], data.get("data"), data.get("offset"), data.get("epoch")
                    )
            case "#kickOut":
                if isinstance(data, Mapping) and isinstance(data.get("channel"), str):
                    client._kicked(data["channel"], data.get("message"))
            case "#disconnect":  # protocol 1: the close frame that follows carries no reason
                info = data if isinstance(data, Mapping) else {}
                code = info.get("code")
                reason = info.get("data")
                if type(code) is int:
                    text = (
                        ""
                        if reason is None
                        else reason
                        if isinstance(reason, str)
                        else (encode(reason).decode("utf-8"))
                    )
                    self.disconnect_packet = (code, text)
            case event:
                if cid is None:
                    receiver = client._receivers.get(event)
                    if receiver is not None:
                        receiver.put(data)
                    return
                handler = client._handlers.get(event)
                if handler is None:
                    self.respond(
                        cid, error=NoHandlerError(f"No handler for event '{event}'").to_wire()
                    )
                    return
                assert self.nursery is not None
                self.nursery.start_soon(self._run_handler, handler, event, data, cid)

    async def _run_handler(self, handler: HandlerFn, event: str, data: Any, cid: int) -> None:
        try:
            result = handler(data)
            if isinstance(result, Awaitable):
                result = await result
        except SocketClusterError as exc:
            self.respond(cid, error=exc.to_wire())
            return
        except Exception:  # the client application's handler: its fault
            log.exception("client handler for %r raised", event)
            self.respond(cid, error=UnknownError("The handler failed").to_wire())
            return
        self.respond(cid, data=MISSING if result is None else result)


# ----------------------------------------------------------------------------------------------


class Client:
    """A SocketCluster client. Build it with ``connect(url)`` or ``connect_stream(...)``.

    State (read-only): ``state`` (``ClientState``), ``id`` (the socket id of the current
    connection), ``protocol`` (1 or 2 once a ping arrived, else ``None``), ``authenticated``,
    ``signed_auth_token`` (the JWT), ``auth_token`` (its payload, decoded without
    verification), ``auth_error`` (the handshake's ``authError``, hydrated),
    ``handshake_error`` (a rejected handshake's error), ``last_close`` (``CloseInfo``),
    ``connection_count`` (successful handshakes so far), ``channels``.

    Waiting: ``wait_open()``, ``wait_for(predicate)`` (any condition on the client, re-checked
    after every state, connection or auth change).
    """

    def __init__(
        self,
        stream_factory: StreamFactory,
        *,
        host: str,
        resource: str = DEFAULT_PATH,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        auth_token: str | None = None,
        protocol: Protocol = "auto",
        ack_timeout_s: float = 10.0,
        connect_timeout_s: float = 20.0,
        close_timeout_s: float = 5.0,
        auto_reconnect: bool = True,
        reconnect_initial_delay_s: float = 10.0,
        reconnect_randomness_s: float = 10.0,
        reconnect_multiplier: float = 1.5,
        reconnect_max_delay_s: float = 60.0,
        token_store: TokenStore | None = None,
        random: Callable[[], float] = _random.random,
        buffer_size: int = 1000,
        max_message_bytes: int = 16 * 2**20,
        max_buffer_bytes: int = 8 * 2**20,
    ) -> None:
        if protocol not in ("auto", 1, 2):
            raise InvalidArgumentsError("protocol must be 'auto', 1 or 2")
        self._stream_factory = stream_factory
        self.host = host
        self.resource = resource
        self.extra_headers = extra_headers
        self.protocol_option: Protocol = protocol
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self.auto_reconnect = auto_reconnect
        self.reconnect_policy = ReconnectPolicy(
            initial_delay_s=reconnect_initial_delay_s,
            randomness_s=reconnect_randomness_s,
            multiplier=reconnect_multiplier,
            max_delay_s=reconnect_max_delay_s,
        )
        self.token_store: TokenStore = (
            token_store if token_store is not None else (MemoryTokenStore())
        )
        self._initial_token = auth_token
        self._random = random
        self.buffer_size = buffer_size
        self.max_message_bytes = max_message_bytes
        self.max_buffer_bytes = max_buffer_bytes

        self.state = ClientState.CONNECTING
        self.id: str | None = None
        self.signed_auth_token: str | None = None
        self.auth_token: dict[str, Any] | None = None
        self.auth_error: SocketClusterError | None = None
        self.handshake_error: SocketClusterError | None = None
        self.last_close: CloseInfo | None = None
        self.connection_count = 0
        self._cid = 0
        self._attempt = 0
        self._conn: _Connection | None = None
        self._closing = False
        self._changed = trio.lowlevel.ParkingLot()
        self._channels: dict[str, Channel] = {}
        self._receivers: dict[str, Inbox[Any]] = {}
        self._handlers: dict[str, HandlerFn] = {}
        self._wait_scope: trio.CancelScope | None = None
        self._connect_scope: trio.CancelScope | None = None
        self._first_failure: BadConnectionError | None = None
        self._crash: BaseException | None = None

    def __repr__(self) -> str:
        return f"<Client {self.host}{self.resource} {self.state.value} id={self.id}>"

    # ------------------------------------------------------------------ state

    @property
    def authenticated(self) -> bool:
        return self.signed_auth_token is not None

    @property
    def protocol(self) -> int | None:
        conn = self._conn
        return conn.protocol if conn is not None else None

    @property
    def channels(self) -> Mapping[str, Channel]:
        """The live channels (pending or subscribed), by name."""
        return dict(self._channels)

    def _notify(self) -> None:
        self._changed.unpark_all()

    async def wait_for(self, predicate: Callable[[Client], bool]) -> None:
        """Wait until ``predicate(client)`` is true (checked now and after every change).

        Cancellation leaves nothing behind.
        """
        await trio.lowlevel.checkpoint()
        while not predicate(self):
            await self._changed.park()

    async def wait_open(self) -> None:
        """Wait until connected; ``BadConnectionError`` if the client closed for good."""
        await self._open_connection()

    async def _open_connection(self) -> _Connection:
        await trio.lowlevel.checkpoint()
        while True:
            conn = self._conn
            if self.state is ClientState.OPEN and conn is not None and conn.open:
                return conn
            if self.state is ClientState.CLOSED:
                raise BadConnectionError("The client is closed")
            await self._changed.park()

    def _next_cid(self) -> int:
        self._cid += 1
        return self._cid

    # ------------------------------------------------------------------ RPC

    @staticmethod
    def _check_event(event: str) -> None:
        if not isinstance(event, str) or not event or event.startswith("#"):
            raise InvalidActionError(
                f"{event!r} is reserved: use the client's methods for '#' events"
            )

    async def invoke(
        self, event: str, data: Any = MISSING, *, timeout_s: float | None = None
    ) -> Any:
        """Send ``event`` and return the server's answer (``None`` if it sent no data).

        Waits for the connection if it is (re)connecting; ``timeout_s`` (default
        ``ack_timeout_s``) covers the wait and the answer, as the JS clients' ``ackTimeout``.
        Raises the server's error (hydrated), ``TimeoutError``, or ``BadConnectionError`` if
        the connection ends before the answer. Cancellation forgets the call; a frame is never
        cut in half.
        """
        self._check_event(event)
        return await self._invoke(event, data, timeout_s)

    async def _invoke(self, event: str, data: Any, timeout_s: float | None) -> Any:
        pending = await self._invoke_raw(event, data, timeout_s)
        if pending.error is not None:
            raise _as_error(pending.error)
        return pending.data

    async def _invoke_raw(self, event: str, data: Any, timeout_s: float | None) -> _Pending:
        timeout = self.ack_timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(timeout):
            conn = await self._open_connection()
            return await conn.invoke(event, data)
        raise TimeoutError(f"Event response for '{event}' timed out")

    async def transmit(self, event: str, data: Any = MISSING) -> None:
        """Send ``event`` without expecting an answer.

        Waits (up to ``ack_timeout_s``) for the connection if it is (re)connecting, and for
        room in the outbound buffer; then the frame is queued: it is lost if the connection
        drops before it is written. Raises ``BadConnectionError`` if not connected in time.
        """
        self._check_event(event)
        await self._transmit(event, data)

    async def _transmit(self, event: str, data: Any) -> None:
        conn: _Connection | None = None
        with trio.move_on_after(self.ack_timeout_s):
            conn = await self._open_connection()
        if conn is None:
            raise BadConnectionError(f"Event '{event}' could not be sent: not connected")
        await conn.send(event_bytes(event, data))

    def handler(self, event: str) -> Callable[[F], F]:
        """Decorator: answer the server's invokes of ``event`` with ``fn(data)``.

        ``fn`` may be sync or async; it runs in its own task. Its return value is the answer's
        data (``None``: no data); a ``SocketClusterError`` it raises is sent as the error;
        any other exception is logged and answered with ``UnknownError``. Invokes without a
        handler are answered at once with ``NoHandlerError``.
        """

        def register(fn: F) -> F:
            self.add_handler(event, fn)
            return fn

        return register

    def add_handler(self, event: str, fn: HandlerFn) -> None:
        self._check_event(event)
        self._handlers[event] = fn

    def remove_handler(self, event: str) -> None:
        self._handlers.pop(event, None)

    def receiver(self, event: str) -> Inbox[Any]:
        """The server's transmits of ``event``, in order: ``async for data in receiver``.

        One receiver per name (created on first use, kept across reconnects; it ends when the
        client closes). Transmits of events with no receiver are dropped. Bounded at
        ``buffer_size``: when full, the oldest waiting message is dropped (``dropped`` counts).
        """
        self._check_event(event)
        receiver = self._receivers.get(event)
        if receiver is None:
            receiver = self._receivers[event] = Inbox(self.buffer_size)
            if self.state is ClientState.CLOSED:
                receiver.close()
        return receiver

    # ------------------------------------------------------------------ pub/sub

    async def subscribe(
        self,
        channel: str,
        *,
        wait_for_auth: bool = False,
        data: Any = None,
        wait: bool = True,
    ) -> Channel:
        """Subscribe to ``channel`` and return its ``Channel`` (the existing one if live).

        With ``wait`` (default) this returns once the server confirmed, and raises its
        refusal; a ``wait_for_auth`` channel is only requested while authenticated, so
        waiting on one lasts until the client is authenticated: pass ``wait=False`` to get
        the pending channel at once. Subscribe requests have no timeout (as the JS clients).
        Cancellation leaves the channel subscribing.
        """
        if not isinstance(channel, str) or not channel:
            raise InvalidArgumentsError("channel must be a non-empty string")
        if self.state is ClientState.CLOSED:
            raise BadConnectionError("The client is closed")
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = Channel(
                self, channel, wait_for_auth=wait_for_auth, data=data, capacity=self.buffer_size
            )
            self._request_pending()
        if wait:
            await ch.wait_subscribed()
        else:
            await trio.lowlevel.checkpoint()
        return ch

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe from ``channel`` (no error if not subscribed)."""
        ch = self._channels.get(channel)
        if ch is None:
            await trio.lowlevel.checkpoint()
            return
        await self._unsubscribe(ch)

    async def _unsubscribe(self, ch: Channel) -> None:
        if self._channels.get(ch.name) is not ch:
            await trio.lowlevel.checkpoint()
            return
        was_requested = ch.state is ChannelState.SUBSCRIBED or ch._requesting is not None
        del self._channels[ch.name]
        ch._set_state(ChannelState.UNSUBSCRIBED)
        conn = self._conn
        if was_requested and conn is not None and conn.open:
            # (if the connection is gone, the server forgot the subscription with it)
            with suppress(BadConnectionError):
                await conn.send(event_bytes("#unsubscribe", ch.name))
        else:
            await trio.lowlevel.checkpoint()

    async def publish(
        self, channel: str, data: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """Publish ``data`` on ``channel`` and wait for the server's acknowledgement; return
        its data (on a channel with history, ``{"offset": N, "epoch": E}``: it is stored).

        As ``invoke``: waits for the connection if it is (re)connecting, and ``timeout_s``
        (default ``ack_timeout_s``) covers the wait and the acknowledgement. Raises what
        ``invoke`` raises (a middleware's refusal, ``TimeoutError``, ``BadConnectionError``).
        A publish that timed out may still have been delivered. Cancellation forgets it.
        """
        return await self._invoke("#publish", {"channel": channel, "data": data}, timeout_s)

    async def transmit_publish(self, channel: str, data: Any = None) -> None:
        """Publish without acknowledgement (failures are not reported), as ``transmit``."""
        await self._transmit("#publish", {"channel": channel, "data": data})

    def _request_pending(self) -> None:
        """Send ``#subscribe`` for every pending channel that may go now."""
        conn = self._conn
        if self.state is not ClientState.OPEN or conn is None or not conn.open:
            return
        nursery = conn.nursery
        if nursery is None:
            return
        for ch in list(self._channels.values()):
            if (
                ch.state is ChannelState.PENDING
                and ch._requesting is None
                and (self.authenticated or not ch.wait_for_auth)
            ):
                ch._requesting = conn
                nursery.start_soon(self._subscribe_on, conn, ch)

    async def _subscribe_on(self, conn: _Connection, ch: Channel) -> None:
        packet: dict[str, Any] = {"channel": ch.name}
        if ch.wait_for_auth:
            packet["waitForAuth"] = True
        data = ch._subscribe_data()
        if data is not None:
            packet["data"] = data
        try:
            pending = await conn.invoke("#subscribe", packet)
        except BadConnectionError:
            return  # stays pending; requested again after the next handshake
        finally:
            if ch._requesting is conn:
                ch._requesting = None
        if self._channels.get(ch.name) is not ch:
            return  # unsubscribed meanwhile
        if pending.error is None:
            ch.error = None
            ch._subscribed(pending.data)
            ch._set_state(ChannelState.SUBSCRIBED)
            return
        ch.error = _as_error(pending.error)
        if ch.wait_for_auth and not self.authenticated:
            ch._changed.unpark_all()  # stays pending: retried once authenticated
            return
        del self._channels[ch.name]
        ch._set_state(ChannelState.UNSUBSCRIBED)

    def _deliver(self, channel: str, data: Any, offset: Any = None, epoch: Any = None) -> None:
        ch = self._channels.get(channel)
        if ch is not None:
            ch._deliver(data, offset, epoch)

    def _kicked(self, channel: str, message: Any) -> None:
        ch = self._channels.pop(channel, None)
        if ch is not None:
            ch.kicked_out = KickedOut(channel=channel, message=message)
            ch._set_state(ChannelState.UNSUBSCRIBED)

    # ------------------------------------------------------------------ auth

    async def authenticate(self, signed_token: str) -> AuthStatus:
        """Authenticate this connection with ``signed_token`` (``#authenticate``).

        On the server's answer the token is saved in the token store and the client becomes
        authenticated (or not, with ``auth_error`` set, for a valid but refused token). If
        the server rejects the token the client becomes unauthenticated and the error is
        raised (the server also sends ``#removeAuthToken``, which clears the store). Also
        raises ``TimeoutError`` / ``BadConnectionError`` as ``invoke``.
        """
        pending = await self._invoke_raw("#authenticate", signed_token, None)
        if pending.error is not None:
            self._become_unauthenticated()
            raise _as_error(pending.error)
        status = pending.data if isinstance(pending.data, Mapping) else {}
        raw_error = status.get("authError")
        auth_error = _as_error(raw_error) if raw_error is not None else None
        await self.token_store.save(signed_token)
        if status.get("isAuthenticated") is True:
            self._become_authenticated(signed_token)
            return AuthStatus(authenticated=True)
        self._become_unauthenticated()
        return AuthStatus(authenticated=False, auth_error=auth_error)

    async def deauthenticate(self) -> None:
        """Log out: remove the stored token, tell the server (``#removeAuthToken``) if
        connected, and become unauthenticated. Subscribed channels stay subscribed."""
        await self.token_store.remove()
        conn = self._conn
        if conn is not None and conn.open:
            with suppress(BadConnectionError):
                await conn.send(event_bytes("#removeAuthToken"))
        self._become_unauthenticated()

    def _become_authenticated(self, signed: str) -> None:
        was = self.authenticated
        self.signed_auth_token = signed
        self.auth_token = decode_unverified(signed)
        if not was:
            self._request_pending()  # wait_for_auth channels go now
        self._notify()

    def _become_unauthenticated(self) -> None:
        self.signed_auth_token = None
        self.auth_token = None
        self._notify()

    # ------------------------------------------------------------------ lifecycle

    def _on_open(self, conn: _Connection, status: Mapping[str, Any], token: str | None) -> None:
        socket_id = status.get("id")
        self.id = socket_id if isinstance(socket_id, str) else None
        raw_error = status.get("authError")
        self.auth_error = _as_error(raw_error) if raw_error is not None else None
        self.handshake_error = None
        self._attempt = 0
        self.connection_count += 1
        self.state = ClientState.OPEN
        if status.get("isAuthenticated") is True and token is not None:
            self._become_authenticated(token)
        else:
            self._become_unauthenticated()  # in memory only: the store keeps the token
        self._request_pending()
        self._notify()

    def _on_connection_lost(self) -> None:
        self._conn = None
        self.id = None
        for ch in self._channels.values():
            ch._requesting = None
            if ch.state is ChannelState.SUBSCRIBED:
                ch._set_state(ChannelState.PENDING)
        if self.state is ClientState.OPEN:
            self.state = ClientState.CONNECTING
        self._notify()

    async def _session(self) -> CloseInfo:
        """One connection attempt, from opening the stream to its closing."""
        stream: trio.abc.Stream | None = None
        info: CloseInfo | None = None
        try:
            async with trio.open_nursery() as nursery:
                ws: Any = None
                with trio.move_on_after(self.connect_timeout_s) as self._connect_scope:
                    try:
                        stream = await self._stream_factory()
                        ws = await trio_websocket.wrap_client_stream(
                            nursery,
                            cast("Any", stream),
                            self.host,
                            self.resource,
                            extra_headers=self.extra_headers,
                            max_message_size=self.max_message_bytes,
                        )
                    except _CONNECT_ERRORS as exc:
                        info = CloseInfo(
                            code=1006, reason=f"Socket hung up: {exc!r}", by_client=False
                        )
                self._connect_scope = None
                if ws is None:
                    info = info or CloseInfo(
                        code=4007, reason="Client connection establishment timed out",
                        by_client=True,
                    )  # fmt: skip
                else:
                    conn = self._conn = _Connection(self, ws)
                    if self._closing:  # disconnect() came while the WebSocket opened
                        conn.finish(1000, "", by_client=True)
                    nursery.start_soon(conn.writer)
                    try:
                        info = await conn.run()
                    finally:
                        self._on_connection_lost()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # trio-websocket raises a rejected upgrade (HTTP 4xx) in its reader task.
            rejected, rest = group.split(trio_websocket.HandshakeError)
            if rest is not None:
                raise
            assert rejected is not None
            info = CloseInfo(
                code=1006, reason=f"Socket hung up: {rejected.exceptions[0]!r}", by_client=False
            )
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)
        assert info is not None
        return info

    async def _run(self) -> None:
        """Connect, and reconnect by the JS clients' rules (``backoff``), until closed for good."""
        try:
            if self._initial_token is not None:
                await self.token_store.save(self._initial_token)
            while not self._closing:
                self.state = ClientState.CONNECTING
                self._notify()
                info = await self._session()
                self.last_close = info
                self._notify()
                if self._closing or not self.auto_reconnect:
                    return
                if self.connection_count == 0 and not self._retry_first:
                    return
                delay = reconnect_delay_s(
                    info.code, self._attempt, self.reconnect_policy, self._random()
                )
                if delay is None:
                    return
                self._attempt += 1
                with trio.CancelScope() as self._wait_scope:
                    await trio.sleep(delay)
                self._wait_scope = None
        finally:
            if self.connection_count == 0:
                info_ = self.last_close
                self._first_failure = BadConnectionError(
                    f"Could not connect: {info_.reason or info_.code}"
                    if info_
                    else "Not connected",
                    code=info_.code if info_ else None,
                    reason=info_.reason if info_ else None,
                )
            self.state = ClientState.CLOSED
            self.id = None
            for ch in list(self._channels.values()):
                ch._set_state(ChannelState.UNSUBSCRIBED)
            self._channels.clear()
            for receiver in self._receivers.values():
                receiver.close()
            self._notify()

    _retry_first = False

    async def _run_guarded(self, block: trio.CancelScope) -> None:
        """``_run``, raising nothing into the caller's nursery but cancellation.

        A failure of the client's tasks (the token store raised, a bug) ends the client: it
        is kept in ``_crash`` and the ``async with`` block (``block``) is cancelled, so that
        ``connect`` can raise it alone. ``BaseException``s that are not errors
        (``KeyboardInterrupt``, ``SystemExit``) go through unchanged.
        """
        try:
            await self._run()
        except BaseException as exc:
            leaves = _leaves(exc)
            fatal = [e for e in leaves if not isinstance(e, Exception | trio.Cancelled)]
            failures = [e for e in leaves if isinstance(e, Exception)]
            if not fatal and not failures:
                raise  # cancelled from outside
            if fatal:
                self._crash = fatal[0]
            else:
                self._crash = failures[0]
                log.debug("the client failed", exc_info=self._crash)
            block.cancel()

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason`` and stop reconnecting.

        Returns once the client is ``CLOSED`` (after a close handshake of at most
        ``close_timeout_s``). Pending invokes fail with ``BadConnectionError``; channels end.
        """
        self._closing = True
        conn = self._conn
        if conn is not None:
            conn.finish(code, reason, by_client=True)
        for scope in (self._wait_scope, self._connect_scope):
            if scope is not None:
                scope.cancel()
        await self.wait_for(lambda c: c.state is ClientState.CLOSED)

    async def aclose(self) -> None:
        """``disconnect(1000)``."""
        await self.disconnect()


def collapse_exception_group(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The one error of a nested group (ignoring cancellations if there is one other error),
    else ``None``: what ``connect`` raises instead of a group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1:
        return leaves[0]
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else None


@asynccontextmanager
async def connect_stream(
    stream_factory: StreamFactory,
    *,
    host: str = "localhost",
    resource: str = DEFAULT_PATH,
    retry_first: bool = False,
    **options: Any,
) -> AsyncIterator[Client]:
    """A client over streams that ``stream_factory()`` opens (one per connection attempt).

    ``host`` goes in the ``Host`` header, ``resource`` is the request target (path and
    query). ``options`` are ``Client``'s keyword arguments. The block is entered once the
    first handshake succeeded; if the first attempt fails, ``BadConnectionError`` (with
    ``code`` and ``reason`` fields) is raised, unless ``retry_first`` makes the client retry
    by the reconnect rules (then the block waits for the first success). Leaving the block
    closes the connection with 1000 (a close handshake of at most ``close_timeout_s``) and
    stops every task the client started; when the block is left by cancellation, the stream
    is closed without a close handshake. Exceptions from the block propagate unchanged (not
    wrapped in an exception group).
    """
    client = Client(stream_factory, host=host, resource=resource, **options)
    client._retry_first = retry_first
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run_guarded, nursery.cancel_scope)
            await client.wait_for(
                lambda c: c.state is not ClientState.CONNECTING or c.connection_count > 0
            )
            if client._first_failure is not None:
                raise client._first_failure
            if client.state is ClientState.CLOSED:
                raise BadConnectionError("The client closed before connecting")
            try:
                yield client
            finally:
                if trio.current_effective_deadline() != -math.inf:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + client.close_timeout_s + 1
                        await client.disconnect()
                # else we are being cancelled: so is trio-websocket's reader, so no close
                # handshake is possible; the stream is closed (the server sees a 1006).
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        error = _one_exception(exc, client._crash)
        if error is exc:
            raise
    else:
        error = client._crash
    if error is not None:
        try:
            raise error  # outside the except clause: no group as its context
        finally:
            error = None


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc`` that are not groups, depth first."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _only_cancelled(exc: BaseException) -> bool:
    return all(isinstance(leaf, trio.Cancelled) for leaf in _leaves(exc))


def _one_exception(exc: BaseException, crash: BaseException | None) -> BaseException:
    """The one exception ``connect`` raises for ``exc``, what left its nursery.

    ``exc`` is that nursery's group (or, rarely, a bare exception). Its direct members are
    the block's exception (kept whole: a group the application raised stays a group) and
    cancellations. In order: a ``crash`` of the client's tasks (the block's exception is
    then its consequence: ``Cancelled`` or ``BadConnectionError``); else the one member that
    is not a cancellation; else the first cancellation (trio's cancel scopes take a bare
    ``Cancelled`` as well as a group). Anything else, impossible by construction, is
    returned unchanged.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return (
            crash
            if crash is not None and isinstance(exc, trio.Cancelled | SocketClusterError)
            else exc
        )
    if crash is not None:
        return crash
    members = [e for e in exc.exceptions if not _only_cancelled(e)]
    if len(members) == 1:
        return members[0]
    if not members:
        return _leaves(exc)[0]
    return exc


def _split_url(url: str) -> tuple[str, int, str, bool]:
    try:
        parts = urllib.parse.urlsplit(url)
        port_given = parts.port
    except (TypeError, ValueError) as exc:  # a bad IPv6 literal or port, a non-string
        raise InvalidArgumentsError(f"bad URL {url!r}: {exc}") from exc
    if parts.scheme not in ("ws", "wss"):
        raise InvalidArgumentsError('the URL scheme must be "ws" or "wss"')
    if parts.hostname is None:
        raise InvalidArgumentsError("the URL has no host")
    secure = parts.scheme == "wss"
    port = port_given or (443 if secure else 80)
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path, secure


@asynccontextmanager
async def connect(
    url: str,
    *,
    ssl_context: Any = None,
    retry_first: bool = False,
    **options: Any,
) -> AsyncIterator[Client]:
    """``async with connect("ws://host:port/socketcluster/") as client:``.

    A URL without a path connects to ``/socketcluster/``. ``wss`` URLs use ``ssl_context``
    (default: ``ssl.create_default_context()``). Options and behaviour as ``connect_stream``;
    see ``Client`` for the keyword arguments.
    """
    hostname, port, resource, secure = _split_url(url)
    host_header = hostname if port in (80, 443) else f"{hostname}:{port}"

    async def open_stream() -> trio.abc.Stream:
        if secure:
            import ssl

            context = ssl_context if ssl_context is not None else ssl.create_default_context()
            return await trio.open_ssl_over_tcp_stream(
                hostname, port, ssl_context=context, https_compatible=True
            )
        return await trio.open_tcp_stream(hostname, port)

    async with connect_stream(
        open_stream, host=host_header, resource=resource, retry_first=retry_first, **options
    ) as client:
        yield client
