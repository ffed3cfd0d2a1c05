"""Middleware: one frozen request type per hook, the verdicts, the chain as a fold, built-ins.

What this module owns:

* ``Hook``: the seven places the server consults application middleware.
* One frozen keyword-only request dataclass per hook (``HandshakeWSRequest`` ...
  ``EmitRequest``), with class attributes ``hook`` and ``has_data``. Each carries ``now``
  (seconds on the server's clock, passed in) so that middleware needing time (rate limits,
  token age) stays pure and testable.
* The verdicts a middleware returns: ``Allow`` (optionally replacing ``data`` and, for
  publish-in, ``ack_data``), ``Block`` (an error, or nothing for a *silent* block), or
  ``None`` meaning "allow unchanged".
* The outcome of a whole chain, ``Allowed`` or ``Blocked``, which is what the server acts on,
  and the chain as one fold with two drivers: ``start_chain`` (sync: returns the outcome, or a
  ``Pending`` when a middleware returns an awaitable) and ``Pending.resume()`` (async: awaits
  and folds on). No middleware ever runs twice. ``run_chain`` (sync chains only) and
  ``run_chain_async`` are shorthands over the two.
* ``MiddlewareRegistry``: the per-hook chains in registration order.
* Built-in middleware factories: ``token_channels``, ``allowed_origins`` (with the pure
  predicate ``origin_allowed``), ``rate_limit`` over the pure ``TokenBucket``,
  ``valid_channel_names`` and ``max_payload_size``.

Chain semantics (both runners):

* Middleware run in registration order; the first block wins and later middleware is not
  called.
* ``Allow(data=x)`` hands ``dataclasses.replace(request, data=x)`` to the next middleware,
  and ``x`` becomes ``Allowed.data``. Hooks without data (``HANDSHAKE_WS``,
  ``AUTHENTICATE``) ignore ``Allow(data=...)``: there is nothing to change there.
  ``Allow(ack_data=...)`` only means something for ``PUBLISH_IN`` (the publisher's ack) and is
  ignored elsewhere.
* ``Allowed.changed`` is false when the final data is the request's own object, so the server
  can keep its encode-once path. Middleware must treat data as immutable: an in-place
  mutation is not detected.
* A block's ``status_code`` counts for ``HANDSHAKE_WS`` (HTTP status, default 401) and
  ``HANDSHAKE_SC`` (close code, default 4008; an error's ``statusCode`` field also counts);
  ``bad_token`` counts for ``AUTHENTICATE`` (also set by an ``AuthTokenError`` whose
  ``is_bad_token`` is true, or an error field ``isBadToken: true``).
* A middleware that raises a ``SocketClusterError`` blocks with that error (the app chose
  it). Any other ``Exception`` blocks with a generic ``UnknownError`` that tells the client
  nothing, and the exception is kept in ``Blocked.exception`` for the server to log.
  ``BaseException`` (cancellation, ``KeyboardInterrupt``) propagates.

This module is pure: no trio, no sockets, no clock, no randomness.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import urlsplit

from .errors import (
    AuthTokenError,
    InvalidArgumentsError,
    InvalidOptionsError,
    ResourceLimitError,
    ServerProtocolError,
    SilentMiddlewareBlockedError,
    SocketClusterError,
    UnknownError,
)

if TYPE_CHECKING:
    from .transport.base import HandshakeRequest

__all__ = [
    "ALLOW",
    "HANDSHAKE_SC_BLOCK_CODE",
    "HANDSHAKE_WS_BLOCK_STATUS",
    "MIDDLEWARE_FAILED_MESSAGE",
    "REQUEST_TYPES",
    "SILENT",
    "UNCHANGED",
    "Allow",
    "Allowed",
    "AuthenticateRequest",
    "Block",
    "Blocked",
    "EmitRequest",
    "HandshakeSCRequest",
    "HandshakeWSRequest",
    "Hook",
    "Middleware",
    "MiddlewareRegistry",
    "Pending",
    "PublishInRequest",
    "PublishOutRequest",
    "RateLimiter",
    "Request",
    "SubscribeRequest",
    "TokenBucket",
    "Verdict",
    "allowed_origins",
    "compose",
    "is_sync_chain",
    "json_size",
    "max_payload_size",
    "origin_allowed",
    "publish_out_request",
    "rate_limit",
    "run_chain",
    "run_chain_async",
    "start_chain",
    "start_chain_unless_allowed",
    "token_channels",
    "valid_channel_names",
]


class Hook(enum.Enum):
    """Where the server consults middleware; the value is the SocketCluster (v14) name."""

    HANDSHAKE_WS = "handshakeWS"
    HANDSHAKE_SC = "handshakeSC"
    AUTHENTICATE = "authenticate"
    SUBSCRIBE = "subscribe"
    PUBLISH_IN = "publishIn"
    PUBLISH_OUT = "publishOut"
    EMIT = "emit"


class _Unchanged(enum.Enum):
    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


#: "Not set": ``Allow()`` leaves data as it is; ``Allowed.ack_data`` when nobody set it.
UNCHANGED: Final = _Unchanged.UNCHANGED

#: Default HTTP status of a handshake-WS block and close code of a handshake-SC block.
HANDSHAKE_WS_BLOCK_STATUS: Final = 401
HANDSHAKE_SC_BLOCK_CODE: Final = 4008


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class HandshakeWSRequest:
    """The HTTP upgrade, before any socket exists. Blocks refuse it with an HTTP status."""

    hook: ClassVar[Hook] = Hook.HANDSHAKE_WS
    has_data: ClassVar[bool] = False
    request: HandshakeRequest
    now: float


@dataclass(frozen=True, kw_only=True, slots=True)
class HandshakeSCRequest:
    """The ``#handshake`` event; ``data`` is its packet data. Blocks close with a code."""

    hook: ClassVar[Hook] = Hook.HANDSHAKE_SC
    has_data: ClassVar[bool] = True
    socket: Any
    data: Any
    now: float


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthenticateRequest:
    """A token that verified (at handshake or ``#authenticate``), before it is accepted."""

    hook: ClassVar[Hook] = Hook.AUTHENTICATE
    has_data: ClassVar[bool] = False
    socket: Any
    auth_token: Mapping[str, Any]
    signed_auth_token: str
    now: float
    #: Who vouched for the token: an identity provider's issuer, ``None`` for the server's key.
    issuer: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscribeRequest:
    """A ``#subscribe``; ``data`` is the subscription data (stored, not sent anywhere)."""

    hook: ClassVar[Hook] = Hook.SUBSCRIBE
    has_data: ClassVar[bool] = True
    socket: Any
    channel: str
    wait_for_auth: bool
    data: Any
    auth_token: Mapping[str, Any] | None
    auth_token_expired: bool
    now: float


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishInRequest:
    """A client ``#publish``; replacing ``data`` changes what every subscriber gets."""

    hook: ClassVar[Hook] = Hook.PUBLISH_IN
    has_data: ClassVar[bool] = True
    socket: Any
    channel: str
    data: Any
    auth_token: Mapping[str, Any] | None
    auth_token_expired: bool
    now: float


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishOutRequest:
    """One delivery of a publication to one subscriber; a block drops it silently."""

    hook: ClassVar[Hook] = Hook.PUBLISH_OUT
    has_data: ClassVar[bool] = True
    socket: Any
    channel: str
    data: Any
    auth_token: Mapping[str, Any] | None
    now: float


