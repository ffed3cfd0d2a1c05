"""Tests for ``transport.ws``: the wsproto transport against a wsproto client.

Most tests run over ``trio.testing.memory_stream_pair`` (or ``lockstep_stream_pair`` where
back-pressure matters); a few run over real TCP on 127.0.0.1.
"""

from __future__ import annotations

import struct
from collections import deque
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from trio_socketcluster.transport._common import OPEN, ClosedBy, CloseState, State
from trio_socketcluster.transport.base import (
    SLOW_CONSUMER_CLOSE_CODE,
    HandshakeRequest,
    OutboundMessage,
    Rejection,
    TransportClosed,
)
from trio_socketcluster.transport.ws import WsprotoTransport, accept_websocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

# --------------------------------------------------------------------------- helpers


class Client:
    """A minimal wsproto WebSocket client over a trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Event] = deque()

    async def handshake(
        self, target: str = "/socketcluster/", headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Event:
        req = Request(host="localhost", target=target, extra_headers=list(headers))
        await self.stream.send_all(self.ws.send(req))
        while True:
            ev = await self.next_event()
            if isinstance(ev, AcceptConnection | RejectConnection):
                return ev

    async def reject_body(self) -> bytes:
        body = b""
        while True:
            ev = await self.next_event()
            assert isinstance(ev, RejectData)
            body += ev.data
            if ev.body_finished:
                return body

    async def next_event(self) -> Event:
        while not self.events:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) if data else None)
            self.events.extend(self.ws.events())
        return self.events.popleft()

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(e) for e in events))

    async def texts(self, n: int) -> list[str]:
        out: list[str] = []
        part = ""
        while len(out) < n:
            ev = await self.next_event()
            assert isinstance(ev, TextMessage), ev
            part += ev.data
            if ev.message_finished:
                out.append(part)
                part = ""
        return out


def masked_frame(
    opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None
) -> bytes:
    """A client frame built by hand (zero mask), possibly lying about its length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


@asynccontextmanager
async def connected(
    pair: tuple[trio.abc.Stream, trio.abc.Stream] | None = None, **kwargs: Any
) -> AsyncIterator[tuple[WsprotoTransport, Client]]:
    client_stream, server_stream = pair or trio.testing.memory_stream_pair()
    client = Client(client_stream)
    result: list[WsprotoTransport | None] = []

    async def server() -> None:
        result.append(await accept_websocket(server_stream, **kwargs))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        ev = await client.handshake()
    assert isinstance(ev, AcceptConnection)
    transport = result[0]
    assert transport is not None
    yield transport, client


