"""The client, in memory: against a scripted peer (trio-websocket's server side, driven frame by
frame by the test) for the wire details, and against our ``Server`` for the behaviour.

All on ``autojump_clock``: ack timeouts, ping timeouts and reconnect delays are asserted to the
exact virtual second.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from trio_socketcluster import BadConnectionError, Reply, Server, ServerSocket
from trio_socketcluster import TimeoutError as SCTimeoutError
from trio_socketcluster.client import (
    Channel,
    ChannelState,
    Client,
    ClientState,
    FileTokenStore,
    Inbox,
    MemoryTokenStore,
    ReconnectPolicy,
    TokenStore,
    connect,
    connect_stream,
    reconnect_delay_s,
)
from trio_socketcluster.client.client import PROBE_WAIT_S, collapse_exception_group
from trio_socketcluster.errors import (
    InvalidActionError,
    InvalidArgumentsError,
    RemoteError,
    SocketClusterError,
)
from trio_socketcluster.testing import open_test_client

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VybmFtZSI6ImFsaWNlIn0.c2ln"  # payload {"username":"alice"}


# --------------------------------------------------------------------------------------------
# A scripted peer: the server end of each connection, frame by frame


class Peer:
    """One accepted connection on the scripted server."""

    def __init__(self, ws: Any, handshake: dict[str, Any]) -> None:
        self.ws = ws
        self.handshake = handshake

    async def recv(self) -> Any:
        message = await self.ws.get_message()
        if message in ("", "#1", "#2"):
            return message
        return json.loads(message)

    async def send(self, value: Any) -> None:
        await self.ws.send_message(value if isinstance(value, str) else json.dumps(value))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.ws.aclose(code, reason)

    async def closed_with(self) -> tuple[int, str | None]:
        """Read until the client closes; its close code and reason."""
        while True:
            try:
                await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None  # noqa: PT017 (a helper returning the close)
                return exc.reason.code, exc.reason.reason


HandshakeReply = Callable[[dict[str, Any]], dict[str, Any] | None]


def ok_reply(ping_timeout_ms: int = 20_000, authenticated: bool = False) -> HandshakeReply:
    def reply(packet: dict[str, Any]) -> dict[str, Any]:
        status = {"id": "peer", "pingTimeout": ping_timeout_ms, "isAuthenticated": authenticated}
        return {"rid": packet["cid"], "data": status}

    return reply


@dataclass
class Scripted:
    """``open_stream`` for ``connect_stream``; each connection's ``Peer`` arrives on ``peers``
    once the handshake was answered by ``reply`` (``None``: not answered)."""

    nursery: trio.Nursery
    reply: HandshakeReply
    peers: list[Peer] = field(default_factory=list)
    arrived: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    async def open_stream(self) -> trio.abc.Stream:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, server_stream)
        await trio.lowlevel.checkpoint()
        return client_stream

    async def _serve(self, stream: trio.abc.Stream) -> None:
        request = await trio_websocket.wrap_server_stream(self.nursery, stream)
        ws = await request.accept()
        packet = json.loads(await ws.get_message())
        assert packet["event"] == "#handshake"
        reply = self.reply(packet)
        if reply is not None:
            await ws.send_message(json.dumps(reply))
        self.peers.append(Peer(ws, packet))
        self.arrived.unpark_all()

    async def peer(self, index: int) -> Peer:
        while len(self.peers) <= index:
            await self.arrived.park()
        return self.peers[index]


@asynccontextmanager
async def scripted_client(
    reply: HandshakeReply | None = None, **options: Any
) -> AsyncIterator[tuple[Client, Scripted]]:
    try:
        async with trio.open_nursery() as nursery:
            scripted = Scripted(nursery, reply or ok_reply())
            async with connect_stream(scripted.open_stream, **options) as client:
                yield client, scripted
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        single = collapse_exception_group(group)
        if single is None:
            raise
        raise single from None


# --------------------------------------------------------------------------------------------
# Pure parts


def test_reconnect_rule() -> None:
    policy = ReconnectPolicy(initial_delay_s=10, randomness_s=10, multiplier=1.5, max_delay_s=60)
    assert reconnect_delay_s(1000, 0, policy, 0.5) is None
    assert reconnect_delay_s(4500, 0, policy, 0.5) is None
    assert reconnect_delay_s(4999, 3, policy, 0.5) is None
    for code in (4000, 4001, 1005):
        assert reconnect_delay_s(code, 0, policy, 0.9) == 0
        assert reconnect_delay_s(code, 1, policy, 0.0) == 15  # then exponential
    assert reconnect_delay_s(1006, 0, policy, 0.0) == 10
    assert reconnect_delay_s(1006, 0, policy, 0.5) == 15
    assert reconnect_delay_s(4008, 2, policy, 0.0) == 22.5
    assert reconnect_delay_s(1011, 10, policy, 0.0) == 60  # capped
    with pytest.raises(ValueError, match="multiplier must be >= 1"):
        ReconnectPolicy(multiplier=0.5)


async def test_inbox_drops_the_oldest_when_full() -> None:
    inbox: Inbox[int] = Inbox(2)
    for i in range(5):
        inbox.put(i)
    inbox.close()
    inbox.put(99)  # ignored once closed
    assert [i async for i in inbox] == [3, 4]
    assert inbox.dropped == 3


async def test_inbox_loops_each_get_every_message() -> None:
    """Two loops on one inbox each get every message; a loop after a ``break`` resumes where
    the first left off; ``get()`` takes the next message no one has received."""
    inbox: Inbox[int] = Inbox(10)
    inbox.put(0)  # before any loop: kept for the first one
    first = aiter(inbox)
    second = aiter(inbox)
    for i in (1, 2):
        inbox.put(i)
    assert [await anext(first) for _ in range(3)] == [0, 1, 2]
    assert [await anext(second) for _ in range(3)] == [0, 1, 2]
    assert len(inbox._items) == 0  # both passed them: freed
    inbox.put(3)
    assert await anext(first) == 3
    del first, second  # abandoned loops (a ``break``) hold nothing
    inbox.put(4)
    assert len(inbox) == 1
    async for item in inbox:
        assert item == 4
        break
    inbox.put(5)
    assert await inbox.get() == 5
    inbox.close()
    assert [i async for i in inbox] == []
    with pytest.raises(BadConnectionError):
        await inbox.get()


async def test_inbox_slow_loop_skips_what_the_bound_dropped() -> None:
    inbox: Inbox[int] = Inbox(2)
    slow = aiter(inbox)
    fast = aiter(inbox)
    for i in range(5):
        inbox.put(i)
        assert await anext(fast) == i
    assert inbox.dropped == 0  # every message reached a loop
    assert await anext(slow) == 3
    assert slow.dropped == 3


async def test_inbox_get_timeout_and_cancellation_take_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox: Inbox[str] = Inbox(10)
    start = trio.current_time()
    with pytest.raises(SCTimeoutError):
        await inbox.get(timeout_s=3)
    assert trio.current_time() - start == pytest.approx(3)
    with trio.move_on_after(1):
        await inbox.get()
    inbox.put("kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.get()  # cancelled at its first checkpoint: takes nothing
    assert await inbox.get(timeout_s=1) == "kept"


async def test_token_stores(tmp_path: Path) -> None:
    memory = MemoryTokenStore()
    path = tmp_path / "token"
    file = FileTokenStore(path)
    for store in (memory, file):
        assert isinstance(store, TokenStore)
        assert await store.load() is None
        await store.save("a.b.c")
        assert await store.load() == "a.b.c"
        await store.save("d.e.f")
        assert await store.load() == "d.e.f"
        await store.remove()
        await store.remove()
        assert await store.load() is None
    await file.save("x.y.z")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert await FileTokenStore(str(path)).load() == "x.y.z"
    assert os.listdir(tmp_path) == ["token"]  # no temporary file left


async def test_file_token_store_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = FileTokenStore("~/.config/myapp/token")
    assert Path(store.path) == tmp_path / ".config" / "myapp" / "token"
    await store.save("a.b.c")
    assert (tmp_path / ".config" / "myapp" / "token").read_text() == "a.b.c"
    assert stat.S_IMODE(os.stat(tmp_path / ".config" / "myapp").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert not (tmp_path / "~").exists()


# --------------------------------------------------------------------------------------------
# Wire behaviour against a scripted peer


async def test_handshake_carries_the_stored_token_and_cids_continue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with scripted_client(auth_token=TOKEN) as (client, scripted):
            peer = await scripted.peer(0)
            assert peer.handshake == {
                "event": "#handshake",
                "data": {"authToken": TOKEN},
                "cid": 1,
            }
            assert not client.authenticated  # the peer said isAuthenticated: false
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.invoke, "x")
                packet = await peer.recv()
                assert packet == {"event": "x", "cid": 2}
                await peer.send({"rid": 2})
            await peer.close(4001)  # pong timeout: reconnect at once
            again = await scripted.peer(1)
            assert again.handshake["cid"] == 3
            await client.wait_for(lambda c: c.connection_count == 2)


async def test_auto_answers_a_lone_p1_ping_after_the_probe_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A protocol-1-only server (socketcluster-server 14) pings ``#1`` alone: after
    ``PROBE_WAIT_S`` without a ``''`` ping the client answers ``#2`` and stays on 1."""
    with trio.fail_after(10):
        async with scripted_client() as (client, scripted):
            peer = await scripted.peer(0)
            assert client.protocol is None
            start = trio.current_time()
            await peer.send("#1")
            assert await peer.recv() == "#2"
            assert trio.current_time() - start == pytest.approx(PROBE_WAIT_S)
            assert client.protocol == 1
            await peer.send("")  # the other protocol's ping: a raw message now
            start = trio.current_time()
            await peer.send("#1")
            assert await peer.recv() == "#2"  # at once, now that the protocol is known
            assert trio.current_time() == start