@dataclass(frozen=True, kw_only=True, slots=True)
class EmitRequest:
    """A custom (non-reserved) event from the client, transmit or invoke."""

    hook: ClassVar[Hook] = Hook.EMIT
    has_data: ClassVar[bool] = True
    socket: Any
    event: str
    data: Any
    is_invoke: bool
    auth_token: Mapping[str, Any] | None
    auth_token_expired: bool
    now: float


Request = (
    HandshakeWSRequest
    | HandshakeSCRequest
    | AuthenticateRequest
    | SubscribeRequest
    | PublishInRequest
    | PublishOutRequest
    | EmitRequest
)

#: The request type each hook's middleware receives.
REQUEST_TYPES: Final[Mapping[Hook, type[Request]]] = {
    Hook.HANDSHAKE_WS: HandshakeWSRequest,
    Hook.HANDSHAKE_SC: HandshakeSCRequest,
    Hook.AUTHENTICATE: AuthenticateRequest,
    Hook.SUBSCRIBE: SubscribeRequest,
    Hook.PUBLISH_IN: PublishInRequest,
    Hook.PUBLISH_OUT: PublishOutRequest,
    Hook.EMIT: EmitRequest,
}


# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Allow:
    """Let the action through, optionally replacing ``data`` and (publish-in) ``ack_data``."""

    data: Any = UNCHANGED
    ack_data: Any = UNCHANGED


