"""The inbound half of RFC 6455 on a server, without I/O: bytes in, messages and events out.

``FrameReader.feed`` takes what one read from the network returned and gives back every
message that those bytes completed: text frames as ``str`` (invalid UTF-8 fails the
connection with 1007), binary frames as ``bytes`` (never decoded: what they mean is the
protocol layer's business). Beside the messages it notes

* control frames (``Ping``, ``Pong``) in ``controls``, in arrival order, for the caller to
  answer (``pong_frame``) and then clear;
* the end of the inbound stream in ``end``: the peer's close frame (``PeerClose``) or a
  protocol failure (``ProtocolFailure``: the close code and reason to fail the connection
  with: 1002 for a malformed frame, 1007 for invalid UTF-8 in text, 1009 for a message over
  ``max_message_bytes``). Messages completed before the end are returned; once ``end`` is set
  the reader is finished and ``feed`` ignores its input.

Two parsers, one result. The frame nearly every message arrives in (whole in the bytes fed
so far, final, masked, text or binary, no RSV bits, a 7- or 16-bit length within
``max_message_bytes``, and for text valid UTF-8) is parsed and unmasked here, at C speed
(big-int XOR; ``translate`` from 1 KiB). Every other frame (control frames, fragments, 64-bit
lengths, frames split across reads, anything invalid) is handed to a wsproto ``Connection``
whole, from its first byte to its last, so wsproto always resumes at a frame boundary and
reports errors with its own codes and reasons. The ``Connection`` is created on the first
such frame, so most connections never build one. ``fast_path=False`` sends every byte to
wsproto: the reference the tests hold the fast path to.

The outbound frames a server sends besides data (``pong_frame``, ``close_frame``) are built
here too, byte for byte as wsproto builds them.

Pure: no trio, no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.events import Ping as _WsPing
from wsproto.events import Pong as _WsPong

from ..protocol.rules import truncate_reason

__all__ = [
    "FrameReader",
    "Message",
    "PeerClose",
    "Ping",
    "Pong",
    "ProtocolFailure",
    "close_frame",
    "frame_size",
    "pong_frame",
    "unmask",
]

#: One inbound message: a text frame's ``str`` or a binary frame's ``bytes``.
Message = str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer pinged; the answer is ``pong_frame(payload)``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer ponged (unsolicited or not): nothing to answer."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerClose:
    """The peer's close frame: ``code`` 1005 when it carried none."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailure:
    """The peer broke the protocol: fail the connection with this close code and reason."""

    code: int
    reason: str


_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytearray:
    """``payload`` XOR the repeated 4-byte ``mask`` (``translate``: beats the big-int XOR of
    the fast path above about 1 KiB)."""
    data = bytearray(payload)
    for i in range(4):
        data[i::4] = data[i::4].translate(_XOR_TABLES[mask[i]])
    return data


def frame_size(head: bytes | bytearray) -> int | None:
    """The whole length of the frame ``head`` starts (header, mask and payload), or ``None``
    while ``head`` is too short to say."""
    if len(head) < 2:
        return None
    b1 = head[1]
    n = b1 & 0x7F
    mask = 4 if b1 & 0x80 else 0
    if n == 126:
        if len(head) < 4:
            return None
        return 4 + mask + int.from_bytes(head[2:4], "big")
    if n == 127:
        if len(head) < 10:
            return None
        return 10 + mask + int.from_bytes(head[2:10], "big")
    return 2 + mask + n


def _control_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n > 125:
        raise ValueError("a control frame's payload is at most 125 bytes")
    return bytes((0x80 | opcode, n)) + payload


def pong_frame(payload: bytes) -> bytes:
    """The (unmasked) pong that answers a ping carrying ``payload``."""
    return _control_frame(0xA, payload)


#: Codes that only report a close locally: wsproto sends 1000 in their place.
_LOCAL_ONLY_CODES = (1006, 1015)


