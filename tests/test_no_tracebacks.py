"""No client input makes the server log a traceback, and client-caused warnings are rate-limited.

Hypothesis sends what a hostile or broken client could: text and binary frames, packets that
look valid but carry fields of random types, unknown and reserved events, batches, numbers
beyond any float, lone surrogates, random handshakes (a valid token, a forged one, garbage),
raw bytes after the upgrade (bad opcodes, reserved bits, huge lengths) and random HTTP
request heads. Everything goes through a real server (``Server.handle_stream`` over in-memory
streams, the same code a socket reaches). Every record the library logs is captured at DEBUG:
none may carry ``exc_info``, and every record above INFO must be a client warning
(``Server.warn_client``: marked with the ``client_warning`` field, at most one per cause per
minute with the count of those suppressed).
"""

from __future__ import annotations

import contextlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel
import trio.testing
from conftest import make_server
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from strategies import json_values
from wsclient import ClientFactory, RawClient, new_client

from trio_socketcluster import Hook, Server, ServerSocket
from trio_socketcluster.server.http import static_files

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pytest

LOGGER = "trio_socketcluster"
TOKEN = "@valid-token@"  # replaced by a token the server signed
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured() -> Iterator[list[logging.LogRecord]]:
    """Every record of the library's loggers, DEBUG included (lifecycle records too)."""
    logger = logging.getLogger(LOGGER)
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_no_traceback_and_only_client_warnings(records: list[logging.LogRecord]) -> None:
    for r in records:
        assert r.exc_info is None, (r.getMessage(), r.exc_info)
        if r.levelno > logging.INFO:
            assert isinstance(getattr(r, "client_warning", None), str), r.getMessage()


def fuzz_server(**options: Any) -> Server:
    """The echo server plus an async handler and pass-through middleware of every hook that
    sees client data: the paths a client can reach, none of which raises by itself."""
    server = make_server(**options)

    @server.handler("slow_echo")
    async def slow_echo(_s: ServerSocket, data: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return data

    for hook in Hook:
        server.add_middleware(hook, lambda _request: None)
    return server


# ------------------------------------------------------------------------------ strategies

SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
HUGE_NUMBERS = st.sampled_from(
    ["1" * 400, "-1" + "0" * 400, "1e400", "-1e400", "1e-400", str(2**64), "0.1e999999"]
)
EVENTS = st.sampled_from(
    ["echo", "slow_echo", "nohandler", "#handshake", "#subscribe", "#unsubscribe", "#publish",
     "#authenticate", "#removeAuthToken", "#disconnect", "#1", "#2", "connect", "#setAuthToken"]
)  # fmt: skip
CHANNEL_DATA = st.fixed_dictionaries(
    {},
    optional={
        "channel": st.text(max_size=8) | json_values(max_leaves=2) | SURROGATES,
        "data": json_values(max_leaves=4),
        "recover": json_values(max_leaves=3),
    },
)


def any_value() -> st.SearchStrategy[Any]:
    return json_values(max_leaves=6) | SURROGATES | CHANNEL_DATA | st.just({"authToken": "a.b.c"})


def packet_text(token: str) -> st.SearchStrategy[str]:
    """A packet as JSON text: valid-looking, with random types (and raw huge numbers)."""
    packet = st.fixed_dictionaries(
        {"event": EVENTS | st.text(max_size=6) | json_values(max_leaves=1) | SURROGATES},
        optional={
            "data": any_value() | st.just({"authToken": token}),
            "cid": st.integers(-(2**70), 2**70) | st.floats() | json_values(max_leaves=1),
            "rid": st.integers(-5, 5) | json_values(max_leaves=1),
        },
    )
    as_text = packet.map(json.dumps)  # json.dumps escapes lone surrogates as \udXXX
    with_huge = st.tuples(packet, HUGE_NUMBERS).map(
        lambda pn: json.dumps({**pn[0], "cid": 0}).replace('"cid": 0', f'"cid": {pn[1]}')
    )
    batch = st.lists(packet, max_size=4).map(json.dumps)
    return st.one_of(as_text, with_huge, batch)


def frames(token: str) -> st.SearchStrategy[str | bytes]:
    text = st.one_of(
        packet_text(token),
        json_values(max_leaves=10).map(json.dumps),
        st.text(max_size=30),
        st.sampled_from(["", "#1", "#2", "[", "{", "[]", "[[]]", "[" * 2000, '{"event":']),
    )
    binary = st.one_of(
        text.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=40),
    )
    return text | binary