@dataclass(frozen=True, slots=True)
class Block:
    """Refuse the action with ``error``; no error means a *silent* block.

    A string error is sent as a string (``"error":"You are not authorized ..."``).
    ``status_code`` is the HTTP status (handshake-WS) or close code (handshake-SC);
    ``bad_token`` tells the client to drop its token (authenticate).
    """

    error: SocketClusterError | str | None = None
    _: dataclasses.KW_ONLY
    status_code: int | None = None
    bad_token: bool = False

    @classmethod
    def silent(cls) -> Block:
        """A block that sends the client only a ``SilentMiddlewareBlockedError``."""
        return SILENT


#: ``Allow()``: allow unchanged (returning ``None`` means the same).
ALLOW: Final = Allow()
#: ``Block()``: a silent block.
SILENT: Final = Block()

Verdict = Allow | Block

#: A middleware: a callable taking the hook's request and returning a verdict (or ``None``
#: for allow), or an async function returning the same.
Middleware = Callable[[Any], "Verdict | Awaitable[Verdict | None] | None"]
_F = TypeVar("_F", bound=Middleware)


# --- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Allowed:
    """The chain let the action through.

    ``data`` is the (possibly replaced) data, ``None`` for hooks without data; ``changed`` is
    false when it is the request's own object. ``ack_data`` is ``UNCHANGED`` unless a
    publish-in middleware set it.
    """

    data: Any
    ack_data: Any
    changed: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class Blocked:
    """The chain refused the action; everything the server needs to answer.

    ``error`` is what goes to the client (already a ``SilentMiddlewareBlockedError`` for a
    silent block, a generic ``UnknownError`` when a middleware crashed). ``status_code`` is
    set, with its default, for the handshake hooks only. ``exception`` is the unexpected
    exception a middleware raised, for the server to log; ``None`` otherwise.

    A silent ``PUBLISH_OUT`` block (a dropped delivery, never answered) returns one shared
    ``Blocked``: treat ``error`` as read-only.
    """

    hook: Hook
    error: SocketClusterError | str
    status_code: int | None
    bad_token: bool
    silent: bool
    exception: BaseException | None


#: Message of the generic error sent when a middleware raised an unexpected exception.
MIDDLEWARE_FAILED_MESSAGE: Final = "Action was blocked: middleware failed"


# The generated __init__ of a frozen dataclass (and ``dataclasses.replace``) cost several
# times a direct build; outcomes are built per delivery on the publish-out path, so the
# runners build outcomes and data-replaced requests directly, field by field.
_new = object.__new__
_set = object.__setattr__


def _allowed(data: Any, ack_data: Any, changed: bool) -> Allowed:
    out: Allowed = _new(Allowed)
    _set(out, "data", data)
    _set(out, "ack_data", ack_data)
    _set(out, "changed", changed)
    return out


def _with_data(request: Any, data: Any) -> Any:
    """``dataclasses.replace(request, data=data)`` for the (slotted) request types."""
    cls = type(request)
    new = _new(cls)
    for name in cls.__slots__:
        _set(new, name, getattr(request, name))
    _set(new, "data", data)
    return new


