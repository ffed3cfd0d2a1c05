"""Authentication through the server, on the wire (examples.md §2, §3, §4, §9, §10, §11).

In-memory clients under ``autojump_clock``; tokens are signed with ``server.auth`` at
``server.now()`` (or with a separate engine for forged ones). Covered: the handshake with
valid, bad and not-yet-valid tokens (``#removeAuthToken`` *before* the reply), ``#authenticate``
in all its shapes, client ``#removeAuthToken``, ``set_auth_token`` and ``deauthenticate``,
the expiry watcher (at exactly ``exp``), lazy expiry on inbound events, renewal, the order of
the lifecycle listeners and the authenticate middleware.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from conftest import make_server as make_echo_server

from trio_socketcluster import (
    AuthEngine,
    Block,
    Hook,
    Keyring,
    Server,
    ServerSocket,
    SocketClusterError,
)
from trio_socketcluster.auth import decode_unverified, iso_date

if TYPE_CHECKING:
    from collections.abc import Callable

    from wsclient import ClientFactory, RawClient

REMOVE = {"event": "#removeAuthToken", "data": None}
QUIET = {"ping_interval_s": 1000.0, "ping_timeout_s": 2000.0}  # no heartbeat interference


def make_server(**options: Any) -> Server:
    server = make_echo_server(**{"auth_key": "secret", **QUIET, **options})

    @server.handler("login")
    async def login(socket: ServerSocket, data: Any) -> str:
        await socket.set_auth_token(data.get("payload", {}), expires_in_s=data.get("expires_in"))
        return "ok"

    @server.handler("deauth")
    def deauth(socket: ServerSocket, _d: Any) -> None:
        socket.deauthenticate()

    return server


def only_socket(server: Server) -> ServerSocket:
    [socket] = server.sockets.values()
    return socket


def sign(server: Server, payload: dict[str, Any] | None = None, **kw: Any) -> str:
    return server.auth.sign(payload or {"username": "bob"}, now=server.now(), **kw)


def forged(server: Server) -> str:
    engine = AuthEngine(Keyring.symmetric("some-other-key"))
    return engine.sign({"username": "eve"}, now=server.now())


async def handshake_raw(client: RawClient, token: Any, cid: int = 1) -> list[Any]:
    """Send a handshake with ``token``; every packet up to and including the reply."""
    await client.send_json({"event": "#handshake", "data": {"authToken": token}, "cid": cid})
    got: list[Any] = []
    while True:
        packet = await client.recv_json()
        got.append(packet)
        if packet.get("rid") == cid:
            return got


async def assert_nothing_pending(client: RawClient, cid: int = 999) -> None:
    """An echo round trip: anything the server queued before it shows up in ``others``."""
    before = len(client.others)
    assert await client.invoke("echo", "probe", cid=cid) == {"rid": cid, "data": "probe"}
    assert client.others[before:] == []


# ------------------------------------------------------------------------------- handshake


async def test_handshake_with_a_valid_token(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    token = sign(server)
    [reply] = await handshake_raw(client, token)
    assert set(reply["data"]) == {"id", "pingTimeout", "isAuthenticated"}
    assert reply["data"]["isAuthenticated"] is True
    socket = only_socket(server)
    assert socket.authenticated
    assert socket.signed_auth_token == token
    assert socket.auth_token is not None
    assert socket.auth_token["username"] == "bob"
    await assert_nothing_pending(client)


async def test_handshake_without_token_has_no_auth_error_key(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    [reply] = await handshake_raw(client, None)
    assert "authError" not in reply["data"]
    assert reply["data"]["isAuthenticated"] is False
    await assert_nothing_pending(client)


def _expired(server: Server) -> tuple[str, dict[str, Any]]:
    now = server.now()
    token = server.auth.sign({"username": "bob"}, now=now - 100, expires_in_s=10)
    exp = math.floor(now - 100) + 10
    return token, {
        "name": "AuthTokenExpiredError",
        "message": "jwt expired",
        "expiry": iso_date(exp),
        "isBadToken": True,
    }


BAD_TOKENS: dict[str, Callable[[Server], tuple[Any, dict[str, Any]]]] = {
    "expired": _expired,
    "invalid signature": lambda s: (
        forged(s),
        {"name": "AuthTokenInvalidError", "message": "invalid signature", "isBadToken": True},
    ),
    "malformed": lambda s: (
        "not.a-jwt",
        {"name": "AuthTokenInvalidError", "message": "jwt malformed", "isBadToken": True},
    ),
    "non-string": lambda s: (
        12345,
        {
            "name": "AuthTokenError",
            "message": "Invalid token format - Token must be a string",
            "isBadToken": True,
        },
    ),
    "object": lambda s: (
        {"token": "x"},
        {
            "name": "AuthTokenError",
            "message": "Invalid token format - Token must be a string",
            "isBadToken": True,
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_handshake_with_a_bad_token_removes_it_first(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    server = make_server()
    bad: list[Any] = []
    server.on("badAuthToken")(lambda socket, error, token: bad.append((error.name, token)))
    client = await connect(server)
    token, error = BAD_TOKENS[kind](server)
    got = await handshake_raw(client, token)
    assert got[0] == REMOVE
    assert got[1] == {
        "rid": 1,
        "data": {
            "id": got[1]["data"]["id"],
            "pingTimeout": 2_000_000,
            "authError": error,
            "isAuthenticated": False,
        },
    }
    assert len(got) == 2
    assert bad == [(error["name"], token)]
    assert not only_socket(server).authenticated
    await assert_nothing_pending(client)


async def test_handshake_with_a_future_nbf_is_soft(connect: ClientFactory) -> None:
    server = make_server()
    bad: list[Any] = []
    server.on("badAuthToken")(lambda *a: bad.append(a))
    client = await connect(server)
    nbf = math.floor(server.now()) + 3600
    token = sign(server, {"username": "bob", "nbf": nbf})
    [reply] = await handshake_raw(client, token)  # no #removeAuthToken before the reply
    assert reply["data"]["authError"] == {
        "name": "AuthTokenNotBeforeError",
        "message": "jwt not active",
        "date": iso_date(nbf),
        "isBadToken": False,
    }
    assert reply["data"]["isAuthenticated"] is False
    assert bad == []
    await assert_nothing_pending(client)  # nor after it


# ---------------------------------------------------------------------------- #authenticate


async def test_authenticate_with_a_valid_token(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake()
    reply = await client.invoke("#authenticate", sign(server), cid=2)
    assert reply == {"rid": 2, "data": {"isAuthenticated": True, "authError": None}}
    assert client.others == []
    assert only_socket(server).authenticated


ERROR_SHAPES: dict[str, Callable[[Server], tuple[Any, dict[str, Any]]]] = {
    **BAD_TOKENS,
    "null": lambda s: (
        None,
        {"name": "AuthTokenInvalidError", "message": "jwt must be provided", "isBadToken": True},
    ),
    "empty": lambda s: (
        "",
        {"name": "AuthTokenInvalidError", "message": "jwt must be provided", "isBadToken": True},
    ),
}


@pytest.mark.parametrize("kind", sorted(ERROR_SHAPES))
async def test_authenticate_with_a_bad_token(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake(sign(server))  # authenticated first: a failure logs out
    assert only_socket(server).authenticated
    token, error = ERROR_SHAPES[kind](server)
    reply = await client.invoke("#authenticate", token, cid=3)
    assert client.others == [REMOVE]  # before the response
    assert reply == {
        "rid": 3,
        "error": error,
        "data": {"isAuthenticated": False, "authError": error},
    }
    assert not only_socket(server).authenticated
    client.others.clear()
    await assert_nothing_pending(client)


async def test_authenticate_with_a_future_nbf_logs_out_without_removal(
    connect: ClientFactory,
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake(sign(server))
    nbf = math.floor(server.now()) + 60
    reply = await client.invoke("#authenticate", sign(server, {"u": 1, "nbf": nbf}), cid=5)
    assert reply == {
        "rid": 5,
        "data": {
            "isAuthenticated": False,
            "authError": {
                "name": "AuthTokenNotBeforeError",
                "message": "jwt not active",
                "date": iso_date(nbf),
                "isBadToken": False,
            },
        },
    }
    assert client.others == []
    assert not only_socket(server).authenticated  # a failed re-authentication logs out
    await assert_nothing_pending(client)


async def test_client_remove_auth_token_is_never_answered(connect: ClientFactory) -> None:
    server = make_server()
    events: list[str] = []
    server.on("deauthenticate")(lambda socket, old: events.append(old["username"]))
    client = await connect(server)
    await client.handshake(sign(server))
    await client.send_json({"event": "#removeAuthToken", "cid": 5})
    await client.send_json({"event": "#removeAuthToken"})
    await assert_nothing_pending(client)
    assert not only_socket(server).authenticated
    assert events == ["bob"]


# ------------------------------------------------------------------ server-side token changes


async def test_set_auth_token_goes_before_the_response(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake()
    now = server.now()
    reply = await client.invoke("login", {"payload": {"username": "bob"}}, cid=3)
    assert reply == {"rid": 3, "data": "ok"}
    [set_token] = client.others
    assert set(set_token) == {"event", "data"}
    assert set_token["event"] == "#setAuthToken"
    token = set_token["data"]["token"]
    claims = decode_unverified(token)
    assert claims is not None
    jti, iat_us = claims.pop("jti"), claims.pop("iat_us")  # a new token: its own id and stamp
    assert isinstance(jti, str)
    assert len(jti) >= 16
    assert iat_us // 1_000_000 == math.floor(now)
    assert claims == {"username": "bob", "iat": math.floor(now), "exp": math.floor(now) + 86400}
    socket = only_socket(server)
    assert socket.authenticated
    assert socket.signed_auth_token == token
    assert server.auth.verify(token, now=server.now())["username"] == "bob"


@pytest.mark.parametrize(
    ("payload", "expires_in", "lifetime"),
    [
        ({"u": 1}, 30, 30),  # expires_in_s
        ({"u": 1, "exp": "ABS"}, 30, None),  # exp in the payload wins
        ({"u": 1, "exp": "ABS"}, None, None),
    ],
)
async def test_set_auth_token_expiry(
    connect: ClientFactory, payload: dict[str, Any], expires_in: int | None, lifetime: int | None
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake()
    iat = math.floor(server.now())
    absolute = iat + 777
    if payload.get("exp") == "ABS":
        payload = {**payload, "exp": absolute}
    await client.invoke("login", {"payload": payload, "expires_in": expires_in}, cid=3)
    claims = decode_unverified(client.others[0]["data"]["token"])
    assert claims is not None
    assert claims["exp"] == (absolute if lifetime is None else iat + lifetime)


async def test_set_auth_token_before_the_handshake_is_refused(connect: ClientFactory) -> None:
    server = make_server()
    failures: list[str] = []

    @server.on("connection")
    def on_connection(socket: ServerSocket) -> None:
        failures.append(socket.state)

    client = await connect(server)
    await client.handshake()
    socket = only_socket(server)
    with pytest.raises(SocketClusterError):  # noqa: PT012 (the whole block is the case)
        # A socket that is closed cannot take a token either.
        socket.disconnect()
        await socket.set_auth_token({"u": 1})
    assert failures == ["open"]


async def test_deauthenticate_sends_remove_auth_token(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake(sign(server))
    reply = await client.invoke("deauth", cid=4)
    assert reply == {"rid": 4}
    assert client.others == [REMOVE]
    assert not only_socket(server).authenticated
    client.others.clear()
    await assert_nothing_pending(client)


# --------------------------------------------------------------------------------- expiry


async def test_expiry_watcher_removes_the_token_at_exactly_exp(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    client = await connect(server)
    token = sign(server, expires_in_s=60)
    exp = decode_unverified(token)["exp"]  # type: ignore[index]
    await client.handshake(token)
    start_trio, start_wall = trio.current_time(), server.now()
    with trio.fail_after(100):
        assert await client.recv_json() == REMOVE  # the client sent nothing meanwhile
    assert server.now() == pytest.approx(exp, abs=1e-6)
    assert trio.current_time() - start_trio == pytest.approx(exp - start_wall, abs=1e-6)
    assert not only_socket(server).authenticated
    await assert_nothing_pending(client)


async def test_expiry_watcher_follows_token_changes(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake(sign(server, expires_in_s=60))
    start = trio.current_time()
    await client.invoke("login", {"payload": {"u": 2}, "expires_in": 200}, cid=2)
    with trio.fail_after(500):
        assert await client.recv_json() == REMOVE
    assert trio.current_time() - start == pytest.approx(200, abs=1.0)


async def test_deauthenticated_token_is_not_removed_again(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake(sign(server, expires_in_s=60))
    await client.invoke("deauth", cid=2)
    await trio.sleep(120)
    client.others.clear()
    await assert_nothing_pending(client)


class WallClock:
    """A wall clock the test moves by hand, independent of trio's clock."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_lazy_expiry_on_an_inbound_event(connect: ClientFactory) -> None:
    wall = WallClock()
    server = make_server(now=wall)
    events: list[str] = []
    server.on("deauthenticate")(lambda *a: events.append("deauthenticate"))
    client = await connect(server)
    await client.handshake(sign(server, expires_in_s=60))
    wall.t += 61  # past exp, on the wall clock only: the watcher is still asleep
    reply = await client.invoke("echo", "x", cid=2)
    assert client.others == [REMOVE]  # first
    assert reply == {"rid": 2, "data": "x"}  # the event is still processed
    assert events == ["deauthenticate"]
    client.others.clear()
    await assert_nothing_pending(client)