def ws_frame_bytes() -> st.SearchStrategy[bytes]:
    """One raw WebSocket frame a client could send: random FIN/RSV bits, opcode, mask bit,
    declared length (7-bit, 16-bit or 64-bit forms) and payload (possibly short)."""

    def build(first: int, masked: bool, length: int, form: int, payload: bytes) -> bytes:
        second = 0x80 if masked else 0
        if form == 0:
            head = bytes([first, second | min(length, 125)])
        elif form == 1:
            head = bytes([first, second | 126]) + (length & 0xFFFF).to_bytes(2, "big")
        else:
            head = bytes([first, second | 127]) + (length % 2**64).to_bytes(8, "big")
        return head + (b"\0\0\0\0" if masked else b"") + payload

    return st.builds(
        build,
        st.integers(0, 255),
        st.booleans(),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2),
        st.binary(max_size=30),
    )


# ------------------------------------------------------------------------------ scenarios


async def run_connection(server: Server, script: Any) -> None:
    """Serve one in-memory connection while ``script(client)`` runs, then close the client
    and wait until the server's side has ended (so every record is in)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = new_client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_stream)
        try:
            await script(client)
        finally:
            await trio.aclose_forcefully(client.stream)


PROBE_CID = 999_999_999
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)


async def drain(client: RawClient) -> None:
    """Read until the probe's answer or the close: the server has handled every frame."""
    with trio.move_on_after(60):
        while True:
            try:
                message = await client.recv()
            except Exception:  # Closed, or a stream the server broke
                return
            if isinstance(message, str) and message.startswith(f'{{"rid":{PROBE_CID},'):
                return


@FUZZ
@given(data=st.data(), before=st.integers(0, 2), count=st.integers(1, 8))
def test_random_frames_never_log_a_traceback(data: st.DataObject, before: int, count: int) -> None:
    server = fuzz_server()
    sent = data.draw(st.lists(frames(TOKEN), min_size=before + count, max_size=before + count))

    async def script(client: RawClient) -> None:
        token, _claims = server.sign_token({"username": "ada"}, expires_in_s=60)

        def real(frame: str | bytes) -> str | bytes:  # the placeholder becomes a valid token
            if isinstance(frame, str):
                return frame.replace(TOKEN, token)
            return frame.replace(TOKEN.encode(), token.encode())

        await client.connect()
        with contextlib.suppress(*_BROKEN):  # the server may close the connection early
            for frame in sent[:before]:  # before the handshake: the first is the handshake
                await client.send(real(frame))
            handshake = {"event": "#handshake", "data": {"authToken": token}, "cid": 1}
            await client.send_json(handshake)
            for frame in sent[before:]:
                await client.send(real(frame))
            await client.send_json({"event": "echo", "data": "probe", "cid": PROBE_CID})
        await drain(client)

    with captured() as records:
        trio.run(run_connection, server, script, clock=trio.testing.MockClock(autojump_threshold=0))
    assert_no_traceback_and_only_client_warnings(records)


