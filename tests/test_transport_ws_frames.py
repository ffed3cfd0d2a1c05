"""The fast paths of ``transport.ws`` against wsproto and h11 alone.

``WsprotoTransport`` parses the common frame (whole, final, masked text/binary, 7- or 16-bit
length) itself and hands every other frame to wsproto from a frame boundary. These tests feed
the same bytes, cut at the same read boundaries, to the transport and to a copy of it whose
``_FAST_PATH`` is off (every byte goes to wsproto, as before the fast path existed), and
require the same messages, the same close code and reason, and the same bytes written back
(pongs, close frames). The request-head fast path must parse what it takes exactly as h11
does, and leave everything unusual to h11.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_transport_ws import connected

from trio_socketcluster.transport.base import (
    SLOW_CONSUMER_CLOSE_CODE,
    HandshakeRequest,
    OutboundMessage,
    TransportClosed,
)
from trio_socketcluster.transport.ws import WsprotoTransport, _fast_head, _Head


class _WsprotoOnly(WsprotoTransport):
    __slots__ = ()
    _FAST_PATH = False


class _Script(trio.abc.Stream):
    """Returns the given reads in order, then EOF; records what is written."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)
        self.written = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.reads.pop(0) if self.reads else b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@dataclass
class Outcome:
    reads: list[list[str]] = field(default_factory=list)
    code: int | None = None
    reason: str | None = None
    written: bytes = b""
    at_boundary: bool = True


_REQUEST = HandshakeRequest(path="/socketcluster/", query="", headers=())


async def _run(
    cls: type[WsprotoTransport],
    reads: list[bytes],
    *,
    trailing: bytes,
    limit: int,
    close_first: bool,
) -> Outcome:
    stream = _Script(reads)
    t = cls(stream, _REQUEST, trailing_data=trailing, max_message_bytes=limit)
    out = Outcome()
    with trio.fail_after(10):
        if close_first:
            await t.close(4321, "bye")
        try:
            while True:
                out.reads.append(await t.receive())
                await t.flush()
        except TransportClosed as exc:
            out.code, out.reason = exc.code, exc.reason
    out.at_boundary = not (t._slow_left or t._slow_head or t._rbuf)
    out.written = bytes(stream.written)
    return out


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes | None = b"\x00\x00\x00\x00",
    rsv: int = 0,
    width: int | None = None,
) -> bytes:
    """A client frame; ``width`` forces the length encoding (7, 16 or 64 bits)."""
    n = len(payload)
    if width is None:
        width = 7 if n < 126 else 16 if n < 65536 else 64
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask is not None else 0
    if width == 7:
        head = bytes((b0, m | n))
    elif width == 16:
        head = bytes((b0, m | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, m | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, key, strict=True))


masks = st.binary(min_size=4, max_size=4)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.text(
    st.characters(exclude_categories=["Cs"]), min_size=100, max_size=700
)
payloads = texts.map(lambda s: s.encode("utf-8")) | st.binary(max_size=300)


@st.composite
def whole_message(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([1, 2]))
    data = draw(payloads)
    width = draw(st.sampled_from([None, None, None, 16]))
    if width == 16 and len(data) < 126:
        width = None
    return frame(opcode, data, mask=draw(masks), width=width)