@pytest.mark.parametrize("event", ["#publish", "#subscribe", "#unsubscribe", "pong"])
async def test_lazy_expiry_on_other_packets(connect: ClientFactory, event: str) -> None:
    wall = WallClock()
    server = make_server(now=wall)
    client = await connect(server)
    await client.handshake(sign(server, expires_in_s=60))
    await client.invoke("#subscribe", "c", cid=2)
    wall.t += 61
    if event == "pong":
        await client.send("")
    elif event == "#publish":
        await client.send_json({"event": event, "data": {"channel": "d", "data": 1}})
    elif event == "#subscribe":
        await client.send_json({"event": event, "data": {"channel": "d"}})
    else:
        await client.send_json({"event": event, "data": "c"})
    assert await client.recv_json() == REMOVE
    assert not only_socket(server).authenticated


async def test_wait_for_auth_subscribe_with_an_expired_token(connect: ClientFactory) -> None:
    wall = WallClock()
    server = make_server(now=wall)
    client = await connect(server)
    token = sign(server, expires_in_s=60)
    exp = decode_unverified(token)["exp"]  # type: ignore[index]
    await client.handshake(token)
    wall.t += 61
    reply = await client.invoke("#subscribe", {"channel": "news", "waitForAuth": True}, cid=2)
    assert client.others == [REMOVE]
    assert reply == {
        "rid": 2,
        "error": {
            "name": "AuthTokenExpiredError",
            "message": "The socket auth token has expired",
            "expiry": exp,
            "isBadToken": True,
        },
    }
    assert isinstance(reply["error"]["expiry"], int)
    assert only_socket(server).channels == []
    assert server.broker.channels() == []
    # Without waitForAuth (and now unauthenticated) the subscription goes through.
    assert await client.invoke("#subscribe", {"channel": "news"}, cid=3) == {"rid": 3}


