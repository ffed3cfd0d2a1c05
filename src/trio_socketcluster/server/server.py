"""The ``Server``: configuration, registrations, and the trio entry points.

Entry points (all structured: nothing runs outside the caller's nursery):

* ``await nursery.start(server.serve, host, port)``: listen on TCP with our wsproto
  transport; ``task_status.started`` gets the listeners. Cancelling it closes every socket
  with 1001 within ``shutdown_timeout_s``.
* ``await server.handle_stream(stream)``: serve one already accepted trio stream.
* ``await server.handle_trio_websocket_request(request)``: serve one connection of an
  application that runs its own trio-websocket server (any route it likes).
* ``server.run(host, port)``: ``trio.run`` with Ctrl+C handling, for scripts.

Registrations: handlers for custom events (``@server.handler("login")``), middleware
(``@server.middleware(Hook.PUBLISH_IN)``), listeners for socket lifecycle events
(``@server.on("connection")``), and the token renewal hook (``@server.renewal``).

Listeners are plain functions called synchronously, in registration order, from the
connection's task: ``connection(socket)``, ``disconnection(socket, code, reason)``,
``authenticate(socket, auth_token)``, ``deauthenticate(socket, old_token)``,
``authStateChange(socket, old_state, new_state)``, ``badAuthToken(socket, error, token)``.
They must not block; an exception in a listener is logged and ignored. To do async work, send
to a memory channel your own task reads.
"""

from __future__ import annotations

import base64
import inspect
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar

import trio

from ..auth import AuthEngine, Keyring
from ..brokers.base import Broker, DistributedBroker, RunnableBroker
from ..brokers.local import LocalBroker
from ..config import ServerConfig, resolve_cluster_key
from ..errors import InvalidArgumentsError, InvalidOptionsError
from ..middleware import (
    Blocked,
    HandshakeWSRequest,
    Hook,
    Middleware,
    MiddlewareRegistry,
    origin_allowed,
    run_chain_async,
)
from ..protocol.events import Fault
from ..ratelimit import WarningLimiter
from ..transport.base import HandshakeRequest, Rejection, Transport
from ..transport.ws import accept_websocket
from .http import HttpHandler
from .socket import HandlerEntry, RenewalHook, ServerSocket

__all__ = ["Handler", "Server"]

log = logging.getLogger("trio_socketcluster")

Handler = Callable[[ServerSocket, Any], Any]
F = TypeVar("F", bound=Callable[..., Any])

LISTENER_EVENTS = frozenset(
    {"connection", "disconnection", "authenticate", "deauthenticate", "authStateChange",
     "badAuthToken"}
)  # fmt: skip


def _socket_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(15)).decode("ascii")