def _block_outcome(hook: Hook, block: Block) -> Blocked:
    error = block.error
    silent = error is None
    if error is None:
        error = SilentMiddlewareBlockedError(
            f"Action was silently blocked by {hook.value} middleware", type=hook.value
        )
    status: int | None = None
    if hook is Hook.HANDSHAKE_WS or hook is Hook.HANDSHAKE_SC:
        status = block.status_code
        if status is None and isinstance(error, SocketClusterError):
            field = error.fields.get("statusCode")
            if isinstance(field, int) and not isinstance(field, bool):
                status = field
        if status is None:
            status = (
                HANDSHAKE_WS_BLOCK_STATUS if hook is Hook.HANDSHAKE_WS else HANDSHAKE_SC_BLOCK_CODE
            )
    bad_token = False
    if hook is Hook.AUTHENTICATE:
        bad_token = block.bad_token or (
            isinstance(error, SocketClusterError)
            and (
                (isinstance(error, AuthTokenError) and error.is_bad_token)
                or error.fields.get("isBadToken") is True
            )
        )
    out: Blocked = _new(Blocked)
    _set(out, "hook", hook)
    _set(out, "error", error)
    _set(out, "status_code", status)
    _set(out, "bad_token", bad_token)
    _set(out, "silent", silent)
    _set(out, "exception", None)
    return out


def _failure_outcome(hook: Hook, exc: Exception) -> Blocked:
    if isinstance(exc, SocketClusterError):
        return _block_outcome(hook, Block(exc))
    blocked = _block_outcome(hook, Block(UnknownError(MIDDLEWARE_FAILED_MESSAGE)))
    _set(blocked, "exception", exc)  # a fresh object, not yet seen by anyone
    return blocked


def _bad_verdict(hook: Hook, fn: Middleware, verdict: object) -> Blocked:
    exc = TypeError(
        f"{hook.value} middleware {fn!r} returned {verdict!r}; expected Allow, Block or None"
    )
    return _failure_outcome(hook, exc)


# --- runners -----------------------------------------------------------------------------------


_PUBLISH_OUT_SILENT: Final = _block_outcome(Hook.PUBLISH_OUT, SILENT)


def _blocked(hook: Hook, block: Block) -> Blocked:
    if block.error is None and hook is Hook.PUBLISH_OUT:
        return _PUBLISH_OUT_SILENT  # dropped deliveries are frequent and never answered
    return _block_outcome(hook, block)


class Pending:
    """A chain suspended on an awaitable a middleware returned; ``resume()`` finishes it.

    ``start_chain`` returns one when a middleware (an ``async def``, or a plain function that
    returns a coroutine) hands back an awaitable: the middleware before it ran exactly once
    and are not run again; ``await pending.resume()`` awaits that verdict and folds the rest
    of the chain. Cancellation while resuming propagates and leaves no outcome.
    """

    __slots__ = ("_ack_data", "_awaitable", "_chain", "_current", "_data", "_index", "_original")

    def __init__(
        self,
        chain: Sequence[Middleware],
        index: int,
        current: Any,
        data: Any,
        original: Any,
        ack_data: Any,
        awaitable: Awaitable[Any],
    ) -> None:
        self._chain = chain
        self._index = index  # the middleware whose verdict is awaited
        self._current = current
        self._data = data
        self._original = original
        self._ack_data = ack_data
        self._awaitable = awaitable

    async def resume(self) -> Allowed | Blocked:
        """The async driver: await each pending verdict and fold on from there."""
        pending = self
        while True:
            request = pending._current
            try:
                verdict = await pending._awaitable
            except Exception as exc:
                return _failure_outcome(request.hook, exc)
            outcome = _fold(
                pending._chain, pending._index, request, pending._data, pending._original,
                pending._ack_data, verdict,
            )  # fmt: skip
            if not isinstance(outcome, Pending):
                return outcome
            pending = outcome

    def close(self) -> None:
        """Drop the chain without awaiting it (a coroutine is closed: no "never awaited")."""
        if inspect.iscoroutine(self._awaitable):
            self._awaitable.close()


_NO_VERDICT: Final = object()