async def raw_exchange(request: bytes, **kwargs: Any) -> tuple[bytes, WsprotoTransport | None]:
    """Send raw bytes, return everything the server wrote before closing, and the result."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    result: list[WsprotoTransport | None] = []

    async def server() -> None:
        result.append(await accept_websocket(server_stream, **kwargs))

    response = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await client_stream.send_all(request)
        while chunk := await client_stream.receive_some(65536):
            response += chunk
    return response, result[0]


# --------------------------------------------------------------------------- upgrade


async def test_upgrade_accepted_with_request_details() -> None:
    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        client = Client(client_stream)
        seen: list[HandshakeRequest] = []

        async def check(req: HandshakeRequest) -> Rejection | None:
            seen.append(req)
            return None

        result: list[WsprotoTransport | None] = []

        async def server() -> None:
            result.append(
                await accept_websocket(server_stream, check=check, remote_address=("1.2.3.4", 5))
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            ev = await client.handshake(
                "/socketcluster/?a=1&b=2", headers=[(b"Origin", b"http://example.com")]
            )
        assert isinstance(ev, AcceptConnection)
        assert ev.subprotocol is None
        assert ev.extensions == []
        t = result[0]
        assert t is not None
        req = t.request
        assert seen == [req]
        assert req.path == "/socketcluster/"
        assert req.query == "a=1&b=2"
        assert req.origin == "http://example.com"
        assert req.header("SEC-WEBSOCKET-VERSION") == "13"
        assert all(k == k.lower() for k, _ in req.headers)
        assert req.remote_address == ("1.2.3.4", 5)
        assert not t.closed
        assert t.close_code is None


@pytest.mark.parametrize("target", ["/socketcluster", "/other/", "/socketcluster/x"])
async def test_wrong_path_is_400(target: str) -> None:
    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        client = Client(client_stream)
        async with trio.open_nursery() as nursery:
            result: list[WsprotoTransport | None] = []

            async def server() -> None:
                result.append(await accept_websocket(server_stream))

            nursery.start_soon(server)
            ev = await client.handshake(target)
            assert isinstance(ev, RejectConnection)
            assert ev.status_code == 400
            assert await client.reject_body() == (
                b"Not a SocketCluster endpoint: connect to /socketcluster/"
            )
        assert result == [None]


async def test_wrong_path_names_the_configured_path() -> None:
    with trio.fail_after(5):
        response, result = await raw_exchange(
            b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            path="/ws/",
        )
    assert result is None
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert response.endswith(b"\r\n\r\nNot a SocketCluster endpoint: connect to /ws/")


async def test_check_rejection_status_and_body() -> None:
    async def check(req: HandshakeRequest) -> Rejection | None:
        return Rejection(
            status=403, body="Failed to authorize socket handshake - Invalid origin: x"
        )

    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        client = Client(client_stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(accept_websocket, server_stream, check=check))
            ev = await client.handshake()
            assert isinstance(ev, RejectConnection)
            assert ev.status_code == 403
            assert dict(ev.headers)[b"content-type"].startswith(b"text/plain")
            body = await client.reject_body()
        assert body == b"Failed to authorize socket handshake - Invalid origin: x"


async def test_check_exception_is_500_and_none() -> None:
    async def check(req: HandshakeRequest) -> Rejection | None:
        raise RuntimeError("boom")

    with trio.fail_after(5):
        request = (
            b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        response, result = await raw_exchange(request, check=check)
    assert response.startswith(b"HTTP/1.1 500 ")
    assert response.endswith(b"\r\n\r\nServer Error: see the server log")
    assert result is None


async def test_plain_get_goes_to_http_handler() -> None:
    seen: list[HandshakeRequest] = []

    async def handler(req: HandshakeRequest) -> Rejection:
        seen.append(req)
        return Rejection(status=200, body="hello", headers=(("X-Thing", "1"),))

    with trio.fail_after(5):
        response, result = await raw_exchange(
            b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", http_handler=handler
        )
    assert result is None
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nX-Thing: 1\r\n" in response
    assert response.endswith(b"\r\n\r\nhello")
    assert seen[0].path == "/health"
    assert seen[0].query == "x=1"


async def test_plain_get_default_426() -> None:
    with trio.fail_after(5):
        response, result = await raw_exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert result is None
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nUpgrade: websocket\r\n" in response
    assert response.endswith(b"\r\n\r\nUpgrade Required: this is a WebSocket endpoint")


_UPGRADE_HEAD = (
    b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(
    ("request_bytes", "status", "body"),
    [
        (b"NONSENSE\r\n\r\n", b"400 Bad Request", b"Bad Request: malformed HTTP request"),
        (
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"400 Bad Request",
            b"Bad Request: malformed HTTP request",
        ),
        (
            _UPGRADE_HEAD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"),
            b"400 Bad Request",
            b"Bad Request: Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            _UPGRADE_HEAD.replace(b"Version: 13", b"Version: 8"),
            b"400 Bad Request",
            b"Bad Request: Sec-WebSocket-Version must be 13",
        ),
        (
            _UPGRADE_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
            b"400 Bad Request",
            b"Bad Request: a WebSocket upgrade needs HTTP/1.1",
        ),
        (
            _UPGRADE_HEAD.replace(b"GET", b"PUT"),
            b"405 Method Not Allowed",
            b"Method Not Allowed: a WebSocket upgrade is a GET request",
        ),
    ],
)
async def test_every_refusal_says_why(request_bytes: bytes, status: bytes, body: bytes) -> None:
    with trio.fail_after(5):
        response, result = await raw_exchange(request_bytes)
    assert result is None
    assert response.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in response
    assert response.endswith(b"\r\n\r\n" + body)


async def test_eof_before_request_returns_none() -> None:
    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        await client_stream.aclose()
        assert await accept_websocket(server_stream) is None


async def test_upgrade_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        await client_stream.send_all(b"GET /socketcluster/ HTTP/1.1\r\n")  # never finished
        start = trio.current_time()
        assert await accept_websocket(server_stream, upgrade_timeout_s=3.0) is None
        assert trio.current_time() - start == pytest.approx(3.0)
        assert await client_stream.receive_some(100) == b""  # the server closed


async def test_upgrade_timeout_covers_slow_check(autojump_clock: trio.testing.MockClock) -> None:
    async def check(req: HandshakeRequest) -> Rejection | None:
        await trio.sleep(100)
        return None

    with trio.fail_after(50):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        client = Client(client_stream)
        await client_stream.send_all(client.ws.send(Request(host="x", target="/socketcluster/")))
        start = trio.current_time()
        assert await accept_websocket(server_stream, check=check, upgrade_timeout_s=1) is None
        assert trio.current_time() - start == pytest.approx(1.0)
        assert await client_stream.receive_some(100) == b""


async def test_data_sent_with_the_upgrade_is_not_lost() -> None:
    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        client = Client(client_stream)
        req = client.ws.send(Request(host="x", target="/socketcluster/"))
        # Send the request and a first frame in one write (allowed once the 101 is expected).
        await client_stream.send_all(req + masked_frame(0x1, b"early"))
        t = await accept_websocket(server_stream)
        assert t is not None
        assert await t.receive() == ["early"]


# --------------------------------------------------------------------------- messages


async def test_text_and_binary_messages() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.send(TextMessage(data="héllo"))
            assert await t.receive() == ["héllo"]
            await client.send(BytesMessage(data=b'{"event":"x"}'))
            assert await t.receive() == [b'{"event":"x"}']
            await client.send(TextMessage(data=""))
            assert await t.receive() == [""]
            await client.send(BytesMessage(data=b""))
            assert await t.receive() == [b""]


async def test_several_messages_in_one_read_arrive_together() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.send(
                TextMessage(data="a"), BytesMessage(data=b"b"), TextMessage(data="c" * 70000)
            )
            got: list[str | bytes] = []
            first = await t.receive()
            got += first
            while len(got) < 3:
                got += await t.receive()
            assert first[:2] == ["a", b"b"]
            assert got == ["a", b"b", "c" * 70000]
            # Small messages in one write always come back in one list.
            await client.send(*(TextMessage(data=str(i)) for i in range(100)))
            assert await t.receive() == [str(i) for i in range(100)]


async def test_fragmented_message_reassembled_with_ping_between() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client), trio.open_nursery() as nursery:
            nursery.start_soon(t.run_writer)
            got: list[str | bytes] = []

            async def reader() -> None:
                while len(got) < 2:
                    got.extend(await t.receive())

            nursery.start_soon(reader)
            await client.send(TextMessage(data="hel", message_finished=False), Ping(b"p1"))
            # The pong comes while the message is still incomplete.
            ev = await client.next_event()
            assert isinstance(ev, Pong)
            assert ev.payload == b"p1"
            assert got == []
            await client.send(TextMessage(data="lo wö", message_finished=False))
            await client.send(TextMessage(data="rld", message_finished=True))
            # Binary fragments too, split inside a UTF-8 sequence.
            await client.send(
                BytesMessage(data=b"{", message_finished=False),
                BytesMessage(data="\u00e9}".encode()[:1], message_finished=False),
                BytesMessage(data="\u00e9}".encode()[1:], message_finished=True),
            )
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["hello wörld", "{\u00e9}".encode()]
            nursery.cancel_scope.cancel()


async def test_pong_written_by_flush_before_data() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            t.send(OutboundMessage(b"data"))
            await client.send(Ping(b"x"), TextMessage(data="m"))
            assert await t.receive() == ["m"]
            await t.flush()
            ev = await client.next_event()
            assert isinstance(ev, Pong)
            assert await client.texts(1) == ["data"]


async def expect_close(client: Client, code: int) -> CloseConnection:
    while True:
        ev = await client.next_event()
        if isinstance(ev, CloseConnection):
            assert ev.code == code, ev
            return ev


@pytest.mark.parametrize("fragmented", [False, True])
async def test_oversized_message_closes_1009(fragmented: bool) -> None:
    with trio.fail_after(5):
        async with connected(max_message_bytes=1000) as (t, client), trio.open_nursery() as n:
            n.start_soon(t.run_writer)
            await client.send(TextMessage(data="x" * 1000))
            assert await t.receive() == ["x" * 1000]
            if fragmented:
                await client.send(
                    TextMessage(data="y" * 600, message_finished=False),
                    TextMessage(data="y" * 600, message_finished=True),
                )
            else:
                await client.send(BytesMessage(data=b"y" * 1001))
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1009
            await expect_close(client, 1009)
            assert t.closed
            assert t.close_code == 1009


async def test_oversized_frame_header_rejected_before_payload() -> None:
    with trio.fail_after(5):
        async with connected(max_message_bytes=1000) as (t, client):
            # Announce a 10 MB frame, send only the header and a few bytes.
            await client.stream.send_all(masked_frame(0x1, b"abc", length=10_000_000))
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1009
            await expect_close(client, 1009)


async def test_multibyte_text_counts_bytes() -> None:
    with trio.fail_after(5):
        async with connected(max_message_bytes=1000) as (t, client):
            await client.send(TextMessage(data="é" * 500))  # 1000 bytes
            assert await t.receive() == ["é" * 500]
            await client.send(TextMessage(data="é" * 501))
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1009


@pytest.mark.parametrize("fragmented", [False, True])
async def test_invalid_utf8_text_closes_1007(fragmented: bool) -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            if fragmented:
                frames = masked_frame(0x1, b"ok\xc3", fin=False) + masked_frame(0x0, b"\xfe")
            else:
                frames = masked_frame(0x1, b"ok\xff\xfe")
            await client.stream.send_all(frames)
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1007
            await expect_close(client, 1007)


@pytest.mark.parametrize("fragmented", [False, True])
async def test_binary_is_never_decoded(fragmented: bool) -> None:
    """Non-UTF-8 bytes in a binary message reach the core as they are; the socket stays."""
    with trio.fail_after(5):
        async with connected() as (t, client):
            if fragmented:
                frames = masked_frame(0x2, b"ok\xff", fin=False) + masked_frame(0x0, b"\xfe")
            else:
                frames = masked_frame(0x2, b"ok\xff\xfe")
            await client.stream.send_all(frames + masked_frame(0x1, b"after"))
            got: list[str | bytes] = []
            while len(got) < 2:
                got += await t.receive()
            assert got == [b"ok\xff\xfe", "after"]
            assert not t.closed


@pytest.mark.parametrize(
    "frame",
    [
        bytes([0x81, 0x02]) + b"hi",  # unmasked client frame
        masked_frame(0x3, b""),  # reserved opcode
        bytes([0xC1, 0x80, 0, 0, 0, 0]),  # RSV1 without an extension
        masked_frame(0x9, b"p" * 126),  # control frame too long
        masked_frame(0x9, b"p", fin=False),  # fragmented control frame
        masked_frame(0x0, b"orphan continuation"),
    ],
)
async def test_protocol_errors_close_1002(frame: bytes) -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.stream.send_all(frame)
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1002
            await expect_close(client, 1002)
            assert await client.stream.receive_some(10) == b""


async def test_messages_before_an_error_are_delivered() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.stream.send_all(masked_frame(0x1, b"first") + masked_frame(0x1, b"\xff"))
            assert await t.receive() == ["first"]
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1007


# --------------------------------------------------------------------------- closing


async def test_client_close_is_echoed() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            t.send(OutboundMessage(b"dropped?"))
            await client.send(TextMessage(data="last"), CloseConnection(code=4321, reason="bye"))
            assert await t.receive() == ["last"]
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert (info.value.code, info.value.reason) == (4321, "bye")
            await expect_close(client, 4321)
            assert await client.stream.receive_some(10) == b""
            assert t.closed
            assert t.close_code == 4321
            with pytest.raises(TransportClosed):
                await t.receive()
            t.send(OutboundMessage(b"ignored"))
            await t.flush()
            await t.close()  # idempotent


async def test_client_close_without_code() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.stream.send_all(masked_frame(0x8, b""))
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1005
            ev = await expect_close(client, 1005)  # an empty close frame echoed
            assert ev.reason in ("", None)


async def test_eof_is_1006() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.stream.aclose()
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1006


async def test_server_close_code_and_reason_reach_client() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client), trio.open_nursery() as nursery:
            t.send(OutboundMessage(b"before close"))

            async def client_side() -> None:
                assert await client.texts(1) == ["before close"]
                ev = await expect_close(client, 4008)
                assert ev.reason == "Server rejected handshake"
                await client.send(ev.response())

            nursery.start_soon(client_side)
            await t.close(4008, "Server rejected handshake")
            assert t.closed
            assert t.close_code == 4008
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 4008


async def test_close_while_reader_runs() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client), trio.open_nursery() as nursery:
            caught: list[TransportClosed] = []

            async def reader() -> None:
                try:
                    while True:
                        await t.receive()
                except TransportClosed as exc:
                    caught.append(exc)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()

            async def client_side() -> None:
                ev = await expect_close(client, 4000)
                await client.stream.send_all(masked_frame(0x1, b"ignored after close"))
                await client.send(ev.response())

            nursery.start_soon(client_side)
            await t.close(4000, "x")
        assert [c.code for c in caught] == [4000]


async def test_close_times_out_without_peer(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(50):
        async with connected() as (t, client):
            start = trio.current_time()
            await t.close(1001, "é" * 100)  # the peer never answers
            assert trio.current_time() - start == pytest.approx(2.0)
            ev = await expect_close(client, 1001)
            assert ev.reason == "é" * 61  # 123 bytes, cut on a character boundary
            assert t.close_code == 1001


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 2000, 5000])
async def test_unsendable_codes_sent_as_1000(
    code: int, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(50):
        async with connected() as (t, client):
            await t.close(code)
            await expect_close(client, 1000)
            assert t.close_code == 1000


async def test_aclose_is_immediate() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await t.aclose()
            await t.aclose()
            assert await client.stream.receive_some(10) == b""
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1006


# --------------------------------------------------------------------------- sending


async def test_priority_before_queued_data() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            t.send(OutboundMessage(b"d1"))
            t.send(OutboundMessage(b"d2"))
            t.send_priority(OutboundMessage(b"#1"))
            assert t.buffered_bytes == 3 * 2 + 2 + 2 + 2
            await t.flush()
            assert t.buffered_bytes == 0
            assert await client.texts(3) == ["#1", "d1", "d2"]


async def test_shared_message_framed_once() -> None:
    with trio.fail_after(5):
        msg = OutboundMessage(b'{"event":"#publish","data":{"channel":"c","data":1}}')
        assert msg._frame is None
        pairs = []
        for _ in range(5):
            cm = connected()
            pairs.append((cm, await cm.__aenter__()))
        for _, (t, _c) in pairs:
            t.send(msg)
        frame = msg._frame
        assert frame is not None
        for _, (t, _c) in pairs:
            t.send(msg)
            assert msg._frame is frame
        for _, (t, c) in pairs:
            await t.flush()
            assert await c.texts(2) == [msg.text, msg.text]
        for cm, _ in pairs:
            await cm.__aexit__(None, None, None)


async def test_slow_consumer_closed_4100_memory_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(50):
        client_stream, server_stream = trio.testing.lockstep_stream_pair()
        async with (
            connected((client_stream, server_stream), max_buffer_bytes=10_000) as (
                t,
                _client,
            ),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(t.run_writer)
            msg = OutboundMessage(b"x" * 1000)
            for _ in range(9):
                t.send(msg)
            await trio.testing.wait_all_tasks_blocked()  # the writer is stuck in send_all
            sent = 0
            while not t.closed:
                t.send(msg)
                sent += 1
                assert t.buffered_bytes <= 10_000
            assert sent <= 11
            assert t.close_code == SLOW_CONSUMER_CLOSE_CODE
            t.send(msg)  # ignored
            assert t.buffered_bytes < 200
            with pytest.raises(TransportClosed) as info:
                await t.receive()  # the writer gives up after the close timeout
            assert info.value.code == SLOW_CONSUMER_CLOSE_CODE
            assert (info.value.reason) == "Slow consumer"


async def test_slow_consumer_that_resumes_reading_sees_4100() -> None:
    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.lockstep_stream_pair()
        async with (
            connected((client_stream, server_stream), max_buffer_bytes=5_000) as (
                t,
                client,
            ),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(t.run_writer)
            msg = OutboundMessage(b"y" * 1000)
            for _ in range(20):
                t.send(msg)
            assert t.closed
            # The client reads again: what was in flight, then the 4100 close frame.
            ev = await expect_close(client, SLOW_CONSUMER_CLOSE_CODE)
            assert ev.reason == "Slow consumer"
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == SLOW_CONSUMER_CLOSE_CODE


async def test_slow_consumer_over_tcp() -> None:
    with trio.fail_after(20):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        client_stream = await trio.open_tcp_stream("127.0.0.1", port)
        server_stream = await listeners[0].accept()
        async with (
            connected((client_stream, server_stream), max_buffer_bytes=2**20) as (
                t,
                _client,
            ),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(t.run_writer)
            msg = OutboundMessage(b"z" * 65536)
            while not t.closed:
                t.send(msg)
                assert t.buffered_bytes <= 2**20
                await trio.lowlevel.checkpoint()  # let the writer fill the kernel buffers
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == SLOW_CONSUMER_CLOSE_CODE
        await listeners[0].aclose()
        await client_stream.aclose()


async def test_cancelled_receive_leaves_transport_usable() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.send(TextMessage(data="par", message_finished=False))
            with trio.move_on_after(0.01) as scope:
                await t.receive()
            assert scope.cancelled_caught
            await client.send(TextMessage(data="tial", message_finished=True))
            assert await t.receive() == ["partial"]
            t.send(OutboundMessage(b"still works"))
            await t.flush()
            assert await client.texts(1) == ["still works"]


class RecordingStream(trio.abc.Stream):
    """Wraps a stream; counts concurrent ``send_all`` calls and can hold them."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.gate = trio.Event()
        self.gate.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.active += 1
        self.calls += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.gate.wait()
            await self.inner.send_all(data)
        finally:
            self.active -= 1

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_concurrent_flushes_never_overlap_and_keep_order() -> None:
    with trio.fail_after(5):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        rec = RecordingStream(server_stream)
        async with connected((client_stream, rec)) as (t, client), trio.open_nursery() as n:
            rec.gate = trio.Event()
            calls_before = rec.calls
            t.send(OutboundMessage(b"1"))
            n.start_soon(t.flush)
            await trio.testing.wait_all_tasks_blocked()
            assert rec.active == 1
            t.send(OutboundMessage(b"2"))
            t.send(OutboundMessage(b"3"))
            await t.flush()  # returns at once: a flush is running
            n.start_soon(t.run_writer)
            await trio.testing.wait_all_tasks_blocked()
            assert rec.active == 1
            rec.gate.set()
            assert await client.texts(3) == ["1", "2", "3"]
            await trio.testing.wait_all_tasks_blocked()
            assert rec.max_active == 1
            assert rec.calls - calls_before == 2  # "1", then "2"+"3" in one send_all
            n.cancel_scope.cancel()


