"""What each inbound packet *means* to the server: one frozen event per action, validated.

The machine (``state.py``) turns every inbound message into these events; the trio layer
matches on their types and acts. Everything a packet must satisfy is checked here, once, with
the wire texts of the reference (``Subscribe channel name was malformatted`` ...); a packet that
fails becomes ``Invalid(cid, error, fault)``, which the driver answers with ``error`` when
``cid`` is not ``None`` (and logs, rate-limited, by ``fault``).

=====================  =============================================  =========================
packet                 event                                          checks
=====================  =============================================  =========================
``#handshake``         ``Handshake(data, auth_token, cid)``           numeric finite cid (else
                                                                      the machine closes 4008)
``#authenticate``      ``Authenticate(token, cid)``
``#removeAuthToken``   ``RemoveAuthToken()`` (never answered)
``#subscribe``         ``Subscribe(channel, wait_for_auth, data,      channel: a non-empty
                       cid)``                                         string (or the data
                                                                      itself is that string)
``#unsubscribe``       ``Unsubscribe(channel, cid)``                  channel: a string
``#publish``           ``Publish(channel, data, cid)``                channel: a non-empty
                                                                      string
``#disconnect``        ``ClientDisconnect(data)``
any other event        ``Emit(event, data, cid)`` (an invoke when
                       ``cid`` is not ``None``, else a transmit)
``{"rid": number}``    ``Response(rid, data, error)``
``""`` / ``#2``        ``Pong(protocol)``
``#1``, raw            ``Ping`` / ``Raw`` (ignored)
=====================  =============================================  =========================

Cids: a packet is an invoke when its ``cid`` is a JSON number, as protocol-2 servers decide
(``typeof cid === 'number'``): integers, floats and integers beyond 64 bits (read as doubles,
as ``JSON.parse`` does) are echoed as they came. Any other ``cid`` (string, boolean, null)
makes a transmit. A non-finite cid (``1e400``) cannot be echoed: the packet is ``Invalid`` and
its answer carries ``"rid": null`` (what ``JSON.stringify`` writes for it). A packet holding a
lone surrogate (``"\\ud800"``, no UTF-8 form) is ``Invalid`` whatever its event.

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from ..errors import InvalidActionError, InvalidMessageError, SocketClusterError
from .packets import Ping, Pong, Raw

__all__ = [
    "Authenticate",
    "Cid",
    "ClientDisconnect",
    "Close",
    "Emit",
    "Event",
    "Fault",
    "Handshake",
    "Invalid",
    "Ping",
    "Pong",
    "Publish",
    "Raw",
    "RemoveAuthToken",
    "Response",
    "Subscribe",
    "Unsubscribe",
]

#: A client's call id: any finite JSON number, echoed unchanged in the response's ``rid``.
Cid = int | float


@dataclass(frozen=True, kw_only=True, slots=True)
class Handshake:
    """``#handshake``; ``auth_token`` is ``data["authToken"]`` (``None`` when absent)."""

    data: Any
    auth_token: Any
    cid: Cid


@dataclass(frozen=True, kw_only=True, slots=True)
class Authenticate:
    """``#authenticate`` with a signed token (any JSON value: the auth engine judges it)."""

    token: Any
    cid: Cid | None


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoveAuthToken:
    """``#removeAuthToken``: the client logged out. Never answered, even with a cid."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Subscribe:
    channel: str
    wait_for_auth: bool
    data: Any
    cid: Cid | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Unsubscribe:
    channel: str
    cid: Cid | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Publish:
    channel: str
    data: Any
    cid: Cid | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Emit:
    """A custom event: an invoke when ``cid`` is not ``None``, else a transmit."""

    event: str
    data: Any
    cid: Cid | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Response:
    """The client's answer to one of our invokes."""

    rid: Cid
    data: Any
    error: Any


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientDisconnect:
    """``#disconnect``: a protocol-1 client announces its close (the close frame follows)."""

    data: Any


