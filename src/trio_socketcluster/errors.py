"""Every exception of trio-socketcluster, named as SocketCluster names them on the wire.

The tree::

    SocketClusterError                  base; ``name`` is the wire name, ``to_wire()`` the
    |                                   dehydrated form sent in a response's ``error`` field
    +-- AuthTokenError                  any other token failure (e.g. not a string)
    |   +-- AuthTokenExpiredError       ``expiry``: ISO date (from verify) or numeric ``exp``
    |   +-- AuthTokenInvalidError       malformed, bad signature, wrong algorithm, missing
    |   +-- AuthTokenNotBeforeError     ``date``: ISO date of ``nbf`` (not a *bad* token)
    +-- AuthError                       server-side auth failure (e.g. signing)
    +-- SilentMiddlewareBlockedError    ``type``: the middleware hook
    +-- InvalidActionError              an action not allowed in this state
    +-- InvalidArgumentsError
    +-- InvalidOptionsError             bad configuration (raised at construction)
    +-- InvalidMessageError
    +-- BrokerError                     subscribe/unsubscribe/publish failures
    +-- NoHandlerError                  an invoke for an event nobody handles (ours)
    +-- TimeoutError                    an invoke's acknowledgement did not arrive in time
    +-- BadConnectionError              the connection closed before the operation finished
    +-- SocketProtocolError             ``code``: a close code (local only)
    +-- ServerProtocolError
    +-- ResourceLimitError
    +-- UnknownError
    +-- RemoteError                     an error received from the peer, hydrated: any name

Application code may raise any ``SocketClusterError`` (or subclass with its own ``name``)
from a handler or middleware; its ``name``, ``message`` and extra fields go to the client.
Any other exception raised by application code is logged and replaced on the wire by a
generic ``UnknownError`` so that internals never leak.

This module is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "AuthTokenError",
    "AuthTokenExpiredError",
    "AuthTokenInvalidError",
    "AuthTokenNotBeforeError",
    "BadConnectionError",
    "BrokerError",
    "InvalidActionError",
    "InvalidArgumentsError",
    "InvalidMessageError",
    "InvalidOptionsError",
    "NoHandlerError",
    "RemoteError",
    "ResourceLimitError",
    "ServerProtocolError",
    "SilentMiddlewareBlockedError",
    "SocketClusterError",
    "SocketProtocolError",
    "TimeoutError",
    "UnknownError",
    "dehydrate_error",
    "hydrate_error",
]


class SocketClusterError(Exception):
    """Base of every error this package raises or sends.

    ``name`` is the SocketCluster wire name (the class name unless overridden, per instance
    or per class), ``message`` the human text, and ``fields`` any extra JSON-able values sent
    alongside them (``expiry``, ``type``, ``statusCode`` ...).
    """

    wire_name: ClassVar[str | None] = None

    def __init__(self, message: str = "", *, name: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.name = name or self.wire_name or type(self).__name__
        self.fields: dict[str, Any] = fields

    def to_wire(self) -> dict[str, Any]:
        """The dehydrated form: ``{"name", "message", **fields}``."""
        out: dict[str, Any] = {"name": self.name, "message": self.message}
        out.update(self.fields)
        return out

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.fields.items())
        return f"{type(self).__name__}({self.message!r}, name={self.name!r}{extra})"


class AuthTokenError(SocketClusterError):
    """A token failed verification for a reason not covered by the subclasses."""

    def __init__(self, message: str = "", *, is_bad_token: bool = True, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.is_bad_token = is_bad_token

    def to_wire(self) -> dict[str, Any]:
        out = super().to_wire()
        out["isBadToken"] = self.is_bad_token
        return out


class AuthTokenExpiredError(AuthTokenError):
    """The token's ``exp`` has passed. ``expiry`` is an ISO date or the numeric ``exp``."""

    def __init__(
        self, message: str = "jwt expired", *, expiry: str | int | float, **kw: Any
    ) -> None:
        super().__init__(message, expiry=expiry, **kw)
        self.expiry = expiry


class AuthTokenInvalidError(AuthTokenError):
    """Malformed token, bad signature, refused algorithm, missing token."""


