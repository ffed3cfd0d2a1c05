"""``WsprotoTransport`` over its frame reader's fast path, against wsproto alone.

The reader (``transport.frames``, tested alone in ``test_transport_frames``) parses the
common frame itself and hands every other frame to wsproto from a frame boundary. These tests
drive whole transports: the same bytes, cut at the same read boundaries, go to the transport
and to a copy of it whose ``_FAST_PATH`` is off (every byte goes to wsproto), and they must
give the same messages, the same close code and reason, and the same bytes written back
(pongs, close frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from test_transport_frames import STREAMS, frame, scripts
from test_transport_ws import connected

from trio_socketcluster.transport.base import (
    SLOW_CONSUMER_CLOSE_CODE,
    HandshakeRequest,
    OutboundMessage,
    TransportClosed,
)
from trio_socketcluster.transport.ws import WsprotoTransport

if TYPE_CHECKING:
    from trio_socketcluster.transport.frames import Message


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
    reads: list[list[Message]] = field(default_factory=list)
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
    out.at_boundary = t.reader.at_frame_boundary
    out.written = bytes(stream.written)
    return out


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


@pytest.mark.parametrize("stream", STREAMS)
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
    assert not t.reader.used_wsproto


async def test_pings_are_answered_only_while_open() -> None:
    """A ping in the bytes read while our close is on its way gets no pong."""
    stream = _Script([frame(9, b"late", mask=b"abcd") + frame(8, b"\x03\xe8", mask=b"abcd")])
    t = WsprotoTransport(stream, _REQUEST)
    with trio.fail_after(5):
        await t.close(4001, "bye")
        with pytest.raises(TransportClosed) as info:
            await t.receive()
    assert (info.value.code, info.value.reason) == (4001, "bye")
    assert bytes(stream.written) == b"\x88\x05\x0f\xa1bye"  # our close, no pong


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