async def test_broken_stream_flush_does_not_raise() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            await client.stream.aclose()
            for _ in range(3):
                t.send(OutboundMessage(b"x" * 100))
                await t.flush()
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == 1006
            await t.run_writer()  # returns at once


# --------------------------------------------------------------------------- real TCP


async def test_echo_over_tcp() -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def handle(stream: trio.SocketStream) -> None:
            t = await accept_websocket(stream)
            assert t is not None
            assert t.request.remote_address is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(t.run_writer)
                try:
                    while True:
                        for m in await t.receive():
                            assert isinstance(m, str)
                            t.send(OutboundMessage(m.encode()))
                        await t.flush()
                except TransportClosed as exc:
                    assert exc.code == 1000  # noqa: PT017 (inside a server task)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            client = Client(stream)
            assert isinstance(await client.handshake(), AcceptConnection)
            for i in range(50):
                await client.send(TextMessage(data=f"m{i}"))
                assert await client.texts(1) == [f"m{i}"]
            big = "b" * 300_000
            await client.send(TextMessage(data=big))
            assert await client.texts(1) == [big]
            await client.send(CloseConnection(code=1000))
            await expect_close(client, 1000)
            await stream.aclose()
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the close state


def test_close_state_first_decision_stands() -> None:
    s = OPEN.closing(4001, "bye", ClosedBy.LOCAL)
    assert (s.state, s.code, s.reason, s.by) == (State.CLOSING, 4001, "bye", ClosedBy.LOCAL)
    assert s.closed() == CloseState(State.CLOSED, 4001, "bye", ClosedBy.LOCAL)
    assert s.closed_with(1000, "", ClosedBy.PEER) == s.closed()
    assert OPEN.closed() == CloseState(State.CLOSED, 1006, "", ClosedBy.NETWORK)
    assert OPEN.closed_with(1001, "away", ClosedBy.PEER).by is ClosedBy.PEER
    assert OPEN.code is None
    assert OPEN.exception().code == 1006
    with pytest.raises(AssertionError):
        s.closing(1000, "", ClosedBy.LOCAL)  # only an open transport starts closing