@pytest.mark.parametrize("pings", [["#1", ""], [""], ["", "#1"]])
async def test_auto_prefers_protocol_2_when_the_server_speaks_both(
    autojump_clock: trio.testing.MockClock, pings: list[str]
) -> None:
    """Our server probes with ``#1`` then ``''``: the client answers ``''`` only (so the
    server locks protocol 2 on that pong) and never ``#2``."""
    with trio.fail_after(10):
        async with scripted_client() as (client, scripted):
            peer = await scripted.peer(0)
            for ping in pings:
                await peer.send(ping)
            assert await peer.recv() == ""
            await client.wait_for(lambda c: c.protocol is not None)
            assert client.protocol == 2
            await trio.sleep(2 * PROBE_WAIT_S)  # no late "#2" for the first "#1"
            await peer.send("#1")  # raw for protocol 2
            await client.transmit("sync")
            assert await peer.recv() == {"event": "sync"}


async def test_auto_settles_on_protocol_2_against_our_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = build_app()
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            await client.wait_for(lambda c: c.protocol is not None)
            assert client.protocol == 2
            await trio.sleep(2 * PROBE_WAIT_S)
            socket = server.sockets[client.id or ""]
            assert socket.protocol == 2


async def test_protocol_2_only_answers_empty_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with scripted_client(protocol=2) as (client, scripted):
            peer = await scripted.peer(0)
            await peer.send("#1")
            await peer.send("")
            assert await peer.recv() == ""
            assert client.protocol == 2


