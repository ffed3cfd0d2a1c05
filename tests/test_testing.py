"""The test kit: application scenarios with a real client and server in memory, on a mock clock.

Every test here runs on ``autojump_clock``: hours of token lifetime pass in milliseconds of
real time, and nothing sleeps to wait for something it could await.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from trio_socketcluster import Block, Hook, Reply, Server, ServerSocket, SocketClusterError
from trio_socketcluster.client import ChannelState, Client, MemoryTokenStore
from trio_socketcluster.middleware import SubscribeRequest, token_channels
from trio_socketcluster.testing import open_test_client, open_test_clients

pytest_plugins = ["trio_socketcluster.testing.pytest_plugin"]

KEY = "test-kit-key"
ConnectFactory = Callable[..., Awaitable[Client]]


def build_app(**options: Any) -> Server:
    """A seed-like application: login issues {username, channels}; publishing is limited to
    the token's channels (the seed's publish middleware); ``vip-*`` channels need a vip."""
    server = Server(auth_key=KEY, **options)
    server.add_middleware(Hook.PUBLISH_IN, token_channels())

    @server.middleware.middleware(Hook.SUBSCRIBE)
    def vip_only(req: SubscribeRequest) -> Block | None:
        if req.channel.startswith("vip-") and not (req.auth_token or {}).get("vip"):
            return Block(f"You are not authorized to subscribe to {req.channel}")
        return None

    @server.handler("login")
    async def login(socket: ServerSocket, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("password") != "pw":
            return Reply(error="Login failed")
        ttl = data.get("ttl")
        await socket.set_auth_token(
            {"username": data["username"], "channels": ["news"], "vip": bool(data.get("vip"))},
            expires_in_s=ttl,
        )
        return None

    @server.handler("whoami")
    def whoami(socket: ServerSocket, _data: Any) -> Any:
        return Reply(data=socket.auth_token)

    return server


def wall_deadline(server: Server, wall: float) -> float:
    """The trio time at which ``server.now()`` reaches the wall-clock time ``wall``."""
    return trio.current_time() + (wall - server.now())


async def test_login_publish_expire_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = time.perf_counter()
    # Default token expiry: 24 hours. Pings every 10 minutes instead of 8 s keep the virtual
    # day cheap in real time (each ping is a real round trip through both protocol stacks).
    server = build_app(ping_interval_s=600, ping_timeout_s=1200)
    with trio.fail_after(200_000):
        async with open_test_clients(server, 2) as (alice, watcher):
            news = await watcher.subscribe("news")

            with pytest.raises(SocketClusterError) as refused:
                await alice.publish("news", "anonymous")
            assert refused.value.message == "You are not authorized to publish to news"

            await alice.invoke("login", {"username": "alice", "password": "pw"})
            assert alice.authenticated
            assert alice.auth_token is not None
            exp = alice.auth_token["exp"]
            assert exp - server.now() == pytest.approx(86400, abs=1)

            await alice.publish("news", "hello")
            assert await news.__anext__() == "hello"
            with pytest.raises(SocketClusterError, match="not authorized to publish to sports"):
                await alice.publish("sports", "nope")

            # a day passes (with pings every 8 s): logged out exactly at exp
            await alice.wait_for(lambda c: not c.authenticated)
            assert server.now() == pytest.approx(exp, abs=1e-6)
            assert alice.state.value == "open"  # still connected, just logged out
            with pytest.raises(SocketClusterError, match="not authorized to publish to news"):
                await alice.publish("news", "too late")
            assert await alice.invoke("whoami") is None
    assert time.perf_counter() - started < 1.0


async def test_expiry_happens_at_exp_not_before(autojump_clock: trio.testing.MockClock) -> None:
    server = build_app()
    with trio.fail_after(100):
        async with open_test_client(server) as client:
            await client.invoke("login", {"username": "bob", "password": "pw", "ttl": 30})
            assert client.auth_token is not None
            exp = client.auth_token["exp"]
            await trio.sleep_until(wall_deadline(server, exp) - 0.001)
            assert client.authenticated
            socket = server.sockets[client.id or ""]
            assert socket.authenticated
            await client.wait_for(lambda c: not c.authenticated)
            assert server.now() == pytest.approx(exp, abs=1e-6)
            assert not socket.authenticated


async def test_renewal_hook_keeps_the_client_logged_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = build_app(renew_before_s=5, auth_default_expiry_s=60)
    renewed_at: list[float] = []

    @server.renewal
    def renew(socket: ServerSocket, token: dict[str, Any]) -> dict[str, Any] | None:
        renewed_at.append(server.now())
        if len(renewed_at) > 3:
            return None  # stop renewing: the last token then expires
        return {k: v for k, v in token.items() if k not in ("iat", "exp")}  # lasts 60 s

    store = MemoryTokenStore()
    with trio.fail_after(1000):
        async with open_test_client(server, token_store=store) as client:
            await client.invoke("login", {"username": "carol", "password": "pw", "ttl": 60})
            assert client.auth_token is not None
            tokens = [client.signed_auth_token]
            first_exp = client.auth_token["exp"]
            for _ in range(3):
                previous = tokens[-1]
                await client.wait_for(lambda c: c.signed_auth_token != previous)  # noqa: B023
                tokens.append(client.signed_auth_token)
                assert client.authenticated
                assert store.token == client.signed_auth_token  # #setAuthToken saved it
            assert renewed_at[0] == pytest.approx(first_exp - 5, abs=1e-6)
            assert client.auth_token["username"] == "carol"
            await client.wait_for(lambda c: not c.authenticated)
            assert len(renewed_at) == 4
            assert store.token is None


async def test_subscribe_middleware_blocks(autojump_clock: trio.testing.MockClock) -> None:
    server = build_app()
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            with pytest.raises(SocketClusterError) as blocked:
                await client.subscribe("vip-lounge")
            assert blocked.value.message == "You are not authorized to subscribe to vip-lounge"
            assert "vip-lounge" not in client.channels

            await client.invoke("login", {"username": "dan", "password": "pw", "vip": True})
            lounge = await client.subscribe("vip-lounge")
            assert lounge.state is ChannelState.SUBSCRIBED


async def test_wait_for_auth_channel_is_sent_after_login(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = build_app()
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            lounge = await client.subscribe("vip-lounge", wait_for_auth=True, wait=False)
            assert lounge.state is ChannelState.PENDING
            assert await client.invoke("whoami") is None  # a round trip later:
            assert lounge.state is ChannelState.PENDING  # not requested while logged out
            await client.invoke("login", {"username": "eve", "password": "pw", "vip": True})
            await lounge.wait_subscribed()
            assert server.sockets[client.id or ""].channels == ["vip-lounge"]


async def test_kick_out_ends_the_channel(autojump_clock: trio.testing.MockClock) -> None:
    server = build_app()
    with trio.fail_after(10):
        async with open_test_client(server) as client:
            news = await client.subscribe("news")
            server.publish("news", 1)
            assert await news.__anext__() == 1
            server.sockets[client.id or ""].kick_out("news", "behave")
            server.publish("news", 2)  # no longer delivered
            assert [m async for m in news] == []
            assert news.state is ChannelState.UNSUBSCRIBED
            assert news.kicked_out is not None
            assert news.kicked_out.message == "behave"
            assert "news" not in client.channels


async def test_reconnect_backoff_runs_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = build_app()
    store = MemoryTokenStore()
    with trio.fail_after(100):
        async with open_test_client(server, token_store=store, random=lambda: 0.5) as client:
            await client.invoke("login", {"username": "fay", "password": "pw"})
            news = await client.subscribe("news")
            server.sockets[client.id or ""].disconnect(1011, "oops")
            await client.wait_for(lambda c: c.connection_count == 1 and c.state.value != "open")
            lost_at = trio.current_time()
            await client.wait_for(lambda c: c.connection_count == 2)
            # initial 10 s + randomness 10 s * 0.5, first attempt: 15 s
            assert trio.current_time() - lost_at == pytest.approx(15, abs=0.01)
            assert client.last_close is not None
            assert (client.last_close.code, client.last_close.reason) == (1011, "oops")
            assert client.authenticated  # the stored token was accepted in the handshake
            await news.wait_subscribed()  # and the channel resubscribed
            server.publish("news", "back")
            assert await news.__anext__() == "back"


# --------------------------------------------------------------------------------------------
# The pytest plugin's fixtures


@pytest.fixture
def sc_server() -> Server:
    return build_app()


async def test_fixtures_give_connected_clients(
    sc_client: Client, sc_connect: ConnectFactory, sc_server: Server
) -> None:
    assert sc_client.state.value == "open"
    other = await sc_connect(auth_token=None)
    assert sc_server.client_count == 2
    await other.invoke("login", {"username": "gus", "password": "pw"})
    assert await other.invoke("whoami") == other.auth_token
    assert await sc_client.invoke("whoami") is None
