"""The drain keeps its deadline with many sockets: 2,000 real TCP connections, handshaken.

A deadline check, not a speed benchmark (``benchmarks/stop.py`` measures the stop with 10,000
npm-side clients): cancelling ``serve`` returns within ``shutdown_timeout_s`` (plus a margin
for a loaded machine) and

* clients that read and answer the close: every one of them got 1001, and the drain ended
  before the deadline had to cut anything;
* clients that stopped reading (so every close waits for an echo that never comes): the
  deadline cuts every close short at once, with no tail after it, and every socket was still
  sent its 1001 close frame (it fits in the kernel's buffer).

The clients are raw sockets with fixed bytes (one masked frame each way), so that the
server's work dominates.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import struct
from functools import partial

import pytest
import trio
from conftest import make_server

from trio_socketcluster.collector import GcPause

SOCKETS = 2000
SHUTDOWN_TIMEOUT_S = 2.0
MARGIN_S = 1.0  # the tail the deadline may leave on a loaded machine

_KEY = base64.b64encode(b"0123456789abcdef").decode()
_UPGRADE = (
    "GET /socketcluster/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (a zero mask: the payload goes as it is)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


_HANDSHAKE = _UPGRADE + _client_frame(0x1, json.dumps({"event": "#handshake", "cid": 1}).encode())


def _frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete server frames (unmasked) at the start of ``data``, and the rest."""
    frames = []
    while len(data) >= 2:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                break
            length, at = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                break
            length, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + length:
            break
        frames.append((data[0] & 0x0F, data[at : at + length]))
        data = data[at + length :]
    return frames, data


class Client:
    """One raw connection: upgrade and ``#handshake`` sent at once; ``read_to_close`` reads
    frames until the server's close frame, answers it (if ``echo``) and waits for EOF."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.close_code: int | None = None

    async def handshake(self) -> None:
        await self.stream.send_all(_HANDSHAKE)
        while b"\r\n\r\n" not in self.buf:
            self.buf += await self.stream.receive_some(65536)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        while True:
            frames, _rest = _frames(self.buf)
            if any(op == 0x1 and b'"rid":1' in payload for op, payload in frames):
                return
            self.buf += await self.stream.receive_some(65536)

    async def read_to_close(self, *, echo: bool) -> None:
        while True:
            frames, self.buf = _frames(self.buf)
            for opcode, payload in frames:
                if opcode == 0x8 and self.close_code is None:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                    if echo:
                        with contextlib.suppress(trio.BrokenResourceError):
                            await self.stream.send_all(_client_frame(0x8, payload[:2]))
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            self.buf += data


async def _connect_all(port: int, clients: list[Client]) -> None:
    async def one() -> None:
        client = Client(await trio.open_tcp_stream("127.0.0.1", port))
        await client.handshake()
        clients.append(client)

    limit = trio.Semaphore(100)

    async def limited() -> None:
        async with limit:
            await one()

    async with trio.open_nursery() as nursery:
        for _ in range(SOCKETS):
            nursery.start_soon(limited)


@pytest.mark.parametrize("clients_read", [True, False], ids=["clients-read", "clients-stalled"])
async def test_cancelled_serve_with_2000_sockets_returns_by_the_deadline(
    clients_read: bool,
) -> None:
    server = make_server(shutdown_timeout_s=SHUTDOWN_TIMEOUT_S, ping_interval_s=100,
                         ping_timeout_s=200)  # fmt: skip
    scope = trio.CancelScope()
    returned = trio.Event()
    clients: list[Client] = []
    gc_was_enabled = gc.isenabled()
    collector_at_close: list[bool] = []
    server.on("disconnection")(lambda *_: collector_at_close.append(gc.isenabled()))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def run(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
                with scope:
                    await server.serve("127.0.0.1", 0, task_status=task_status)
                returned.set()

            listeners = await nursery.start(run)
            await _connect_all(listeners[0].socket.getsockname()[1], clients)
            assert server.client_count == SOCKETS
            start = trio.current_time()
            scope.cancel()
            if clients_read:
                async with trio.open_nursery() as readers:
                    for client in clients:
                        readers.start_soon(partial(client.read_to_close, echo=True))
                await returned.wait()
            else:
                await returned.wait()
                for client in clients:  # what the kernel holds for the stalled client
                    await client.read_to_close(echo=False)
            elapsed = trio.current_time() - start
            for client in clients:
                await client.stream.aclose()
    assert gc.isenabled() == gc_was_enabled  # the drain's pause of the collector ended
    assert collector_at_close == [False] * SOCKETS  # and it was paused while they closed
    assert server.client_count == 0
    codes = [client.close_code for client in clients]
    assert codes == [1001] * SOCKETS
    if clients_read:
        assert elapsed < SHUTDOWN_TIMEOUT_S, f"the drain took {elapsed:.2f} s"
    else:
        assert SHUTDOWN_TIMEOUT_S <= elapsed < SHUTDOWN_TIMEOUT_S + MARGIN_S, (
            f"serve returned {elapsed:.2f} s after the cancel"
        )


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_collector_pause_ends_with_the_last_drain(enabled_before: bool) -> None:
    """Two servers draining together: the collector stays paused until both have ended, then
    is as it was before (a collector the application disabled stays disabled)."""
    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        with GcPause() as first, GcPause() as second:
            first.start()
            second.start()
            second.start()  # idempotent
            assert not gc.isenabled()
            first.__exit__(None, None, None)
            assert not gc.isenabled()  # the second still drains
        assert gc.isenabled() == enabled_before
    finally:
        (gc.enable if was else gc.disable)()