async def test_ping_timeout_closes_4000_and_reconnects_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with scripted_client(ok_reply(ping_timeout_ms=1000)) as (client, scripted):
            peer = await scripted.peer(0)
            start = trio.current_time()
            await trio.sleep(0.9)
            await peer.send("#1")  # resets the timer
            assert await peer.recv() == "#2"
            assert await peer.closed_with() == (4000, "Server ping timed out")
            assert trio.current_time() - start == pytest.approx(1.9)
            await scripted.peer(1)
            assert trio.current_time() - start == pytest.approx(1.9)
            assert client.last_close is not None
            assert client.last_close.code == 4000
            assert client.last_close.by_client


@pytest.mark.parametrize("where", ["statusCode", "data.code"])
async def test_permanent_handshake_rejection_fails_the_connect(
    autojump_clock: trio.testing.MockClock, where: str
) -> None:
    def reject(packet: dict[str, Any]) -> dict[str, Any]:
        error: dict[str, Any] = {"name": "NoWayError", "message": "go away"}
        if where == "statusCode":
            return {"rid": packet["cid"], "error": {**error, "statusCode": 4501}}
        return {"rid": packet["cid"], "error": error, "data": {"code": 4501}}

    with trio.fail_after(10), pytest.raises(BadConnectionError) as failed:
        async with scripted_client(reject):
            pytest.fail("connected")
    assert failed.value.fields["code"] == 4501
    assert failed.value.fields["reason"] == "NoWayError: go away"


