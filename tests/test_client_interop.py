"""The Python client against real servers over TCP: the same scenarios against our server
(``examples/conformance_app.py``'s ``build_server``, in-process on port 0, protocol detected
automatically) and against the Node reference servers (``benchmarks/node/conformance14.js``,
protocol 1, and ``conformance19.js``, protocol 2; marked ``interop``, skipped without node and
npm; ``tests/interop/node_modules`` is installed as ``test_interop`` does).

Real sockets mean real time (no mock clock). Where the reference servers only notice token
expiry lazily, on the next inbound event, the expiry test sleeps until ``exp`` has passed and
then sends one; against our server, which pushes ``#removeAuthToken`` at ``exp``, it awaits it.
"""

from __future__ import annotations

import importlib.util
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pytest
import trio
from procs import INTEROP, REPO, Process, npm_ci

from trio_socketcluster.client import ChannelState, Client, ClientState, MemoryTokenStore, connect
from trio_socketcluster.errors import SocketClusterError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from trio_socketcluster import Server

NODE_APPS = {
    "node14": (REPO / "benchmarks" / "node" / "conformance14.js", 1),
    "node19": (REPO / "benchmarks" / "node" / "conformance19.js", 2),
}
READY_TIMEOUT_S = 20.0
PING_INTERVAL_MS = 1000  # the reference servers' (8000 by default)
GUARD_S = 15.0  # per test


