"""The test kit: a real client wired to a real server in memory, no port, no sleeping.

::

    async def test_login(autojump_clock):          # pytest-trio
        server = build_my_app()
        async with open_test_client(server) as client:
            await client.invoke("login", {...})
            assert client.authenticated

``open_test_client(server, **client_kwargs)`` connects a ``trio_socketcluster.client.Client``
to ``server.handle_stream`` through ``trio.testing.memory_stream_pair()``; the server's side
of every connection (reconnects included) runs in a nursery the kit owns, so both sides run on
trio's clock: with ``autojump_clock`` token expiry, pings and reconnect back-off happen in
virtual time. Pytest fixtures: ``trio_socketcluster.testing.pytest_plugin`` (docs/testing.md).
"""

from .kit import open_test_client as open_test_client
from .kit import open_test_clients as open_test_clients

__all__ = ["open_test_client", "open_test_clients"]