def _fold(
    chain: Sequence[Middleware],
    index: int,
    current: Any,
    data: Any,
    original: Any,
    ack_data: Any,
    verdict: Any = _NO_VERDICT,
) -> Allowed | Blocked | Pending:
    """The one fold both drivers share. Runs ``chain[index:]`` on ``current``; with
    ``verdict`` given, that is ``chain[index]``'s (already awaited) verdict."""
    hook = current.hook
    has_data = current.has_data
    n = len(chain)
    while index < n:
        fn = chain[index]
        if verdict is _NO_VERDICT:
            try:
                verdict = fn(current)
            except Exception as exc:
                return _failure_outcome(hook, exc)
        if verdict is None:
            pass
        elif isinstance(verdict, Allow):
            if verdict.data is not UNCHANGED and has_data:
                data = verdict.data
                current = _with_data(current, data)
            if verdict.ack_data is not UNCHANGED and hook is Hook.PUBLISH_IN:
                ack_data = verdict.ack_data
        elif isinstance(verdict, Block):
            return _blocked(hook, verdict)
        elif inspect.isawaitable(verdict):
            return Pending(chain, index, current, data, original, ack_data, verdict)
        else:
            return _bad_verdict(hook, fn, verdict)
        verdict = _NO_VERDICT
        index += 1
    return _allowed(data, ack_data, data is not original)


def start_chain(chain: Sequence[Middleware], request: Request) -> Allowed | Blocked | Pending:
    """The sync driver: fold ``request`` through ``chain`` until done or until a middleware
    returns an awaitable (then a ``Pending`` to ``await .resume()``). Each middleware runs
    at most once, whichever driver finishes the chain."""
    original = request.data if request.has_data else None  # type: ignore[union-attr]
    if not chain:
        return _allowed(original, UNCHANGED, False)
    return _fold(chain, 0, request, original, original, UNCHANGED)


def start_chain_unless_allowed(
    chain: Sequence[Middleware], request: Request
) -> Allowed | Blocked | Pending | None:
    """``start_chain`` for a hot path (one publish-out request per delivery): ``None`` when
    every middleware returned ``None`` (the action goes ahead with the request's own data),
    else exactly what ``start_chain`` returns. No outcome object is built for the common
    case; each middleware runs at most once either way."""
    for index, fn in enumerate(chain):
        try:
            verdict = fn(request)
        except Exception as exc:
            return _failure_outcome(request.hook, exc)
        if verdict is not None:
            original = request.data if request.has_data else None  # type: ignore[union-attr]
            return _fold(chain, index, request, original, original, UNCHANGED, verdict)
    return None


def publish_out_request(
    *, socket: Any, channel: str, data: Any, auth_token: Mapping[str, Any] | None, now: float
) -> PublishOutRequest:
    """``PublishOutRequest(...)`` built field by field (the generated ``__init__`` of a frozen
    dataclass costs about 1.7 times as much; one is built per delivery)."""
    request: PublishOutRequest = _new(PublishOutRequest)
    _set(request, "socket", socket)
    _set(request, "channel", channel)
    _set(request, "data", data)
    _set(request, "auth_token", auth_token)
    _set(request, "now", now)
    return request


def run_chain(chain: Sequence[Middleware], request: Request) -> Allowed | Blocked:
    """Fold ``request`` through ``chain`` (sync middleware only) and return the outcome.

    Raises ``TypeError`` if a middleware returns an awaitable (a coroutine is closed first,
    so no "never awaited" warning); use ``run_chain_async`` (or ``start_chain``) then.
    """
    outcome = start_chain(chain, request)
    if isinstance(outcome, Pending):
        outcome.close()
        raise TypeError(f"{request.hook.value} middleware is asynchronous; use run_chain_async")
    return outcome


async def run_chain_async(chain: Sequence[Middleware], request: Request) -> Allowed | Blocked:
    """Like ``run_chain``, but awaits what a middleware returns when it is awaitable.

    Cancellation: if cancelled while a middleware is awaited, the cancellation propagates
    and the chain has no outcome; nothing is left behind by the runner itself.
    """
    outcome = start_chain(chain, request)
    if isinstance(outcome, Pending):
        return await outcome.resume()
    return outcome


