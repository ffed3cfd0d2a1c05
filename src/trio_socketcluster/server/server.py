"""The ``Server``: configuration, registrations, and the trio entry points.

Entry points (all structured: nothing runs outside the caller's nursery):

* ``await nursery.start(server.serve, host, port)``: listen on TCP with our wsproto
  transport; ``task_status.started`` gets the listeners. Cancelling it drains (below) and
  returns within ``shutdown_timeout_s``.
* ``await server.handle_stream(stream)``: serve one already accepted trio stream.
* ``await server.handle_trio_websocket_request(request)``: serve one connection of an
  application that runs its own trio-websocket server (any route it likes).
* ``server.run(host, port)``: ``trio.run`` with Ctrl+C handling, for scripts.

TLS: ``serve(..., ssl_context=)`` wraps the listeners (``wss://``); ``serve_listeners`` takes
any trio listeners, ``trio.SSLListener`` included.

Operations (see docs/operations.md): ``server.metrics`` counts what happens (rendered by
``render_metrics()`` in the Prometheus text format); plain HTTP on the WebSocket port answers
``/healthz``, ``/readyz`` (``health_checks``) and ``/metrics`` (``metrics=True``) before the
application's ``http_handler``; ``metrics_port`` serves the three on a port of their own.
``server.ready`` is false from ``start_draining()`` on (``/readyz`` answers 503, upgrades are
refused with 503). Admission limits (``max_connections``, handshake rates) refuse upgrades
with 503 and ``Retry-After`` before any WebSocket work.

The drain (cancelling ``serve``/``serve_listeners``; ``run`` and the command line on SIGTERM or
SIGINT): from its first moment ``ready`` is false (``start_draining``); the listeners stop
accepting; every socket stops reading (nothing new is acknowledged from then on), writes what
is already queued (every publication acknowledged before that moment, to every local
subscriber), then closes with 1001 "Server is shutting down"; a broker with an outbound queue
(``FlushingBroker``: Redis) writes it out; the broker stops once every connection has ended.
Whatever still runs at ``shutdown_timeout_s`` after the start is cancelled. Python's cyclic
garbage collector is paused from the start of the drain until ``serve`` returns
(``collector.GcPause``).

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
import contextlib
import errno
import inspect
import logging
import os
import secrets
import signal
import socket as stdlib_socket
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, runtime_checkable

import trio

from ..auth import AuthEngine, Keyring, decode_unverified
from ..brokers.base import (
    Broker,
    DistributedBroker,
    FlushingBroker,
    HistoryBroker,
    ObservableBroker,
    RunnableBroker,
)
from ..brokers.local import LocalBroker
from ..brokers.local_revocation import LocalRevocationStore
from ..collector import FreezeSurvivors, GcPause
from ..config import ServerConfig, resolve_cluster_key
from ..errors import InvalidArgumentsError, InvalidOptionsError
from ..history import HistoryConfig
from ..identity import IdentityProvider, TokenVerifier, VerifiedToken
from ..limits import Admission
from ..metrics import Gauges, Metrics, render
from ..middleware import (
    Blocked,
    HandshakeWSRequest,
    Hook,
    Middleware,
    MiddlewareRegistry,
    origin_allowed,
    run_chain_async,
)
from ..protocol import MISSING
from ..ratelimit import WarningLimiter
from ..revocation import (
    DEFAULT_USER_CLAIM,
    JtiRevoked,
    Revocation,
    RevocationEvent,
    RevocationStore,
    UserRevoked,
    revoked_error,
)
from ..transport.base import HandshakeRequest, Rejection, Transport
from ..transport.upgrade import HeadReader, Refused, handshake_request, http_response
from ..transport.ws import accept_websocket
from .heartbeat import Heartbeat
from .http import UPGRADE_REQUIRED, HttpHandler
from .index import TokenIndex
from .socket import HandlerEntry, RenewalHook, ServerSocket

if TYPE_CHECKING:
    import ssl

    from ..oidc import ProviderConfig

__all__ = ["Handler", "Server"]

log = logging.getLogger("trio_socketcluster")

Handler = Callable[[ServerSocket, Any], Any]
F = TypeVar("F", bound=Callable[..., Any])

LISTENER_EVENTS = frozenset(
    {"connection", "disconnection", "authenticate", "deauthenticate", "authStateChange",
     "badAuthToken"}
)  # fmt: skip


@runtime_checkable
class _Runnable(Protocol):
    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


def _socket_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(15)).decode("ascii")


#: What ``configure_operations`` may change.
OPERATIONS_OPTIONS = frozenset(
    {"metrics", "metrics_port", "metrics_host", "health_checks", "max_connections",
     "handshake_rate_per_s", "handshake_burst", "per_address_rate_per_s", "per_address_burst"}
)  # fmt: skip
_NO_STORE = (("Cache-Control", "no-store"),)
_HEALTH_PATHS = ("/healthz", "/readyz")
_DRAINING = Rejection(
    status=503,
    body="Service Unavailable: the server is shutting down",
    headers=(("Retry-After", "1"),),
)


def _cause_name(cause: Hashable) -> str:
    """A warning cause as a log field: an enum member's value, a tuple's parts joined."""
    if isinstance(cause, tuple):
        return ":".join(_cause_name(part) for part in cause)
    value = getattr(cause, "value", cause)
    return str(value)


_ACCEPT_BATCH = 64
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def _is_tcp(listener: trio.abc.Listener[Any]) -> TypeGuard[trio.SocketListener]:
    return isinstance(listener, trio.SocketListener) and listener.socket.family in (
        stdlib_socket.AF_INET,
        stdlib_socket.AF_INET6,
    )


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The TCP peer of ``stream`` (through TLS: of its transport stream), or ``None``."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        return None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return None


class Server:
    """A SocketCluster server. See the module docstring for the entry points.

    ``Server(**options)`` takes the fields of ``ServerConfig`` as keyword arguments (or a ready
    ``config=``), plus ``broker=`` (default: in-process; a ``redis://`` URL selects the
    ``RedisBroker``, see ``set_broker``) and ``auth=`` (a ready
    ``AuthEngine``; default: built from the ``auth_*`` options, with a random HS256 key per
    process when no key is given).

    Channel history: ``history=`` (a ``HistoryConfig``) names the channels that keep
    history, so subscribers can recover what they missed.

    Tokens (see ``docs/authentication.md``):

    * ``identity_providers``: ``IdentityProvider``s (or their ``ProviderConfig``s) whose
      tokens are accepted beside the server's own; ``socket.auth_issuer`` and
      ``AuthenticateRequest.issuer`` say which one vouched (``None``: the server's key).
    * ``revocation_store``: where revocations live (``revoke_token``,
      ``revoke_user_tokens``). Default: in this process's memory, or in Redis when the
      broker is given as a Redis URL (shared by every worker, kept across restarts).
    * ``user_claim``: the claim that says who a token's user is (default ``username``), for
      ``transmit_to_user``, ``disconnect_user``, ``deauthenticate_user`` and
      ``revoke_user_tokens``.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        broker: Broker | str | None = None,
        auth: AuthEngine | None = None,
        history: HistoryConfig | None = None,
        now: Callable[[], float] | None = None,
        identity_providers: Sequence[IdentityProvider | ProviderConfig] = (),
        revocation_store: RevocationStore | None = None,
        user_claim: str = DEFAULT_USER_CLAIM,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise InvalidOptionsError("pass either config= or keyword options, not both")
        cfg = config if config is not None else ServerConfig(**options)
        self._hs256_key: str | bytes | None = None  # the configured or installed HMAC key
        self._auth_key_generated = False  # a random key: install_auth_key may replace it
        self.auth = self._make_auth(cfg, auth, leeway_given="auth_leeway_s" in options)
        self.config = replace(cfg, auth_leeway_s=self.auth.leeway_s)  # one value, the engine's
        if not isinstance(user_claim, str) or not user_claim:
            raise InvalidOptionsError("user_claim must be a non-empty string")
        self.user_claim = user_claim
        self._index: TokenIndex[ServerSocket] = TokenIndex(user_claim)
        self._revocation: RevocationStore = LocalRevocationStore(
            clock=self.now, leeway_s=self.auth.leeway_s, user_claim=user_claim
        )
        self._revocation_given = False
        self._stop_listening: Callable[[], None] | None = None
        self._longest_lifetime_s = 0.0
        self._nursery: trio.Nursery | None = None
        providers = [
            p if isinstance(p, IdentityProvider) else IdentityProvider(p)
            for p in identity_providers
        ]
        self._verifier = TokenVerifier(self.auth, providers)
        self.set_revocation_store(revocation_store or self._revocation)
        self._revocation_given = revocation_store is not None
        if history is not None and not isinstance(history, HistoryConfig):
            raise InvalidOptionsError("history must be a HistoryConfig")
        #: Which channels keep history (``history=``), handed to every broker set.
        self.history = history
        self.broker: Broker = LocalBroker()
        #: ``broker`` again when it is distributed / keeps history, else ``None`` (checked once
        #: in ``set_broker``: a protocol ``isinstance`` costs microseconds per connection).
        self.distributed_broker: DistributedBroker | None = None
        self.history_broker: HistoryBroker | None = None
        self.set_broker(broker if broker is not None else self.broker)
        self.middleware = MiddlewareRegistry()
        #: Pings the handshaken sockets while ``start_broker``'s nursery runs.
        self.heartbeat = Heartbeat(
            after_round=FreezeSurvivors.pace if self.config.gc_freeze else None
        )
        self._handlers: dict[str, HandlerEntry] = {}
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in LISTENER_EVENTS}
        self._renewal: RenewalHook | None = None
        self._client_warnings = WarningLimiter(interval_s=60.0)
        self._sockets: dict[str, ServerSocket] = {}
        self._live: set[ServerSocket] = set()  # every running connection, handshaken or not
        self._accepting: trio.CancelScope | None = None  # serve_listeners' accept loop
        self._now = now
        self._clock_offset: float | None = None
        #: Answers plain HTTP requests on the port (see ``server.http.static_files``).
        self.http_handler: HttpHandler | None = None
        #: What the server counts (``render_metrics()`` exposes it).
        self.metrics = Metrics()
        limits = self.config.admission_limits
        self._admission = Admission(limits) if limits.active else None
        self._streams = 0  # connections being served (upgrading or open), for max_connections
        self._draining = False
        #: The listeners of ``metrics_port`` once ``serve_listeners`` has started.
        self.metrics_listeners: list[trio.SocketListener] = []

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
            url, broker = broker, RedisBroker.from_url(broker, cluster_key=key)
            if not self._revocation_given:
                from ..brokers.redis_revocation import RedisRevocationStore

                self.set_revocation_store(
                    RedisRevocationStore.from_url(
                        url,
                        clock=self.now,
                        leeway_s=self.auth.leeway_s,
                        user_claim=self.user_claim,
                    )
                )
                self._revocation_given = False
        if self.history:
            if not isinstance(broker, HistoryBroker):
                raise InvalidOptionsError(f"{type(broker).__name__} keeps no channel history")
            broker.set_history(self.history)
        self.broker = broker
        self.history_broker = broker if isinstance(broker, HistoryBroker) else None
        self.distributed_broker = broker if isinstance(broker, DistributedBroker) else None
        if self.distributed_broker is not None:  # commands from other processes
            self.distributed_broker.set_command_handler(self._apply_command)

    # ------------------------------------------------------------------ tokens

    @property
    def revocation(self) -> RevocationStore:
        """The revocation store in use (see ``set_revocation_store``)."""
        return self._revocation

    def set_revocation_store(self, store: RevocationStore) -> None:
        """Keep revocations in ``store`` (a ``LocalRevocationStore`` or a
        ``RedisRevocationStore``, built with ``clock=server.now``, the engine's ``leeway_s``
        and this server's ``user_claim``). Call it before serving; ``serve`` (or
        ``start_broker``) runs a store that has background tasks."""
        if self._stop_listening is not None:
            self._stop_listening()
        self._revocation = store
        self._revocation_given = True
        self._stop_listening = store.listen(self._on_revocation)

    @property
    def identity_providers(self) -> Mapping[str, IdentityProvider]:
        """The external identity providers, by issuer."""
        return self._verifier.providers

    def issue_token(self, payload: Mapping[str, Any], *, expires_in_s: float | None = None) -> str:
        """Sign ``payload`` as a new token of this server: a fresh ``jti`` and ``iat_us``
        (replacing any in the payload), ``iat``, and ``exp`` as ``AuthEngine.sign`` sets
        them. ``socket.set_auth_token`` uses it; so can an HTTP login. ``AuthError`` if
        signing fails."""
        return self.sign_token(payload, expires_in_s=expires_in_s)[0]

    def sign_token(
        self, payload: Mapping[str, Any], *, expires_in_s: float | None
    ) -> tuple[str, dict[str, Any]]:
        """``issue_token``, with the signed claims."""
        signed = self.auth.sign(
            payload,
            now=self.now(),
            expires_in_s=expires_in_s,
            jti=secrets.token_urlsafe(16),
            issued_at_us=self._revocation.issue_stamp(),
        )
        claims = decode_unverified(signed)
        if claims is None:  # pragma: no cover - our own token always decodes
            raise InvalidArgumentsError("the signed token does not decode")
        exp, iat = claims.get("exp"), claims.get("iat")
        if isinstance(exp, int | float) and isinstance(iat, int | float):
            self._longest_lifetime_s = max(self._longest_lifetime_s, float(exp - iat))
        return signed, claims

    async def verify_token(self, token: object) -> VerifiedToken:
        """Verify ``token`` (the server's key, then the identity providers) and check it
        against the revocation store. Raises ``AuthTokenError``s only: a revoked token
        gives ``AuthTokenInvalidError("jwt revoked")`` (a bad token)."""
        verifier = self._verifier
        if verifier.engine is not self.auth:  # install_auth_key replaced the engine
            verifier = self._verifier = TokenVerifier(self.auth, list(verifier.providers.values()))
        verified = await verifier.verify(token, now=self.now())
        reason = await self._revocation.check(verified.claims)
        if reason is not None:
            raise revoked_error(reason)
        return verified

    async def check_revoked(self, claims: Mapping[str, Any]) -> Revocation | None:
        """Why the revocation store refuses these verified claims now, or ``None``."""
        return await self._revocation.check(claims)

    def token_changed(
        self, socket: ServerSocket, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        """A socket's auth token changed: keep the user/jti index current."""
        self._index.changed(socket, old, new)

    async def revoke_token(self, jti: str, *, exp: float | None) -> JtiRevoked:
        """Revoke the token ``jti`` on every worker: sockets authenticated with it are
        deauthenticated, and it is refused at the handshake and at ``#authenticate`` until
        it would have expired anyway (``exp`` plus the leeway; ``exp=None``: forever, the
        entry is never forgotten). With the Redis store the revocation survives restarts.

        Applied on this process before the first checkpoint; ``BrokerError`` if the shared
        store did not take it (then only this process refuses the token)."""
        if not isinstance(jti, str):
            raise InvalidArgumentsError("jti must be a string")
        return await self._revocation.revoke_jti(jti, exp)

    async def revoke_user_tokens(self, user: str, *, ttl_s: float | None = None) -> UserRevoked:
        """Revoke every token of ``user`` (the ``user_claim`` value) issued up to now, on
        every worker ("log out everywhere"): its sockets are deauthenticated, its older tokens
        refused; tokens issued afterwards work (even within the same second).

        The watermark is kept ``ttl_s`` seconds (default: the longest token lifetime this
        process issued, at least ``auth.default_expiry_s``): pass more if other code
        issues longer-lived tokens. Same errors as ``revoke_token``."""
        if not isinstance(user, str):
            raise InvalidArgumentsError("user must be a string")
        if ttl_s is None:
            ttl_s = max(self._longest_lifetime_s, self.auth.default_expiry_s or 0.0, 1.0)
        return await self._revocation.revoke_user_before(user, ttl_s=ttl_s)

    def _on_revocation(self, event: RevocationEvent) -> None:
        """The store applied a revocation (made here or on another worker): deauthenticate
        the live sockets whose token it revokes."""
        if isinstance(event, JtiRevoked):
            candidates = self._index.of_jti(event.jti)
        elif event.user_claim == self.user_claim:
            candidates = self._index.of_user(event.user)
        else:  # a store that names users by another claim
            candidates = list(self._sockets.values())
        for socket in candidates:
            token = socket.auth_token
            if token is not None and event.revokes(token):
                socket.deauthenticate(in_order=True)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the server's nursery (the one ``serve`` runs in, or the one
        given to ``start_broker``); cancelled when the server stops. An exception it raises
        is logged, not propagated. E.g. a plain handler that must answer before acting.
        ``InvalidActionError`` if the server is not running."""
        nursery = self._nursery
        if nursery is None:
            from ..errors import InvalidActionError

            raise InvalidActionError("the server is not running")
        nursery.start_soon(self._run_logged, fn, args)

    @staticmethod
    async def _run_logged(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        except Exception:  # the application's task (Server.start_soon): its fault
            log.exception("background task %r failed", getattr(fn, "__name__", fn))

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

    def handler_for(self, event: str) -> HandlerEntry | None:
        """The handler registered for ``event`` and whether it is async."""
        return self._handlers.get(event)

    def warn_client(self, cause: Hashable, message: str, *args: Any) -> None:
        """Log a warning a client caused: at most one per ``cause`` (a ``Fault``, or another
        value from a fixed set, never client input) a minute, no traceback.

        The record carries ``client_warning`` (the cause's name) and ``suppressed`` (how many
        like it were not logged since the previous one) as ``extra=`` fields: the JSON log
        format shows them, and tests tell client-caused warnings from others by them."""
        suppressed = self._client_warnings.allow(cause, trio.current_time())
        if suppressed is None:
            return
        if suppressed:
            message += " (%d more like it in the last minute not logged)"
            args = (*args, suppressed)
        log.warning(
            message, *args, extra={"client_warning": _cause_name(cause), "suppressed": suppressed}
        )

    def emit_listener_event(self, event: str, *args: Any) -> None:
        """Call the listeners of ``event`` in order; one that raises is logged and skipped."""
        for fn in self._listeners[event]:
            try:
                fn(*args)
            except Exception:  # the application's listener: its fault
                log.exception("%s listener raised", event)

    # ------------------------------------------------------------------ views and actions

    @property
    def sockets(self) -> Mapping[str, ServerSocket]:
        """Connected (handshaken) sockets by id; a read-only live view."""
        return MappingProxyType(self._sockets)

    @property
    def client_count(self) -> int:
        return len(self._sockets)

    # ------------------------------------------------------------------ operations

    def configure_operations(self, **options: Any) -> None:
        """Change the operational options of a loaded application before serving (what the
        command line's ``--metrics``, ``--metrics-port``, ``--max-connections`` and the
        rate options do): any of ``OPERATIONS_OPTIONS``; ``InvalidOptionsError`` for others or
        for invalid values."""
        unknown = set(options) - OPERATIONS_OPTIONS
        if unknown:
            raise InvalidOptionsError(f"not an operational option: {', '.join(sorted(unknown))}")
        self.config = replace(self.config, **options)
        limits = self.config.admission_limits
        self._admission = Admission(limits) if limits.active else None

    @property
    def ready(self) -> bool:
        """True while accepting connections; false from ``start_draining()`` on."""
        return not self._draining

    def start_draining(self) -> None:
        """Stop accepting: ``/readyz`` answers 503 and upgrades are refused with 503 from now
        on. Open connections are not touched (the shutdown sequence closes them)."""
        self._draining = True

    def gauges(self) -> Gauges:
        """The scrape-time readings of ``/metrics``."""
        sockets = self._sockets
        return Gauges(
            connections=lambda: len(sockets),
            authenticated_connections=lambda: sum(
                1 for s in sockets.values() if s.auth_token is not None
            ),
            subscriptions=lambda: sum(len(s.channels) for s in sockets.values()),
            broker=self._broker_state,
            ready=lambda: self.ready,
        )

    def _broker_state(self) -> Mapping[str, float]:
        broker = self.broker
        return broker.state() if isinstance(broker, ObservableBroker) else {}

    def render_metrics(self) -> str:
        """Every metric in the Prometheus text format (what ``GET /metrics`` answers)."""
        m = self.metrics
        broker = self.broker
        if isinstance(broker, ObservableBroker):
            # Handed to sockets by the broker, less those publish-out middleware blocked.
            m.deliveries = broker.delivered - m.middleware_blocks.get("publishOut", 0)
        return render(m, self.gauges())

    def ops_response(
        self, request: HandshakeRequest, *, metrics: bool = True, health: bool = True
    ) -> Rejection | None:
        """The answer to ``/metrics`` (with ``metrics``), ``/healthz`` and ``/readyz`` (with
        ``health``), or ``None`` for any other path."""
        path = request.path
        if not ((metrics and path == "/metrics") or (health and path in _HEALTH_PATHS)):
            return None
        if request.method not in ("GET", "HEAD"):
            return Rejection(status=405, body="Method Not Allowed", headers=(("Allow", "GET"),))
        if path == "/healthz":
            return Rejection(status=200, body="ok\n", headers=_NO_STORE)
        if path == "/readyz":
            if self.ready:
                return Rejection(status=200, body="ready\n", headers=_NO_STORE)
            return Rejection(status=503, body="draining\n", headers=_NO_STORE)
        return Rejection(
            status=200,
            body=self.render_metrics(),
            headers=(("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), *_NO_STORE),
        )

    async def _http(self, request: HandshakeRequest) -> Rejection:
        """Plain HTTP on the WebSocket port: health checks and metrics, then the
        application's ``http_handler``, else 426."""
        cfg = self.config
        answer = self.ops_response(request, metrics=cfg.metrics, health=cfg.health_checks)
        if answer is not None:
            return answer
        if self.http_handler is not None:
            return await self.http_handler(request)
        return UPGRADE_REQUIRED

    async def _serve_ops_stream(self, stream: trio.abc.Stream) -> None:
        """One request on the ``metrics_port``: ``/metrics``, ``/healthz``, ``/readyz``."""
        try:
            with trio.move_on_after(self.config.handshake_timeout_s):
                reader = HeadReader()
                head = None
                is_head = False
                try:
                    while head is None:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        head = reader.feed(data)
                    request = handshake_request(head, path="/", remote_address=None)
                    is_head = request.method == "HEAD"
                    answer = self.ops_response(request, metrics=True) or Rejection(
                        status=404, body="Not Found: /metrics, /healthz or /readyz"
                    )
                except Refused as refused:
                    answer = refused.rejection
                await stream.send_all(http_response(answer, head=is_head))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    @property
    def draining(self) -> bool:
        """True once a drain has begun (module docstring); never false again."""
        return self._draining

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

    #
    # A *user* is the value of the token claim ``user_claim`` (``username`` by default).

    def deauthenticate_user(self, username: str) -> int:
        """Deauthenticate every socket authenticated as ``username`` (its token's
        ``user_claim``). The client may present the token again: ``revoke_user_tokens``
        refuses it too."""
        if not isinstance(username, str):
            raise InvalidArgumentsError("username must be a string")
        return self._cluster_command("deauthenticate_user", {"username": username})

    def disconnect_user(self, username: str, code: int = 1000, reason: str = "") -> int:
        """Close every socket authenticated as ``username``."""
        if not isinstance(username, str):
            raise InvalidArgumentsError("username must be a string")
        if type(code) is not int or not 1000 <= code <= 4999 or not isinstance(reason, str):
            raise InvalidArgumentsError("code must be an int in 1000..4999, reason a string")
        return self._cluster_command(
            "disconnect_user", {"username": username, "code": code, "reason": reason}
        )

    def transmit_to_user(self, username: str, event: str, data: Any = MISSING) -> int:
        """Transmit ``event`` (with ``data``, if given) to every socket authenticated as
        ``username``, on every worker. ``InvalidActionError`` for reserved event names;
        with a distributed broker ``data`` must have a JSON form."""
        if not isinstance(username, str):
            raise InvalidArgumentsError("username must be a string")
        ServerSocket.check_outbound_event(event)
        args: dict[str, Any] = {"username": username, "event": event}
        if data is not MISSING:
            args["data"] = data
        return self._cluster_command("transmit_to_user", args)

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
        count = 0
        match op:
            case "deauthenticate_user" | "disconnect_user" | "transmit_to_user":
                user = args.get("username")
                if not isinstance(user, str):
                    return 0
                code, reason = args.get("code", 1000), args.get("reason", "")
                if op == "disconnect_user" and (
                    type(code) is not int or not 1000 <= code <= 4999 or not isinstance(reason, str)
                ):
                    return 0
                event = args.get("event")
                if op == "transmit_to_user" and not isinstance(event, str):
                    return 0
                for socket in self._index.of_user(user):
                    if op == "disconnect_user":
                        socket.disconnect(code, reason)
                    elif op == "deauthenticate_user":
                        socket.deauthenticate()
                    else:
                        try:
                            socket.transmit(event, args.get("data", MISSING))  # type: ignore[arg-type]
                        except Exception as exc:  # a reserved name from another process
                            log.warning("transmit_to_user %r refused: %s", event, exc)
                            return count
                    count += 1
            case "kick_out":
                sockets = list(self._sockets.values())
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
        self._index.remove(socket, socket.auth_token)
        return self._sockets.pop(socket.id, None) is not None

    # ------------------------------------------------------------------ connections

    def _admit(self, request: HandshakeRequest) -> Rejection | None:
        """The admission limits and the drain: 503 with ``Retry-After``, or ``None``."""
        if self._draining:
            self.metrics.count(self.metrics.refused_connections, "draining")
            return _DRAINING
        admission = self._admission
        if admission is None:
            return None
        address = request.remote_address
        refusal = admission.admit(
            now=trio.current_time(),
            address=address[0] if address is not None else None,
            open_connections=self._streams - 1,  # the others: this one is counted already
        )
        if refusal is None:
            return None
        self.metrics.count(self.metrics.refused_connections, refusal.cause)
        self.warn_client(
            ("refused", refusal.cause), "refusing connections: the %s limit is reached",
            refusal.cause,
        )  # fmt: skip
        return Rejection(
            status=503,
            body="Service Unavailable: too many connections, retry later",
            headers=(("Retry-After", refusal.retry_after_header),),
        )

    async def _upgrade_check(self, request: HandshakeRequest) -> Rejection | None:
        refused = self._admit(request)
        if refused is not None:
            return refused
        origin = request.origin
        if not origin_allowed(self.config.origins, origin):
            self.metrics.handshakes["rejected"] += 1
            return Rejection(
                status=403, body=f"Failed to authorize socket handshake - Invalid origin: {origin}"
            )
        chain = self.middleware.chain(Hook.HANDSHAKE_WS)
        if chain:
            req = HandshakeWSRequest(request=request, now=self.now())
            outcome = await run_chain_async(chain, req)
            if isinstance(outcome, Blocked):
                if outcome.exception is not None:  # the application's middleware
                    log.warning("handshakeWS middleware raised", exc_info=outcome.exception)
                m = self.metrics
                m.handshakes["rejected"] += 1
                m.count(m.middleware_blocks, Hook.HANDSHAKE_WS.value)
                err = outcome.error
                body = err if isinstance(err, str) else err.message
                return Rejection(status=outcome.status_code or 401, body=body or "Unauthorized")
        return None

    async def handle_transport(self, transport: Transport) -> None:
        """Serve one accepted connection until it closes. Never raises (but Cancelled)."""
        socket = ServerSocket(self, transport, _socket_id())
        await self._run_socket(socket)

    async def _run_socket(self, socket: ServerSocket) -> None:
        address = socket.remote_address
        fields = {"socket_id": socket.id, "client": address[0] if address else None}
        log.debug("connection open", extra=fields)
        if self._draining:  # accepted while draining: closed with 1001 at once
            socket.shut_down(trio.current_time() + self.config.shutdown_timeout_s)
        self._live.add(socket)
        FreezeSurvivors.connection_opened()
        try:
            await socket.run()
        except Exception:  # a bug of ours: socket.run answers every client input itself
            log.exception("connection %s failed", socket.id, extra=fields)
        finally:
            self._live.discard(socket)
            FreezeSurvivors.connection_closed()
        log.debug(
            "connection closed (%s %s)", socket.close_code, socket.close_reason,
            extra={**fields, "code": socket.close_code},
        )  # fmt: skip

    async def handle_stream(
        self, stream: trio.abc.Stream, remote_address: tuple[str, int] | None = None
    ) -> None:
        """Run the WebSocket upgrade on ``stream`` and serve the connection. Closes ``stream``."""
        cfg = self.config
        if remote_address is None:
            remote_address = _peer_address(stream)
        self._streams += 1
        try:
            try:
                transport = await accept_websocket(
                    stream,
                    path=cfg.path,
                    check=self._upgrade_check,
                    http_handler=self._http,
                    max_message_bytes=cfg.max_payload_bytes,
                    max_buffer_bytes=cfg.max_buffer_bytes,
                    upgrade_timeout_s=cfg.handshake_timeout_s,
                    remote_address=remote_address,
                )
            except Exception:  # a bug of ours: accept_websocket raises only Cancelled
                log.exception("websocket upgrade failed")
                await trio.aclose_forcefully(stream)
                return
            if transport is None:
                return
            # _run_socket inlined: one coroutine frame less held by every open connection.
            socket = ServerSocket(self, transport, _socket_id())
            fields = {
                "socket_id": socket.id,
                "client": remote_address[0] if remote_address else None,
            }
            log.debug("connection open", extra=fields)
            if self._draining:  # accepted while draining: closed with 1001 at once
                socket.shut_down(trio.current_time() + cfg.shutdown_timeout_s)
            self._live.add(socket)
            FreezeSurvivors.connection_opened()
            try:
                await socket.run()
            except Exception:  # a bug of ours: socket.run answers every client input itself
                log.exception("connection %s failed", socket.id, extra=fields)
            finally:
                self._live.discard(socket)
                FreezeSurvivors.connection_closed()
            log.debug(
                "connection closed (%s %s)", socket.close_code, socket.close_reason,
                extra={**fields, "code": socket.close_code},
            )  # fmt: skip
        finally:
            self._streams -= 1

    async def handle_trio_websocket_request(self, request: Any) -> None:
        """Serve a ``trio_websocket.WebSocketRequest`` from an application's own
        trio-websocket server (the adapter transport). Origin check and handshake-WS middleware
        apply; the path is the application's business."""
        from ..transport.trio_websocket import accept_trio_websocket

        self._streams += 1
        try:
            transport = await accept_trio_websocket(
                request, check=self._upgrade_check, max_buffer_bytes=self.config.max_buffer_bytes
            )
            if transport is None:
                return
            await self.handle_transport(transport)
        finally:
            self._streams -= 1

    async def serve(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled.

        ``task_status.started`` receives the listeners (port 0 picks a free port: read it from
        ``listeners[0].socket.getsockname()``, or ``.transport_listener.socket`` with TLS).
        With ``ssl_context`` (a server context with a certificate chain loaded) every
        connection is TLS (``wss://``); a failed TLS handshake just closes the connection.
        Cancellation drains (module docstring): what was queued is written, every socket is
        closed with 1001, and this returns (raising ``Cancelled``) within
        ``shutdown_timeout_s``; nothing is left running.
        """
        tcp = await trio.open_tcp_listeners(port, host=host)
        listeners: Sequence[trio.abc.Listener[Any]] = tcp
        if ssl_context is not None:
            listeners = [trio.SSLListener(ln, ssl_context, https_compatible=True) for ln in tcp]
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like ``serve`` with listeners you opened (SO_REUSEPORT, unix sockets, TLS through
        ``trio.SSLListener``...). With ``metrics_port`` set, its listener (``/metrics``,
        ``/healthz``, ``/readyz``) runs in the same nursery (``metrics_listeners``)."""
        self.now()  # fix the wall-clock offset while trio runs
        self._warn_if_random_key()
        cfg = self.config
        ops: list[trio.SocketListener] = []
        if cfg.metrics_port is not None:  # OSError (port taken) before anything runs
            ops = await trio.open_tcp_listeners(cfg.metrics_port, host=cfg.metrics_host)
        # The connections and the broker run shielded from our caller: its cancellation
        # starts the drain, which gives them until the deadline (then cancels this scope).
        body = trio.CancelScope(shield=True)
        freeze = FreezeSurvivors() if cfg.gc_freeze else contextlib.nullcontext()
        with GcPause() as gc_pause, freeze:
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(self._serve_shielded, list(listeners), ops, body)
                        task_status.started(list(listeners))
                        await trio.sleep_forever()
                    finally:
                        gc_pause.start()
                        with trio.CancelScope(shield=True):
                            await self._drain(body)
            finally:
                self._nursery = None

    async def _serve_shielded(
        self,
        listeners: list[trio.abc.Listener[Any]],
        ops: list[trio.SocketListener],
        body: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with body:
            async with trio.open_nursery() as nursery:
                await self.start_broker(nursery)
                if ops:
                    await nursery.start(trio.serve_listeners, self._serve_ops_stream, ops)
                    self.metrics_listeners = ops
                async with trio.open_nursery() as connections:
                    await connections.start(self._accept, listeners, connections)
                    task_status.started()
                nursery.cancel_scope.cancel()  # the broker stops once every connection ended

    async def _accept(
        self,
        listeners: list[trio.abc.Listener[Any]],
        connections: trio.Nursery,
        *,
        task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as self._accepting:  # the drain cancels it: listeners close
            async with trio.open_nursery() as loops:
                for listener in listeners:
                    if _is_tcp(listener):
                        loops.start_soon(self._accept_tcp, listener, connections)
                    else:  # TLS, unix sockets, any other listener: trio's own loop
                        loops.start_soon(
                            partial(trio.serve_listeners, handler_nursery=connections),
                            self.handle_stream,
                            [listener],
                        )
                task_status.started(listeners)

    async def _accept_tcp(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        """``trio.serve_listeners``' loop for one TCP listener, done here: ``accept`` on a
        duplicate of the listening descriptor, as many connections as are waiting per wake-up
        (one checkpoint per batch), each started as ``handle_stream(stream, remote_address)``.
        Per connection that is one coroutine (held while it is open), an ``async with`` and
        two checkpoints fewer than trio's loop, no ``getpeername`` call and no
        ``aclose_forcefully`` after ``handle_stream`` (which closes its stream itself)."""
        dup = stdlib_socket.socket(fileno=os.dup(listener.socket.fileno()))
        dup.setblocking(False)
        handle = self.handle_stream
        try:
            async with listener:  # closed when the loop ends, as trio's loop does
                while True:
                    for _ in range(_ACCEPT_BATCH):
                        try:
                            conn, addr = dup.accept()
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                                raise
                            # Out of descriptors or memory: what trio's loop does.
                            log.error("accept failed (%s); retrying in 0.1 s", exc)
                            await trio.sleep(0.1)
                            break
                        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                        connections.start_soon(handle, stream, (str(addr[0]), int(addr[1])))
                    else:
                        await trio.lowlevel.checkpoint()  # a full batch: let them run
                        continue
                    await trio.lowlevel.wait_readable(dup)
        finally:
            dup.close()

    async def _drain(self, body: trio.CancelScope) -> None:
        """The shutdown sequence (module docstring). Returns once the deadline is set and
        the broker's queue written (or the deadline passed); the caller's nursery then waits
        for the connections, which end by ``shutdown_timeout_s`` at the latest."""
        self.start_draining()
        deadline = trio.current_time() + self.config.shutdown_timeout_s
        body.deadline = min(body.deadline, deadline)
        if self._accepting is not None:
            self._accepting.cancel()
        # No checkpoint in this loop: once it ends no socket acknowledges anything new, and
        # every acknowledged publication is queued for its local subscribers.
        for socket in list(self._live):
            socket.shut_down(deadline)
        broker = self.broker
        if isinstance(broker, FlushingBroker):
            with trio.move_on_at(deadline):
                await broker.flush()

    async def start_broker(self, nursery: trio.Nursery) -> None:
        """Start the server's heartbeat (``server/heartbeat.py``) and the background tasks of
        the broker and of the revocation store (if they have any, as the Redis ones do) in
        ``nursery``, fetch the identity providers' keys
        (in the background; a failure is logged and retried when a token needs them), and
        make ``nursery`` the one ``start_soon`` uses. ``serve`` does this; call it yourself
        when you only use ``handle_stream``/``handle_trio_websocket_request``."""
        self._nursery = nursery
        if not self.heartbeat.running:
            await nursery.start(self.heartbeat.run)
        store = self._revocation
        if isinstance(store, _Runnable):
            await nursery.start(store.run)
        elif isinstance(self.broker, DistributedBroker):
            log.warning(
                "a distributed broker with an in-process revocation store: revocations "
                "apply on this process only (see Server.set_revocation_store)"
            )
        broker = self.broker
        if isinstance(broker, RunnableBroker):
            await nursery.start(broker.run)
        for provider in self._verifier.providers.values():
            nursery.start_soon(self._prefetch_keys, provider)

    @staticmethod
    async def _prefetch_keys(provider: IdentityProvider) -> None:
        try:
            await provider.refresh()
        except OSError as exc:
            log.warning("identity provider %s: %s", provider.issuer, exc)

    def run(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Serve in a new trio run until SIGINT (Ctrl+C) or SIGTERM, then shut down
        gracefully (every socket closed with 1001). ``OSError`` if the port cannot be bound."""
        trio.run(self._run_until_signal, host, port, ssl_context)

    async def _run_until_signal(
        self, host: str | None, port: int, ssl_context: ssl.SSLContext | None
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            tcp = await trio.open_tcp_listeners(port, host=host)
            listeners: list[Any] = tcp
            if ssl_context is not None:
                listeners = [trio.SSLListener(ln, ssl_context, https_compatible=True) for ln in tcp]
            async with trio.open_nursery() as nursery:
                await nursery.start(self.serve_listeners, listeners)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
