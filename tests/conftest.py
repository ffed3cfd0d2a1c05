"""Shared fixtures and helpers: servers in the test's nursery, raw clients over memory streams,
``make_server`` (a server with an ``echo`` handler) for the server tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from redisserver import RedisServer
from wsclient import ClientFactory, RawClient, new_client

from trio_socketcluster import Server, ServerSocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

AUTH_KEY = "test-auth-key"


async def wait_until(predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` (the state of another component: a count, a socket's state) every
    10 ms until it is true; ``TooSlowError`` after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 (state of other components: polled)
            await trio.sleep(0.01)


def make_server(**options: Any) -> Server:
    """A server (auth key ``"k"`` unless given) whose ``echo`` handler answers its data."""
    server = Server(**{"auth_key": "k", **options})

    @server.handler("echo")
    def echo(_s: ServerSocket, data: Any) -> Any:
        return data

    return server


@pytest.fixture
def server() -> Server:
    return Server(auth_key=AUTH_KEY)


@pytest.fixture
async def connect(nursery: trio.Nursery) -> AsyncIterator[ClientFactory]:
    """``await connect(server, target=..., headers=..., handshake=True)`` → a RawClient wired
    to ``server.handle_stream`` through an in-memory stream pair (no sockets)."""

    async def factory(
        srv: Server,
        *,
        target: str = "/socketcluster/",
        headers: list[tuple[bytes, bytes]] | None = None,
        upgrade: bool = True,
    ) -> RawClient:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(srv.handle_stream, server_stream)
        client = new_client(client_stream)
        clients.append(client)
        if upgrade:
            await client.connect(target, headers=headers)
        return client

    clients: list[RawClient] = []
    yield factory
    for client in clients:  # EOF ends each server connection at once
        await trio.aclose_forcefully(client.stream)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free port, for one test (skips without redis-server)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "slow: a test that takes more than a second")