def _is_async(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def is_sync_chain(chain: Sequence[Middleware]) -> bool:
    """True when no middleware in ``chain`` is an ``async def`` (function or ``__call__``).

    A plain function that *returns* an awaitable is not detected; ``run_chain`` then raises
    ``TypeError``.
    """
    if type(chain) is tuple:
        try:
            return _is_sync_tuple(chain)
        except TypeError:  # an unhashable callable
            pass
    return not any(_is_async(fn) for fn in chain)


@functools.lru_cache(maxsize=1024)
def _is_sync_tuple(chain: tuple[Middleware, ...]) -> bool:
    # Registries hand out the same tuple until they change: inspect each chain once.
    return not any(_is_async(fn) for fn in chain)


def compose(a: Sequence[Middleware], b: Sequence[Middleware]) -> tuple[Middleware, ...]:
    """The chain that runs ``a`` then ``b`` (associative; ``()`` is its identity)."""
    return (*a, *b)


# --- registry ----------------------------------------------------------------------------------


class MiddlewareRegistry:
    """The middleware chains of one server, one per hook, in registration order."""

    __slots__ = ("_chains",)

    def __init__(self) -> None:
        self._chains: dict[Hook, tuple[Middleware, ...]] = {}

    def add(self, hook: Hook, fn: Middleware) -> None:
        """Append ``fn`` to ``hook``'s chain."""
        if not isinstance(hook, Hook):
            raise TypeError(f"hook must be a Hook, not {hook!r}")
        if not callable(fn):
            raise TypeError(f"middleware must be callable, not {fn!r}")
        self._chains[hook] = (*self._chains.get(hook, ()), fn)

    def remove(self, hook: Hook, fn: Middleware) -> None:
        """Remove the first registration of ``fn`` for ``hook``; ``ValueError`` if absent."""
        chain = list(self._chains.get(hook, ()))
        chain.remove(fn)
        if chain:
            self._chains[hook] = tuple(chain)
        else:
            del self._chains[hook]

    def middleware(self, hook: Hook) -> Callable[[_F], _F]:
        """Decorator form of ``add``; returns the function unchanged."""

        def decorate(fn: _F) -> _F:
            self.add(hook, fn)
            return fn

        return decorate

    __call__ = middleware  # ``@server.middleware(Hook.PUBLISH_IN)`` reads best

    def chain(self, hook: Hook) -> tuple[Middleware, ...]:
        """``hook``'s middleware in registration order (a stored tuple: no copy)."""
        return self._chains.get(hook, ())

    def has(self, hook: Hook) -> bool:
        """Whether any middleware is registered for ``hook``."""
        return hook in self._chains

    def __contains__(self, hook: object) -> bool:
        return hook in self._chains


# --- built-in: token channels ------------------------------------------------------------------


def token_channels(
    *, claim: str = "channels", subscribe: bool = False, subscribe_prefix: str | None = None
) -> Middleware:
    """Allow publishing (and optionally subscribing) only to channels listed in the token.

    On ``PUBLISH_IN`` the channel must be in the list ``auth_token[claim]``, else the block
    ``"You are not authorized to publish to <channel>"`` (the seed's example). On
    ``SUBSCRIBE``, checked only when ``subscribe`` is true or ``subscribe_prefix`` is given
    (then only channels starting with the prefix are checked), the block says ``subscribe``.
    An expired token counts as no token. Other hooks are allowed.
    """

    def check(request: Any) -> Block | None:
        if isinstance(request, PublishInRequest):
            action = "publish"
        elif isinstance(request, SubscribeRequest) and (subscribe or subscribe_prefix is not None):
            if subscribe_prefix is not None and not request.channel.startswith(subscribe_prefix):
                return None
            action = "subscribe"
        else:
            return None
        token = None if request.auth_token_expired else request.auth_token
        if isinstance(token, Mapping):
            granted = token.get(claim)
            if isinstance(granted, list | tuple) and request.channel in granted:
                return None
        return Block(f"You are not authorized to {action} to {request.channel}")

    return check


# --- built-in: origins -------------------------------------------------------------------------

_OriginRules = frozenset[tuple[str, str]]


def _parse_origins(origins: str | Iterable[str]) -> _OriginRules:
    entries = origins.replace(",", " ").split() if isinstance(origins, str) else list(origins)
    rules: set[tuple[str, str]] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidOptionsError(f"Origin entries must be strings, not {entry!r}")
        host, sep, port = entry.strip().rpartition(":")
        host = host.strip("[]").lower()
        if not sep or not host or not (port == "*" or (port.isascii() and port.isdigit())):
            raise InvalidOptionsError(
                f"Invalid origin entry {entry!r}: expected host:port, host:*, *:port or *:*"
            )
        rules.add((host, port if port == "*" else str(int(port))))
    return frozenset(rules)


def _origin_host_port(origin: str | None) -> tuple[str, str] | None:
    if origin is None or origin == "null":
        return ("null", "80")
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or "null"
    if port is None:
        port = 443 if parts.scheme.lower() in ("https", "wss") else 80
    return (host, str(port))


def _origin_matches(rules: _OriginRules, origin: str | None) -> bool:
    if ("*", "*") in rules:
        return True
    host_port = _origin_host_port(origin)
    if host_port is None:
        return False
    host, port = host_port
    return (host, port) in rules or (host, "*") in rules or ("*", port) in rules


def origin_allowed(origins: str | Iterable[str], origin: str | None) -> bool:
    """Whether ``origin`` (an ``Origin`` header value) is allowed by ``origins``.

    ``origins`` is a whitespace- or comma-separated string, or an iterable of entries
    ``host:port``, ``host:*``, ``*:port`` or ``*:*``. The origin's port defaults to 443 for
    ``https``/``wss`` and 80 otherwise; a missing or ``"null"`` origin is host ``null``,
    port 80. Matching is *exact*: the reference searches a string ``origins`` for a
    substring, so ``'example.com:*'`` lets ``http://ample.com`` in; that bug is not copied.
    Raises ``InvalidOptionsError`` for a malformed entry.
    """
    return _origin_matches(_parse_origins(origins), origin)


def allowed_origins(origins: str | Iterable[str]) -> Middleware:
    """A ``HANDSHAKE_WS`` middleware refusing other origins with HTTP 403.

    The block error is a ``ServerProtocolError`` whose message (the response body) is
    ``Failed to authorize socket handshake - Invalid origin: <origin>``. ``origins`` is
    parsed once, here (``InvalidOptionsError`` if malformed).
    """
    rules = _parse_origins(origins)

    def check(request: Any) -> Block | None:
        origin = request.request.origin
        if _origin_matches(rules, origin):
            return None
        shown = "null" if origin is None else origin
        return Block(
            ServerProtocolError(f"Failed to authorize socket handshake - Invalid origin: {shown}"),
            status_code=403,
        )

    return check


# --- built-in: rate limit ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenBucket:
    """A token bucket as a value: ``tokens`` available at time ``updated``.

    Tokens refill at ``rate_per_s`` up to ``burst``. Over any sequence of ``take`` at
    non-decreasing times, the cost admitted is at most ``tokens + rate_per_s * elapsed``
    (so at most ``burst + rate_per_s * elapsed`` from a full bucket). A time earlier than
    ``updated`` refills nothing.
    """

    rate_per_s: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, *, rate_per_s: float, burst: float, now: float) -> TokenBucket:
        """A full bucket at time ``now``."""
        return cls(rate_per_s=rate_per_s, burst=burst, tokens=burst, updated=now)

    def take(self, now: float, cost: float = 1.0) -> tuple[bool, TokenBucket]:
        """Try to take ``cost`` tokens at ``now``: (admitted, the bucket afterwards)."""
        tokens = self.tokens
        updated = self.updated
        if now > updated:
            tokens = min(self.burst, tokens + (now - updated) * self.rate_per_s)
            updated = now
        admitted = tokens >= cost
        if admitted:
            tokens -= cost
        bucket = TokenBucket(
            rate_per_s=self.rate_per_s, burst=self.burst, tokens=tokens, updated=updated
        )
        return admitted, bucket


