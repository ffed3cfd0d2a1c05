"""One client connection: its nursery, its tasks, and the application's ``ServerSocket`` handle.

Each connection runs ``ServerSocket.run()`` in the server's handler nursery. It opens a nursery
of its own holding

* the **dispatch** task (the body of ``run`` itself): reads what one network read brought
  (text, or bytes from binary frames), lets the sans-IO ``Machine`` say what each packet means
  (``protocol/events.py``: one event per action, already validated), acts on each event (a
  ``match`` on its type: middleware, handler, broker, reply), then flushes the replies with one
  write;
* the transport's **writer** task, started the first time a write does not go out at once
  (``start_writer_in``): the dispatch task writes its own replies after each read, the
  server's heartbeat writes pings, and a publish is written by the writer, so a connection
  whose socket always takes what it is given never has one;
* the **handshake** task: closes with 4005 if no ``#handshake`` arrives in time, and ends
  when it arrives;
* the **token-expiry watcher**, started when the handshake is accepted (before it there is
  no token to watch): sleeps until the auth token's ``exp`` (on trio's clock) and then
  deauthenticates the socket, sending ``#removeAuthToken`` at once; with ``renew_before_s``
  it first asks the application's renewal hook for a fresh token (in a task of its own). A
  token change wakes it. The **heartbeat** (ping every ``ping_interval_s``, close with 4001
  when the client is silent for ``ping_timeout_s``) is the server's task
  (``heartbeat.py``, through ``_beat``); where none runs (``handle_stream`` without
  ``start_broker``) the watcher does it too, in the same sleep (one cancel scope until the
  earliest deadline);
* one task per running **async handler** (at most ``max_concurrent_handlers``; then reading
  pauses), and one per **async middleware chain** on a delivery (publish-out). Plain-function
  handlers and middleware run inline in the dispatch task.

How the connection ends is one ``CloseIntent`` (``_close``), set once: the first of the
application's ``disconnect()``, a protocol violation, a timeout, the peer's close, server
shutdown (1001) or a failure inside the connection (1011) wins. Then the nursery is cancelled,
so no task outlives it; under a shielded deadline the queued replies go out, then (when the
intent says so) ``#disconnect`` for protocol-1 clients, then the close frame; the socket's
subscriptions are removed from the broker and pending server-side invokes fail with
``BadConnectionError``. Every close we send carries a reason.

The socket sees its server only through ``SocketHost`` (defined here; ``Server`` implements
it), so this module never imports ``server.py``.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .. import errors
from ..auth import AuthEngine, expiry_of
from ..brokers.local import publication_bytes
from ..errors import dehydrate_error
from ..history import Catchup, Publication, RecoverRequest, Recovery, parse_recover
from ..middleware import (
    UNCHANGED,
    Allowed,
    AuthenticateRequest,
    Blocked,
    EmitRequest,
    HandshakeSCRequest,
    Hook,
    MiddlewareRegistry,
    Pending,
    PublishInRequest,
    Request,
    SubscribeRequest,
    publish_out_request,
    start_chain,
    start_chain_unless_allowed,
)
from ..protocol import (
    MISSING,
    Authenticate,
    Cid,
    ClientDisconnect,
    Close,
    CloseIntent,
    Emit,
    Fault,
    Handshake,
    Initiator,
    Invalid,
    Machine,
    Pong,
    Publish,
    RemoveAuthToken,
    Response,
    State,
    Subscribe,
    Unsubscribe,
)
from ..protocol.codec import (
    REMOVE_AUTH_TOKEN,
    disconnect_bytes,
    encode,
    event_bytes,
    kick_out_bytes,
    publish_bytes,
    response_bytes,
    set_auth_token_bytes,
)
from ..protocol.rules import close_reason
from ..transport.base import (
    SLOW_CONSUMER_CLOSE_CODE,
    HandshakeRequest,
    OutboundMessage,
    Transport,
    TransportClosed,
)

if TYPE_CHECKING:
    from ..brokers.base import Broker, DistributedBroker, HistoryBroker, Subscriber
    from ..config import ServerConfig
    from ..identity import VerifiedToken
    from ..metrics import Metrics
    from ..revocation import Revocation
    from .heartbeat import Entry, Heartbeat

__all__ = ["HandlerEntry", "RenewalHook", "Reply", "ServerSocket", "SocketHost"]

log = logging.getLogger("trio_socketcluster")

#: Event names a server must never send (client-local events of v14 clients, see spec §7).
RESERVED_OUTBOUND = frozenset(
    {
        "connect", "connectAbort", "connecting", "close", "disconnect", "message", "error",
        "raw", "kickOut", "subscribe", "unsubscribe", "subscribeStateChange", "subscribeFail",
        "subscribeRequest", "authStateChange", "authenticate", "deauthenticate",
        "removeAuthToken", "_connect", "_disconnect", "_connectAbort", "_close",
        "authTokenSigned", "badAuthToken",
    }
)  # fmt: skip

#: A registered handler and whether it is ``async`` (it then runs in a task of its own).
HandlerEntry = tuple[Callable[..., Any], bool]
#: ``hook(socket, auth_token)``: a fresh token payload (or an awaitable of one), or ``None``.
RenewalHook = Callable[["ServerSocket", dict[str, Any]], Any]


class SocketHost(Protocol):
    """The server as its sockets see it (``Server`` implements it). Defined here, by its
    user, so that this module never imports ``server.py``."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def auth(self) -> AuthEngine: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def distributed_broker(self) -> DistributedBroker | None:
        """The broker again when it is distributed (subscribe waits for it), else ``None``."""
        ...

    @property
    def heartbeat(self) -> Heartbeat:
        """Pings the handshaken sockets while it runs (``heartbeat.py``)."""
        ...

    @property
    def history_broker(self) -> HistoryBroker | None:
        """The broker again when it keeps channel history, else ``None``."""
        ...

    @property
    def middleware(self) -> MiddlewareRegistry: ...

    @property
    def renewal_hook(self) -> RenewalHook | None: ...

    @property
    def metrics(self) -> Metrics:
        """The server's counters (incremented in place)."""
        ...

    def now(self) -> float:
        """Wall-clock seconds for JWT claims (advancing with trio's clock)."""
        ...

    def handler_for(self, event: str) -> HandlerEntry | None:
        """The handler registered for custom event ``event``."""
        ...

    def emit_listener_event(self, event: str, *args: Any) -> None:
        """Call the application's listeners for a socket lifecycle event."""
        ...

    def register_socket(self, socket: ServerSocket) -> None:
        """The socket completed its handshake: list it in ``server.sockets``."""
        ...

    def forget_socket(self, socket: ServerSocket) -> bool:
        """The socket closed: unlist it; whether it was listed."""
        ...

    def warn_client(self, fault: Fault, message: str, *args: Any) -> None:
        """Log a warning a client caused, rate-limited per ``fault`` (no traceback)."""
        ...

    def sign_token(
        self, payload: Mapping[str, Any], *, expires_in_s: float | None
    ) -> tuple[str, dict[str, Any]]:
        """Sign a new token (fresh ``jti`` and ``iat_us``): the token and its claims."""
        ...

    async def verify_token(self, token: object) -> VerifiedToken:
        """Verify a presented token (own key, identity providers, revocation)."""
        ...

    async def check_revoked(self, claims: Mapping[str, Any]) -> Revocation | None:
        """Why the revocation store refuses these verified claims now, or ``None``."""
        ...

    def token_changed(
        self, socket: ServerSocket, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        """The socket's auth token changed (the server indexes sockets by user and jti)."""
        ...


_REMOVE_AUTH_TOKEN = OutboundMessage(REMOVE_AUTH_TOKEN)
_NO_JSON_FORM = errors.UnknownError("The server's response has no JSON form")
#: The close reason of a handshake that HANDSHAKE_SC middleware blocked, whatever its code.
HANDSHAKE_REJECTED_REASON = "Server rejected handshake from client"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler may return to send an error, or an error *and* data (as S14 allows).

    ``Reply(error="Login failed")`` puts the plain string on the wire, as the seed's
    ``respond('Login failed')`` does.
    """

    data: Any = MISSING
    error: Any = MISSING


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False


def _block_error(error: Any) -> Any:
    """A middleware's plain-string error, as the client sees ``next(new Error(text))``."""
    return {"message": error} if isinstance(error, str) else error


def _logged(outcome: Allowed | Blocked, metrics: Metrics) -> Allowed | Blocked:
    """Count a block (``middleware_blocks_total{hook}``); log a middleware that raised."""
    if isinstance(outcome, Blocked):
        metrics.count(metrics.middleware_blocks, outcome.hook.value)
        if outcome.exception is not None:
            # The application's middleware raised: its fault, logged with the traceback.
            log.warning(
                "%s middleware raised; the action was blocked", outcome.hook.value,
                exc_info=outcome.exception,
            )  # fmt: skip
    return outcome


async def _ready(rec: Recovery) -> Recovery:
    return rec


def _after(catchup: Catchup) -> RecoverRequest:
    """The request that reads what a catch-up has not delivered yet."""
    return RecoverRequest(catchup.last, catchup.epoch)


#: The ``type`` label of ``messages_received_total`` per event class (``None``: an ``Emit``,
#: ``invoke`` or ``transmit`` by its cid). Close frames, pings and raw messages are not
#: counted.
_MESSAGE_TYPE: dict[type, str | None] = {
    Emit: None, Publish: "publish", Pong: "pong", Response: "response",
    Subscribe: "subscribe", Unsubscribe: "unsubscribe", Invalid: "invalid",
    Handshake: "handshake", Authenticate: "authenticate", RemoveAuthToken: "removeAuthToken",
    ClientDisconnect: "disconnect",
}  # fmt: skip


class _Pending:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: Any = None
        self.error: Any = None


class ServerSocket:
    """The application's handle on one client connection.

    Read: ``id``, ``state`` (``"connecting"``, ``"open"``, ``"closed"``), ``protocol`` (1, 2 or
    ``None`` while undetected), ``request`` (the HTTP upgrade request), ``auth_token`` (the
    verified payload or ``None``), ``signed_auth_token``, ``authenticated``, ``channels``,
    ``close_code``/``close_reason`` (``None`` until the connection is ending).
    Act: ``transmit``, ``invoke``, ``set_auth_token``, ``deauthenticate``, ``kick_out``,
    ``disconnect``.
    """

    __slots__ = (
        "__dict__",  # the application may attach its own attributes to a socket
        "_beat_entry",
        "_catchups",
        "_channels",
        "_close",
        "_close_by",
        "_closing_scope",
        "_handler_slots",
        "_handshake_event",
        "_held_events",
        "_history",
        "_last_pong",
        "_machine",
        "_next_cid",
        "_next_ping",
        "_nursery",
        "_pending",
        "_reading",
        "_token_changed",
        "_transport",
        "_watch_scope",
        "_write_scope",
        "auth_issuer",
        "auth_token",
        "client_disconnect_data",
        "handshake_data",
        "id",
        "server",
        "signed_auth_token",
    )

    def __init__(self, server: SocketHost, transport: Transport, socket_id: str) -> None:
        self.server = server
        self.id = socket_id
        self._transport = transport
        cfg = server.config
        self._machine = Machine(None if cfg.protocol == "auto" else int(cfg.protocol))
        self.auth_token: dict[str, Any] | None = None
        self.signed_auth_token: str | None = None
        #: Who vouched for ``auth_token``: an identity provider's issuer, or ``None`` (the
        #: server's own key, or not authenticated).
        self.auth_issuer: str | None = None
        self.handshake_data: Any = None
        self.client_disconnect_data: Any = None
        self._channels: dict[str, None] = {}
        self._history = server.history_broker
        # Channels whose history is being read: live publications wait in their Catchup.
        self._catchups: dict[str, Catchup] = {}
        self._pending: dict[Cid, _Pending] = {}
        self._next_cid = 1
        # Set when ``#handshake`` arrives, then (a fresh one, if the handshake task is already
        # waiting) when it is accepted; ``None`` from then on.
        self._handshake_event: trio.Event | None = trio.Event()
        self._token_changed = False  # since the expiry watcher last looked at the token
        self._watch_scope: trio.CancelScope | None = None  # the watcher's sleep
        self._last_pong = 0.0
        # The server's heartbeat pings this socket (its entry there; None: the watcher does).
        self._beat_entry: Entry | None = None
        self._next_ping = math.inf
        self._close: CloseIntent | None = None  # how the connection ends: set once
        self._close_by = math.inf  # the server's drain deadline, once draining
        self._closing_scope: trio.CancelScope | None = None  # the shielded close, once running
        self._write_scope: trio.CancelScope | None = None  # the dispatch task's own write
        # The dispatch task while it dispatches a read: what it queues, it writes after.
        self._reading: trio.lowlevel.Task | None = None
        self._nursery: trio.Nursery | None = None
        self._handler_slots: trio.Semaphore | None = None  # created by the first async handler
        self._held_events: list[tuple[Any, ...]] | None = None

    # ------------------------------------------------------------------ read-only views

    @property
    def request(self) -> HandshakeRequest:
        return self._transport.request

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self._transport.request.remote_address

    @property
    def state(self) -> str:
        return self._machine.state.value

    @property
    def protocol(self) -> int | None:
        return self._machine.protocol

    @property
    def authenticated(self) -> bool:
        return self.auth_token is not None

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is ending (ours, or the peer's)."""
        return None if self._close is None else self._close.code

    @property
    def close_reason(self) -> str | None:
        return None if self._close is None else self._close.reason

    def __repr__(self) -> str:
        return f"<ServerSocket {self.id} {self.state}>"

    # ------------------------------------------------------------------ sending

    def _in_read(self) -> bool:
        """Is this the dispatch task, dispatching a read? (It writes what it queues after.)"""
        return self._reading is not None and self._reading is trio.lowlevel.current_task()

    def _send(self, payload: bytes) -> None:
        if self._in_read():
            self._transport.queue(OutboundMessage(payload))
        else:
            self._transport.send(OutboundMessage(payload))

    def _send_priority(self, payload: bytes) -> None:
        if self._in_read():
            self._transport.queue(OutboundMessage(payload), priority=True)
        else:
            self._transport.send_priority(OutboundMessage(payload))

    def _respond(self, cid: Cid | None, data: Any = MISSING, error: Any = MISSING) -> None:
        if cid is None:
            return
        if isinstance(data, Reply):
            data, error = data.data, data.error
        if error is not MISSING:
            error = dehydrate_error(error)
        try:
            payload = response_bytes(cid, data, error)
        except TypeError:
            log.warning("socket %s: the response to cid %s has no JSON form", self.id, cid)
            payload = response_bytes(cid, error=_NO_JSON_FORM.to_wire())
        self._send(payload)

    def transmit(self, event: str, data: Any = MISSING) -> None:
        """Send ``event`` to the client without expecting an answer. Never blocks.

        Raises ``InvalidActionError`` for names the clients reserve (``connect``, ``#...``).
        """
        self.check_outbound_event(event)
        self._send(event_bytes(event, data))

    async def invoke(
        self, event: str, data: Any = MISSING, *, timeout_s: float | None = None
    ) -> Any:
        """Send ``event`` to the client and wait for its answer (``ack_timeout_s`` by default).

        Raises the client's error (hydrated), ``TimeoutError`` when no answer arrives in time,
        ``BadConnectionError`` when the socket closes first. Cancellation forgets the call: a
        late answer is dropped.
        """
        self.check_outbound_event(event)
        if self._close is not None or self._machine.state is State.CLOSED:
            raise errors.BadConnectionError(f"Event '{event}' was aborted due to a bad connection")
        cid = self._next_cid
        self._next_cid += 1
        pending = self._pending[cid] = _Pending()
        timeout = self.server.config.ack_timeout_s if timeout_s is None else timeout_s
        try:
            self._send(event_bytes(event, data, cid))
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            self._pending.pop(cid, None)
        if not pending.done.is_set():
            raise errors.TimeoutError(f"Event response for '{event}' timed out")
        if pending.error is not None:
            err = pending.error
            raise (
                err if isinstance(err, errors.SocketClusterError) else errors.RemoteError(str(err))
            )
        return pending.data

    @staticmethod
    def check_outbound_event(event: str) -> None:
        """``InvalidActionError`` unless ``event`` may be transmitted to a client."""
        if not isinstance(event, str) or event.startswith("#") or event in RESERVED_OUTBOUND:
            raise errors.InvalidActionError(
                f'The "{event}" event is reserved and cannot be emitted on a server socket'
            )

    # ------------------------------------------------------------------ auth

    async def set_auth_token(
        self, payload: Mapping[str, Any], *, expires_in_s: float | None = None
    ) -> str:
        """Sign ``payload``, make it this socket's token and send ``#setAuthToken``.

        ``exp`` in ``payload`` wins over ``expires_in_s``; without either the server's default
        expiry applies. The token is sent ahead of queued data (before the response of the
        invoke that called this). If signing fails the socket is closed with 4002 and
        ``AuthError`` raised. Returns the signed token. Not a checkpoint: cancellation cannot
        leave the socket half-authenticated.
        """
        if self._machine.state is not State.OPEN:
            raise errors.InvalidActionError("Cannot set an auth token before the handshake")
        try:
            # A new token: the payload plus iat/exp and a fresh jti/iat_us.
            signed, claims = self.server.sign_token(payload, expires_in_s=expires_in_s)
        except errors.SocketClusterError as exc:
            self.disconnect(4002, "Server failed to sign auth token", notify=False)
            raise errors.AuthError(f"Failed to sign auth token: {exc.message}") from None
        self._send_priority(set_auth_token_bytes(signed))
        self._set_authenticated(claims, signed)
        return signed

    def deauthenticate(self, *, in_order: bool = False) -> None:
        """Forget the auth token and tell the client to drop it (``#removeAuthToken``,
        ahead of queued data; ``in_order=True``: after what is already queued, such as the
        response to the invoke that caused it)."""
        self._clear_auth(send_remove=True, in_order=in_order)

    def _notify(self, event: str, *args: Any) -> None:
        """Call the server's listeners, or hold the call while the handshake runs (auth
        events follow ``connection``, as the reference emits them; examples.md §2)."""
        if self._held_events is not None:
            self._held_events.append((event, *args))
        else:
            self.server.emit_listener_event(event, *args)

    def _set_authenticated(
        self, payload: dict[str, Any], signed: str, issuer: str | None = None
    ) -> None:
        old = self.auth_token
        was = old is not None
        self.auth_token = payload
        self.signed_auth_token = signed
        self.auth_issuer = issuer
        self.server.token_changed(self, old, payload)
        self._wake_watcher()
        if not was:
            self._notify("authStateChange", self, "unauthenticated", "authenticated")
        self._notify("authenticate", self, payload)

    def _clear_auth(self, *, send_remove: bool, in_order: bool = False) -> None:
        old = self.auth_token
        self.auth_token = None
        self.signed_auth_token = None
        self.auth_issuer = None
        self._wake_watcher()
        if send_remove and self._machine.state is not State.CLOSED:
            if in_order:
                self._transport.send(_REMOVE_AUTH_TOKEN)
            else:
                self._transport.send_priority(_REMOVE_AUTH_TOKEN)
        if old is not None:
            self.server.token_changed(self, old, None)
            self._notify("authStateChange", self, "authenticated", "unauthenticated")
            self._notify("deauthenticate", self, old)

    def _check_expiry(self) -> float | None:
        """Lazy expiry check (as the reference does on pongs and events).

        Returns the ``exp`` of a token that has just been found expired (after
        deauthenticating the socket), else ``None``.
        """
        token = self.auth_token
        if token is None:
            return None
        exp = expiry_of(token)
        if exp is not None and self.server.now() >= exp + self.server.auth.leeway_s:
            self._clear_auth(send_remove=True)
            return exp
        return None

    async def _verify_token(self, token: Any) -> tuple[bool, Any, bool]:
        """Verify ``token`` and run the authenticate middleware.

        Returns ``(authenticated, error, bad_token)``; on success the socket is authenticated.
        """
        server = self.server
        try:
            verified = await server.verify_token(token)
        except errors.AuthTokenError as exc:
            server.metrics.count(server.metrics.auth_failures, type(exc).__name__)
            if exc.is_bad_token:
                self._notify("badAuthToken", self, exc, token)
            return False, exc, exc.is_bad_token
        payload, issuer = verified.claims, verified.issuer
        chain = server.middleware.chain(Hook.AUTHENTICATE)
        if chain:
            outcome = await self._run_chain(
                chain,
                AuthenticateRequest(
                    socket=self,
                    auth_token=payload,
                    signed_auth_token=token,
                    now=server.now(),
                    issuer=issuer,
                ),
            )
            if isinstance(outcome, Blocked):
                if outcome.bad_token:
                    self._notify("badAuthToken", self, outcome.error, token)
                return False, _block_error(outcome.error), outcome.bad_token
        self._set_authenticated(payload, token, issuer)
        return True, None, False

    # ------------------------------------------------------------------ pub/sub

    def deliver(
        self,
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None:
        """Broker callback: send a publish to this socket through publish-out middleware
        (while the channel's history is being read for this socket, it waits in the
        channel's ``Catchup``; after the read, the ``Catchup`` drops the live frames of
        publications the read already delivered, which a distributed broker's pub/sub can
        bring after the read, until the first newer one)."""
        server = self.server
        chain = server.middleware.chain(Hook.PUBLISH_OUT)
        self._deliver(channel, data, message, publication, chain, server.now() if chain else 0.0)

    @classmethod
    def deliver_all(
        cls,
        subscribers: Sequence[Subscriber],
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None:
        """Broker callback for a whole fan-out (``GroupSubscriber``): ``deliver`` to each, in
        order, with the publish-out chain looked up and the clock read once per server (every
        subscriber's request carries the same ``now``); another kind of subscriber gets its
        own ``deliver``."""
        server: SocketHost | None = None
        chain: tuple[Any, ...] = ()
        now = 0.0
        for sub in subscribers:
            if not isinstance(sub, ServerSocket):
                if publication is None:
                    sub.deliver(channel, data, message)
                else:
                    sub.deliver(channel, data, message, publication)
                continue
            if sub.server is not server:
                server = sub.server
                chain = server.middleware.chain(Hook.PUBLISH_OUT)
                now = server.now() if chain else 0.0
            sub._deliver(channel, data, message, publication, chain, now)

    def _deliver(
        self,
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None,
        chain: tuple[Any, ...],
        now: float,
    ) -> None:
        if publication is not None and self._catchups:
            catchup = self._catchups.get(channel)
            if catchup is not None:
                if not catchup.live(publication):
                    return  # buffered while the read is pending, or already delivered
                # Past the read (live() only delivers once caught up, and then exactly this
                # publication): the broker delivers in offset order, nothing older follows.
                del self._catchups[channel]
        if not chain:
            self._transport.send(message)
            return
        request = publish_out_request(
            socket=self, channel=channel, data=data, auth_token=self.auth_token, now=now
        )
        outcome = start_chain_unless_allowed(chain, request)
        if outcome is None:  # every middleware allowed it unchanged: the common case
            self._transport.send(message)
        elif not isinstance(outcome, Pending):
            self._deliver_outcome(outcome, message, channel, publication)
        elif self._nursery is not None and self._close is None:
            self._nursery.start_soon(self._deliver_async, outcome, channel, message, publication)
        else:
            outcome.close()

    def _deliver_publication(self, channel: str, pub: Publication) -> None:
        """Deliver a publication read from the history (or buffered during the read)."""
        try:
            message = OutboundMessage(publication_bytes(channel, encode(pub.data), pub))
        except TypeError:
            log.warning("a stored publication on %r has no JSON form", channel)
            return
        self.deliver(channel, pub.data, message, pub)

    async def _deliver_async(
        self,
        pending: Pending,
        channel: str,
        message: OutboundMessage,
        publication: Publication | None,
    ) -> None:
        self._deliver_outcome(await pending.resume(), message, channel, publication)

    def _deliver_outcome(
        self,
        outcome: Allowed | Blocked,
        message: OutboundMessage,
        channel: str,
        publication: Publication | None = None,
    ) -> None:
        if isinstance(outcome, Blocked):
            metrics = self.server.metrics
            metrics.count(metrics.middleware_blocks, outcome.hook.value)
            if outcome.exception is not None:  # the application's middleware: its fault
                log.warning("publishOut middleware failed", exc_info=outcome.exception)
            return
        if outcome.changed:
            try:
                message = OutboundMessage(
                    publish_bytes(channel, outcome.data)
                    if publication is None
                    else publication_bytes(channel, encode(outcome.data), publication)
                )
            except TypeError:
                log.warning("publishOut middleware returned data with no JSON form")
                return
        self._transport.send(message)

    def kick_out(self, channel: str | None = None, message: str | None = None) -> None:
        """Unsubscribe from ``channel`` (all if ``None``), sending ``#kickOut`` for each."""
        names = list(self._channels) if channel is None else [channel]
        for name in names:
            if name not in self._channels:
                continue
            self._send_priority(kick_out_bytes(name, message))
            self._unsubscribe(name)

    def _unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._catchups.pop(channel, None)
        self.server.broker.unsubscribe(channel, self)

    # ------------------------------------------------------------------ closing

    def disconnect(self, code: int = 1000, reason: str = "", *, notify: bool = True) -> None:
        """Close the connection with ``code`` and ``reason``. Never blocks; idempotent (the
        first close wins).

        The reason (the reference's text for ``code`` when empty) goes in the close frame (what
        v19/v20 clients read) and, with ``notify``, a ``#disconnect`` packet carries code and
        reason for v14 clients. The connection's tasks are cancelled at their next checkpoint,
        so a plain-function handler that calls this still gets its reply out first; the
        ``#disconnect`` packet and the close frame are written after what is already queued,
        under a shielded deadline.
        """
        self._end(CloseIntent(
            code=code, reason=close_reason(code, reason), notify=notify,
            initiator=Initiator.LOCAL,
        ))  # fmt: skip

    def shut_down(self, deadline: float) -> None:
        """The server drains: stop reading now, write what is queued, then close with 1001
        "Server is shutting down", all by ``deadline`` (trio's clock). Never blocks. A close
        already under way keeps its code and gets the same deadline."""
        self._close_by = deadline
        self._bound_write()
        if self._closing_scope is not None:
            self._closing_scope.deadline = min(self._closing_scope.deadline, deadline)
        self._end(CloseIntent(
            code=1001, reason=close_reason(1001, "Server is shutting down"), notify=False,
            initiator=Initiator.LOCAL,
        ))  # fmt: skip

    def _end(self, intent: CloseIntent) -> None:
        """Record how the connection ends (the first intent wins) and stop its tasks."""
        if self._close is not None:
            return
        self._close = intent
        self._machine.close()
        self._bound_write()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _bound_write(self) -> None:
        """The connection is ending: the dispatch task's write in flight (shielded, so that a
        close never cuts a frame in half) gets ``shutdown_timeout_s`` (or the drain's
        deadline), then the stream is closed."""
        scope = self._write_scope
        if scope is not None:
            limit = trio.current_time() + self.server.config.shutdown_timeout_s
            scope.deadline = min(scope.deadline, limit, self._close_by)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Serve this connection until it ends. See the module docstring.

        Cancellation (server shutdown) closes the socket with 1001 under a shielded deadline
        of ``shutdown_timeout_s``.
        """
        # The writer lives in an outer nursery: ending the connection cancels the protocol
        # tasks, never a write in progress; it returns once the transport is closed below.
        # It starts only once a write does not go out at once (most connections never need it).
        async with trio.open_nursery() as outer:
            self._transport.start_writer_in(outer)
            await self._run_protocol_tasks()

    async def _run_protocol_tasks(self) -> None:
        cfg = self.server.config
        failed = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._close is not None:  # disconnect() before run()
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._handshake_task)  # the watcher starts once accepted
                await self._dispatch_loop()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            failed = not _only_cancelled(exc)
            raise
        finally:
            self._nursery = None
            # Neither side chose to close: something failed inside this connection (1011) or
            # the server is shutting down (cancellation).
            self._end(CloseIntent(
                code=1011 if failed else 1001,
                reason="Unexpected server error" if failed else "Server is shutting down",
                notify=False, initiator=Initiator.LOCAL,
            ))  # fmt: skip
            intent = self._close
            assert intent is not None
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = min(trio.current_time() + cfg.shutdown_timeout_s, self._close_by)
                self._closing_scope = scope
                if intent.initiator is Initiator.LOCAL:  # we close: send our close frame
                    if intent.notify:
                        # After any reply already queued (a handler that responds, then
                        # disconnects), before the close frame; v14 clients read only this.
                        self._send(disconnect_bytes(intent.code, intent.reason))
                    await self._transport.close(intent.code, intent.reason)
                else:
                    await self._transport.aclose()
            self._cleanup()

    def _cleanup(self) -> None:
        if self._beat_entry is not None:
            self._beat_entry[2] = None  # the heartbeat drops it; this socket is freed now
            self._beat_entry = None
        metrics = self.server.metrics
        code = self.close_code
        metrics.count(metrics.disconnects, code)
        if code == SLOW_CONSUMER_CLOSE_CODE:
            metrics.slow_consumer_closes += 1
        for channel in list(self._channels):
            self._unsubscribe(channel)
        for pending in self._pending.values():
            pending.error = errors.BadConnectionError("Event was aborted due to a bad connection")
            pending.done.set()
        self._pending.clear()
        self._wake_watcher()
        if self.server.forget_socket(self):
            self.server.emit_listener_event(
                "disconnection", self, self.close_code, self.close_reason
            )

    async def _handshake_task(self) -> None:
        """Close with 4005 unless ``#handshake`` arrives in time; then end (the expiry watcher
        runs the heartbeat once the handshake is accepted)."""
        event = self._handshake_event
        if event is None or event.is_set():
            return
        try:
            with trio.move_on_after(self.server.config.handshake_timeout_s):
                await event.wait()
            if not event.is_set():
                self.disconnect(4005, "Did not receive #handshake from client before timeout")
        finally:
            self._bound_write()  # the watcher's duty until the handshake is accepted

    def _send_pings(self) -> None:
        for ping in self._machine.ping_payloads():
            self._send_priority(ping)

    def _beat(self, now: float, slack_s: float) -> float | None:
        """The server's heartbeat at this socket (``heartbeat.Beating``): close with 4001
        once the client is silent for ``ping_timeout_s``, ping when due (up to ``slack_s``
        early), written at once if the socket takes it; when to come back, or ``None``."""
        if self._close is not None:
            return None
        cfg = self.server.config
        pong_deadline = self._last_pong + cfg.ping_timeout_s
        if now >= pong_deadline:
            self.disconnect(4001, "Client pong timed out", notify=False)
            return None
        if now + slack_s >= self._next_ping:
            transport = self._transport
            for ping in self._machine.ping_payloads():
                transport.send_priority(OutboundMessage(ping), write=True)
            self._next_ping = now + cfg.ping_interval_s
        return min(self._next_ping, pong_deadline)

    def _wake_watcher(self) -> None:
        """The token changed: the watcher (if it runs yet) starts over."""
        self._token_changed = True
        if self._watch_scope is not None:
            self._watch_scope.cancel()

    async def _expiry_watcher(self) -> None:
        """The token-expiry watcher and, when the server runs no heartbeat task, the
        heartbeat. When it ends (cancelled from outside, too), the dispatch task's write in
        flight gets a deadline."""
        try:
            await self._watch()
        finally:
            self._bound_write()

    async def _watch(self) -> None:
        server = self.server
        cfg = server.config
        interval, timeout = cfg.ping_interval_s, cfg.ping_timeout_s
        renewed_for: str | None = None
        next_ping = math.inf  # the heartbeat starts with the accepted handshake
        while True:
            self._token_changed = False
            if next_ping == math.inf and self._handshake_event is None and not self._beat_entry:
                next_ping = trio.current_time() + interval  # no server heartbeat: ours
            exp = expiry_of(self.auth_token)
            token_deadline = math.inf
            renewing = False
            if exp is not None:
                wall_deadline = exp + server.auth.leeway_s
                renew_before = cfg.renew_before_s
                renewing = (
                    renew_before is not None
                    and server.renewal_hook is not None
                    and renewed_for != self.signed_auth_token
                )
                if renewing:
                    assert renew_before is not None
                    wall_deadline = exp - renew_before
                token_deadline = trio.current_time() + (wall_deadline - server.now())
            pong_deadline = self._last_pong + timeout if next_ping != math.inf else math.inf
            # One cancel scope is the whole sleep: its deadline is the earliest of the three,
            # and a token change cancels it (no Event per token).
            with trio.CancelScope(
                deadline=min(token_deadline, next_ping, pong_deadline)
            ) as self._watch_scope:
                await trio.sleep_forever()
            self._watch_scope = None
            if self._token_changed:
                continue
            now = trio.current_time()
            if next_ping != math.inf:
                if now >= self._last_pong + timeout:
                    self.disconnect(4001, "Client pong timed out", notify=False)
                    return
                if now >= next_ping:
                    self._send_pings()
                    next_ping = now + interval
            if now >= token_deadline:
                if not renewing:
                    self._clear_auth(send_remove=True)
                elif self._nursery is not None:
                    renewed_for = self.signed_auth_token
                    self._nursery.start_soon(self._renew)  # the heartbeat goes on meanwhile

    async def _renew(self) -> None:
        hook = self.server.renewal_hook
        token = self.auth_token
        if hook is None or token is None:
            return
        try:
            # A token revoked meanwhile (on a worker whose message has not arrived, or before
            # a restart) is not renewed: the socket loses it instead.
            if await self.server.check_revoked(token) is not None:
                if self.auth_token is token:
                    self._clear_auth(send_remove=True)
                return
            result = hook(self, token)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                # A renewed token gets fresh time claims (even if the hook returned the old
                # payload, whose exp would otherwise win) and the lifetime of the token it
                # replaces: a 5-minute login stays a 5-minute token.
                fresh = {k: v for k, v in result.items() if k not in ("iat", "exp", "nbf")}
                exp, iat = token.get("exp"), token.get("iat")
                lifetime = None
                if isinstance(exp, int | float) and isinstance(iat, int | float) and exp > iat:
                    lifetime = exp - iat
                await self.set_auth_token(fresh, expires_in_s=lifetime)
        except errors.SocketClusterError as exc:
            log.warning("token renewal for socket %s failed: %s", self.id, exc)
        except Exception:  # the application's renewal hook: its fault
            log.warning("token renewal hook raised for socket %s", self.id, exc_info=True)

    # ------------------------------------------------------------------ dispatch
    #
    # The protocol layer has already validated every event. Handlers that can finish inline
    # (plain functions, plain middleware, the in-process broker) return ``None``; when one
    # must wait (an async middleware or handler, a distributed broker's sync) it returns the
    # awaitable to finish with, so the common path creates no coroutine per packet.

    async def _dispatch_loop(self) -> None:
        transport = self._transport
        task = trio.lowlevel.current_task()
        while True:
            try:
                messages = await transport.receive()
            except TransportClosed as exc:
                self._end(CloseIntent(
                    code=exc.code, reason=exc.reason, notify=False, initiator=Initiator.REMOTE
                ))  # fmt: skip
                return
            # Any inbound message proves the client alive (the v14 rule): under load the
            # reader may be behind, and a pong queued behind data must not cost the
            # busiest clients their connection.
            self._last_pong = trio.current_time()
            # What this task queues while it dispatches wakes no writer: it writes it below,
            # at once if the socket takes it (the writer task starts only when it does not).
            self._reading = task
            try:
                await self._dispatch_read(messages)
            finally:
                self._reading = None
            del messages  # an idle connection keeps nothing of its last read
            if self._close is not None:
                return  # run() writes what is queued, then the close frame
            if transport.buffered_bytes and not transport.write_now():
                # What the socket did not take at once, shielded: ending the connection must
                # not cut this write (and drop what is queued); ``_bound_write`` gives it a
                # deadline once the connection ends. (A write done at once needs no scope:
                # about 5 us per request saved.)
                with trio.CancelScope(shield=True) as self._write_scope:
                    await transport.flush()
                self._write_scope = None

    async def _dispatch_read(self, messages: list[str | bytes] | list[str]) -> None:
        machine = self._machine
        received = self.server.metrics.messages_received
        for message in messages:
            for event in machine.receive(message):
                waiting: Awaitable[None] | None = None
                kind = _MESSAGE_TYPE.get(event.__class__, "")
                if kind is None:
                    kind = "transmit" if event.cid is None else "invoke"  # type: ignore[union-attr]
                if kind:
                    received[kind] += 1
                match event:
                    case Emit():
                        waiting = self._on_emit(event)
                    case Publish():
                        waiting = self._on_publish(event)
                    case Pong():
                        self._check_expiry()
                    case Response():
                        self._on_response(event)
                    case Subscribe():
                        waiting = self._on_subscribe(event)
                    case Unsubscribe():
                        self._on_unsubscribe(event)
                    case Invalid():
                        self._on_invalid(event)
                    case Handshake():
                        waiting = self._on_handshake(event)
                    case Authenticate():
                        waiting = self._on_authenticate(event)
                    case RemoveAuthToken():
                        self._clear_auth(send_remove=False)  # never answered, even with a cid
                    case ClientDisconnect():
                        # A v14 client announces its close; the close frame follows.
                        self.client_disconnect_data = event.data
                    case Close():
                        self.disconnect(event.code, event.reason, notify=False)
                    case _:  # Ping, Raw: ignored
                        pass
                if waiting is not None:
                    if self._transport.buffered_bytes:
                        # Replies to earlier messages of this read go out before a wait.
                        self._transport.write_soon()
                    await waiting

    async def _run_chain(self, chain: tuple[Any, ...], request: Request) -> Allowed | Blocked:
        outcome = start_chain(chain, request)
        if isinstance(outcome, Pending):
            return _logged(await outcome.resume(), self.server.metrics)
        return _logged(outcome, self.server.metrics)

    def _on_invalid(self, event: Invalid) -> None:
        self._respond(event.cid, error=event.error)
        self.server.warn_client(
            event.fault, "socket %s: refused a packet (%s): %s",
            self.id, event.fault.value, event.error.message,
        )  # fmt: skip

    async def _on_handshake(self, event: Handshake) -> None:
        server = self.server
        started = trio.current_time()
        if self._handshake_event is not None:
            self._handshake_event.set()  # the 4005 timer stops
        data = event.data
        self.handshake_data = data
        chain = server.middleware.chain(Hook.HANDSHAKE_SC)
        if chain:
            outcome = await self._run_chain(
                chain, HandshakeSCRequest(socket=self, data=data, now=server.now())
            )
            if isinstance(outcome, Blocked):
                code = outcome.status_code or 4008
                error = dehydrate_error(_block_error(outcome.error))
                if isinstance(error, dict):
                    error["statusCode"] = code
                self._respond(event.cid, data={"code": code}, error=error)
                self.disconnect(code, HANDSHAKE_REJECTED_REASON)
                server.metrics.handshakes["rejected"] += 1
                return
        status: dict[str, Any] = {
            "id": self.id,
            "pingTimeout": int(server.config.ping_timeout_s * 1000),
        }
        token = event.auth_token
        authenticated = False
        held: list[tuple[Any, ...]] = []
        if token is not None:
            self._held_events = held  # emitted after ``connection``
            try:
                authenticated, error, bad = await self._verify_token(token)
            finally:
                self._held_events = None
            if not authenticated:
                status["authError"] = dehydrate_error(error)
                if bad:
                    self._clear_auth(send_remove=True)
        status["isAuthenticated"] = authenticated
        self._machine.handshake_done()
        self._last_pong = trio.current_time()
        server.register_socket(self)
        self._respond(event.cid, data=status)
        metrics = server.metrics
        metrics.handshakes["ok"] += 1
        metrics.handshake_latency.observe(trio.current_time() - started)
        if self._machine.protocol is None:
            # Probe after the reply: the first pong tells protocol 1 from 2 within one RTT.
            for ping in self._machine.ping_payloads():
                self._send(ping)
        self._handshake_event = None
        heartbeat = server.heartbeat
        if heartbeat.running:
            cfg = server.config
            self._next_ping = self._last_pong + cfg.ping_interval_s
            self._beat_entry = heartbeat.add(
                self, min(self._next_ping, self._last_pong + cfg.ping_timeout_s)
            )
        if self._nursery is not None:
            # The watcher starts with the accepted handshake: before it there is no token to
            # watch and no heartbeat (the handshake task times the 4005 close).
            self._nursery.start_soon(self._expiry_watcher)
        server.emit_listener_event("connection", self)
        for name, *args in held:
            server.emit_listener_event(name, *args)

    async def _on_authenticate(self, event: Authenticate) -> None:
        authenticated, error, bad = await self._verify_token(event.token)
        if authenticated:
            self._respond(event.cid, data={"isAuthenticated": True, "authError": None})
            return
        wire = dehydrate_error(error)
        status = {"isAuthenticated": False, "authError": wire}
        if bad:
            self._clear_auth(send_remove=True)  # #removeAuthToken goes before the response
            self._respond(event.cid, data=status, error=wire)
        else:
            self._clear_auth(send_remove=False)  # a failed re-authentication logs out
            self._respond(event.cid, data=status)

    def _on_response(self, event: Response) -> None:
        pending = self._pending.pop(event.rid, None)
        if pending is None:
            return
        pending.data = event.data
        if event.error is not None:
            pending.error = errors.hydrate_error(event.error)
        pending.done.set()

    # ---- custom events

    def _on_emit(self, event: Emit) -> Awaitable[None] | None:
        server = self.server
        expired = self._check_expiry() is not None
        chain = server.middleware.chain(Hook.EMIT)
        if not chain:
            return self._call_handler(event.event, event.data, event.cid)
        outcome = start_chain(
            chain,
            EmitRequest(
                socket=self, event=event.event, data=event.data, is_invoke=event.cid is not None,
                auth_token=self.auth_token, auth_token_expired=expired, now=server.now(),
            ),
        )  # fmt: skip
        if isinstance(outcome, Pending):
            return self._emit_when_allowed(outcome, event)
        return self._emit_outcome(outcome, event)

    async def _emit_when_allowed(self, pending: Pending, event: Emit) -> None:
        waiting = self._emit_outcome(await pending.resume(), event)
        if waiting is not None:
            await waiting

    def _emit_outcome(self, outcome: Allowed | Blocked, event: Emit) -> Awaitable[None] | None:
        if isinstance(outcome, Blocked):
            _logged(outcome, self.server.metrics)
            self._respond(event.cid, error=_block_error(outcome.error))
            return None
        return self._call_handler(event.event, outcome.data, event.cid)

    def _call_handler(self, name: str, data: Any, cid: Cid | None) -> Awaitable[None] | None:
        entry = self.server.handler_for(name)
        if entry is None:
            self._respond(cid, error=errors.NoHandlerError(f"No handler for event '{name}'"))
            return None
        fn, is_async = entry
        if is_async:
            return self._start_async_handler(fn, name, data, cid)
        started = trio.current_time()
        try:
            result = fn(self, data)
        except errors.SocketClusterError as exc:
            self._respond(cid, error=exc)
        except Exception:  # the application's handler (whatever the data): its fault
            log.exception("handler for %r raised", name)
            self._respond(cid, error=errors.UnknownError("The handler failed"))
        else:
            self._respond(cid, data=MISSING if result is None else result)
        if cid is not None:
            self.server.metrics.invoke_latency.observe(trio.current_time() - started)
        return None

    async def _start_async_handler(
        self, fn: Callable[..., Awaitable[Any]], name: str, data: Any, cid: Cid | None
    ) -> None:
        slots = self._handler_slots
        if slots is None:
            slots = self._handler_slots = trio.Semaphore(self.server.config.max_concurrent_handlers)
        started = trio.current_time()
        await slots.acquire()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_async_handler, fn, name, data, cid, started)

    async def _run_async_handler(
        self,
        fn: Callable[[ServerSocket, Any], Awaitable[Any]],
        event: str,
        data: Any,
        cid: Cid | None,
        started: float,
    ) -> None:
        try:
            try:
                result = await fn(self, data)
            except errors.SocketClusterError as exc:
                self._respond(cid, error=exc)
            except Exception:  # the application's handler (whatever the data): its fault
                log.exception("handler for %r raised", event)
                self._respond(cid, error=errors.UnknownError("The handler failed"))
            else:
                self._respond(cid, data=MISSING if result is None else result)
            if cid is not None:
                self.server.metrics.invoke_latency.observe(trio.current_time() - started)
        finally:
            assert self._handler_slots is not None
            self._handler_slots.release()

    # ---- channels

    def _on_subscribe(self, event: Subscribe) -> Awaitable[None] | None:
        server = self.server
        expired_exp = self._check_expiry()
        cid = event.cid
        channel = event.channel
        if event.wait_for_auth and expired_exp is not None:
            self._respond(
                cid,
                error=errors.AuthTokenExpiredError(
                    "The socket auth token has expired", expiry=expired_exp
                ),
            )
            return None
        limit = server.config.socket_channel_limit
        if limit is not None and channel not in self._channels and len(self._channels) >= limit:
            self._respond(
                cid,
                error=errors.BrokerError(
                    f"Failed to subscribe socket to the {channel} channel - Socket {self.id} "
                    f"tried to exceed the channel subscription limit of {limit}"
                ),
            )
            return None
        chain = server.middleware.chain(Hook.SUBSCRIBE)
        if chain:
            outcome = start_chain(
                chain,
                SubscribeRequest(
                    socket=self, channel=channel, wait_for_auth=event.wait_for_auth,
                    data=event.data, auth_token=self.auth_token,
                    auth_token_expired=expired_exp is not None, now=server.now(),
                ),
            )  # fmt: skip
            if isinstance(outcome, Pending):
                return self._subscribe_when_allowed(outcome, event)
            outcome = _logged(outcome, server.metrics)
            if isinstance(outcome, Blocked):
                self._respond(cid, error=_block_error(outcome.error))
                return None
        return self._subscribe(event)

    async def _subscribe_when_allowed(self, pending: Pending, event: Subscribe) -> None:
        outcome = _logged(await pending.resume(), self.server.metrics)
        if isinstance(outcome, Blocked):
            self._respond(event.cid, error=_block_error(outcome.error))
            return
        waiting = self._subscribe(event)
        if waiting is not None:
            await waiting

    def _subscribe(self, event: Subscribe) -> Awaitable[None] | None:
        if self._close is not None:
            return None
        server = self.server
        history = self._history
        if history is not None and history.history_policy(event.channel) is not None:
            return self._subscribe_with_history(history, event)
        self._channels[event.channel] = None
        server.broker.subscribe(event.channel, self)
        distributed = server.distributed_broker
        if distributed is not None:
            return self._ack_when_synced(distributed.wait_synced, event.cid)
        self._respond(event.cid)
        return None

    async def _ack_when_synced(
        self, synced: Callable[[], Awaitable[None]], cid: Cid | None
    ) -> None:
        # A distributed broker: acknowledge once the subscription is live cluster-wide
        # (bounded: with the broker down, local delivery works and the ack goes out).
        with trio.move_on_after(self.server.config.ack_timeout_s):
            await synced()
        self._respond(cid)

    def _subscribe_with_history(
        self, history: HistoryBroker, event: Subscribe
    ) -> Awaitable[None] | None:
        # Registered for live publications first (they wait in the Catchup), then the
        # history is read: every offset above the recovery point is in the read or arrives
        # live, and the Catchup drops the ones that are in both.
        channel = event.channel
        request = parse_recover(event.data)
        if channel in self._channels:
            # Already subscribed: a repeated #subscribe changes nothing.
            self._respond(event.cid)
            return None
        self._catchups[channel] = Catchup(
            after=request.offset if request else 0, epoch=request.epoch if request else ""
        )
        self._channels[channel] = None
        history.subscribe(channel, self)
        distributed = self.server.distributed_broker
        if distributed is None:
            result = history.recover(channel, request)
            if isinstance(result, Recovery):
                self._recovered(event, result, asked=request is not None, history=history)
                return None
            return self._recover_async(event, history, request, result, None)
        return self._recover_async(event, history, request, None, distributed.wait_synced)

    async def _recover_async(
        self,
        event: Subscribe,
        history: HistoryBroker,
        request: RecoverRequest | None,
        read: Awaitable[Recovery] | None,
        synced: Callable[[], Awaitable[None]] | None,
    ) -> None:
        channel = event.channel
        try:
            if read is None:
                if synced is not None:
                    # The subscription must be live cluster-wide before the read.
                    with trio.move_on_after(self.server.config.ack_timeout_s):
                        await synced()
                result = history.recover(channel, request)
                rec = result if isinstance(result, Recovery) else await result
            else:
                rec = await read
        except errors.BrokerError as exc:
            if self._catchups.get(channel) is not None:
                self._unsubscribe(channel)
            self._respond(event.cid, error=exc)
            return
        self._recovered(event, rec, asked=request is not None, history=history)

    def _recovered(
        self, event: Subscribe, rec: Recovery, *, asked: bool, history: HistoryBroker
    ) -> None:
        channel = event.channel
        catchup = self._catchups.get(channel)
        if catchup is None or self._close is not None:
            return  # unsubscribed (or closing) while the history was read
        ack = rec.ack()
        if not asked:
            del ack["recovered"]
        self._respond(event.cid, data=ack)
        pubs = catchup.resolve(rec)
        while True:
            for pub in pubs:
                self._deliver_publication_now(channel, pub)
            if not catchup.pending:
                break
            # The buffer overflowed during the read: read again after what was delivered.
            again = history.recover(channel, _after(catchup))
            if not isinstance(again, Recovery):
                # (a distributed broker) finish asynchronously; live ones keep buffering
                if self._nursery is not None:
                    self._nursery.start_soon(self._catch_up_async, channel, catchup, again)
                return
            pubs = catchup.resolve(again)
        # The Catchup stays until the first live publication past the read (see deliver).

    async def _catch_up_async(
        self, channel: str, catchup: Catchup, read: Awaitable[Recovery]
    ) -> None:
        history = self._history
        assert history is not None
        while True:
            try:
                rec = await read
            except errors.BrokerError:
                log.warning("socket %s: catching up on %r failed", self.id, channel)
                rec = Recovery(False, catchup.last, catchup.epoch)
            if self._catchups.get(channel) is not catchup:
                return
            for pub in catchup.resolve(rec):
                self._deliver_publication_now(channel, pub)
            if not catchup.pending:
                return  # it stays until the first live publication past the read
            result = history.recover(channel, _after(catchup))
            read = _ready(result) if isinstance(result, Recovery) else result

    def _deliver_publication_now(self, channel: str, pub: Publication) -> None:
        catchups = self._catchups
        catchup = catchups.pop(channel, None)  # deliver past the catch-up's buffer
        try:
            self._deliver_publication(channel, pub)
        finally:
            if catchup is not None:
                catchups[channel] = catchup

    def _on_unsubscribe(self, event: Unsubscribe) -> None:
        self._check_expiry()
        channel = event.channel
        if channel not in self._channels:
            self._respond(
                event.cid,
                error=errors.BrokerError(
                    f"Failed to unsubscribe socket from the {channel} channel - Socket {self.id} "
                    "tried to unsubscribe from a channel which it is not subscribed to"
                ),
            )
            return
        self._unsubscribe(channel)
        self._respond(event.cid)

    def _on_publish(self, event: Publish) -> Awaitable[None] | None:
        server = self.server
        expired = self._check_expiry() is not None
        if not server.config.allow_client_publish:
            self._respond(
                event.cid, error=errors.InvalidActionError("Client publish feature is disabled")
            )
            return None
        chain = server.middleware.chain(Hook.PUBLISH_IN)
        if not chain:
            return self._publish(event, event.data, MISSING)
        outcome = start_chain(
            chain,
            PublishInRequest(
                socket=self, channel=event.channel, data=event.data, auth_token=self.auth_token,
                auth_token_expired=expired, now=server.now(),
            ),
        )  # fmt: skip
        if isinstance(outcome, Pending):
            return self._publish_when_allowed(outcome, event)
        return self._publish_outcome(outcome, event)

    async def _publish_when_allowed(self, pending: Pending, event: Publish) -> None:
        waiting = self._publish_outcome(await pending.resume(), event)
        if waiting is not None:
            await waiting

    def _publish_outcome(
        self, outcome: Allowed | Blocked, event: Publish
    ) -> Awaitable[None] | None:
        if isinstance(outcome, Blocked):
            _logged(outcome, self.server.metrics)
            self._respond(event.cid, error=_block_error(outcome.error))
            return None
        assert isinstance(outcome, Allowed)
        ack = MISSING if outcome.ack_data is UNCHANGED else outcome.ack_data
        return self._publish(event, outcome.data, ack)

    def _publish(self, event: Publish, data: Any, ack: Any) -> Awaitable[None] | None:
        history = self._history
        if history is not None and history.history_policy(event.channel) is not None:
            return self._publish_stored(history, event, data, ack)
        try:
            self.server.broker.publish(event.channel, data)
        except errors.BrokerError as exc:
            self._respond(event.cid, error=exc)
            return None
        except TypeError:
            self._respond(
                event.cid, error=errors.InvalidArgumentsError("Publish data has no JSON form")
            )
            return None
        self.server.metrics.publications += 1
        self._respond(event.cid, data=ack)
        return None

    def _publish_stored(
        self, history: HistoryBroker, event: Publish, data: Any, ack: Any
    ) -> Awaitable[None] | None:
        # The acknowledgement says where the publication is stored: {offset, epoch}
        # (unless publish-in middleware chose the ack data), and is sent once it is stored.
        try:
            result = history.publish_stored(event.channel, data)
        except errors.BrokerError as exc:
            self._respond(event.cid, error=exc)
            return None
        except TypeError:
            self._respond(
                event.cid, error=errors.InvalidArgumentsError("Publish data has no JSON form")
            )
            return None
        if isinstance(result, Publication):
            self._ack_stored(event, result, ack)
            return None
        return self._ack_when_stored(event, result, ack)

    async def _ack_when_stored(
        self, event: Publish, stored: Awaitable[Publication], ack: Any
    ) -> None:
        try:
            pub = await stored
        except errors.BrokerError as exc:
            self._respond(event.cid, error=exc)
            return
        self._ack_stored(event, pub, ack)

    def _ack_stored(self, event: Publish, pub: Publication, ack: Any) -> None:
        self.server.metrics.publications += 1
        if ack is MISSING:
            ack = {"offset": pub.offset, "epoch": pub.epoch}
        self._respond(event.cid, data=ack)
