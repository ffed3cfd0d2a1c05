"""``transport.frames``: the pure inbound frame reader, without trio or sockets.

The reader parses the common frame (whole, final, masked text/binary, 7- or 16-bit length)
itself and hands every other frame to wsproto from a frame boundary. The equivalence property
feeds the same bytes, cut at the same read boundaries, to a reader and to one whose fast path
is off (every byte goes to wsproto, as before the fast path existed), and requires the same
messages, the same control events and the same end. The frame builders equal wsproto's.
"""

from __future__ import annotations

import ast
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import CloseReason, FrameProtocol

import trio_socketcluster.transport.frames as frames_module
from trio_socketcluster.transport.frames import (
    FrameReader,
    Message,
    PeerClose,
    Ping,
    Pong,
    ProtocolFailure,
    close_frame,
    pong_frame,
)


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
def close_frames(draw: st.DrawFn) -> bytes:
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
        close_frames(), bad_frame(), first_fragment(),
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


@dataclass
class Outcome:
    reads: list[list[Message]] = field(default_factory=list)
    controls: list[Ping | Pong] = field(default_factory=list)
    end: PeerClose | ProtocolFailure | None = None
    at_boundary: bool = True


def _read_all(reads: list[bytes], *, trailing: bytes, limit: int, fast: bool) -> Outcome:
    reader = FrameReader(max_message_bytes=limit, fast_path=fast, buffered=trailing)
    out = Outcome()
    for data in [b"", *reads] if trailing else reads:
        messages = reader.feed(data)
        if messages:
            out.reads.append(messages)
        out.controls += reader.controls
        reader.controls.clear()
    out.end = reader.end
    out.at_boundary = reader.at_frame_boundary
    return out


def compare(trailing: bytes, reads: list[bytes], limit: int) -> Outcome:
    """Assert the fast path and wsproto alone agree on ``reads``; return the outcome."""
    fast = _read_all(reads, trailing=trailing, limit=limit, fast=True)
    slow = _read_all(reads, trailing=trailing, limit=limit, fast=False)
    assert [m for r in fast.reads for m in r] == [m for r in slow.reads for m in r]
    for messages in fast.reads:
        for m in messages:
            assert type(m) in (str, bytes)
    assert fast.controls == slow.controls
    assert fast.end == slow.end
    if fast.end is None:  # every frame was whole: every frame was parsed
        assert fast.at_boundary
    return fast


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
def test_fast_path_equals_wsproto(script: tuple[bytes, list[bytes], int, bool]) -> None:
    trailing, reads, limit, _ = script
    compare(trailing, reads, limit)


def _msg(text: str, mask: bytes = b"\x12\x34\x56\x78") -> bytes:
    return frame(1, text.encode("utf-8"), mask=mask)


STREAMS = [
    _msg("a") + _msg("é" * 200) + _msg("x" * 5000) + frame(8, b"\x03\xe8", mask=b"abcd"),
    frame(1, b"ab", fin=False, mask=b"abcd") + frame(9, b"p", mask=b"wxyz")
    + frame(0, b"cd", mask=b"1234") + _msg("after"),
    _msg("ok") + frame(1, b"\xc3", mask=b"abcd") + _msg("never"),
    _msg("a") + frame(1, b"b" * 70000, mask=b"abcd") + _msg("c"),
    frame(2, b"ab", fin=False, mask=b"abcd") + _msg("x") + frame(0, b"c", mask=b"abcd"),
    frame(9, b"p", mask=b"\x81\x81\x81\x81") + _msg("a", b"\x81\x81\x81\x81") * 3,
    frame(2, b"\xff\xfe" * 700, mask=b"abcd") + frame(2, b"\xc3", mask=b"wxyz") + _msg("z"),
]  # fmt: skip


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("step", [1, 2, 3, 7, 100, 100_000])
def test_every_read_boundary(stream: bytes, step: int) -> None:
    """Fixed streams cut into reads of ``step`` bytes (every header split is reached)."""
    reads = [stream[i : i + step] for i in range(0, len(stream), step)]
    compare(b"", reads, 16 * 2**20)


def test_outcomes_of_the_fixed_streams() -> None:
    """What the fixed streams mean (the equivalence alone would pass if both paths erred)."""
    outcomes = [compare(b"", [s], 16 * 2**20) for s in STREAMS]
    flat = [[m for r in o.reads for m in r] for o in outcomes]
    assert flat[0] == ["a", "é" * 200, "x" * 5000]
    assert outcomes[0].end == PeerClose(1000, "")
    assert flat[1] == ["abcd", "after"]
    assert outcomes[1].controls == [Ping(b"p")]
    assert flat[2] == ["ok"]
    assert isinstance(outcomes[2].end, ProtocolFailure)
    assert outcomes[2].end.code == 1007
    assert flat[3] == ["a", "b" * 70000, "c"]
    assert isinstance(outcomes[4].end, ProtocolFailure)
    assert outcomes[4].end.code == 1002
    assert flat[5] == ["a"] * 3
    assert outcomes[5].controls == [Ping(b"p")]
    assert flat[6] == [b"\xff\xfe" * 700, b"\xc3", "z"]
    assert outcomes[6].end is None