async def test_renewal_pushes_a_new_token_before_expiry(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(renew_before_s=10)
    calls: list[float] = []

    @server.renewal
    def renew(socket: ServerSocket, token: dict[str, Any]) -> dict[str, Any]:
        calls.append(trio.current_time())
        return {"username": token["username"], "renewed": len(calls)}

    client = await connect(server)
    token = sign(server, expires_in_s=60)
    old_exp = decode_unverified(token)["exp"]  # type: ignore[index]
    await client.handshake(token)
    start_trio, start_wall = trio.current_time(), server.now()
    with trio.fail_after(100):
        pushed = await client.recv_json()
    assert pushed["event"] == "#setAuthToken"
    assert trio.current_time() - start_trio == pytest.approx(old_exp - 10 - start_wall, abs=1e-6)
    claims = decode_unverified(pushed["data"]["token"])
    assert claims is not None
    assert claims["renewed"] == 1
    await trio.sleep(old_exp - server.now() + 5)  # past the old exp
    socket = only_socket(server)
    assert socket.authenticated
    assert socket.auth_token is not None
    assert socket.auth_token["renewed"] == 1
    await assert_nothing_pending(client)
    assert len(calls) == 1


async def test_renewal_returning_none_lets_the_token_expire(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(renew_before_s=10)
    calls: list[float] = []

    @server.renewal
    async def renew(socket: ServerSocket, token: dict[str, Any]) -> None:
        calls.append(trio.current_time())

    client = await connect(server)
    await client.handshake(sign(server, expires_in_s=60))
    start = trio.current_time()
    with trio.fail_after(100):
        assert await client.recv_json() == REMOVE
    assert trio.current_time() - start == pytest.approx(60, abs=1.0)
    assert len(calls) == 1


# ------------------------------------------------------------------------------- listeners


def record_listeners(server: Server) -> list[tuple[Any, ...]]:
    log: list[tuple[Any, ...]] = []
    server.on("connection")(lambda s: log.append(("connection",)))
    server.on("disconnection")(lambda s, code, reason: log.append(("disconnection", code)))
    server.on("authenticate")(lambda s, tok: log.append(("authenticate", tok.get("username"))))
    server.on("deauthenticate")(lambda s, old: log.append(("deauthenticate", old["username"])))
    server.on("authStateChange")(lambda s, old, new: log.append(("authStateChange", old, new)))
    server.on("badAuthToken")(lambda s, err, tok: log.append(("badAuthToken", err.name)))
    return log


async def test_listener_order_for_a_session(connect: ClientFactory) -> None:
    server = make_server()
    log = record_listeners(server)
    client = await connect(server)
    await client.handshake(sign(server))
    # examples.md §2: "Server events: connection, then authStateChange, authenticate".
    assert log == [
        ("connection",),
        ("authStateChange", "unauthenticated", "authenticated"),
        ("authenticate", "bob"),
    ]
    log.clear()
    await client.invoke("login", {"payload": {"username": "carol"}}, cid=2)
    assert log == [("authenticate", "carol")]  # a token change: no authStateChange
    log.clear()
    await client.invoke("deauth", cid=3)
    assert log == [
        ("authStateChange", "authenticated", "unauthenticated"),
        ("deauthenticate", "carol"),
    ]
    log.clear()
    gone = trio.Event()
    server.on("disconnection")(lambda *a: gone.set())
    await client.close(4321)
    with trio.fail_after(5):
        await gone.wait()
    assert log == [("disconnection", 4321)]


async def test_listener_order_for_a_bad_token_handshake(connect: ClientFactory) -> None:
    server = make_server()
    log = record_listeners(server)
    client = await connect(server)
    await handshake_raw(client, forged(server))
    assert log == [("connection",), ("badAuthToken", "AuthTokenInvalidError")]


async def test_a_raising_listener_is_logged_and_ignored(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()

    @server.on("authenticate")
    def broken(socket: ServerSocket, token: Any) -> None:
        raise RuntimeError("listener bug")

    client = await connect(server)
    [reply] = await handshake_raw(client, sign(server))
    assert reply["data"]["isAuthenticated"] is True
    assert "authenticate listener raised" in caplog.text
    await assert_nothing_pending(client)


# ------------------------------------------------------------------ authenticate middleware


@pytest.mark.parametrize("bad_token", [False, True])
async def test_authenticate_middleware_rejects_a_valid_token(
    connect: ClientFactory, bad_token: bool
) -> None:
    server = make_server()
    log = record_listeners(server)
    seen: list[Any] = []

    @server.middleware.middleware(Hook.AUTHENTICATE)
    def no_alice(request: Any) -> Block | None:
        seen.append((request.auth_token["username"], request.signed_auth_token))
        if request.auth_token["username"] == "alice":
            error = SocketClusterError("alice blocked", name="AliceError")
            return Block(error, bad_token=bad_token)
        return None

    client = await connect(server)
    alice = sign(server, {"username": "alice"})
    got = await handshake_raw(client, alice)
    assert seen == [("alice", alice)]
    assert got[:-1] == ([REMOVE] if bad_token else [])
    reply = got[-1]
    assert reply["data"]["authError"] == {"name": "AliceError", "message": "alice blocked"}
    assert reply["data"]["isAuthenticated"] is False
    assert not only_socket(server).authenticated
    assert (
        ("badAuthToken", "AliceError") in log
        if bad_token
        else all(e[0] != "badAuthToken" for e in log)
    )
    # Through #authenticate: bob passes, alice is refused again.
    assert (await client.invoke("#authenticate", sign(server), cid=2))["data"] == {
        "isAuthenticated": True,
        "authError": None,
    }
    client.others.clear()
    reply = await client.invoke("#authenticate", alice, cid=3)
    error = {"name": "AliceError", "message": "alice blocked"}
    status = {"isAuthenticated": False, "authError": error}
    if bad_token:
        assert client.others == [REMOVE]
        assert reply == {"rid": 3, "error": error, "data": status}
    else:
        assert client.others == []
        assert reply == {"rid": 3, "data": status}
    assert not only_socket(server).authenticated


async def test_authenticate_middleware_string_error_and_crash(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()

    @server.middleware.middleware(Hook.AUTHENTICATE)
    async def check(request: Any) -> Block | None:
        await trio.lowlevel.checkpoint()
        name = request.auth_token["username"]
        if name == "str":
            return Block("nope")
        if name == "crash":
            raise RuntimeError("secret detail")
        return None

    client = await connect(server)
    [reply] = await handshake_raw(client, sign(server, {"username": "str"}))
    assert reply["data"]["authError"] == {"message": "nope"}
    reply = await client.invoke("#authenticate", sign(server, {"username": "crash"}), cid=2)
    assert reply["data"]["authError"]["name"] == "UnknownError"
    assert "secret" not in json.dumps(reply)
    assert "authenticate middleware raised" in caplog.text
    await assert_nothing_pending(client)