class Fault(enum.Enum):
    """Why a packet is ``Invalid`` (the cause a rate-limited warning is counted under)."""

    LONE_SURROGATE = "lone surrogate"
    NON_FINITE_CID = "non-finite cid"
    DUPLICATE_HANDSHAKE = "duplicate handshake"
    MALFORMED_SUBSCRIBE = "malformed subscribe"
    MALFORMED_UNSUBSCRIBE = "malformed unsubscribe"
    MALFORMED_PUBLISH = "malformed publish"


@dataclass(frozen=True, kw_only=True, slots=True)
class Invalid:
    """A packet the server refuses: answer ``error`` if ``cid`` is not ``None``."""

    cid: Cid | None
    error: SocketClusterError
    fault: Fault


@dataclass(frozen=True, kw_only=True, slots=True)
class Close:
    """The machine closes the connection (a protocol violation): send ``code``/``reason``."""

    code: int
    reason: str


Event = (
    Handshake | Authenticate | RemoveAuthToken | Subscribe | Unsubscribe | Publish | Emit
    | Response | ClientDisconnect | Pong | Ping | Raw | Invalid | Close
)  # fmt: skip

# ------------------------------------------------------------------ wire texts (one place)

#: The reference's texts (S19) for malformed channel names, and ours for the empty name.
_ERRORS: Final[dict[Fault, SocketClusterError]] = {
    Fault.MALFORMED_SUBSCRIBE: InvalidActionError("Subscribe channel name was malformatted"),
    Fault.MALFORMED_UNSUBSCRIBE: InvalidActionError("Unsubscribe channel name was malformatted"),
    Fault.MALFORMED_PUBLISH: InvalidActionError("Publish channel name was malformatted"),
    Fault.DUPLICATE_HANDSHAKE: InvalidActionError("The handshake was already done"),
    Fault.LONE_SURROGATE: InvalidMessageError(
        "The message contains a lone surrogate (a \\ud800-\\udfff escape without its pair), "
        "which has no UTF-8 form"
    ),
    Fault.NON_FINITE_CID: InvalidMessageError(
        "The cid is not a finite number, so no response can name it"
    ),
}
_EMPTY_SUBSCRIBE: Final = InvalidActionError("Cannot subscribe to a channel with an empty name")
_EMPTY_PUBLISH: Final = InvalidActionError("Cannot publish to a channel with an empty name")

#: Close reasons of the machine's own closes.
MALFORMED_HANDSHAKE_REASON: Final = "Handshake request was malformatted"
EARLY_MESSAGE_REASON: Final = "Server received a message before the client handshake"

# Events are built per packet on the hot path: directly, field by field (the generated
# __init__ of a frozen dataclass costs several times this; see middleware.py).
_new = object.__new__
_set = object.__setattr__

REMOVE_AUTH_TOKEN: Final = RemoveAuthToken()


def invalid(cid: Cid | None, fault: Fault, error: SocketClusterError | None = None) -> Invalid:
    out: Invalid = _new(Invalid)
    _set(out, "cid", cid)
    _set(out, "error", _ERRORS[fault] if error is None else error)
    _set(out, "fault", fault)
    return out


def emit(event: str, data: Any, cid: Cid | None) -> Emit:
    out: Emit = _new(Emit)
    _set(out, "event", event)
    _set(out, "data", data)
    _set(out, "cid", cid)
    return out


def cid_of(value: dict[str, Any]) -> Cid | None:
    """The packet's cid: an int or float as sent, ``None`` for anything else (a transmit).
    Non-finite floats are returned too (the caller turns them into ``Invalid``)."""
    cid = value.get("cid")
    tc = type(cid)
    if tc is int or tc is float:
        return cid
    return None


def _finite(cid: Cid) -> bool:
    return type(cid) is int or cid - cid == 0  # inf - inf and nan - nan are nan


def _subscribe(value: dict[str, Any], cid: Cid | None) -> Subscribe | Invalid:
    request = value.get("data")
    wait_for_auth = False
    data = None
    if type(request) is dict:
        channel = request.get("channel")
        wait_for_auth = bool(request.get("waitForAuth"))
        data = request.get("data")
    else:
        channel = request  # the bare channel name some clients send
    if type(channel) is not str:
        return invalid(cid, Fault.MALFORMED_SUBSCRIBE)
    if not channel:
        return invalid(cid, Fault.MALFORMED_SUBSCRIBE, _EMPTY_SUBSCRIBE)
    return Subscribe(channel=channel, wait_for_auth=wait_for_auth, data=data, cid=cid)