def close_frame(code: int | None, reason: str = "") -> bytes:
    """Our (unmasked) close frame. ``None`` or 1005 ("no status") gives an empty close frame,
    the echo of a close that carried no code; the reason is cut to 123 UTF-8 bytes."""
    if code is None or code == 1005:
        return _control_frame(0x8, b"")
    if code in _LOCAL_ONLY_CODES:
        code = 1000
    return _control_frame(0x8, struct.pack("!H", code) + truncate_reason(reason).encode("utf-8"))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class FrameReader:
    """The inbound frames of one server-side WebSocket (see the module docstring)."""

    __slots__ = (
        "_byte_parts",
        "_conn",
        "_fast",
        "_fragmented",
        "_max_message_bytes",
        "_parts_bytes",
        "_rbuf",
        "_slow_head",
        "_slow_left",
        "_text_parts",
        "controls",
        "end",
    )

    def __init__(
        self, *, max_message_bytes: int = 16 * 2**20, fast_path: bool = True, buffered: bytes = b""
    ) -> None:
        """``buffered``: bytes already received (after the upgrade request), parsed by the
        next ``feed``."""
        self._max_message_bytes = max_message_bytes
        self._fast = fast_path
        self._conn: Connection | None = None  # created on the first frame the fast path skips
        #: Control frames seen since the caller last cleared the list.
        self.controls: list[Ping | Pong] = []
        #: The peer's close or a failure; once set, nothing more is parsed.
        self.end: PeerClose | ProtocolFailure | None = None

        self._rbuf = bytes(buffered)  # unparsed: a header held back for the next read
        self._slow_left = 0  # bytes wsproto still needs to finish the frame it is parsing
        self._slow_head: bytes | None = None  # that frame's header, while its length is unknown
        self._fragmented = False  # a fragmented message is in progress (in wsproto)

        # Reassembly of the inbound message in progress (frames that went through wsproto).
        self._text_parts: list[str] = []
        self._byte_parts = bytearray()
        self._parts_bytes = 0

    @property
    def at_frame_boundary(self) -> bool:
        """True when every byte fed so far belongs to a frame that was parsed whole."""
        return not (self._slow_left or self._slow_head or self._rbuf)

    @property
    def used_wsproto(self) -> bool:
        """True once a frame has gone to wsproto."""
        return self._conn is not None

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """Every message ``data`` (after any bytes held back) completes, in order.

        The fast path takes whole, final, masked text/binary frames (no RSV bits) with a 7- or
        16-bit length within ``max_message_bytes`` and, for text, valid UTF-8. Every other
        frame goes to wsproto from its first byte to its last, and nothing else does: wsproto
        always stands at a frame boundary when the fast path takes over again. Only the start
        of a header that may still turn out fast (at most 7 bytes) is held back.
        """
        out: list[Message] = []
        if self.end is not None:
            return out
        buf = self._rbuf + data if self._rbuf else data
        self._rbuf = b""
        if not self._fast:
            if buf:
                self._slow(buf, out)
            return out
        end = len(buf)
        pos = 0
        limit = self._max_message_bytes
        while pos < end and self.end is None:
            if self._slow_left:  # inside a frame that wsproto parses
                n = min(self._slow_left, end - pos)
                self._slow_left -= n
                self._slow(buf[pos : pos + n], out)
                pos += n
                continue
            head = self._slow_head
            if head is not None:  # wsproto's frame, whose length we have yet to learn
                size = frame_size(head + buf[pos : pos + 10])
                if size is None:
                    self._slow_head = head + buf[pos:end]
                    self._slow(buf[pos:end], out)
                    pos = end
                else:
                    self._slow_head = None
                    self._slow_left = size - len(head)
                continue
            b0 = buf[pos]
            if (b0 == 0x81 or b0 == 0x82) and not self._fragmented:
                if end - pos < 2:
                    break  # hold
                b1 = buf[pos + 1]
                n = b1 & 0x7F
                if b1 & 0x80 and n != 127:
                    if n < 126:
                        start = pos + 6
                    elif end - pos < 4:
                        break  # hold
                    else:
                        n = (buf[pos + 2] << 8) | buf[pos + 3]
                        start = pos + 8 if n > 125 else -1  # wsproto refuses 126 for <= 125
                    if start > end:
                        break  # hold: the rest of the header is still to come
                    stop = start + n
                    if start > 0 and stop <= end and n <= limit:
                        raw: bytes | bytearray = b""
                        if n:
                            mask = buf[start - 4 : start]
                            if n < 1024:
                                raw = (
                                    int.from_bytes(buf[start:stop], "little")
                                    ^ int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
                                ).to_bytes(n, "little")
                            else:
                                raw = unmask(buf[start:stop], mask)
                        if b0 == 0x81:
                            try:
                                out.append(raw.decode("utf-8"))
                                pos = stop
                                continue
                            except UnicodeDecodeError:
                                pass  # wsproto reports it, with its code and reason
                        else:
                            out.append(raw if type(raw) is bytes else bytes(raw))
                            pos = stop
                            continue
            # Not for the fast path: wsproto's, from this frame boundary to the next.
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                self._fragmented = not b0 & 0x80
            elif opcode == 0 and b0 & 0x80:
                self._fragmented = False
            size = frame_size(buf[pos : pos + 10])
            if size is None:
                self._slow_head = bytes(buf[pos:end])
                self._slow(buf[pos:end], out)
                pos = end
            else:
                self._slow_left = size
        if pos < end and self.end is None:
            self._rbuf = bytes(buf[pos:end])
        return out

    # ----------------------------------------------------------------- wsproto's frames

    def _slow(self, data: bytes | bytearray, out: list[Message]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = Connection(ConnectionType.SERVER)
        conn.receive_data(bytes(data))
        self._process_events(conn, out)

    def _process_events(self, conn: Connection, out: list[Message]) -> None:
        """Drain wsproto's events into messages and controls; note a close or failure."""
        for event in conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                if not self._add_data(event.data, event.message_finished, out):
                    return
            elif isinstance(event, _WsPing):
                self.controls.append(Ping(bytes(event.payload)))
            elif isinstance(event, _WsPong):
                self.controls.append(Pong(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                # wsproto reports its own parse failures as a CloseConnection too, staying
                # OPEN (it never sees our close frames); a real close frame moves it on.
                if conn.state is ConnectionState.OPEN:
                    self._finish(ProtocolFailure(int(event.code), event.reason or ""))
                else:
                    self._finish(PeerClose(int(event.code), event.reason or ""))
                return
        # Early size check on the frame being received (a private wsproto field; optional).
        decoder = getattr(getattr(conn, "_proto", None), "_frame_decoder", None)
        header = getattr(decoder, "header", None)
        if header is not None and not header.opcode.iscontrol():
            remaining = header.payload_len - getattr(decoder, "payload_consumed", 0)
            if self._parts_bytes + remaining > self._max_message_bytes:
                self._finish(ProtocolFailure(1009, "Message too big"))

    def _add_data(self, data: str | bytes | bytearray, finished: bool, out: list[Message]) -> bool:
        """Add one (partial) frame's payload; False if the connection must fail."""
        limit = self._max_message_bytes
        if isinstance(data, str):
            if finished and not self._parts_bytes:
                # The common case: a whole text message in one event.
                if len(data) * 4 > limit and _utf8_len(data) > limit:
                    return self._too_big()
                out.append(data)
                return True
            self._parts_bytes += _utf8_len(data)
            if self._parts_bytes > limit:
                return self._too_big()
            self._text_parts.append(data)
            if finished:
                out.append("".join(self._text_parts))
                self._text_parts = []
                self._parts_bytes = 0
            return True
        if finished and not self._parts_bytes:
            if len(data) > limit:
                return self._too_big()
            out.append(bytes(data))
            return True
        self._parts_bytes += len(data)
        if self._parts_bytes > limit:
            return self._too_big()
        self._byte_parts += data
        if finished:
            out.append(bytes(self._byte_parts))
            self._byte_parts = bytearray()
            self._parts_bytes = 0
        return True

    def _too_big(self) -> bool:
        self._finish(ProtocolFailure(1009, "Message too big"))
        return False

    def _finish(self, end: PeerClose | ProtocolFailure) -> None:
        self.end = end
        self._text_parts = []
        self._byte_parts = bytearray()
        self._parts_bytes = 0