class RateLimiter:
    """The middleware ``rate_limit`` returns: one ``TokenBucket`` per socket.

    State lives in this object (the buckets dict), not in the server: call ``forget(socket)``
    when a socket disconnects, or the dict keeps growing. Sockets are keyed by their ``id``
    attribute when it is a string, else by ``id(socket)``. Requests without a socket
    (``HANDSHAKE_WS``) are not limited.
    """

    __slots__ = ("_buckets", "burst", "cost", "rate_per_s")

    def __init__(self, *, rate_per_s: float, burst: float, cost: float = 1.0) -> None:
        if not rate_per_s >= 0 or not burst >= 0 or not cost > 0:
            raise InvalidOptionsError("rate_limit needs rate_per_s >= 0, burst >= 0 and cost > 0")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.cost = float(cost)
        self._buckets: dict[Hashable, TokenBucket] = {}

    @staticmethod
    def _key(socket: object) -> Hashable:
        sid = getattr(socket, "id", None)
        return sid if isinstance(sid, str) else id(socket)

    def __call__(self, request: Any) -> Block | None:
        socket = getattr(request, "socket", None)
        if socket is None:
            return None
        key = self._key(socket)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(rate_per_s=self.rate_per_s, burst=self.burst, now=request.now)
        admitted, self._buckets[key] = bucket.take(request.now, self.cost)
        if admitted:
            return None
        return Block(ResourceLimitError("Rate limit exceeded"))

    def forget(self, socket: object) -> None:
        """Drop ``socket``'s bucket (call on disconnect). Unknown sockets are ignored."""
        self._buckets.pop(self._key(socket), None)

    def __len__(self) -> int:
        """How many sockets currently have a bucket."""
        return len(self._buckets)