def _publish(value: dict[str, Any], cid: Cid | None) -> Publish | Invalid:
    request = value.get("data")
    channel = request.get("channel") if type(request) is dict else None
    if type(channel) is not str:
        return invalid(cid, Fault.MALFORMED_PUBLISH)
    if not channel:
        return invalid(cid, Fault.MALFORMED_PUBLISH, _EMPTY_PUBLISH)
    assert type(request) is dict
    out: Publish = _new(Publish)
    _set(out, "channel", channel)
    _set(out, "data", request.get("data"))
    _set(out, "cid", cid)
    return out


def _unsubscribe(value: dict[str, Any], cid: Cid | None) -> Unsubscribe | Invalid:
    channel = value.get("data")
    if type(channel) is not str:
        return invalid(cid, Fault.MALFORMED_UNSUBSCRIBE)
    return Unsubscribe(channel=channel, cid=cid)


def _duplicate_handshake(_value: dict[str, Any], cid: Cid | None) -> Invalid:
    return invalid(cid, Fault.DUPLICATE_HANDSHAKE)


def _authenticate(value: dict[str, Any], cid: Cid | None) -> Authenticate:
    return Authenticate(token=value.get("data"), cid=cid)


def _remove_auth_token(_value: dict[str, Any], _cid: Cid | None) -> RemoveAuthToken:
    return REMOVE_AUTH_TOKEN


def _client_disconnect(value: dict[str, Any], _cid: Cid | None) -> ClientDisconnect:
    return ClientDisconnect(data=value.get("data"))


_RESERVED: Final[dict[str, Any]] = {
    "#handshake": _duplicate_handshake,
    "#authenticate": _authenticate,
    "#removeAuthToken": _remove_auth_token,
    "#subscribe": _subscribe,
    "#unsubscribe": _unsubscribe,
    "#publish": _publish,
    "#disconnect": _client_disconnect,
}

#: Event names with a meaning of their own (handlers cannot be registered for them).
RESERVED_INBOUND: Final = frozenset(_RESERVED)


def open_event(value: Any) -> Event:
    """What one packet (a JSON value, UTF-8 clean) means once the handshake is done."""
    if type(value) is dict:
        event = value.get("event")
        if type(event) is str:
            cid: Any = value.get("cid")
            tc = type(cid)
            if tc is not int:
                if tc is float:
                    if cid - cid != 0:  # inf or nan (read from 1e400)
                        return invalid(cid, Fault.NON_FINITE_CID)
                else:
                    cid = None
            meaning = _RESERVED.get(event)
            if meaning is None:
                return emit(event, value.get("data"), cid)
            return meaning(value, cid)  # type: ignore[no-any-return]
        rid = value.get("rid")
        tr = type(rid)
        if tr is int or tr is float:
            out: Response = _new(Response)
            _set(out, "rid", rid)
            _set(out, "data", value.get("data"))
            _set(out, "error", value.get("error"))
            return out
    return Raw(value=value)


def unclean_event(value: Any) -> Event:
    """A packet holding a lone surrogate: ``Invalid`` (answered if it has a numeric cid)."""
    cid = cid_of(value) if type(value) is dict and type(value.get("event")) is str else None
    return invalid(cid, Fault.LONE_SURROGATE)


def handshake_event(value: Any) -> Handshake | Close | None:
    """Before the handshake: ``Handshake`` for a ``#handshake`` with a numeric finite cid,
    ``Close(4008)`` for one without, ``None`` for anything else (the machine closes 4009)."""
    if type(value) is not dict or value.get("event") != "#handshake":
        return None
    cid = cid_of(value)
    if cid is None or not _finite(cid):
        return Close(code=4008, reason=MALFORMED_HANDSHAKE_REASON)
    data = value.get("data")
    auth_token = data.get("authToken") if type(data) is dict else None
    return Handshake(data=data, auth_token=auth_token, cid=cid)
