"""Tests for ``transport.trio_websocket``: a real trio-websocket server and client on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import h11
import pytest
import trio
import trio.lowlevel
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket,
    serve_websocket,
)

from trio_socketcluster.transport.base import (
    SLOW_CONSUMER_CLOSE_CODE,
    HandshakeRequest,
    OutboundMessage,
    Rejection,
    TransportClosed,
)
from trio_socketcluster.transport.trio_websocket import (
    TrioWebsocketTransport,
    accept_trio_websocket,
)

Handler = Callable[[WebSocketRequest], Awaitable[None]]


@asynccontextmanager
async def websocket_server(handler: Handler) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        yield server.port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(port: int, path: str = "/socketcluster/") -> AsyncIterator[WebSocketConnection]:
    streams: list[trio.abc.AsyncResource] = []
    try:
        async with open_websocket("127.0.0.1", port, path, use_ssl=False) as ws:
            streams.append(ws._stream)
            yield ws
    finally:
        # trio-websocket 0.12's client never closes its TCP stream after a close the
        # server started (it waits for the server's FIN, then forgets the socket).
        for stream in streams:
            await trio.aclose_forcefully(stream)


async def raw_upgrade(port: int, target: str) -> tuple[int, bytes]:
    """Send an upgrade request by hand; return the response status and body.

    (trio-websocket's own client leaks its socket when the upgrade is rejected.)
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        h = h11.Connection(h11.CLIENT)
        h.send(h11.Request(method="GET", target=target, headers=[("Host", "x")]))
        status = 0
        body = b""
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                h.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


async def test_messages_both_ways_and_request() -> None:
    seen: list[HandshakeRequest] = []
    results: list[TransportClosed] = []

    async def handler(request: WebSocketRequest) -> None:
        t = await accept_trio_websocket(request, path="/socketcluster/")
        assert t is not None
        seen.append(t.request)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.run_writer)
            try:
                while True:
                    for m in await t.receive():
                        text = m if isinstance(m, str) else "bytes:" + m.decode()
                        t.send(OutboundMessage(("echo:" + text).encode()))
                        if m == "prio":
                            t.send(OutboundMessage(b"data"))
                            t.send_priority(OutboundMessage(b"#1"))
            except TransportClosed as exc:
                results.append(exc)
            nursery.cancel_scope.cancel()

    with trio.fail_after(10):
        async with websocket_server(handler) as port:
            async with client(port, "/socketcluster/?x=1") as ws:
                await ws.send_message("héllo")
                assert await ws.get_message() == "echo:héllo"
                await ws.send_message(b'{"event":"x"}')
                assert await ws.get_message() == 'echo:bytes:{"event":"x"}'
                await ws.send_message("prio")
                got = [await ws.get_message() for _ in range(3)]
                # The priority message overtakes queued data (if still queued).
                assert sorted(got) == sorted(["echo:prio", "data", "#1"])
                assert got.index("#1") < got.index("data")
            with trio.fail_after(5):
                while not results:
                    await trio.testing.wait_all_tasks_blocked()
    assert results[0].code == 1000
    req = seen[0]
    assert req.path == "/socketcluster/"
    assert req.query == "x=1"
    assert req.header("host") is not None
    assert req.header("sec-websocket-version") == "13"
    assert req.remote_address is not None
    assert req.remote_address[0] == "127.0.0.1"


async def test_server_close_code_reaches_client() -> None:
    async def handler(request: WebSocketRequest) -> None:
        t = await accept_trio_websocket(request)
        assert t is not None
        t.send(OutboundMessage(b"bye soon"))
        await t.close(4008, "Server rejected handshake")
        assert t.closed
        assert t.close_code == 4008
        with pytest.raises(TransportClosed) as info:
            await t.receive()
        assert info.value.code == 4008
        await t.close()  # idempotent

    with trio.fail_after(10):
        async with websocket_server(handler) as port, client(port) as ws:
            assert await ws.get_message() == "bye soon"
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            reason = info.value.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (4008, "Server rejected handshake")


