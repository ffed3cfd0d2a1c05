"""The HTTP half of a WebSocket server connection, without I/O: the request head in, the
``HandshakeRequest`` (with the body of a plain request, up to ``MAX_BODY_BYTES``, else 413)
and the response bytes out.

* ``HeadReader`` turns the bytes of the first reads into one ``RequestHead``. A plain request
  that arrives whole in the first read is parsed by ``parse_fast_head`` (a subset of what h11
  accepts, parsed to the same values); anything else goes to h11, which sees every byte.
* ``handshake_request`` builds what the upgrade check and the middleware see;
  ``is_upgrade`` tells a WebSocket upgrade from a plain HTTP request; ``refusal`` applies the
  rules every upgrade must pass (method, path, HTTP version, WebSocket version and key) and
  names what is wrong in a short text body (a wrong path names the right one).
* ``accept_response`` and ``http_response`` are the bytes to write back.

``transport.ws.accept_websocket`` drives these over a trio stream.

Pure: no trio, no sockets, no clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from http import HTTPStatus

import h11
from wsproto.utilities import generate_accept_token

from .base import MAX_BODY_BYTES, HandshakeRequest, Rejection

__all__ = [
    "MAX_HEAD_BYTES",
    "HeadReader",
    "Refused",
    "RequestHead",
    "accept_response",
    "handshake_request",
    "http_response",
    "is_upgrade",
    "parse_fast_head",
    "refusal",
]


class Refused(Exception):
    """The request cannot be upgraded: answer with ``rejection`` and close (``head``: the
    request was a HEAD, so the answer carries no body)."""

    def __init__(self, rejection: Rejection, *, head: bool = False) -> None:
        super().__init__(rejection.status, rejection.body)
        self.rejection = rejection
        self.head = head


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The parts of an HTTP request head that the upgrade looks at."""

    method: bytes
    target: str
    version: bytes
    headers: tuple[tuple[str, str], ...]
    """Names lower-cased, values without surrounding blanks, in request order."""
    trailing: bytes
    """What the client sent after the head (its first frames)."""
    body: bytes = b""
    """The body of a plain request (at most ``MAX_BODY_BYTES``)."""


#: What the fast path accepts of a request head: a subset of what h11 accepts (a ``GET``,
#: HTTP/1.1, printable target, header lines without folding or control characters), parsed
#: to the same values. Anything else goes to h11.
_FAST_HEAD = re.compile(
    rb"GET [\x21-\x7e]+ HTTP/1\.1\r\n"
    rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[ \t]*"
    rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?[ \t]*\r\n)*"
    rb"\r\n"
)
#: h11's limit on an incomplete request head.
MAX_HEAD_BYTES = 16 * 1024

#: Parsed header lines seen before (``Host: ...``, ``Upgrade: websocket``...), so that the
#: connections of one client share one ``(name, value)`` pair per line instead of holding a
#: copy each (about 1 KB per connection). Bounded: emptied when it reaches the limit.
_HEADER_PAIRS: dict[str, tuple[str, str]] = {}
_HEADER_PAIRS_MAX = 1024

_MALFORMED = Rejection(status=400, body="Bad Request: malformed HTTP request")
_TOO_LARGE = Rejection(
    status=413, body=f"Content Too Large: a request body may hold {MAX_BODY_BYTES} bytes"
)