def _load_build_server() -> Callable[[str | None], Server]:
    """``examples/conformance_app.py``'s ``build_server`` (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "conformance_app", REPO / "examples" / "conformance_app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast("Callable[[str | None], Server]", module.build_server)


build_server = _load_build_server()


@dataclass
class Target:
    name: str
    url: str
    protocol: Any  # "auto" for ours, else 1 or 2
    server: Server | None  # ours, in-process

    @asynccontextmanager
    async def client(self, **options: Any) -> AsyncIterator[Client]:
        options.setdefault("protocol", self.protocol)
        async with connect(self.url, **options) as client:
            yield client


class NodeServers:
    """The reference servers, each started on first use and stopped with the module."""

    def __init__(self) -> None:
        self.procs: dict[str, Process] = {}

    def url(self, name: str) -> str:
        node = npm_ci(INTEROP, "the interop tests")
        if name not in self.procs:
            script, _ = NODE_APPS[name]
            env = {
                "PORT": "0",
                "HOST": "127.0.0.1",
                "AUTH_KEY": secrets.token_hex(16),
                "PING_INTERVAL_MS": str(PING_INTERVAL_MS),  # auto detection needs a ping
            }
            self.procs[name] = Process([node, str(script)], cwd=REPO, env=env)
            self.procs[name].wait_ready(READY_TIMEOUT_S, name)
        process = self.procs[name]
        if process.proc.poll() is not None:
            pytest.fail(f"{name} exited with {process.proc.returncode}")
        return f"ws://127.0.0.1:{process.port}/socketcluster/"

    def stop(self) -> None:
        for process in self.procs.values():
            process.stop()


@pytest.fixture(scope="module")
def node_servers() -> Iterator[NodeServers]:
    servers = NodeServers()
    yield servers
    servers.stop()


@pytest.fixture(
    params=[
        pytest.param("python"),
        pytest.param("node14", marks=pytest.mark.interop),
        pytest.param("node19", marks=pytest.mark.interop),
    ]
)
async def target(
    request: pytest.FixtureRequest, nursery: trio.Nursery, node_servers: NodeServers
) -> Target:
    name: str = request.param
    if name == "python":
        server = build_server(secrets.token_hex(16))
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        return Target(name, f"ws://127.0.0.1:{port}/socketcluster/", "auto", server)
    return Target(name, node_servers.url(name), NODE_APPS[name][1], None)


ALICE = {"username": "alice", "password": "alice-pass"}


async def test_connect_echo_and_errors(target: Target) -> None:
    with trio.fail_after(GUARD_S):
        async with target.client() as client:
            assert client.state is ClientState.OPEN
            assert isinstance(client.id, str)
            assert client.id
            assert not client.authenticated
            value = {"a": [1, "x", None], "b": {"c": 1.5}}
            assert await client.invoke("echo", value) == value
            with pytest.raises(SocketClusterError) as failed:
                await client.invoke("fail")
            assert (failed.value.name, failed.value.message) == ("CustomError", "it failed")
            with pytest.raises(SocketClusterError) as refused:
                await client.invoke("login", {"username": "alice", "password": "wrong"})
            assert refused.value.message == "Login failed"  # a plain string on the wire
            if target.server is not None:  # ours probes with both pings after the handshake
                await client.wait_for(lambda c: c.protocol is not None)
                assert client.protocol == 2


async def test_auto_protocol_prefers_2_and_falls_back_to_1(target: Target) -> None:
    """``protocol="auto"``: 2 against ours (which speaks both) and socketcluster-server 19,
    1 against the protocol-1-only socketcluster-server 14; pings are answered either way."""
    expected = {"python": 2, "node14": 1, "node19": 2}[target.name]
    with trio.fail_after(GUARD_S):
        async with target.client(protocol="auto") as client:
            await client.wait_for(lambda c: c.protocol is not None)
            assert client.protocol == expected
            if target.server is not None:
                await trio.sleep(0.2)
                assert target.server.sockets[client.id or ""].protocol == 2
            # Past a few ping intervals the connection is still the first one: pongs arrive.
            await trio.sleep(3 * PING_INTERVAL_MS / 1000)
            assert client.state is ClientState.OPEN
            assert client.connection_count == 1
            assert await client.invoke("echo", 1) == 1


async def test_authenticated_after_invoke_login(target: Target) -> None:
    """Ours and socketcluster-server 14 send ``#setAuthToken`` before the login response, so
    ``authenticated`` is true when ``invoke("login")`` returns; socketcluster-server 19 queues
    the ``#setAuthToken`` transmit on its outbound stream after the response is written, so
    there it may still be false, and ``wait_for`` is the portable way."""
    with trio.fail_after(GUARD_S):
        async with target.client() as client:
            await client.invoke("login", ALICE)
            assert client.authenticated is (target.name != "node19")
            with trio.fail_after(5):
                await client.wait_for(lambda c: c.authenticated)
            assert client.auth_token is not None
            assert client.auth_token["username"] == "alice"


async def test_login_whoami_and_reconnect_with_the_stored_token(target: Target) -> None:
    store = MemoryTokenStore()
    with trio.fail_after(GUARD_S):
        async with target.client(token_store=store) as client:
            await client.invoke("login", ALICE)
            await client.wait_for(lambda c: c.authenticated)  # #setAuthToken may follow
            assert client.auth_token is not None
            assert client.auth_token["username"] == "alice"
            assert store.token == client.signed_auth_token
            me = await client.invoke("whoami")
            assert (me["username"], me["channels"]) == ("alice", ["news", "alice-room"])

            # the server drops us (4001: reconnect at once); the handshake carries the token
            await client.invoke("disconnectMe", {"code": 4001, "reason": "again"})
            await client.wait_for(lambda c: c.connection_count == 2)
            assert client.authenticated
            assert (await client.invoke("whoami"))["username"] == "alice"

        async with target.client(token_store=store) as again:  # a new client, same store
            assert again.authenticated
            assert again.auth_error is None
            assert (await again.invoke("whoami"))["username"] == "alice"


async def test_subscribe_publish_receive(target: Target) -> None:
    with trio.fail_after(GUARD_S):
        async with target.client() as client:
            with pytest.raises(SocketClusterError) as refused:
                await client.publish("news", "anonymous")
            assert refused.value.message == "You are not authorized to publish to news"
            with pytest.raises(SocketClusterError) as private:
                await client.subscribe("private-x")
            assert private.value.message == "You are not authorized to subscribe to private-x"

            news = await client.subscribe("news")
            assert news.state is ChannelState.SUBSCRIBED
            await client.invoke("login", ALICE)
            await client.wait_for(lambda c: c.authenticated)
            await client.publish("news", {"n": 1}, timeout_s=5)
            assert await news.get(timeout_s=5) == {"n": 1}
            await client.invoke("serverPublish", {"channel": "news", "data": "from server"})
            assert await news.get(timeout_s=5) == "from server"

            events = client.receiver("ping-back")
            await client.invoke("emitBack", {"event": "ping-back", "data": [1, 2]})
            assert await events.get() == [1, 2]


async def test_kick_out(target: Target) -> None:
    with trio.fail_after(GUARD_S):
        async with target.client() as client:
            news = await client.subscribe("news")
            await client.invoke("kick", {"channel": "news"})
            assert [m async for m in news] == []
            assert news.state is ChannelState.UNSUBSCRIBED
            assert news.kicked_out is not None
            assert news.kicked_out.message == "kicked"


async def test_logout(target: Target) -> None:
    store = MemoryTokenStore()
    with trio.fail_after(GUARD_S):
        async with target.client(token_store=store) as client:
            await client.invoke("login", ALICE)
            await client.wait_for(lambda c: c.authenticated)
            await client.invoke("logout")
            await client.wait_for(lambda c: not c.authenticated)  # #removeAuthToken
            assert store.token is None
            assert await client.invoke("whoami") is None


async def test_token_expiry(target: Target) -> None:
    store = MemoryTokenStore()
    with trio.fail_after(GUARD_S):
        async with target.client(token_store=store) as client:
            await client.invoke("loginShort", {**ALICE, "ttl": 2})
            await client.wait_for(lambda c: c.authenticated)
            assert client.auth_token is not None
            exp = client.auth_token["exp"]
            assert exp - client.auth_token["iat"] == 2
            if target.server is None:
                # The reference servers check expiry lazily, on the next inbound event.
                await trio.sleep(max(0.0, exp - time.time()) + 0.2)
                await client.invoke("echo", 1)
            await client.wait_for(lambda c: not c.authenticated)
            assert time.time() >= exp - 0.05
            assert store.token is None
            assert await client.invoke("whoami") is None


async def test_server_disconnect_code_and_reason(target: Target) -> None:
    with trio.fail_after(GUARD_S):
        async with target.client() as client:
            await client.invoke("disconnectMe", {"code": 4500, "reason": "bye"})
            await client.wait_for(lambda c: c.state is ClientState.CLOSED)  # >= 4500: final
            assert client.last_close is not None
            assert (client.last_close.code, client.last_close.reason) == (4500, "bye")
            assert not client.last_close.by_client