def test_text_is_str_binary_is_bytes() -> None:
    reader = FrameReader()
    got = reader.feed(frame(1, "é".encode()) + frame(2, b"\xff") + frame(2, b"") + frame(1, b""))
    assert got == ["é", b"\xff", b"", ""]
    assert [type(m) for m in got] == [str, bytes, bytes, str]
    assert reader.end is None
    assert not reader.used_wsproto


@pytest.mark.parametrize("payload", [b"ok\xff", b"\xc3", b"x" * 2000 + b"\xff"])
def test_invalid_utf8_text_fails_1007_binary_passes(payload: bytes) -> None:
    reader = FrameReader()
    assert reader.feed(frame(2, payload, mask=b"abcd")) == [payload]
    assert reader.end is None
    assert reader.feed(frame(1, payload, mask=b"abcd") + _msg("lost")) == []
    assert isinstance(reader.end, ProtocolFailure)
    assert reader.end.code == 1007
    assert reader.feed(_msg("ignored")) == []  # finished


@pytest.mark.parametrize("opcode", [1, 2])
def test_message_over_the_limit_fails_1009(opcode: int) -> None:
    reader = FrameReader(max_message_bytes=10)
    assert reader.feed(frame(opcode, b"x" * 10)) == ["x" * 10 if opcode == 1 else b"x" * 10]
    assert reader.feed(frame(opcode, b"x" * 11)) == []
    assert reader.end == ProtocolFailure(1009, "Message too big")


def test_fragmented_over_the_limit_fails_before_the_last_fragment() -> None:
    reader = FrameReader(max_message_bytes=10)
    assert reader.feed(frame(2, b"x" * 6, fin=False) + frame(0, b"x" * 6, fin=False)) == []
    assert reader.end == ProtocolFailure(1009, "Message too big")


def test_controls_in_order_and_peer_close() -> None:
    reader = FrameReader()
    got = reader.feed(
        frame(9, b"1") + _msg("a") + frame(10, b"2") + frame(9, b"")
        + frame(8, struct.pack("!H", 4001) + b"bye") + _msg("after the close")
    )  # fmt: skip
    assert got == ["a"]
    assert reader.controls == [Ping(b"1"), Pong(b"2"), Ping(b"")]
    assert reader.end == PeerClose(4001, "bye")


def test_close_without_code_is_1005() -> None:
    reader = FrameReader()
    reader.feed(frame(8, b""))
    assert reader.end == PeerClose(1005, "")


def test_messages_are_batched_per_read_without_wsproto() -> None:
    reader = FrameReader()
    assert reader.feed(_msg("a") + _msg("b") + _msg("c" * 300) + _msg("d")[:3]) == [
        "a",
        "b",
        "c" * 300,
    ]
    assert not reader.at_frame_boundary  # a header held back
    assert reader.feed(_msg("d")[3:]) == ["d"]
    assert reader.at_frame_boundary
    assert not reader.used_wsproto


class _Counting(FrameReader):
    __slots__ = ("slow_bytes",)

    def __init__(self) -> None:
        super().__init__()
        self.slow_bytes = 0

    def _slow(self, data: bytes | bytearray, out: list[Message]) -> None:
        self.slow_bytes += len(data)
        super()._slow(data, out)


def test_fast_path_resumes_after_wsproto_frames() -> None:
    slow = frame(1, b"ab", fin=False, mask=b"abcd") + frame(9, b"", mask=b"wxyz")
    slow += frame(0, b"cd", mask=b"1234") + frame(10, b"", mask=b"abcd")
    reader = _Counting()
    assert reader.feed(slow[:3]) == []
    assert reader.feed(slow[3:] + _msg("e")) == ["abcd", "e"]
    assert reader.slow_bytes == len(slow)
    assert reader.feed(_msg("f") * 2) == ["f", "f"]
    assert reader.slow_bytes == len(slow)


# --------------------------------------------------------------------------- outbound frames


@given(st.one_of(st.none(), st.sampled_from([1000, 1001, 1002, 1005, 1006, 1007, 1009, 1011,
                                              1015, 3000, 4100, 4999])),
       st.text(max_size=130))  # fmt: skip
def test_close_frame_equals_wsproto(code: int | None, reason: str) -> None:
    """As wsproto frames it (1005: the empty close that echoes a close without a code)."""
    if code is None or code == 1005:
        expected = FrameProtocol(client=False, extensions=[]).close(CloseReason.NO_STATUS_RCVD)
    else:
        expected = FrameProtocol(client=False, extensions=[]).close(code, reason)
    assert close_frame(code, reason) == bytes(expected)


@given(st.binary(max_size=125))
def test_pong_frame_equals_wsproto(payload: bytes) -> None:
    assert pong_frame(payload) == bytes(FrameProtocol(client=False, extensions=[]).pong(payload))


def test_pong_frame_refuses_a_long_payload() -> None:
    with pytest.raises(ValueError, match="125"):
        pong_frame(b"x" * 126)


# --------------------------------------------------------------------------- layering

#: Modules the pure transport layers may not import (wsproto and h11 are sans-IO).
_IO = frozenset({"trio", "trio_websocket", "socket", "time", "random", "os", "asyncio"})


@pytest.mark.parametrize("name", ["frames.py", "upgrade.py"])
def test_pure_layers_import_no_io(name: str) -> None:
    path = Path(frames_module.__file__).parent / name
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert "wsproto" in imported or "h11" in imported  # the scan sees imports at all
    assert not imported & _IO
