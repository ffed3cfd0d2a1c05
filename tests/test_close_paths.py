"""Every close path where the peer can still read writes what was queued before the close frame.

Real TCP sockets, a raw client that does not read until the close was decided, and a flood of
4 KiB events (4 MiB, more than the kernel buffers take) queued just before the close:

* ``disconnect()`` from a handler; ``kick_out`` then ``disconnect()``: on our transport and on
  the trio-websocket adapter;
* a protocol error (a frame with a reserved bit set) right after valid messages, in the same
  read: our transport (the adapter's protocol errors are trio-websocket's own);
* server shutdown (cancelling ``serve``): our transport.

Also: cancelling ``serve`` with a client that never reads (its socket closes 4100 or is cut at
the deadline) returns within ``shutdown_timeout_s``; ``server.ready`` is false from the first
moment of the drain.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.lowlevel
from conftest import make_server
from trio_websocket import serve_websocket
from wsclient import Closed, RawClient, new_client
from wsproto.events import TextMessage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from trio_socketcluster import Server, ServerSocket

FLOOD = 1000
CHUNK = "x" * 4096


def flood_server(**options: Any) -> Server:
    server = make_server(
        max_buffer_bytes=64 * 2**20, ping_interval_s=100, ping_timeout_s=200, **options
    )

    @server.handler("flood")
    def flood(socket: ServerSocket, n: int) -> str:
        for i in range(n):
            socket.transmit("item", {"i": i, "pad": CHUNK})
        return "flooded"

    @server.handler("bye")
    def bye(socket: ServerSocket, _data: Any) -> None:
        socket.disconnect(4600, "bye")

    @server.handler("kickAndBye")
    def kick_and_bye(socket: ServerSocket, _data: Any) -> None:
        socket.kick_out("news", "kicked")
        socket.disconnect(4601, "kicked and gone")

    return server


def invoke_frame(client: RawClient, event: str, data: Any, cid: int) -> bytes:
    return client.ws.send(TextMessage(data=json.dumps({"event": event, "data": data, "cid": cid})))


async def read_to_close(client: RawClient) -> tuple[list[Any], Closed]:
    """Every packet until the close frame (pings skipped), and the close."""
    packets: list[Any] = []
    while True:
        try:
            message = await client.recv()
        except Closed as closed:
            return packets, closed
        if message not in ("", "#1"):
            assert isinstance(message, str)
            packets.append(json.loads(message))


def assert_flood_then(packets: list[Any], *rest: Callable[[Any], bool]) -> None:
    """The ``FLOOD`` items in order, the flood's reply, then packets matching ``rest``."""
    items = [p["data"]["i"] for p in packets if p.get("event") == "item"]
    assert items == list(range(FLOOD))
    others = [p for p in packets if p.get("event") != "item"]
    assert others[0] == {"rid": 2, "data": "flooded"}
    assert len(others) - 1 == len(rest), others
    for packet, check in zip(others[1:], rest, strict=True):
        assert check(packet), packet


async def open_client(port: int) -> RawClient:
    client = new_client(await trio.open_tcp_stream("127.0.0.1", port))
    await client.connect()
    await client.handshake()
    return client


@asynccontextmanager
async def serving(server: Server, transport: str) -> AsyncIterator[tuple[int, trio.CancelScope]]:
    """The server on a free port, on ``ws`` (``serve``) or ``trio-websocket`` (the adapter)."""
    scope = trio.CancelScope()

    async def run_ws(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)

    async def run_adapter(*, task_status: trio.TaskStatus[int]) -> None:
        async def handler(request: Any) -> None:
            await server.handle_trio_websocket_request(request)

        with scope:
            async with trio.open_nursery() as inner:
                await server.start_broker(inner)
                ws_server = await inner.start(
                    lambda task_status: serve_websocket(
                        handler, "127.0.0.1", 0, ssl_context=None, task_status=task_status
                    )
                )
                task_status.started(ws_server.port)

    async with trio.open_nursery() as nursery:
        if transport == "ws":
            listeners = await nursery.start(run_ws)
            port = listeners[0].socket.getsockname()[1]
        else:
            port = await nursery.start(run_adapter)
        yield port, scope
        scope.cancel()


