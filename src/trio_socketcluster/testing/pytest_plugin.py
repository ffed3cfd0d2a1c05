"""Pytest fixtures for applications built on trio-socketcluster (needs pytest-trio).

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["trio_socketcluster.testing.pytest_plugin"]

and give them your application by overriding ``sc_server``::

    @pytest.fixture
    def sc_server() -> Server:
        return build_my_app(auth_key="test-key")

Fixtures:

* ``sc_server``: the ``Server`` under test (default: a bare ``Server`` with a fixed key).
* ``sc_connect``: ``await sc_connect(server=None, **client_kwargs)`` returns a connected
  ``Client`` (via ``open_test_client``) that lives until the end of the test; call it as often
  as you need clients. Runs in pytest-trio's ``nursery`` fixture.
* ``sc_client``: one client of ``sc_server``, connected with the defaults.

With ``autojump_clock`` (pytest-trio) tokens expire, pings run and reconnect delays pass in
virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from ..client import Client
from ..server import Server
from .kit import open_test_client

__all__ = ["ConnectFactory", "sc_client", "sc_connect", "sc_server"]

ConnectFactory = Callable[..., Awaitable[Client]]

TEST_AUTH_KEY = "trio-socketcluster-test-key"


@pytest.fixture
def sc_server() -> Server:
    """The server under test; override this fixture with your application's server."""
    return Server(auth_key=TEST_AUTH_KEY)


@pytest.fixture
async def sc_connect(nursery: trio.Nursery, sc_server: Server) -> AsyncIterator[ConnectFactory]:
    """``await sc_connect(server=None, **client_kwargs)`` → a ``Client`` open until the test
    ends; at teardown every client is closed gracefully (code 1000), then its server side."""
    stop = trio.Event()
    running: list[trio.Event] = []

    async def connect(server: Server | None = None, **client_kwargs: Any) -> Client:
        target = server if server is not None else sc_server
        done = trio.Event()
        running.append(done)

        async def hold(*, task_status: trio.TaskStatus[Client] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with open_test_client(target, **client_kwargs) as client:
                    task_status.started(client)
                    await stop.wait()
            finally:
                done.set()

        client: Client = await nursery.start(hold)
        return client

    yield connect
    stop.set()
    for done in running:
        await done.wait()


@pytest.fixture
async def sc_client(sc_connect: ConnectFactory) -> Client:
    """A client of ``sc_server``, connected with the default options."""
    return await sc_connect()