async def test_client_close_code_reaches_server() -> None:
    caught: list[TransportClosed] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        t = await accept_trio_websocket(request)
        assert t is not None
        try:
            while True:
                await t.receive()
        except TransportClosed as exc:
            caught.append(exc)
        t.send(OutboundMessage(b"ignored"))
        await t.flush()
        done.set()

    with trio.fail_after(10):
        async with websocket_server(handler) as port:
            async with client(port) as ws:
                await ws.send_message("one")
                await ws.aclose(4321, "client says bye")
            await done.wait()
    assert (caught[0].code, caught[0].reason) == (4321, "client says bye")


async def test_rejection_via_check_and_path() -> None:
    async def check(req: HandshakeRequest) -> Rejection | None:
        if req.query == "deny":
            return Rejection(status=401, body="blocked by middleware")
        return None

    async def handler(request: WebSocketRequest) -> None:
        t = await accept_trio_websocket(request, path="/socketcluster/", check=check)
        assert t is None

    with trio.fail_after(10):
        async with websocket_server(handler) as port:
            assert await raw_upgrade(port, "/socketcluster/?deny") == (
                401,
                b"blocked by middleware",
            )
            assert await raw_upgrade(port, "/elsewhere/") == (
                400,
                b"Not a SocketCluster endpoint: connect to /socketcluster/",
            )


async def test_check_exception_is_500() -> None:
    async def check(req: HandshakeRequest) -> Rejection | None:
        raise RuntimeError("boom")

    async def handler(request: WebSocketRequest) -> None:
        assert await accept_trio_websocket(request, check=check) is None

    with trio.fail_after(10):
        async with websocket_server(handler) as port:
            assert await raw_upgrade(port, "/socketcluster/") == (
                500,
                b"Server Error: see the server log",
            )


async def test_overflow_closes_4100_and_bounds_memory() -> None:
    outcome: list[tuple[int, int]] = []
    finished = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        req = HandshakeRequest(path="/socketcluster/", query="", headers=())
        t = TrioWebsocketTransport(ws, req, max_buffer_bytes=2**20, close_timeout_s=0.5)
        msg = OutboundMessage(b"z" * 65536)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(t.run_writer)
            peak = 0
            while not t.closed:
                t.send(msg)
                peak = max(peak, t.buffered_bytes)
                await trio.lowlevel.checkpoint()  # let the writer fill the socket
            t.send(msg)  # ignored
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            outcome.append((info.value.code, peak))
            finished.set()

    with trio.fail_after(20):
        # A client that never reads: trio-websocket's queue (size 1) fills, then TCP.
        async with websocket_server(handler) as port, client(port):
            await finished.wait()
    code, peak = outcome[0]
    assert code == SLOW_CONSUMER_CLOSE_CODE
    assert peak <= 2**20


async def test_cancelled_receive_leaves_transport_usable() -> None:
    got: list[list[str | bytes]] = []
    closed: list[TransportClosed] = []
    waiting = trio.Event()
    received = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        t = await accept_trio_websocket(request)
        assert t is not None
        with trio.CancelScope() as scope:
            scope.cancel()
            await t.receive()
        waiting.set()
        got.append(await t.receive())
        received.set()
        try:
            await t.receive()
        except TransportClosed as exc:
            closed.append(exc)

    with trio.fail_after(10):
        async with websocket_server(handler) as port:
            async with client(port) as ws:
                await waiting.wait()
                await ws.send_message("after cancel")
                await received.wait()
            while not closed:
                await trio.testing.wait_all_tasks_blocked()
    assert got == [["after cancel"]]
    assert closed[0].code == 1000


async def test_binary_messages_arrive_as_bytes() -> None:
    """Binary is never decoded here: non-UTF-8 bytes arrive as they are, the socket stays."""
    got: list[str | bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        t = await accept_trio_websocket(request)
        assert t is not None
        while len(got) < 2:
            got.extend(await t.receive())
        await t.close(1000)

    with trio.fail_after(10):
        async with websocket_server(handler) as port, client(port) as ws:
            await ws.send_message(b"\xff\xfe")
            await ws.send_message("after")
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1000
    assert got == [b"\xff\xfe", "after"]