@FUZZ
@given(raw=st.lists(ws_frame_bytes(), min_size=1, max_size=4), handshake=st.booleans())
def test_random_websocket_frames_never_log_a_traceback(raw: list[bytes], handshake: bool) -> None:
    server = fuzz_server()

    async def script(client: RawClient) -> None:
        await client.connect()
        if handshake:
            await client.handshake()
        with contextlib.suppress(*_BROKEN):  # the server closes at the first bad frame
            for frame in raw:
                await client.send_raw(frame)
            await client.send_json({"event": "echo", "data": "probe", "cid": PROBE_CID})
        await drain(client)

    with captured() as records:
        trio.run(run_connection, server, script, clock=trio.testing.MockClock(autojump_threshold=0))
    assert_no_traceback_and_only_client_warnings(records)


HEADER_NAMES = st.sampled_from(
    ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin",
     "Content-Length", "Transfer-Encoding", "X-Forwarded-For", "Cookie"]
) | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)  # fmt: skip
HEADER_VALUES = st.sampled_from(
    ["websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ==", "-1", "99999999999999999999",
     "chunked", "http://evil", ""]
) | st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=12)  # fmt: skip


@FUZZ
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "G\x00T"]),
    target=st.sampled_from(
        ["/socketcluster/", "/", "/metrics", "/healthz", "/readyz", "*", "/%00", "/%2e%2e/x"]
    )
    | st.text(st.characters(min_codepoint=33, max_codepoint=255), max_size=20).map("/".__add__),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", ""]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    body=st.binary(max_size=40),
)
@example(method="GET", target="/%00", version="HTTP/1.1", headers=[], body=b"")
@example(method="HEAD", target="/" + "x" * 5000, version="HTTP/1.1", headers=[], body=b"")
def test_random_http_requests_never_log_a_traceback(
    method: str, target: str, version: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    server = fuzz_server(metrics=True)
    server.http_handler = static_files(Path(__file__).parent / "docs")  # plain HTTP goes here
    head = f"{method} {target} {version}\r\nHost: x\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    request = head.encode("latin-1") + b"\r\n" + body

    async def scenario() -> None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_stream)
            await client_stream.send_all(request)
            with trio.move_on_after(30):
                while await client_stream.receive_some(65536):
                    pass
            await trio.aclose_forcefully(client_stream)

    with captured() as records:
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert_no_traceback_and_only_client_warnings(records)


# ------------------------------------------------------------------------------ rate limit


async def test_client_warnings_are_limited_per_cause_and_count_the_rest(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    server = make_server(ping_interval_s=1000, ping_timeout_s=2000)  # the test sleeps a minute
    client = await connect(server)
    await client.handshake()
    surrogate = '{"event":"echo","data":"\\ud800","cid":%d}'
    publish = '{"event":"#publish","data":{"channel":5},"cid":%d}'

    async def burst(first_cid: int, n: int) -> None:
        for i in range(n):
            await client.send(surrogate % (first_cid + 2 * i))
            await client.send(publish % (first_cid + 2 * i + 1))
        for _ in range(2 * n):
            assert "error" in await client.recv_json()

    def client_warnings() -> list[tuple[str, int]]:
        return [
            (r.client_warning, r.suppressed)  # type: ignore[attr-defined]
            for r in caplog.records
            if hasattr(r, "client_warning")
        ]

    await burst(10, 25)
    # One line per cause; nothing suppressed before it.
    assert sorted(client_warnings()) == [("lone surrogate", 0), ("malformed publish", 0)]
    await trio.sleep(30)
    await burst(100, 5)
    assert len(client_warnings()) == 2  # still within the minute
    await trio.sleep(31)  # the minute since the first lines is over
    await burst(200, 3)
    # One more line per cause, saying how many were not logged (24 + 5 each).
    assert sorted(client_warnings())[1::2] == [("lone surrogate", 29), ("malformed publish", 29)]
    texts = [r.getMessage() for r in caplog.records if getattr(r, "suppressed", 0)]
    assert len(texts) == 2
    assert all("(29 more like it in the last minute not logged)" in t for t in texts)
    assert not any(r.exc_info for r in caplog.records)