async def test_unanswered_handshake_is_4003_and_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answered = 0

    def second_time(packet: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal answered
        answered += 1
        return ok_reply()(packet) if answered > 1 else None

    with trio.fail_after(100):
        start = trio.current_time()
        async with scripted_client(
            second_time, retry_first=True, ack_timeout_s=3, random=lambda: 0.0
        ) as (client, scripted):
            # 3 s ack timeout, then 10 s back-off (randomness 0)
            assert trio.current_time() - start == pytest.approx(13)
            first = await scripted.peer(0)
            assert await first.closed_with() == (4003, "Failed to complete handshake")
            assert client.connection_count == 1


async def test_p1_disconnect_packet_gives_code_and_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with scripted_client() as (client, scripted):
            peer = await scripted.peer(0)
            await peer.send({"event": "#disconnect", "data": {"code": 4500, "data": "bye"}})
            await peer.close(4500)  # protocol 1: no reason in the close frame
            await client.wait_for(lambda c: c.state is ClientState.CLOSED)
            assert client.last_close is not None
            assert (client.last_close.code, client.last_close.reason) == (4500, "bye")
            assert not client.last_close.by_client
            with pytest.raises(BadConnectionError):
                await client.invoke("x")


async def test_server_invokes_are_answered_by_handlers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with scripted_client() as (client, scripted):

            @client.handler("add")
            def add(data: Any) -> Any:
                return data["a"] + data["b"]

            @client.handler("slow")
            async def slow(data: Any) -> Any:
                await trio.sleep(1)
                return None

            @client.handler("refuse")
            def refuse(data: Any) -> Any:
                raise SocketClusterError("nope", name="RefusedError", why=1)

            @client.handler("crash")
            def crash(data: Any) -> Any:
                raise RuntimeError("secret")

            peer = await scripted.peer(0)
            await peer.send({"event": "slow", "cid": 1})
            await peer.send({"event": "add", "data": {"a": 1, "b": 2}, "cid": 2})
            assert await peer.recv() == {"rid": 2, "data": 3}  # not behind the slow one
            assert await peer.recv() == {"rid": 1}
            await peer.send({"event": "refuse", "cid": 3})
            assert await peer.recv() == {
                "rid": 3,
                "error": {"name": "RefusedError", "message": "nope", "why": 1},
            }
            await peer.send({"event": "crash", "cid": 4})
            crashed = await peer.recv()
            assert crashed["error"]["name"] == "UnknownError"
            assert "secret" not in json.dumps(crashed)
            await peer.send({"event": "unknown", "cid": 5})
            assert (await peer.recv())["error"]["name"] == "NoHandlerError"


async def test_transmits_receivers_and_their_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with scripted_client(buffer_size=2) as (client, scripted):
            peer = await scripted.peer(0)
            await client.transmit("hello", [1, 2])
            assert await peer.recv() == {"event": "hello", "data": [1, 2]}
            news = client.receiver("news")
            assert client.receiver("news") is news
            for i in range(4):
                await peer.send({"event": "news", "data": i})
            await peer.send({"event": "ignored", "data": 0})  # no receiver: dropped
            await client.transmit("sync", None)  # a round trip: the four have arrived
            assert await peer.recv() == {"event": "sync", "data": None}
            assert [await news.get(), await news.get()] == [2, 3]
            assert news.dropped == 2
        assert [m async for m in news] == []  # ended with the client


async def test_reserved_event_names_are_refused() -> None:
    client = Client(trio.testing.memory_stream_pair, host="h")  # type: ignore[arg-type]
    for call in (
        lambda: client.receiver("#publish"),
        lambda: client.add_handler("#setAuthToken", print),
    ):
        with pytest.raises(InvalidActionError):
            call()
    with pytest.raises(InvalidActionError):
        await client.invoke("#handshake")


async def test_invoke_errors_timeout_and_lost_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with scripted_client(ack_timeout_s=4) as (client, scripted):
            peer = await scripted.peer(0)
            async with trio.open_nursery() as nursery:

                async def answer() -> None:
                    assert (await peer.recv())["event"] == "a"
                    await peer.send({"rid": 2, "error": "Login failed"})
                    assert (await peer.recv())["event"] == "b"
                    await peer.send({"rid": 3, "error": {"name": "X", "message": "y", "n": 1}})
                    assert (await peer.recv())["event"] == "c"  # never answered

                nursery.start_soon(answer)
                with pytest.raises(RemoteError) as string_error:
                    await client.invoke("a")
                assert (string_error.value.name, string_error.value.message) == (
                    "Error",
                    "Login failed",
                )
                with pytest.raises(RemoteError) as named:
                    await client.invoke("b")
                assert (named.value.name, named.value.message, named.value.fields) == (
                    "X",
                    "y",
                    {"n": 1},
                )
                start = trio.current_time()
                with pytest.raises(SCTimeoutError):
                    await client.invoke("c")
                assert trio.current_time() - start == pytest.approx(4)

            async def close_after_request() -> None:
                assert (await peer.recv())["event"] == "d"
                await peer.close(1000)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_after_request)
                with pytest.raises(BadConnectionError):
                    await client.invoke("d")
            await client.wait_for(lambda c: c.state is ClientState.CLOSED)  # 1000: no reconnect
            assert client.last_close is not None
            assert client.last_close.code == 1000