def rate_limit(*, rate_per_s: float, burst: float) -> RateLimiter:
    """A per-socket rate limit for ``EMIT`` or ``PUBLISH_IN`` (any hook with a socket).

    Each socket may do ``burst`` actions at once and ``rate_per_s`` per second sustained;
    beyond that the action is blocked with ``ResourceLimitError("Rate limit exceeded")``.
    Use one limiter per hook you want limited separately.
    """
    return RateLimiter(rate_per_s=rate_per_s, burst=burst)


# --- built-in: channel names and payload size --------------------------------------------------

_SHOWN_NAME_CHARS: Final = 64


def valid_channel_names(*, max_length: int = 256, pattern: str = r"^[\w\-.:/@#]+$") -> Middleware:
    """A ``SUBSCRIBE``/``PUBLISH_IN`` middleware refusing channel names that are not strings,
    longer than ``max_length`` characters, or not matching ``pattern`` (whole-name match:
    a trailing newline does not sneak past ``$``). Blocks with ``InvalidArgumentsError``.
    """
    regex = re.compile(pattern)

    def check(request: Any) -> Block | None:
        channel = getattr(request, "channel", None)
        if channel is None:
            return None
        if not isinstance(channel, str):
            return Block(InvalidArgumentsError("Channel name must be a string"))
        if len(channel) > max_length:
            return Block(
                InvalidArgumentsError(f"Channel name is longer than {max_length} characters")
            )
        if regex.fullmatch(channel) is None:
            shown = channel[:_SHOWN_NAME_CHARS]
            return Block(InvalidArgumentsError(f"Invalid channel name: {shown!r}"))
        return None

    return check


def json_size(data: Any) -> int:
    """Bytes of the compact UTF-8 JSON encoding of ``data`` (``ValueError``/``TypeError`` if
    it cannot be encoded)."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def max_payload_size(max_bytes: int) -> Middleware:
    """An ``EMIT``/``PUBLISH_IN``/``SUBSCRIBE`` middleware refusing ``data`` whose compact JSON
    encoding exceeds ``max_bytes`` (``ResourceLimitError``), or that cannot be encoded as
    JSON at all (``InvalidArgumentsError``)."""
    if max_bytes < 0:
        raise InvalidOptionsError("max_payload_size needs max_bytes >= 0")

    def check(request: Any) -> Block | None:
        try:
            size = json_size(getattr(request, "data", None))
        except (TypeError, ValueError):
            return Block(InvalidArgumentsError("Payload is not JSON-serialisable"))
        if size > max_bytes:
            return Block(
                ResourceLimitError(
                    f"Payload of {size} bytes exceeds the limit of {max_bytes} bytes"
                )
            )
        return None

    return check
