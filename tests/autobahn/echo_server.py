"""A plain WebSocket echo server on our own transport (``transport.ws``), for the RFC 6455
conformance suite (Autobahn|Testsuite's ``fuzzingclient``; nox session ``autobahn``).

Every message comes back as it arrived (text as text, binary as binary); the closing handshake,
pings and protocol failures are the transport's. Run ``python tests/autobahn/echo_server.py
PORT``; it prints ``listening on PORT`` once bound and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import sys

import trio

from trio_socketcluster.transport.base import OutboundMessage, TransportClosed
from trio_socketcluster.transport.ws import accept_websocket

#: The suite's largest messages (case 9.1.6, 9.2.6) are 16 MiB.
MAX_MESSAGE_BYTES = 64 * 2**20


def _binary_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x82, 127)) + n.to_bytes(8, "big") + payload


class BinaryMessage(OutboundMessage):
    """An outbound binary message (the core only ever sends text)."""

    __slots__ = ()

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self._frame = _binary_frame(payload)


async def echo(stream: trio.abc.Stream) -> None:
    """Serve one connection: echo every message until the connection closes."""
    transport = await accept_websocket(
        stream, path="/", max_message_bytes=MAX_MESSAGE_BYTES, max_buffer_bytes=MAX_MESSAGE_BYTES
    )
    if transport is None:
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.run_writer)
        try:
            while True:
                for message in await transport.receive():
                    if isinstance(message, str):
                        transport.send(OutboundMessage(message.encode("utf-8")))
                    else:
                        transport.send(BinaryMessage(message))
        except TransportClosed:
            pass
        finally:
            await transport.close(1000)


async def main(port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, echo, port)
            bound = listeners[0].socket.getsockname()[1]
            print(f"listening on {bound}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 9001)
