"""The synchronous write of ``transport.ws`` (a write the socket takes is not awaited), over
real TCP on 127.0.0.1: what fits goes out without a checkpoint; what does not is written by
``send_all``, in order, after what the kernel took; a closed stream is never written to."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio
import trio.testing
from test_transport_ws import connected

from trio_socketcluster.transport.base import OutboundMessage, build_text_frame
from trio_socketcluster.transport.ws import WsprotoTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@asynccontextmanager
async def tcp_pair(
    sndbuf: int | None = None,
) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        client = await trio.testing.open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
        if sndbuf is not None:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        async with client, server:
            yield client, server
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_a_write_the_socket_takes_is_not_a_checkpoint() -> None:
    async with tcp_pair() as pair, connected(pair) as (transport, client):
        transport.send(OutboundMessage(b"hello"))
        transport.send_priority(OutboundMessage(b"first"))
        with trio.CancelScope() as scope:
            scope.cancel()
            await transport.flush()  # a checkpoint would raise Cancelled here
        assert not scope.cancelled_caught
        assert transport.buffered_bytes == 0
        assert await client.texts(2) == ["first", "hello"]


async def test_what_the_socket_does_not_take_follows_in_order() -> None:
    big = [OutboundMessage(bytes([65 + i % 26]) * 100_000) for i in range(40)]
    async with tcp_pair(sndbuf=16384) as pair, connected(pair) as (transport, client):
        for message in big:
            transport.send(message)
        queued = transport.buffered_bytes
        assert transport._write_now() is False  # the kernel took a part only
        assert 0 < transport.buffered_bytes < queued
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.flush)  # send_all writes the rest as the client reads
            await trio.testing.wait_all_tasks_blocked()
            transport.send(OutboundMessage(b"after"))
            got = await client.texts(len(big) + 1)
        assert got == [m.payload.decode() for m in big] + ["after"]
        assert transport.buffered_bytes == 0


async def test_a_closed_stream_is_never_written_to() -> None:
    async with tcp_pair() as pair, connected(pair) as (transport, _client):
        await transport.close(1000, "bye")
        transport._buf += build_text_frame(b"late")  # bypass send(), which ignores it
        assert transport._write_now() is False
        assert bytes(transport._buf) == build_text_frame(b"late")


async def test_memory_streams_take_the_awaited_path() -> None:
    async with connected() as (transport, client):
        assert isinstance(transport, WsprotoTransport)
        transport.send(OutboundMessage(b"x"))
        assert transport._write_now() is False  # not a socket: send_all does it
        await transport.flush()
        assert await client.texts(1) == ["x"]