async def test_exceptions_from_the_block_are_not_wrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(KeyError):
        async with scripted_client():
            raise KeyError("mine")
    with pytest.raises(KeyError):
        async with open_test_client(build_app()):
            raise KeyError("mine")


async def test_publish_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with scripted_client(ok_reply(ping_timeout_ms=100_000), ack_timeout_s=30) as (
            client,
            scripted,
        ):
            peer = await scripted.peer(0)
            start = trio.current_time()
            with pytest.raises(SCTimeoutError):
                await client.publish("news", 1, timeout_s=2)
            assert trio.current_time() - start == pytest.approx(2)
            assert (await peer.recv())["event"] == "#publish"
            channel = await client.subscribe("news", wait=False)
            request = await peer.recv()
            await peer.send({"rid": request["cid"]})
            await channel.wait_subscribed()
            with pytest.raises(SCTimeoutError):
                await channel.publish(2, timeout_s=1)
            assert trio.current_time() - start == pytest.approx(3)
            with pytest.raises(SCTimeoutError):
                await client.publish("news", 3)  # the default: ack_timeout_s
            assert trio.current_time() - start == pytest.approx(33)


async def test_set_and_remove_auth_token_with_cid(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryTokenStore()
    with trio.fail_after(10):
        async with scripted_client(token_store=store) as (client, scripted):
            peer = await scripted.peer(0)
            await peer.send({"event": "#setAuthToken", "data": {"token": TOKEN}, "cid": 1})
            assert await peer.recv() == {"rid": 1}
            assert client.authenticated
            assert store.token == TOKEN
            assert client.auth_token == {"username": "alice"}
            await peer.send({"event": "#setAuthToken", "data": {}, "cid": 2})
            assert (await peer.recv())["error"]["name"] == "InvalidMessageError"
            await peer.send({"event": "#removeAuthToken", "cid": 3})
            assert await peer.recv() == {"rid": 3}
            assert not client.authenticated
            assert store.token is None


async def test_wait_for_auth_failure_keeps_the_channel_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A refused ``waitForAuth`` subscribe while unauthenticated stays pending and goes again
    once authenticated, as the JS clients do; a refused plain subscribe ends the channel."""
    with trio.fail_after(10):
        async with scripted_client(ok_reply(authenticated=True), auth_token=TOKEN) as (
            client,
            scripted,
        ):
            assert client.authenticated
            peer = await scripted.peer(0)
            private = await client.subscribe("private", wait_for_auth=True, wait=False)
            request = await peer.recv()
            assert request["data"] == {"channel": "private", "waitForAuth": True}
            await peer.send({"event": "#removeAuthToken"})  # S14 order: removal first
            expired = {"name": "AuthTokenExpiredError", "message": "expired", "expiry": 1}
            await peer.send({"rid": request["cid"], "error": expired})
            await client.wait_for(lambda c: not c.authenticated)
            await client.transmit("sync")
            assert (await peer.recv())["event"] == "sync"
            assert private.state is ChannelState.PENDING
            assert private.error is not None
            assert private.error.name == "AuthTokenExpiredError"

            await peer.send({"event": "#setAuthToken", "data": {"token": TOKEN}})
            again = await peer.recv()
            assert again["event"] == "#subscribe"
            assert again["data"]["channel"] == "private"
            await peer.send({"rid": again["cid"]})
            await private.wait_subscribed()

            open_channel = await client.subscribe("plain", wait=False)
            request = await peer.recv()
            await peer.send({"rid": request["cid"], "error": {"name": "E", "message": "no"}})
            with pytest.raises(RemoteError, match="no"):
                await open_channel.wait_subscribed()
            assert open_channel.state is ChannelState.UNSUBSCRIBED
            assert "plain" not in client.channels


# --------------------------------------------------------------------------------------------
# Behaviour against our server


def build_app() -> Server:
    server = Server(auth_key="client-tests")

    @server.handler("login")
    async def login(socket: ServerSocket, data: Any) -> Any:
        await socket.set_auth_token({"username": data}, expires_in_s=3600)
        return None

    @server.handler("whoami")
    def whoami(socket: ServerSocket, _data: Any) -> Any:
        return Reply(data=socket.auth_token)

    @server.handler("ask")
    async def ask(socket: ServerSocket, data: Any) -> Any:
        return await socket.invoke("question", data)

    return server


async def test_auth_lifecycle_against_the_server(autojump_clock: trio.testing.MockClock) -> None:
    server = build_app()
    store = MemoryTokenStore()
    with trio.fail_after(10):
        async with open_test_client(server, token_store=store) as client:
            await client.invoke("login", "alice")
            token = client.signed_auth_token
            assert token is not None
            assert store.token == token
            await client.deauthenticate()
            assert store.token is None
            assert not client.authenticated
            assert await client.invoke("whoami") is None  # the server forgot it too

            status = await client.authenticate(token)
            assert status.authenticated
            assert client.authenticated
            assert store.token == token
            assert (await client.invoke("whoami"))["username"] == "alice"

            with pytest.raises(SocketClusterError) as bad:
                await client.authenticate(token[:-2] + "xx")
            assert bad.value.name == "AuthTokenInvalidError"
            assert not client.authenticated
            assert store.token is None

        async with open_test_client(server, auth_token=token) as again:
            assert again.authenticated  # the handshake carried the token
            assert again.auth_error is None
            assert again.auth_token is not None
            assert again.auth_token["username"] == "alice"


async def test_server_invoke_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with open_test_client(build_app()) as client:
            client.add_handler("question", lambda data: f"answer to {data}")
            assert await client.invoke("ask", "life") == "answer to life"


async def test_unsubscribe_and_resubscribe_after_reconnect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = build_app()
    with trio.fail_after(100):
        async with open_test_client(server) as client:
            a = await client.subscribe("a")
            b = await client.subscribe("b")
            assert await client.subscribe("a") is a
            await b.unsubscribe()
            assert b.state is ChannelState.UNSUBSCRIBED
            socket = server.sockets[client.id or ""]
            await client.invoke("whoami")  # the #unsubscribe has been processed
            assert socket.channels == ["a"]
            socket.disconnect(4001)  # immediate reconnect
            await client.wait_for(lambda c: c.connection_count == 2)
            await a.wait_subscribed()
            assert server.sockets[client.id or ""].channels == ["a"]
            server.publish("a", 1)
            server.publish("b", 2)
            assert await a.get() == 1
            await client.disconnect()
            assert [m async for m in a] == []
            assert a.state is ChannelState.UNSUBSCRIBED


async def test_disconnect_while_reconnecting_stops_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with scripted_client() as (client, scripted):
            peer = await scripted.peer(0)
            await peer.close(1011)  # back-off of at least 10 s
            await client.wait_for(lambda c: c.state is ClientState.CONNECTING)
            start = trio.current_time()
            await client.disconnect()
            assert client.state is ClientState.CLOSED
            assert trio.current_time() == start
            assert len(scripted.peers) == 1


def test_public_api_is_exported() -> None:
    import trio_socketcluster.client as api
    import trio_socketcluster.testing as kit

    for module in (api, kit):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is not None


async def test_several_loops_on_one_channel_each_get_every_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two tasks iterating the same channel (even via two ``subscribe`` calls) each get every
    publish, in order; messages published before a loop starts wait for it."""
    server = build_app()
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            news = await client.subscribe("news")
            also = await client.subscribe("news")
            assert also is news
            server.publish("news", 0)  # before any loop
            await client.invoke("whoami")  # a round trip: it has arrived
            got: dict[str, list[int]] = {"a": [], "b": []}

            async def loop(name: str, channel: Channel) -> None:
                async for data in channel:
                    got[name].append(data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop, "a", news)
                nursery.start_soon(loop, "b", also)
                await trio.sleep(1)
                for i in (1, 2, 3):
                    server.publish("news", i)
                await client.invoke("whoami")
                await trio.sleep(1)
                await news.unsubscribe()  # ends both loops
            # both loops started before anyone had received 0: both get it, and the rest
            assert got == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
            assert [m async for m in news] == []  # ended


async def test_waiting_for_the_next_message_with_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = build_app()
    with trio.fail_after(100):
        async with open_test_client(server) as client:
            news = await client.subscribe("news")
            start = trio.current_time()
            with pytest.raises(SCTimeoutError):
                await news.get(timeout_s=5)
            assert trio.current_time() - start == pytest.approx(5)
            with trio.move_on_after(5) as scope:
                await news.get()
            assert scope.cancelled_caught
            server.publish("news", "late")  # nothing was taken by the two that gave up
            assert await news.get(timeout_s=5) == "late"


async def test_authenticated_when_invoke_login_returns_on_our_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Our server sends ``#setAuthToken`` before the response of the handler that called
    ``set_auth_token``, and the client reads in order: no waiting needed."""
    with trio.fail_after(10):
        async with open_test_client(build_app()) as client:
            await client.invoke("login", "alice")
            assert client.authenticated
            assert client.auth_token is not None
            assert client.auth_token["username"] == "alice"


# --------------------------------------------------------------------------------------------
# One exception from every entry point: never a group


class FailingStore:
    """A token store whose ``load`` or ``save`` raises (as a full disk or a bad path would)."""

    def __init__(self, fail_on: str) -> None:
        self.fail_on = fail_on

    async def load(self) -> str | None:
        await trio.lowlevel.checkpoint()
        if self.fail_on == "load":
            raise PermissionError("load failed")
        return None

    async def save(self, token: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_on == "save":
            raise PermissionError("save failed")

    async def remove(self) -> None:
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def tcp_server(server: Server) -> AsyncIterator[str]:
    """``server`` on a real socket of 127.0.0.1; its URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/socketcluster/"
        nursery.cancel_scope.cancel()


async def test_a_failing_token_store_is_one_exception() -> None:
    """This provoked a three-level ExceptionGroup (the store's error deep in the reader task's
    nurseries, next to the block's ``BadConnectionError``); now ``connect`` raises the store's
    exception itself, whether the block was waiting or not."""
    with trio.fail_after(10):
        async with tcp_server(build_app()) as url:
            with pytest.raises(PermissionError, match="save failed") as saved:  # noqa: PT012 (the whole block is the case)
                async with connect(url, token_store=FailingStore("save")) as client:
                    await client.invoke("login", "alice")  # #setAuthToken: save raises
                    pytest.fail("the block went on")
            assert type(saved.value) is PermissionError

            with pytest.raises(PermissionError, match="load failed") as loaded:
                async with connect(url, token_store=FailingStore("load")):
                    pytest.fail("connected")
            assert type(loaded.value) is PermissionError


async def test_a_refused_connection_is_one_exception() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with trio.fail_after(10), pytest.raises(BadConnectionError) as refused:
            async with connect(f"ws://127.0.0.1:{port}/socketcluster/"):
                pytest.fail("connected")
    assert type(refused.value) is BadConnectionError
    assert refused.value.fields["code"] == 1006
    with pytest.raises(InvalidArgumentsError):
        async with connect("ws://[::1/"):
            pytest.fail("connected")


async def test_handlers_raising_never_make_a_group() -> None:
    """A handler's error is answered (the client lives on); a handler's ``SystemExit`` ends
    the client and comes out of ``connect`` alone."""
    with trio.fail_after(10):
        async with tcp_server(build_app()) as url:
            with pytest.raises(SystemExit) as exited:  # noqa: PT012 (the whole block is the case)
                async with connect(url) as client:

                    @client.handler("question")
                    def crash(data: Any) -> Any:
                        if data == "exit":
                            raise SystemExit(3)
                        raise RuntimeError("handler bug")

                    with pytest.raises(SocketClusterError) as answered:
                        await client.invoke("ask", "bug")
                    assert answered.value.name == "UnknownError"
                    assert client.state is ClientState.OPEN
                    await client.invoke("ask", "exit")
                    pytest.fail("the block went on")
            assert type(exited.value) is SystemExit
            assert exited.value.code == 3


async def test_block_exceptions_come_out_unchanged_even_groups() -> None:
    with trio.fail_after(10):
        async with tcp_server(build_app()) as url:
            mine = ExceptionGroup("mine", [KeyError("a"), ValueError("b")])
            with pytest.raises(ExceptionGroup) as raised:
                async with connect(url):
                    raise mine
            # (trio's cancel scope rebuilds a group it passes through; same message, same leaves)
            assert raised.value.message == "mine"
            assert raised.value.exceptions == mine.exceptions
            with pytest.raises(KeyError) as single:
                async with connect(url):
                    raise KeyError("mine")
            assert type(single.value) is KeyError