@st.composite
def fragmented_message(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from([1, 2]))
    data = draw(payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out = b""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        out += frame(opcode if i == 0 else 0, part, fin=last, mask=draw(masks))
        if not last and draw(st.booleans()):
            out += frame(
                draw(st.sampled_from([9, 10])), draw(st.binary(max_size=20)), mask=draw(masks)
            )
    return out


@st.composite
def first_fragment(draw: st.DrawFn) -> bytes:
    """A message's first frame alone: a whole message after it is a protocol error."""
    return frame(draw(st.sampled_from([1, 2])), draw(st.binary(max_size=10)), fin=False,
                 mask=draw(masks))  # fmt: skip


@st.composite
def control(draw: st.DrawFn) -> bytes:
    return frame(draw(st.sampled_from([9, 10])), draw(st.binary(max_size=125)), mask=draw(masks))


@st.composite
def close_frame(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([1000, 1001, 3000, 4000, 4999, 1005, 999, 2000]))
    if code == 1005:
        return frame(8, b"", mask=draw(masks))
    reason = draw(st.text(max_size=20)).encode("utf-8")[:100]
    return frame(8, struct.pack("!H", code) + reason, mask=draw(masks))


@st.composite
def bad_frame(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(max_size=40))
    kind = draw(st.sampled_from(["unmasked", "rsv", "opcode", "short16", "short64", "cont",
                                 "bigping", "fragping", "badutf8", "long64"]))  # fmt: skip
    mask = draw(masks)
    match kind:
        case "unmasked":
            return frame(1, data, mask=None)
        case "rsv":
            return frame(1, data, mask=mask, rsv=draw(st.integers(1, 7)))
        case "opcode":
            return frame(draw(st.sampled_from([3, 7, 11, 15])), data, mask=mask)
        case "short16":
            return frame(1, data, mask=mask, width=16)
        case "short64":
            return frame(2, data, mask=mask, width=64)
        case "cont":
            return frame(0, data, mask=mask)
        case "bigping":
            return frame(9, b"x" * 126, mask=mask)
        case "fragping":
            return frame(9, data, mask=mask, fin=False)
        case "badutf8":
            return frame(draw(st.sampled_from([1, 2])), data + b"\xff" + data, mask=mask)
        case _:
            return frame(1, b"a" * 65536, mask=mask)  # a valid 64-bit frame


items = st.lists(
    st.one_of(
        whole_message(), whole_message(), whole_message(), fragmented_message(), control(),
        close_frame(), bad_frame(), first_fragment(),
    ),
    max_size=12,
)  # fmt: skip


@st.composite
def scripts(draw: st.DrawFn) -> tuple[bytes, list[bytes], int, bool]:
    stream = b"".join(draw(items))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reads = [r for r in reads if r]
    with_upgrade: bool = draw(st.booleans())  # the first read came with the upgrade request
    trailing = reads.pop(0) if reads and with_upgrade else b""
    limit = draw(st.sampled_from([16 * 2**20, 16 * 2**20, 200, 0]))
    return trailing, reads, limit, draw(st.booleans())


def _compare(trailing: bytes, reads: list[bytes], limit: int, close_first: bool) -> None:
    async def both() -> tuple[Outcome, Outcome]:
        return (
            await _run(
                WsprotoTransport, reads, trailing=trailing, limit=limit, close_first=close_first
            ),
            await _run(
                _WsprotoOnly, reads, trailing=trailing, limit=limit, close_first=close_first
            ),
        )

    fast, slow = trio.run(both)
    assert [m for r in fast.reads for m in r] == [m for r in slow.reads for m in r]
    assert (fast.code, fast.reason) == (slow.code, slow.reason)
    assert fast.written == slow.written
    if fast.code == 1006:  # the stream (whole frames) ran out: every frame was parsed
        assert fast.at_boundary


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
def test_fast_path_equals_wsproto(script: tuple[bytes, list[bytes], int, bool]) -> None:
    _compare(*script)


def _msg(text: str, mask: bytes = b"\x12\x34\x56\x78") -> bytes:
    return frame(1, text.encode("utf-8"), mask=mask)


@pytest.mark.parametrize(
    "stream",
    [
        _msg("a") + _msg("é" * 200) + _msg("x" * 5000) + frame(8, b"\x03\xe8", mask=b"abcd"),
        frame(1, b"ab", fin=False, mask=b"abcd") + frame(9, b"p", mask=b"wxyz")
        + frame(0, b"cd", mask=b"1234") + _msg("after"),
        _msg("ok") + frame(1, b"\xc3", mask=b"abcd") + _msg("never"),
        _msg("a") + frame(1, b"b" * 70000, mask=b"abcd") + _msg("c"),
        frame(2, b"ab", fin=False, mask=b"abcd") + _msg("x") + frame(0, b"c", mask=b"abcd"),
        frame(9, b"p", mask=b"\x81\x81\x81\x81") + _msg("a", b"\x81\x81\x81\x81") * 3,
    ],
)  # fmt: skip
@pytest.mark.parametrize("step", [1, 2, 3, 7, 100, 100_000])
def test_every_read_boundary(stream: bytes, step: int) -> None:
    """Fixed streams cut into reads of ``step`` bytes (every header split is reached)."""
    reads = [stream[i : i + step] for i in range(0, len(stream), step)]
    _compare(b"", reads, 16 * 2**20, False)


async def test_fast_messages_are_batched_per_read() -> None:
    stream = _Script([_msg("a") + _msg("b") + _msg("c" * 300), _msg("d")])
    t = WsprotoTransport(stream, _REQUEST)
    assert await t.receive() == ["a", "b", "c" * 300]
    assert await t.receive() == ["d"]
    assert t._conn is None  # wsproto was never needed


class _Counting(WsprotoTransport):
    __slots__ = ("slow_bytes",)

    def _slow(self, data: bytes | bytearray, out: list[str]) -> None:
        self.slow_bytes = getattr(self, "slow_bytes", 0) + len(data)
        super()._slow(data, out)


async def test_fast_path_resumes_after_wsproto_frames() -> None:
    slow = frame(1, b"ab", fin=False, mask=b"abcd") + frame(9, b"", mask=b"wxyz")
    slow += frame(0, b"cd", mask=b"1234") + frame(10, b"", mask=b"abcd")
    stream = _Script([slow[:3], slow[3:] + _msg("e"), _msg("f") * 2])
    t = _Counting(stream, _REQUEST)
    assert await t.receive() == ["abcd", "e"]
    assert t.slow_bytes == len(slow)
    assert await t.receive() == ["f", "f"]
    assert t.slow_bytes == len(slow)


# --------------------------------------------------------------------------- request heads

_BROWSER_HEAD = (
    b"GET /socketcluster/?x=1 HTTP/1.1\r\nHost: localhost:8000\r\nConnection: Upgrade\r\n"
    b"Pragma: no-cache\r\nUpgrade: websocket\r\nOrigin: http://localhost:8000\r\n"
    b"Sec-WebSocket-Version: 13\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def _h11_head(data: bytes) -> _Head | None:
    """What h11 makes of ``data`` (``None``: an error or an incomplete head)."""
    h = h11.Connection(h11.SERVER)
    h.receive_data(data)
    try:
        event = h.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    while True:
        try:
            nxt = h.next_event()
        except h11.RemoteProtocolError:
            return None
        if nxt is h11.NEED_DATA or nxt is h11.PAUSED or isinstance(nxt, h11.EndOfMessage):
            break
    return _Head(
        event.method,
        event.target.decode("latin-1"),
        event.http_version,
        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
        bytes(h.trailing_data[0]),
    )


def _parts(head: _Head | None) -> tuple[object, ...] | None:
    if head is None:
        return None
    return (head.method, head.target, head.version, head.headers, head.trailing)


_good_names = st.sampled_from([b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"X-A", b"x_b~"])
_bad_names = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Bad Name", b"", b"\xe9", b"X@"]
)
_good_values = st.text("ab \t\xe9~!", max_size=8).map(lambda v: v.encode("latin-1"))
_bad_values = st.binary(max_size=8) | st.sampled_from([b"\xff\xfe", b"a\x01b", b"a\x7fb", b"0"])
_lines = st.tuples(
    _good_names | _good_names | _good_names | _bad_names,
    st.sampled_from([b":", b":", b": ", b":\t", b" :"]),
    _good_values | _good_values | _good_values | _bad_values,
).map(lambda t: t[0] + t[1] + t[2]) | st.sampled_from([b" folded", b"\tfolded", b"no colon"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """Request heads, mostly valid; each part is sometimes something h11 refuses or that the
    fast path leaves to it."""

    def pick(common: bytes, *rare: bytes) -> bytes:
        return common if draw(st.integers(0, 3)) else draw(st.sampled_from(rare))

    method = pick(b"GET", b"POST", b"get", b"G T")
    target = pick(b"/socketcluster/?a=b", b"/a?b=c d", b"/\xe9", b"*", b"", b"/\x01", b"/\x7f")
    version = pick(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1")
    lines = draw(st.lists(_lines, max_size=6))
    for _ in range(int(pick(b"1", b"0", b"2"))):
        lines.insert(draw(st.integers(0, len(lines))), b"Host: example.com")
    eol = pick(b"\r\n", b"\n", b"\r")
    head = method + b" " + target + b" " + version + eol + b"".join(x + eol for x in lines) + eol
    return head + draw(st.sampled_from([b"", b"\x81\x80abcd", b"GET / HTTP/1.1\r\n"]))


@settings(max_examples=1000, deadline=None)
@given(request_heads())
def test_fast_head_agrees_with_h11(data: bytes) -> None:
    fast = _fast_head(data)
    if fast is not None:
        assert _parts(fast) == _parts(_h11_head(data))


@pytest.mark.parametrize(
    "data",
    [
        _BROWSER_HEAD,
        _BROWSER_HEAD + b"\x81\x80abcd",
        b"GET /socketcluster/ HTTP/1.1\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Host: 127.0.0.1:8000\r\n\r\n",  # node's ws
        b"GET / HTTP/1.1\r\nhost:x\r\nX-Empty:\r\nX-Blank: \t \r\n\r\n",
    ],
)
def test_fast_head_takes_plain_requests(data: bytes) -> None:
    fast = _fast_head(data)
    assert fast is not None
    assert _parts(fast) == _parts(_h11_head(data))


@pytest.mark.parametrize(
    "data",
    [
        _BROWSER_HEAD[:-2],  # incomplete
        _BROWSER_HEAD.replace(b"Host: localhost:8000\r\n", b""),  # h11: 400
        _BROWSER_HEAD.replace(b"Pragma", b"Host"),  # two Host headers: h11: 400
        _BROWSER_HEAD.replace(b"Pragma: no-cache", b"Content-Length: 3"),  # a body
        _BROWSER_HEAD.replace(b"GET", b"POST"),
        _BROWSER_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        _BROWSER_HEAD.replace(b"\r\nPragma", b"\r\n Pragma"),  # obsolete line folding
        _BROWSER_HEAD.replace(b"\r\n", b"\n"),
        _BROWSER_HEAD.replace(b"no-cache", b"no\x01cache"),
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",  # over h11's limit
    ],
)
def test_fast_head_leaves_the_rest_to_h11(data: bytes) -> None:
    assert _fast_head(data) is None


# --------------------------------------------------------------------------- writes


async def test_overflow_bounds_the_write_of_another_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader's ``flush`` writes without a cancel scope: when the buffer overflows while
    that write is stuck, the writer task closes the stream after ``close_timeout_s``."""
    with trio.fail_after(50):
        client_stream, server_stream = trio.testing.lockstep_stream_pair()
        async with (
            connected((client_stream, server_stream), max_buffer_bytes=10_000) as (t, _client),
            trio.open_nursery() as nursery,
        ):
            msg = OutboundMessage(b"x" * 1000)
            t.send(msg)
            nursery.start_soon(t.flush)
            await trio.testing.wait_all_tasks_blocked()  # that flush is stuck in send_all
            nursery.start_soon(t.run_writer)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            while not t.closed:
                t.send(msg)
            with pytest.raises(TransportClosed) as info:
                await t.receive()
            assert info.value.code == SLOW_CONSUMER_CLOSE_CODE
            assert trio.current_time() - start == pytest.approx(2.0)