TRANSPORTS = ["ws", "trio-websocket"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_disconnect_writes_what_was_queued_first(transport: str) -> None:
    server = flood_server()
    with trio.fail_after(30):
        async with serving(server, transport) as (port, _):
            client = await open_client(port)
            await client.send_raw(
                invoke_frame(client, "flood", FLOOD, 2) + invoke_frame(client, "bye", None, 3)
            )
            packets, closed = await read_to_close(client)
            await client.close()
    assert (closed.code, closed.reason) == (4600, "bye")
    assert_flood_then(
        packets,
        lambda p: p == {"rid": 3},
        lambda p: p["event"] == "#disconnect" and p["data"]["code"] == 4600,
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_kick_then_close_writes_what_was_queued_first(transport: str) -> None:
    server = flood_server()
    with trio.fail_after(30):
        async with serving(server, transport) as (port, _):
            client = await open_client(port)
            await client.send_json({"event": "#subscribe", "data": {"channel": "news"}, "cid": 1})
            assert (await client.recv_json()) == {"rid": 1}
            await client.send_raw(
                invoke_frame(client, "flood", FLOOD, 2)
                + invoke_frame(client, "kickAndBye", None, 3)
            )
            packets, closed = await read_to_close(client)
            await client.close()
    assert (closed.code, closed.reason) == (4601, "kicked and gone")
    # #kickOut is a priority packet: it may overtake queued items, never the close.
    kick = {"event": "#kickOut", "data": {"channel": "news", "message": "kicked"}}
    assert kick in packets
    packets.remove(kick)
    assert_flood_then(
        packets,
        lambda p: p == {"rid": 3},
        lambda p: p["event"] == "#disconnect" and p["data"]["code"] == 4601,
    )


async def test_a_protocol_error_after_valid_messages_writes_their_replies_first() -> None:
    server = flood_server()
    with trio.fail_after(30):
        async with serving(server, "ws") as (port, _):
            client = await open_client(port)
            bad = bytearray(client.ws.send(TextMessage(data="x")))
            bad[0] |= 0x40  # RSV1 without an extension that defines it: 1002
            await client.send_raw(
                invoke_frame(client, "flood", FLOOD, 2)
                + invoke_frame(client, "echo", "last", 3)
                + bytes(bad)
            )
            packets, closed = await read_to_close(client)
            await client.close()
    assert closed.code == 1002
    assert_flood_then(packets, lambda p: p == {"rid": 3, "data": "last"})


async def test_shutdown_writes_what_was_queued_first() -> None:
    server = flood_server(shutdown_timeout_s=10)
    flooded = trio.Event()
    ready_at_disconnection: list[bool] = []
    server.on("disconnection")(lambda *_: ready_at_disconnection.append(server.ready))
    original = server.handler_for("flood")
    assert original is not None

    def flood_then_signal(socket: ServerSocket, n: int) -> Any:
        result = original[0](socket, n)
        flooded.set()
        return result

    server.add_handler("flood", flood_then_signal)
    with trio.fail_after(30):
        async with serving(server, "ws") as (port, scope):
            client = await open_client(port)
            await client.send_raw(invoke_frame(client, "flood", FLOOD, 2))
            await flooded.wait()
            assert server.ready
            scope.cancel()  # the reply is queued, the items mostly not written yet
            packets, closed = await read_to_close(client)
            await client.close()
    assert (closed.code, closed.reason) == (1001, "Server is shutting down")
    assert ready_at_disconnection == [False]
    assert server.draining
    assert_flood_then(packets)


async def test_cancelled_serve_returns_by_the_deadline_with_a_client_that_never_reads() -> None:
    server = flood_server(shutdown_timeout_s=1.0)
    returned = trio.Event()
    scope = trio.CancelScope()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def run(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
                with scope:
                    await server.serve("127.0.0.1", 0, task_status=task_status)
                returned.set()

            listeners = await nursery.start(run)
            port = listeners[0].socket.getsockname()[1]
            stuck = await open_client(port)  # never reads again
            await stuck.send_raw(invoke_frame(stuck, "flood", FLOOD, 2))
            reader = await open_client(port)
            await reader.invoke("echo", "both connected", cid=2)
            start = trio.current_time()
            scope.cancel()
            await returned.wait()
            elapsed = trio.current_time() - start
            assert (await reader.expect_close()).code == 1001
            await trio.aclose_forcefully(stuck.stream)
            await trio.aclose_forcefully(reader.stream)
    assert elapsed < 1.0 + 0.5
    assert server.client_count == 0