class AuthTokenNotBeforeError(AuthTokenError):
    """The token's ``nbf`` is in the future: a good token, not yet active."""

    def __init__(self, message: str = "jwt not active", *, date: str, **kw: Any) -> None:
        kw.setdefault("is_bad_token", False)
        super().__init__(message, date=date, **kw)
        self.date = date


class AuthError(SocketClusterError):
    """Server-side authentication failure (e.g. a token could not be signed)."""


class SilentMiddlewareBlockedError(SocketClusterError):
    """A middleware blocked the action without an error of its own; ``type`` names the hook."""

    def __init__(self, message: str = "", *, type: str, **fields: Any) -> None:
        super().__init__(message, type=type, **fields)
        self.type = type


class InvalidActionError(SocketClusterError):
    """The action is not allowed (in this state, on this server)."""


class InvalidArgumentsError(SocketClusterError):
    """A call got arguments of the wrong shape."""


class InvalidOptionsError(SocketClusterError):
    """Configuration that cannot work; raised when the server is constructed."""


class InvalidMessageError(SocketClusterError):
    """A message that does not have the shape its event requires."""


class BrokerError(SocketClusterError):
    """A subscribe, unsubscribe or publish could not be carried out."""


class NoHandlerError(SocketClusterError):
    """An invoke named an event no handler is registered for (answered at once)."""


class TimeoutError(SocketClusterError):
    """An acknowledgement did not arrive within the ack timeout."""


class BadConnectionError(SocketClusterError):
    """The connection closed before the operation could finish."""


class SocketProtocolError(SocketClusterError):
    """The connection was closed with ``code``."""

    def __init__(self, message: str = "", *, code: int, **fields: Any) -> None:
        super().__init__(message, code=code, **fields)
        self.code = code


class ServerProtocolError(SocketClusterError):
    """The server broke the protocol."""


class ResourceLimitError(SocketClusterError):
    """A configured limit (payload, buffer, channels) was exceeded."""


class UnknownError(SocketClusterError):
    """Something failed that the peer should not learn details of."""


class RemoteError(SocketClusterError):
    """An error the peer sent us, hydrated; ``name`` is whatever the peer said."""

    def __init__(self, message: str = "", *, name: str | None = None, **fields: Any) -> None:
        super().__init__(message, name=name or "Error", **fields)


# ---------------------------------------------------------------------------------------------


def dehydrate_error(error: BaseException | str | Mapping[str, Any] | None) -> Any:
    """The JSON value the reference puts in a response's ``error`` field.

    Strings (and other JSON primitives) stay as they are, as the seed's ``respond('Login
    failed')`` expects. ``SocketClusterError`` gives its ``to_wire()``. A mapping is taken as
    an already dehydrated error. Any other exception is *not* described (no internals leak):
    it becomes ``{"name": "UnknownError", "message": "..."}``.
    """
    if error is None or isinstance(error, str | int | float | bool):
        return error
    if isinstance(error, SocketClusterError):
        return error.to_wire()
    if isinstance(error, Mapping):
        return dict(error)
    return {"name": "UnknownError", "message": "An unexpected error occurred on the server"}


def hydrate_error(value: Any) -> SocketClusterError | str:
    """The inverse of ``dehydrate_error`` for errors received from a peer.

    Known SocketCluster names come back as their classes where the constructor allows it;
    anything else becomes a ``RemoteError`` carrying the name. Primitive values are returned
    as strings.
    """
    if not isinstance(value, Mapping):
        return value if isinstance(value, str) else str(value)
    name = value.get("name")
    message = value.get("message")
    message = message if isinstance(message, str) else ""
    fields = {
        k: v
        for k, v in value.items()
        if k not in ("name", "message") and isinstance(k, str) and k.isidentifier()
    }
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is not None:
        try:
            return cls(message, **fields)
        except TypeError:
            pass
    return RemoteError(message, name=name if isinstance(name, str) else None, **fields)


_BY_NAME: dict[str, type[SocketClusterError]] = {
    c.__name__: c
    for c in (
        AuthError,
        BadConnectionError,
        BrokerError,
        InvalidActionError,
        InvalidArgumentsError,
        InvalidMessageError,
        InvalidOptionsError,
        NoHandlerError,
        ResourceLimitError,
        ServerProtocolError,
        TimeoutError,
        UnknownError,
    )
}
