"""A raw WebSocket client for tests: wsproto over any trio stream, frame-level control.

It speaks just enough to drive the server packet by packet (``send``/``recv``), so tests
can see exactly what is on the wire, including pings and close frames.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Closed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Rejected(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class RawClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.inbox: deque[str | bytes] = deque()
        self.closed: Closed | None = None
        self._parts: list[str] = []
        self._bparts = bytearray()

    async def connect(
        self,
        target: str = "/socketcluster/",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await self.stream.send_all(
            self.ws.send(Request(host="localhost", target=target, extra_headers=headers or []))
        )
        status: int | None = None
        body = b""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                raise Rejected(status or 0, body)
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Rejected(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Rejected(status or 0, body)
                else:
                    self._handle(event)

    def _handle(self, event: Any) -> None:
        if isinstance(event, TextMessage):
            self._parts.append(event.data)
            if event.message_finished:
                self.inbox.append("".join(self._parts))
                self._parts = []
        elif isinstance(event, BytesMessage):
            self._bparts += event.data
            if event.message_finished:
                self.inbox.append(bytes(self._bparts))
                self._bparts = bytearray()
        elif isinstance(event, Ping):
            pass  # the server never sends WebSocket pings; SocketCluster pings are text
        elif isinstance(event, CloseConnection):
            self.closed = Closed(event.code, event.reason)

    async def send(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            await self.stream.send_all(self.ws.send(BytesMessage(data=text)))
        else:
            await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send_json(self, value: Any) -> None:
        await self.send(json.dumps(value))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self) -> str | bytes:
        """The next message; raises ``Closed`` when the server closed instead."""
        while not self.inbox:
            if self.closed is not None:
                raise self.closed
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = self.closed or Closed(1006, "")
                raise self.closed
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                self._handle(event)
        return self.inbox.popleft()

    async def recv_json(self, *, skip_pings: bool = True) -> Any:
        while True:
            msg = await self.recv()
            if skip_pings and msg in ("", "#1"):
                continue
            assert isinstance(msg, str), msg
            return json.loads(msg)

    async def expect_close(self) -> Closed:
        """Read (discarding messages) until the server's close frame or EOF."""
        try:
            while True:
                await self.recv()
        except Closed as closed:
            return closed

    async def handshake(self, token: str | None = None, cid: int = 1) -> dict[str, Any]:
        """Send ``#handshake``; return the reply's data (skipping other packets before it)."""
        await self.send_json({"event": "#handshake", "data": {"authToken": token}, "cid": cid})
        while True:
            packet = await self.recv_json()
            if packet.get("rid") == cid:
                return packet  # type: ignore[no-any-return]
            self.before_handshake_reply.append(packet)

    before_handshake_reply: list[Any]

    async def invoke(self, event: str, data: Any = None, cid: int = 100) -> dict[str, Any]:
        """Send an invoke and return its response packet (other packets go to ``others``)."""
        await self.send_json({"event": event, "data": data, "cid": cid})
        while True:
            packet = await self.recv_json()
            if packet.get("rid") == cid:
                return packet  # type: ignore[no-any-return]
            self.others.append(packet)

    others: list[Any]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.stream.send_all(self.ws.send(CloseConnection(code=code, reason=reason)))
        await trio.aclose_forcefully(self.stream)


def new_client(stream: trio.abc.Stream) -> RawClient:
    client = RawClient(stream)
    client.before_handshake_reply = []
    client.others = []
    return client


#: The type of the ``connect`` fixture (see conftest.py).
ClientFactory = Callable[..., Awaitable[RawClient]]