def parse_fast_head(data: bytes | bytearray) -> RequestHead | None:
    """Parse a whole, plain upgrade request head; ``None`` leaves it to h11."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0 or _FAST_HEAD.fullmatch(data, 0, end + 4) is None:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    headers = []
    hosts = 0
    pairs = _HEADER_PAIRS
    for line in lines[1:]:
        pair = pairs.get(line)
        if pair is None:
            name, _, value = line.partition(":")
            pair = (name.lower(), value.strip(" \t"))
            if pair[0] != "sec-websocket-key":  # the one header that differs every time
                if len(pairs) >= _HEADER_PAIRS_MAX:
                    pairs.clear()
                pairs[line] = pair
        name = pair[0]
        if name == "host":
            hosts += 1
        elif name == "content-length" or name == "transfer-encoding":
            return None  # a body: h11 frames it
        headers.append(pair)
    if hosts != 1:
        return None  # h11 refuses it (400)
    return RequestHead(b"GET", lines[0][4:-9], b"1.1", tuple(headers), bytes(data[end + 4 :]))


class HeadReader:
    """Bytes in, one request head out (see the module docstring).

    ``feed`` returns the ``RequestHead`` once it is complete (with the request's body, of at
    most ``MAX_BODY_BYTES``), ``None`` while more bytes are needed, and raises ``Refused``:
    400 on malformed HTTP, 413 for a larger body. The end of the stream before a whole request
    is the caller's to notice: nothing to answer.
    """

    __slots__ = ("_body", "_h11", "_request")

    def __init__(self) -> None:
        self._h11: h11.Connection | None = None
        self._request: h11.Request | None = None
        self._body = bytearray()

    def feed(self, data: bytes | bytearray) -> RequestHead | None:
        h = self._h11
        if h is None:
            head = parse_fast_head(data)
            if head is not None:
                return head
            h = self._h11 = h11.Connection(h11.SERVER)
        h.receive_data(bytes(data))
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                raise Refused(_MALFORMED) from None
            if event is h11.NEED_DATA:
                return None  # more of the head, or of the body
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY_BYTES:
                    raise Refused(_TOO_LARGE)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                request = self._request
                assert request is not None
                return RequestHead(
                    request.method,
                    request.target.decode("latin-1"),
                    request.http_version,
                    tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers),
                    bytes(h.trailing_data[0]),
                    bytes(self._body),
                )
            elif isinstance(event, h11.ConnectionClosed):  # (never fed EOF: the caller sees it)
                return None


def handshake_request(
    head: RequestHead, *, path: str, remote_address: tuple[str, int] | None
) -> HandshakeRequest:
    """What the upgrade check sees of ``head``; a request path equal to ``path`` is ``path``
    itself (the configured string, not one copy per connection)."""
    req_path, _, query = head.target.partition("?")
    if req_path == path:
        req_path = path
    return HandshakeRequest(
        path=req_path,
        query=query,
        headers=head.headers,
        remote_address=remote_address,
        method=head.method.decode("latin-1"),
        body=head.body,
    )


def is_upgrade(request: HandshakeRequest) -> bool:
    """True if ``request`` asks for a WebSocket (``Upgrade: websocket``, ``Connection:
    upgrade``); the others are plain HTTP requests."""
    upgrade = request.header("upgrade") or ""
    connection = request.header("connection") or ""
    return upgrade.strip().lower() == "websocket" and "upgrade" in {
        t.strip().lower() for t in connection.split(",")
    }


def _valid_key(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


_VERSION_13 = (("Sec-WebSocket-Version", "13"),)


def refusal(head: RequestHead, request: HandshakeRequest, *, path: str) -> Rejection | None:
    """Why the upgrade ``head`` asks for cannot be accepted at ``path`` (``None``: it can)."""
    if head.method != b"GET":
        return Rejection(
            status=405,
            body="Method Not Allowed: a WebSocket upgrade is a GET request",
            headers=(("Allow", "GET"),),
        )
    if request.path != path:
        return Rejection(status=400, body=f"Not a SocketCluster endpoint: connect to {path}")
    if head.version != b"1.1":
        return Rejection(status=400, body="Bad Request: a WebSocket upgrade needs HTTP/1.1")
    if request.header("sec-websocket-version") != "13":
        return Rejection(
            status=400, body="Bad Request: Sec-WebSocket-Version must be 13", headers=_VERSION_13
        )
    if not _valid_key(request.header("sec-websocket-key")):
        return Rejection(
            status=400,
            body="Bad Request: Sec-WebSocket-Key must be 16 bytes in base64",
            headers=_VERSION_13,
        )
    return None


def accept_response(request: HandshakeRequest) -> bytes:
    """The ``101 Switching Protocols`` answer to an upgrade that ``refusal`` let through."""
    key = request.header("sec-websocket-key")
    assert key is not None
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode("ascii")) + b"\r\n\r\n"
    )


def http_response(rejection: Rejection, *, head: bool = False) -> bytes:
    """``rejection`` as a whole HTTP/1.1 response that closes the connection (``text/plain``
    unless its headers say otherwise; header lines with CR or LF are dropped).

    ``head``: the answer to a HEAD request, the same status and headers (``Content-Length``
    included) without the body (RFC 9110 §9.3.2)."""
    body = rejection.body.encode("utf-8")
    try:
        phrase = HTTPStatus(rejection.status).phrase
    except ValueError:
        phrase = ""
    names = {k.lower() for k, _ in rejection.headers}
    lines = [f"HTTP/1.1 {rejection.status} {phrase}"]
    if "content-type" not in names:
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    for k, v in rejection.headers:
        if k.lower() in ("content-length", "connection") or any(c in k + v for c in "\r\n"):
            continue
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace") + (
        b"" if head else body
    )