async def _closed_by(t: WsprotoTransport) -> CloseState:
    with pytest.raises(TransportClosed) as info:  # noqa: PT012 (the whole block is the case)
        while True:
            await t.receive()
    state = t.close_state
    assert state.state is State.CLOSED
    assert (info.value.code, info.value.reason) == (state.code, state.reason)
    return state


async def test_who_closed() -> None:
    with trio.fail_after(5):
        async with connected() as (t, client):
            assert t.close_state is OPEN
            await client.send(CloseConnection(code=4321, reason="bye"))
            assert (await _closed_by(t)).by is ClosedBy.PEER
        async with connected() as (t, client):
            await client.stream.send_all(masked_frame(0x1, b"\xff"))
            state = await _closed_by(t)
            assert (state.code, state.by) == (1007, ClosedBy.PROTOCOL)
        async with connected() as (t, client):
            await client.stream.aclose()
            state = await _closed_by(t)
            assert (state.code, state.by) == (1006, ClosedBy.NETWORK)
        async with connected() as (t, client):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(t.close, 4001, "done")
                await expect_close(client, 4001)
                await client.send(CloseConnection(code=4001))
            state = await _closed_by(t)
            assert (state.code, state.reason, state.by) == (4001, "done", ClosedBy.LOCAL)
        async with connected(max_buffer_bytes=100) as (t, client):
            t.send(OutboundMessage(b"x" * 101))
            assert t.close_state.state is State.CLOSING
            await t.flush()  # the close frame, then the stream is closed
            await expect_close(client, SLOW_CONSUMER_CLOSE_CODE)
            state = await _closed_by(t)
            assert (state.code, state.by) == (SLOW_CONSUMER_CLOSE_CODE, ClosedBy.OVERFLOW)