class Server:
    """A SocketCluster server. See the module docstring for the entry points.

    ``Server(**options)`` takes the fields of ``ServerConfig`` as keyword arguments (or a ready
    ``config=``), plus ``broker=`` (default: in-process; a ``redis://`` URL selects the
    ``RedisBroker``, see ``set_broker``) and ``auth=`` (a ready
    ``AuthEngine``; default: built from the ``auth_*`` options, with a random HS256 key per
    process when no key is given).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        broker: Broker | str | None = None,
        auth: AuthEngine | None = None,
        now: Callable[[], float] | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise InvalidOptionsError("pass either config= or keyword options, not both")
        cfg = config if config is not None else ServerConfig(**options)
        self._hs256_key: str | bytes | None = None  # the configured or installed HMAC key
        self._auth_key_generated = False  # a random key: install_auth_key may replace it
        self.auth = self._make_auth(cfg, auth, leeway_given="auth_leeway_s" in options)
        self.config = replace(cfg, auth_leeway_s=self.auth.leeway_s)  # one value, the engine's
        self.broker: Broker = LocalBroker()
        self.set_broker(broker if broker is not None else self.broker)
        self.middleware = MiddlewareRegistry()
        self._handlers: dict[str, HandlerEntry] = {}
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in LISTENER_EVENTS}
        self._renewal: RenewalHook | None = None
        self._client_warnings = WarningLimiter(interval_s=60.0)
        self._sockets: dict[str, ServerSocket] = {}
        self._now = now
        self._clock_offset: float | None = None
        #: Answers plain HTTP requests on the port (see ``server.http.static_files``).
        self.http_handler: HttpHandler | None = None

    def _make_auth(
        self, cfg: ServerConfig, auth: AuthEngine | None, *, leeway_given: bool
    ) -> AuthEngine:
        """The engine: ``auth`` itself, or one built from the ``auth_*`` options (a random
        HS256 key when none is given, which ``install_auth_key`` may replace)."""
        if auth is not None:
            if (leeway_given or cfg.auth_leeway_s != 0) and cfg.auth_leeway_s != auth.leeway_s:
                raise InvalidOptionsError(
                    f"auth_leeway_s={cfg.auth_leeway_s} disagrees with the leeway_s="
                    f"{auth.leeway_s} of the given auth engine: set it on the AuthEngine only"
                )
            return auth
        if cfg.auth_public_key is not None:
            keyring = Keyring.asymmetric(cfg.auth_private_key, cfg.auth_public_key)
            if cfg.auth_algorithm is None:  # the algorithm that fits the key
                for algorithm in ("RS256", "ES256", "ES384", "ES512", "EdDSA"):
                    try:
                        return AuthEngine(
                            keyring,
                            algorithm=algorithm,
                            default_expiry_s=cfg.auth_default_expiry_s,
                            leeway_s=cfg.auth_leeway_s,
                        )
                    except InvalidOptionsError:
                        continue
                raise InvalidOptionsError("no supported algorithm fits auth_public_key")
            return self._engine(cfg, keyring, cfg.auth_algorithm)
        key = cfg.auth_key
        if key is None:
            key = secrets.token_hex(32)
            self._auth_key_generated = True
        else:
            self._hs256_key = key
        return self._engine(cfg, Keyring.symmetric(key), cfg.auth_algorithm or "HS256")

    @staticmethod
    def _engine(cfg: ServerConfig, keyring: Keyring, algorithm: str) -> AuthEngine:
        return AuthEngine(
            keyring,
            algorithm=algorithm,
            verify_algorithms=cfg.auth_verify_algorithms,
            default_expiry_s=cfg.auth_default_expiry_s,
            leeway_s=cfg.auth_leeway_s,
        )

    def install_auth_key(self, key: str | bytes) -> bool:
        """Sign and verify tokens with the HMAC ``key`` handed over from outside the
        application (the command line's ``--auth-key-file`` or ``$TRIO_SOCKETCLUSTER_AUTH_KEY``).

        Keys the application configured itself win: when it gave ``auth_key``, asymmetric keys
        or ``auth=``, nothing changes and this returns ``False``; otherwise the random
        per-process key is replaced and this returns ``True``. Call it before serving (tokens
        signed with the replaced key no longer verify). The length of ``key`` is the caller's
        business (the command line refuses fewer than 32 bytes).
        """
        if not self._auth_key_generated:
            return False
        self.auth = self._engine(
            self.config, Keyring.symmetric(key), self.config.auth_algorithm or "HS256"
        )
        self._hs256_key = key
        self._auth_key_generated = False
        return True

    def _warn_if_random_key(self) -> None:
        if self._auth_key_generated:
            log.warning(
                "No auth_key given: using a random key for this process. Tokens will not "
                "survive a restart, and several processes need a shared key."
            )

    def set_broker(self, broker: Broker | str) -> None:
        """Use ``broker``: a ``Broker``, or a Redis URL (``redis://host:port/db``,
        ``rediss://``, ``unix://``) for a ``RedisBroker`` (needs ``trio-socketcluster[redis]``).

        The bus of a Redis broker is signed with a key derived from
        ``$TRIO_SOCKETCLUSTER_CLUSTER_KEY``, else from the HS256 auth key (``auth_key``, or
        the one given to ``install_auth_key`` before this call); every process of the cluster
        needs the same one. Call this before serving (the command line does, for ``--broker``).
        """
        if isinstance(broker, str):
            try:
                from ..brokers.redis import RedisBroker
            except ImportError as exc:
                raise InvalidOptionsError(
                    f"a Redis broker needs coredis: pip install 'trio-socketcluster[redis]' ({exc})"
                ) from None
            key = resolve_cluster_key(os.environ, self._hs256_key)
            broker = RedisBroker.from_url(broker, cluster_key=key)
        self.broker = broker
        if isinstance(broker, DistributedBroker):  # commands from other processes
            broker.set_command_handler(self._apply_command)

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        """Wall-clock seconds (for JWT claims), advancing with trio's clock.

        Derived from ``trio.current_time()`` so that tests running under a ``MockClock``
        (``autojump_clock``) control token expiry without sleeping.
        """
        if self._now is not None:
            return self._now()
        if self._clock_offset is None:
            self._clock_offset = time.time() - trio.current_time()
        return self._clock_offset + trio.current_time()

    # ------------------------------------------------------------------ registrations

    def add_handler(self, event: str, fn: Handler) -> None:
        """Handle custom event ``event``: ``fn(socket, data)`` returns the invoke's data.

        Returning ``None`` answers without data (``{"rid": n}``, as the reference's
        ``respond()``); return ``Reply(data=None)`` to send ``null``. Raise a
        ``SocketClusterError`` (or return ``Reply(error=...)``) to answer with an error.
        Plain functions run inline in the connection's dispatch task, in order; ``async``
        functions run in their own task in the connection's nursery, so they may
        await (a database, ``socket.invoke``) without holding up the connection.
        """
        if not isinstance(event, str) or not event:
            raise InvalidOptionsError("event must be a non-empty string")
        if event in {"#handshake", "#authenticate", "#removeAuthToken", "#subscribe",
                     "#unsubscribe", "#publish", "#disconnect"}:  # fmt: skip
            raise InvalidOptionsError(f"{event} is reserved")
        self._handlers[event] = (fn, inspect.iscoroutinefunction(fn))

    def remove_handler(self, event: str) -> None:
        self._handlers.pop(event, None)

    def handler(self, event: str) -> Callable[[F], F]:
        """Decorator form of ``add_handler``."""

        def register(fn: F) -> F:
            self.add_handler(event, fn)
            return fn

        return register

    def add_middleware(self, hook: Hook, fn: Middleware) -> None:
        self.middleware.add(hook, fn)

    def remove_middleware(self, hook: Hook, fn: Middleware) -> None:
        self.middleware.remove(hook, fn)

    def add_listener(self, event: str, fn: Callable[..., Any]) -> None:
        if event not in LISTENER_EVENTS:
            raise InvalidOptionsError(f"unknown event {event!r}; one of {sorted(LISTENER_EVENTS)}")
        self._listeners[event].append(fn)

    def remove_listener(self, event: str, fn: Callable[..., Any]) -> None:
        self._listeners[event].remove(fn)

    def on(self, event: str) -> Callable[[F], F]:
        """Decorator form of ``add_listener``."""

        def register(fn: F) -> F:
            self.add_listener(event, fn)
            return fn

        return register

    def renewal(self, fn: F) -> F:
        """Register the token renewal hook: ``fn(socket, auth_token)`` returns a new payload
        (or ``None`` to let the token expire); called ``renew_before_s`` before expiry."""
        self._renewal = fn
        return fn

    # ------------------------------------------------------------------ the sockets' host
    #
    # What a ``ServerSocket`` uses of its server (``SocketHost`` in ``host.py``).

    @property
    def renewal_hook(self) -> RenewalHook | None:
        """The hook registered with ``@server.renewal`` (``None`` if none)."""
        return self._renewal

    @property
    def distributed_broker(self) -> DistributedBroker | None:
        """``broker`` when it is a ``DistributedBroker``, else ``None``."""
        broker = self.broker
        return broker if isinstance(broker, DistributedBroker) else None

    def handler_for(self, event: str) -> HandlerEntry | None:
        """The handler registered for ``event`` and whether it is async."""
        return self._handlers.get(event)

    def warn_client(self, fault: Fault, message: str, *args: Any) -> None:
        """Log a warning a client caused: at most one per ``fault`` a minute, no traceback."""
        suppressed = self._client_warnings.allow(fault, trio.current_time())
        if suppressed is None:
            return
        if suppressed:
            message += " (%d more like it in the last minute not logged)"
            args = (*args, suppressed)
        log.warning(message, *args)

    def emit_listener_event(self, event: str, *args: Any) -> None:
        """Call the listeners of ``event`` in order; one that raises is logged and skipped."""
        for fn in self._listeners[event]:
            try:
                fn(*args)
            except Exception:
                log.exception("%s listener raised", event)

    # ------------------------------------------------------------------ views and actions

    @property
    def sockets(self) -> Mapping[str, ServerSocket]:
        """Connected (handshaken) sockets by id; a read-only live view."""
        return MappingProxyType(self._sockets)

    @property
    def client_count(self) -> int:
        return len(self._sockets)

    def publish(self, channel: str, data: Any = None) -> None:
        """Publish ``data`` on ``channel`` (not subject to publish-in middleware). Never blocks;
        ``BrokerError`` if the broker cannot take it."""
        self.broker.publish(channel, data)

    # ------------------------------------------------------------------ cluster-wide actions
    #
    # Each applies at once to the sockets of this process and, with a distributed broker,
    # goes to every other process over the broker's bus (in order with this process's
    # publishes; at most once). Each returns how many sockets of *this* process it touched,
    # and raises ``BrokerError`` if the bus cannot take it (after applying it here).

    def deauthenticate_user(self, username: str) -> int:
        """Deauthenticate every socket whose auth token has ``"username": username``."""
        if not isinstance(username, str):
            raise InvalidArgumentsError("username must be a string")
        return self._cluster_command("deauthenticate_user", {"username": username})

    def disconnect_user(self, username: str, code: int = 1000, reason: str = "") -> int:
        """Close every socket whose auth token has ``"username": username``."""
        if not isinstance(username, str):
            raise InvalidArgumentsError("username must be a string")
        if type(code) is not int or not 1000 <= code <= 4999 or not isinstance(reason, str):
            raise InvalidArgumentsError("code must be an int in 1000..4999, reason a string")
        return self._cluster_command(
            "disconnect_user", {"username": username, "code": code, "reason": reason}
        )

    def revoke_token(self, jti: str) -> int:
        """Deauthenticate every socket whose auth token has ``"jti": jti``.

        Only sockets connected now are affected: a client that kept the token can present it
        again; refuse it in authenticate middleware if that matters."""
        if not isinstance(jti, str):
            raise InvalidArgumentsError("jti must be a string")
        return self._cluster_command("revoke_token", {"jti": jti})

    def kick_out(self, channel: str, message: str | None = None) -> int:
        """Unsubscribe every socket from ``channel``, sending each ``#kickOut``."""
        if not isinstance(channel, str) or not (message is None or isinstance(message, str)):
            raise InvalidArgumentsError("channel must be a string, message a string or None")
        return self._cluster_command("kick_out", {"channel": channel, "message": message})

    def _cluster_command(self, op: str, args: dict[str, Any]) -> int:
        count = self._apply_command(op, args)
        broker = self.broker
        if isinstance(broker, DistributedBroker):
            broker.send_command(op, args)
        return count

    def _apply_command(self, op: str, args: Mapping[str, Any]) -> int:
        """Apply a cluster command to the sockets of this process (also called by the broker
        for commands from other processes, whose arguments are checked here)."""
        sockets = list(self._sockets.values())
        count = 0
        match op:
            case "deauthenticate_user" | "disconnect_user" | "revoke_token":
                claim, value = ("jti", args.get("jti")) if op == "revoke_token" else (
                    "username", args.get("username"))  # fmt: skip
                if not isinstance(value, str):
                    return 0
                code, reason = args.get("code", 1000), args.get("reason", "")
                if op == "disconnect_user" and (
                    type(code) is not int or not 1000 <= code <= 4999 or not isinstance(reason, str)
                ):
                    return 0
                for socket in sockets:
                    token = socket.auth_token
                    if token is None or token.get(claim) != value:
                        continue
                    if op == "disconnect_user":
                        socket.disconnect(code, reason)
                    else:
                        socket.deauthenticate()
                    count += 1
            case "kick_out":
                channel, message = args.get("channel"), args.get("message")
                if not isinstance(channel, str) or not (
                    message is None or isinstance(message, str)
                ):
                    return 0
                for socket in sockets:
                    if channel in socket.channels:
                        socket.kick_out(channel, message)
                        count += 1
            case _:
                log.warning("unknown cluster command %r ignored", op)
        return count

    def register_socket(self, socket: ServerSocket) -> None:
        """List a socket that completed its handshake in ``sockets``."""
        self._sockets[socket.id] = socket

    def forget_socket(self, socket: ServerSocket) -> bool:
        """Unlist a closed socket; whether it was listed."""
        return self._sockets.pop(socket.id, None) is not None

    # ------------------------------------------------------------------ connections

    async def _upgrade_check(self, request: HandshakeRequest) -> Rejection | None:
        origin = request.origin
        if not origin_allowed(self.config.origins, origin):
            return Rejection(
                status=403, body=f"Failed to authorize socket handshake - Invalid origin: {origin}"
            )
        chain = self.middleware.chain(Hook.HANDSHAKE_WS)
        if chain:
            req = HandshakeWSRequest(request=request, now=self.now())
            outcome = await run_chain_async(chain, req)
            if isinstance(outcome, Blocked):
                if outcome.exception is not None:
                    log.warning("handshakeWS middleware raised", exc_info=outcome.exception)
                err = outcome.error
                body = err if isinstance(err, str) else err.message
                return Rejection(status=outcome.status_code or 401, body=body or "Unauthorized")
        return None

    async def handle_transport(self, transport: Transport) -> None:
        """Serve one accepted connection until it closes. Never raises (but Cancelled)."""
        socket = ServerSocket(self, transport, _socket_id())
        try:
            await socket.run()
        except Exception:
            log.exception("connection %s failed", socket.id)

    async def handle_stream(
        self, stream: trio.abc.Stream, *, remote_address: tuple[str, int] | None = None
    ) -> None:
        """Run the WebSocket upgrade on ``stream`` and serve the connection. Closes ``stream``."""
        cfg = self.config
        if remote_address is None:
            sock = getattr(stream, "socket", None)
            try:
                peer = sock.getpeername() if sock is not None else None
                remote_address = (str(peer[0]), int(peer[1])) if peer else None
            except OSError:
                remote_address = None
        try:
            transport = await accept_websocket(
                stream,
                path=cfg.path,
                check=self._upgrade_check,
                http_handler=self.http_handler,
                max_message_bytes=cfg.max_payload_bytes,
                max_buffer_bytes=cfg.max_buffer_bytes,
                upgrade_timeout_s=cfg.handshake_timeout_s,
                remote_address=remote_address,
            )
        except Exception:
            log.exception("websocket upgrade failed")
            await trio.aclose_forcefully(stream)
            return
        if transport is None:
            return
        # handle_transport inlined: one coroutine frame less held by every open connection.
        socket = ServerSocket(self, transport, _socket_id())
        try:
            await socket.run()
        except Exception:
            log.exception("connection %s failed", socket.id)

    async def handle_trio_websocket_request(self, request: Any) -> None:
        """Serve a ``trio_websocket.WebSocketRequest`` from an application's own
        trio-websocket server (the adapter transport). Origin check and handshake-WS middleware
        apply; the path is the application's business."""
        from ..transport.trio_websocket import accept_trio_websocket

        transport = await accept_trio_websocket(
            request, check=self._upgrade_check, max_buffer_bytes=self.config.max_buffer_bytes
        )
        if transport is None:
            return
        await self.handle_transport(transport)

    async def serve(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled.

        ``task_status.started`` receives the listeners (port 0 picks a free port: read it from
        ``listeners[0].socket.getsockname()``). Cancellation closes every socket with 1001,
        each under a shielded deadline of ``shutdown_timeout_s``; nothing is left running.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like ``serve`` with listeners you opened (SO_REUSEPORT, unix sockets...)."""
        self.now()  # fix the wall-clock offset while trio runs
        self._warn_if_random_key()
        async with trio.open_nursery() as nursery:
            await self.start_broker(nursery)
            await nursery.start(trio.serve_listeners, self.handle_stream, listeners)
            task_status.started(listeners)

    async def start_broker(self, nursery: trio.Nursery) -> None:
        """Start the broker's background tasks (if it has any, as the Redis broker does) in
        ``nursery``. ``serve`` does this; call it yourself when you only use
        ``handle_stream``/``handle_trio_websocket_request``."""
        broker = self.broker
        if isinstance(broker, RunnableBroker):
            await nursery.start(broker.run)

    def run(self, host: str | None = "127.0.0.1", port: int = 8000) -> None:
        """Serve in a new trio run until SIGINT (Ctrl+C) or SIGTERM, then shut down
        gracefully (every socket closed with 1001). ``OSError`` if the port cannot be bound."""
        trio.run(self._run_until_signal, host, port)

    async def _run_until_signal(self, host: str | None, port: int) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            listeners = await trio.open_tcp_listeners(port, host=host)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.serve_listeners, listeners)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
