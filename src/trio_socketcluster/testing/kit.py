"""``open_test_client``: a client and the server's side of its connections in one nursery."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from ..client import Client, connect_stream
from ..client.client import collapse_exception_group

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ..server import Server

__all__ = ["open_test_client", "open_test_clients"]


@asynccontextmanager
async def open_test_client(
    server: Server, *, resource: str | None = None, **client_kwargs: Any
) -> AsyncIterator[Client]:
    """``async with open_test_client(server, **client_kwargs) as client:``.

    Every connection attempt of the client gets a fresh ``memory_stream_pair()`` whose other
    end is served by ``server.handle_stream`` in this kit's nursery. ``resource`` defaults to
    the server's path; ``client_kwargs`` go to ``Client`` (``auth_token``, ``token_store``,
    ``ack_timeout_s``, ``random``...). The block is entered after the first handshake.
    Leaving it closes the client (code 1000), then cancels the server's side: nothing the kit
    started outlives the block. The server's broker is not started: call
    ``await server.start_broker(nursery)`` yourself if it has background tasks.
    """
    try:
        async with trio.open_nursery() as nursery:

            async def open_stream() -> trio.abc.Stream:
                client_stream, server_stream = trio.testing.memory_stream_pair()
                nursery.start_soon(server.handle_stream, server_stream)
                await trio.lowlevel.checkpoint()
                return client_stream

            try:
                async with connect_stream(
                    open_stream,
                    host="testserver",
                    resource=resource if resource is not None else server.config.path,
                    **client_kwargs,
                ) as client:
                    yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        single = collapse_exception_group(group)
        if single is None:
            raise
        raise single from None


@asynccontextmanager
async def open_test_clients(
    server: Server, count: int, **client_kwargs: Any
) -> AsyncIterator[list[Client]]:
    """``count`` clients of ``server`` (each as ``open_test_client``), closed together."""
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_test_client(server, **client_kwargs))
            for _ in range(count)
        ]
        yield clients
