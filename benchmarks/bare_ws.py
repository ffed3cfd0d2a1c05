#!/usr/bin/env python3
"""bare-ws: the floor of the wsproto transport, for benchmarks/run.py.

A server written directly on wsproto over trio, with no SocketCluster logic beyond the minimum
``benchmarks/node/loadgen.js`` needs, and the I/O shape of ``transport/ws.py``:

* one task per connection reads with ``receive_some(65536)``, feeds wsproto (``WSConnection``,
  which also does the HTTP upgrade through h11) and dispatches every message that read brought;
* replies go to a per-socket ``bytearray`` that is written with one ``send_all``: by the reader
  after the read's messages are dispatched if no write is running, else by the socket's writer
  task (which also writes what other sockets' publishes queued here);
* frames are plain unmasked text frames (header built by hand, as ``build_text_frame`` does);
  a ``#publish`` is encoded and framed once and the same ``bytes`` go to every subscriber.

Protocol subset (JSON with orjson; anything else with a ``cid`` gets an error reply):

* ``#handshake`` -> ``{"rid":cid,"data":{"id":..,"pingTimeout":20000,"isAuthenticated":true}}``
  (no JWT verification: every handshake is "authenticated");
* ``echo`` -> ``{"rid":cid,"data":<data>}``;
* ``login`` -> ``#setAuthToken`` with a fixed token string, then ``{"rid":cid}``; the username
  is remembered so that ``whoami`` -> ``{"rid":cid,"data":{"username":<it>}}`` (what loadgen's
  authrpc checks);
* ``#subscribe`` / ``#unsubscribe`` -> ``{"rid":cid}``;
* ``#publish`` -> ``{"event":"#publish","data":{"channel":..,"data":..}}`` to every subscriber
  of the channel (no publish permission check), then ``{"rid":cid}``;
* ``#1`` -> ``#2``; ``#2`` and ``""`` (pongs) are ignored. The server never pings.

No limits, no slow-consumer policy, no close codes beyond answering a close frame.

Environment: ``PORT`` (0: a free port), ``HOST`` (default 127.0.0.1); ``AUTH_KEY`` is ignored.
Prints ``READY <port>``; SIGTERM or SIGINT stop it, exit status 0.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
from typing import Any

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

_READ_SIZE = 65536
_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_TOKEN = "bare.token.string"
_ids = itertools.count(1)
_channels: dict[str, dict[Conn, None]] = {}


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


PONG_FRAME = text_frame(b"#2")


class Conn:
    __slots__ = ("out", "parts", "sending", "stream", "subs", "user", "wake", "ws")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.out = bytearray()
        self.sending = False
        self.wake = trio.Event()
        self.user: str | None = None
        self.subs: set[str] = set()
        self.parts: list[str] = []

    def reply(self, packet: dict[str, Any]) -> None:
        self.out += text_frame(orjson.dumps(packet))

    async def flush(self) -> None:
        """Write the buffer with one ``send_all`` per round; one writer at a time."""
        if self.sending:
            return
        self.sending = True
        try:
            while self.out:
                data, self.out = self.out, bytearray()
                await self.stream.send_all(data)
        finally:
            self.sending = False

    async def writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            await self.flush()

    def dispatch(self, text: str) -> None:
        if text == "#1":
            self.out += PONG_FRAME
            return
        if text == "#2" or text == "":
            return
        p = orjson.loads(text)
        for packet in p if isinstance(p, list) else (p,):
            self.packet(packet)

    def packet(self, p: Any) -> None:
        if not isinstance(p, dict):
            return
        event, data, cid = p.get("event"), p.get("data"), p.get("cid")
        if event == "echo":
            self.reply({"rid": cid, "data": data})
        elif event == "#publish":
            channel = data["channel"]
            subs = _channels.get(channel)
            if subs:
                frame = text_frame(
                    orjson.dumps(
                        {
                            "event": "#publish",
                            "data": {"channel": channel, "data": data.get("data")},
                        }
                    )
                )
                for sub in subs:
                    sub.out += frame
                    if not sub.sending and sub is not self:
                        sub.wake.set()
            if cid is not None:
                self.reply({"rid": cid})
        elif event == "whoami":
            self.reply({"rid": cid, "data": {"username": self.user} if self.user else None})
        elif event == "#handshake":
            reply = {"id": f"bare-{next(_ids)}", "pingTimeout": 20000, "isAuthenticated": True}
            self.reply({"rid": cid, "data": reply})
        elif event == "#subscribe":
            channel = data["channel"]
            _channels.setdefault(channel, {})[self] = None
            self.subs.add(channel)
            self.reply({"rid": cid})
        elif event == "#unsubscribe":
            channel = data if isinstance(data, str) else data.get("channel")
            _channels.get(channel, {}).pop(self, None)
            self.subs.discard(channel)
            if cid is not None:
                self.reply({"rid": cid})
        elif event == "login":
            self.user = str(data.get("username"))
            self.reply({"event": "#setAuthToken", "data": {"token": _TOKEN}})
            self.reply({"rid": cid})
        elif cid is not None:
            self.reply({"rid": cid, "error": {"name": "BareError", "message": f"no {event}"}})

    async def read_loop(self) -> None:
        ws = self.ws
        while True:
            data = await self.stream.receive_some(_READ_SIZE)
            if not data:
                return
            ws.receive_data(data)
            closing = False
            for ev in ws.events():
                if isinstance(ev, TextMessage):
                    if ev.message_finished and not self.parts:
                        self.dispatch(ev.data)
                    else:
                        self.parts.append(ev.data)
                        if ev.message_finished:
                            text, self.parts = "".join(self.parts), []
                            self.dispatch(text)
                elif isinstance(ev, BytesMessage):
                    if ev.message_finished:
                        self.dispatch(bytes(ev.data).decode())
                elif isinstance(ev, Request):
                    self.out += ws.send(AcceptConnection())
                elif isinstance(ev, Ping):
                    self.out += ws.send(ev.response())
                elif isinstance(ev, CloseConnection):
                    with contextlib.suppress(LocalProtocolError):
                        self.out += ws.send(ev.response())
                    closing = True
                    break
            if self.out and not self.sending:
                await self.flush()
            if closing:
                return


async def handle(stream: trio.SocketStream) -> None:
    conn = Conn(stream)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            try:
                await conn.read_loop()
            finally:
                nursery.cancel_scope.cancel()
    except (*_ERRORS, LocalProtocolError, RemoteProtocolError):
        pass
    finally:
        for channel in conn.subs:
            _channels.get(channel, {}).pop(conn, None)
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handle, port, host=host)
            )
            print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
