"""``transport.upgrade``: the pure HTTP half of the upgrade, without trio or sockets.

The request-head fast path must parse what it takes exactly as h11 does, and leave everything
unusual to h11; ``HeadReader`` gives the same head however the bytes are cut; ``refusal``
names what is wrong in every refusal (a wrong path names the right one).
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_socketcluster.transport.base import HandshakeRequest, Rejection
from trio_socketcluster.transport.upgrade import (
    HeadReader,
    Refused,
    RequestHead,
    accept_response,
    handshake_request,
    http_response,
    is_upgrade,
    parse_fast_head,
    refusal,
)

_BROWSER_HEAD = (
    b"GET /socketcluster/?x=1 HTTP/1.1\r\nHost: localhost:8000\r\nConnection: Upgrade\r\n"
    b"Pragma: no-cache\r\nUpgrade: websocket\r\nOrigin: http://localhost:8000\r\n"
    b"Sec-WebSocket-Version: 13\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def _h11_head(data: bytes) -> RequestHead | None:
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
    return RequestHead(
        event.method,
        event.target.decode("latin-1"),
        event.http_version,
        tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
        bytes(h.trailing_data[0]),
    )


def _parts(head: RequestHead | None) -> tuple[object, ...] | None:
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
    fast = parse_fast_head(data)
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
    fast = parse_fast_head(data)
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
    assert parse_fast_head(data) is None


# --------------------------------------------------------------------------- HeadReader


@settings(max_examples=300, deadline=None)
@given(request_heads(), st.lists(st.integers(1, 400), max_size=6))
def test_head_reader_agrees_with_h11_however_cut(data: bytes, cuts: list[int]) -> None:
    """Fed in pieces, the reader gives h11's head, or refuses what h11 refuses."""
    reader = HeadReader()
    pos = 0
    got: RequestHead | None = None
    refused = False
    for size in [*cuts, len(data)]:
        piece = data[pos : pos + size]
        pos += size
        if not piece:
            continue
        try:
            got = reader.feed(piece)
        except Refused as exc:
            assert exc.rejection.status == 400  # noqa: PT017 (refused at some cut: loop ends)
            refused = True
            break
        if got is not None:
            break
    if got is not None:
        assert _parts(got)[:4] == _parts(_h11_head(data))[:4]  # type: ignore[index]
    elif not refused:
        assert pos >= len(data)  # it waited for more: the head is incomplete


def test_head_reader_waits_for_the_whole_head() -> None:
    reader = HeadReader()
    assert reader.feed(_BROWSER_HEAD[:40]) is None
    assert reader.feed(_BROWSER_HEAD[40:-1]) is None
    head = reader.feed(_BROWSER_HEAD[-1:] + b"\x81\x80abcd")
    assert head is not None
    assert head.target == "/socketcluster/?x=1"
    assert head.trailing == b"\x81\x80abcd"


def test_head_reader_refuses_malformed_http() -> None:
    with pytest.raises(Refused) as info:
        HeadReader().feed(b"NONSENSE\r\n\r\n")
    assert info.value.rejection == Rejection(status=400, body="Bad Request: malformed HTTP request")


# --------------------------------------------------------------------------- the rules


def _request(head: RequestHead, path: str = "/socketcluster/") -> HandshakeRequest:
    return handshake_request(head, path=path, remote_address=("127.0.0.1", 5000))


def test_handshake_request_shares_the_configured_path() -> None:
    path = "".join(["/socket", "cluster/"])  # a string of its own
    head = parse_fast_head(_BROWSER_HEAD)
    assert head is not None
    req = _request(head, path)
    assert req.path is path
    assert req.query == "x=1"
    assert req.remote_address == ("127.0.0.1", 5000)
    assert req.header("ORIGIN") == "http://localhost:8000"
    assert is_upgrade(req)


def test_the_browser_upgrade_is_accepted() -> None:
    head = parse_fast_head(_BROWSER_HEAD)
    assert head is not None
    req = _request(head)
    assert refusal(head, req, path="/socketcluster/") is None
    assert accept_response(req) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"  # RFC 6455's example
    )


@pytest.mark.parametrize("path", ["/socketcluster/", "/ws/"])
@pytest.mark.parametrize("target", [b"/socketcluster", b"/other/", b"/socketcluster/x", b"/"])
def test_a_wrong_path_names_the_right_one(path: str, target: bytes) -> None:
    head = parse_fast_head(_BROWSER_HEAD.replace(b"/socketcluster/?x=1", target))
    assert head is not None
    if target.decode() == path:
        return
    rejection = refusal(head, _request(head, path), path=path)
    assert rejection == Rejection(
        status=400, body=f"Not a SocketCluster endpoint: connect to {path}"
    )


@pytest.mark.parametrize(
    ("change", "status", "body"),
    [
        ((b"GET", b"POST"), 405, "Method Not Allowed: a WebSocket upgrade is a GET request"),
        ((b"HTTP/1.1", b"HTTP/1.0"), 400, "Bad Request: a WebSocket upgrade needs HTTP/1.1"),
        ((b"Version: 13", b"Version: 8"), 400, "Bad Request: Sec-WebSocket-Version must be 13"),
        (
            (b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZQ=="),
            400,
            "Bad Request: Sec-WebSocket-Key must be 16 bytes in base64",
        ),
        (
            (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
            400,
            "Bad Request: Sec-WebSocket-Key must be 16 bytes in base64",
        ),
    ],
)
def test_every_refusal_says_why(change: tuple[bytes, bytes], status: int, body: str) -> None:
    data = _BROWSER_HEAD.replace(*change)
    head = parse_fast_head(data) or _h11_head(data)
    assert head is not None
    rejection = refusal(head, _request(head), path="/socketcluster/")
    assert rejection is not None
    assert (rejection.status, rejection.body) == (status, body)


def test_plain_requests_are_not_upgrades() -> None:
    head = parse_fast_head(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert head is not None
    assert not is_upgrade(_request(head))


def test_http_response() -> None:
    response = http_response(
        Rejection(status=403, body="né", headers=(("X-A", "1"), ("Bad", "a\r\nInjected: 1")))
    )
    assert response == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 3\r\nConnection: close\r\nX-A: 1\r\n\r\nn\xc3\xa9"
    )
