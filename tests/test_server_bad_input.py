"""What the server does with input a stock client never sends.

Malformed frames and wrong field types are answered or ignored and the connection goes on;
protocol violations close with the documented codes (4008, 4009, 1009, 4005); a client that
stops reading is closed with 4100 without hurting other subscribers; connections that never
handshake leak nothing. Hypothesis sends random JSON values and random text after the
handshake: the connection never dies and a following echo still works.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from conftest import make_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import json_text, json_values
from wsclient import ClientFactory, Closed, RawClient, new_client

from trio_socketcluster import Hook, Server, ServerSocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

PROBE_CID = 987_654_321


async def assert_alive(client: RawClient, cid: int = PROBE_CID) -> None:
    """The connection still answers an invoke (other packets are collected in ``others``)."""
    with trio.fail_after(10):
        assert await client.invoke("echo", "alive", cid=cid) == {"rid": cid, "data": "alive"}


async def assert_silent_then_alive(client: RawClient) -> None:
    before = len(client.others)
    await assert_alive(client)
    assert client.others[before:] == []


class Connections:
    """Server connections over in-memory streams; knows when each one's task has ended."""

    def __init__(self, nursery: trio.Nursery, server: Server) -> None:
        self.nursery = nursery
        self.server = server
        self.running = 0
        self.ended: dict[RawClient, trio.Event] = {}

    async def _serve(self, stream: trio.abc.Stream, ended: trio.Event) -> None:
        self.running += 1
        try:
            await self.server.handle_stream(stream)
        finally:
            self.running -= 1
            ended.set()

    async def open(
        self,
        pair: Callable[[], tuple[Any, Any]] = trio.testing.memory_stream_pair,
        *,
        handshake: bool = True,
    ) -> RawClient:
        client_stream, server_stream = pair()
        client = new_client(client_stream)
        ended = self.ended[client] = trio.Event()
        self.nursery.start_soon(self._serve, server_stream, ended)
        await client.connect()
        if handshake:
            await client.handshake()
        return client

    async def wait_all(self) -> None:
        for ended in self.ended.values():
            await ended.wait()


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Connections]:
    async with trio.open_nursery() as nursery:
        conns = Connections(nursery, server)
        yield conns
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------- malformed / wrong types

SILENT_FRAMES = [
    "not json",
    "{",
    "[1,2",
    "#3",
    "null",
    "42",
    '"a string"',
    "[]",
    '[1, null, "x"]',
    '{"event": 5, "cid": 2}',
    '{"event": null, "cid": 2}',
    '{"event": ["echo"], "cid": 2}',
    '{"event": "echo", "cid": "abc", "data": 1}',  # non-integer cid: a transmit
    '{"event": "echo", "cid": true, "data": 1}',
    '{"event": "echo", "cid": null, "data": 1}',
    '{"event": "nohandler", "data": 1}',
    '{"rid": "x", "data": 1}',
    '{"rid": 424242, "data": 1}',  # nobody waits for it
    '{"rid": 1.5}',
    '{"event": "#removeAuthToken", "data": 5, "cid": 2}',  # never answered
    '{"event": "#disconnect", "data": "weird", "cid": 2}',  # recorded only
    '{"event": "#disconnect", "data": {"code": "x"}}',
    '{"event": "#unsubscribe", "data": "never-subscribed"}',  # transmit form
    '{"event": "#publish", "data": {"channel": 5}}',
    '{"event": "echo", "data": NaN, "cid": 2}',  # not JSON: raw
    '\ufeff{"event": "echo", "cid": 2}',  # a BOM is not whitespace: raw
]


@pytest.mark.parametrize("frame", SILENT_FRAMES)
async def test_frames_that_are_ignored(connect: ClientFactory, frame: str) -> None:
    client = await connect(make_server())
    await client.handshake()
    await client.send(frame)
    await assert_silent_then_alive(client)


def _err(name: str, message: str | None = None) -> dict[str, Any]:
    return {"name": name} if message is None else {"name": name, "message": message}


ANSWERED = [
    ({"event": "nohandler", "cid": 2}, _err("NoHandlerError", "No handler for event 'nohandler'")),
    ({"event": "", "cid": 2}, _err("NoHandlerError", "No handler for event ''")),
    (
        {"event": "#subscribe", "data": {"channel": 123}, "cid": 2},
        _err("InvalidActionError", "Subscribe channel name was malformatted"),
    ),
    (
        {"event": "#subscribe", "data": 123, "cid": 2},
        _err("InvalidActionError", "Subscribe channel name was malformatted"),
    ),
    (
        {"event": "#subscribe", "data": None, "cid": 2},
        _err("InvalidActionError", "Subscribe channel name was malformatted"),
    ),
    (
        {"event": "#subscribe", "data": {"channel": ""}, "cid": 2},
        _err("InvalidActionError", "Cannot subscribe to a channel with an empty name"),
    ),
    (
        {"event": "#subscribe", "data": "", "cid": 2},
        _err("InvalidActionError", "Cannot subscribe to a channel with an empty name"),
    ),
    (
        {"event": "#publish", "data": {"channel": "", "data": 1}, "cid": 2},
        _err("InvalidActionError", "Cannot publish to a channel with an empty name"),
    ),
    (
        {"event": "#subscribe", "data": [1], "cid": 2},
        _err("InvalidActionError", "Subscribe channel name was malformatted"),
    ),
    (
        {"event": "#unsubscribe", "data": {"channel": "x"}, "cid": 2},
        _err("InvalidActionError", "Unsubscribe channel name was malformatted"),
    ),
    (
        {"event": "#unsubscribe", "data": None, "cid": 2},
        _err("InvalidActionError", "Unsubscribe channel name was malformatted"),
    ),
    (
        {"event": "#publish", "data": {"channel": [1], "data": 1}, "cid": 2},
        _err("InvalidActionError", "Publish channel name was malformatted"),
    ),
    (
        {"event": "#publish", "data": None, "cid": 2},
        _err("InvalidActionError", "Publish channel name was malformatted"),
    ),
    (
        {"event": "#publish", "data": "chan", "cid": 2},
        _err("InvalidActionError", "Publish channel name was malformatted"),
    ),
    (
        {"event": "#handshake", "data": {}, "cid": 2},
        _err("InvalidActionError", "The handshake was already done"),
    ),
]


@pytest.mark.parametrize(("packet", "error"), ANSWERED)
async def test_wrong_types_are_answered_with_errors(
    connect: ClientFactory, packet: dict[str, Any], error: dict[str, Any]
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake()
    await client.send_json(packet)
    assert await client.recv_json() == {"rid": 2, "error": error}
    await assert_silent_then_alive(client)
    assert server.broker.channels() == []


@pytest.mark.parametrize("token", [{"x": 1}, [1], 1.5, True])
async def test_authenticate_with_wrong_types(connect: ClientFactory, token: Any) -> None:
    client = await connect(make_server())
    await client.handshake()
    reply = await client.invoke("#authenticate", token, cid=2)
    assert reply["error"]["name"] == "AuthTokenError"
    assert reply["data"]["isAuthenticated"] is False
    await assert_alive(client)


async def test_handshake_data_of_any_type(connect: ClientFactory) -> None:
    for data in [None, 5, "x", [1], {"authToken": 5}, {"authToken": {"a": 1}}, {"authToken": ""}]:
        server = make_server()
        client = await connect(server)
        await client.send_json({"event": "#handshake", "data": data, "cid": 1})
        reply = await client.recv_json()
        if reply.get("event") == "#removeAuthToken":  # a token of the wrong type is bad
            reply = await client.recv_json()
        assert reply["rid"] == 1
        assert reply["data"]["isAuthenticated"] is False
        assert ("authError" in reply["data"]) == (isinstance(data, dict))
        await assert_alive(client)


async def test_unencodable_reply_becomes_an_unknown_error_with_a_message(
    connect: ClientFactory,
) -> None:
    server = make_server()

    @server.handler("opaque")
    def opaque(_s: ServerSocket, _data: Any) -> Any:
        return object()

    client = await connect(server)
    await client.handshake()
    reply = await client.invoke("opaque", cid=2)
    assert reply == {
        "rid": 2,
        "error": _err("UnknownError", "The server's response has no JSON form"),
    }
    await assert_silent_then_alive(client)


SURROGATE_ERROR = _err(
    "InvalidMessageError",
    "The message contains a lone surrogate (a \\ud800-\\udfff escape without its pair), "
    "which has no UTF-8 form",
)

SURROGATE_PACKETS = [
    '{"event":"echo","data":"\\ud800","cid":2}',
    '{"event":"\\udfff","cid":2}',
    '{"event":"#publish","data":{"channel":"c","data":"\\ud800"},"cid":2}',
    '{"event":"#subscribe","data":{"channel":"\\ud800"},"cid":2}',
    '{"event":"#subscribe","data":"\\udbff","cid":2}',
    '{"event":"#authenticate","data":"\\ud800","cid":2}',
    '{"event":"echo","data":{"\\ud800":1},"cid":2}',  # a key
    '[{"event":"echo","data":["\\ud800"],"cid":2}]',  # in a batch
]


@pytest.mark.parametrize("packet", SURROGATE_PACKETS)
async def test_lone_surrogates_are_refused_before_any_handler(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture, packet: str
) -> None:
    server = make_server()
    seen: list[Any] = []
    server.add_handler("\udfff", lambda _s, data: seen.append(data))
    server.add_middleware(Hook.PUBLISH_IN, lambda request: seen.append(request))
    server.add_middleware(Hook.SUBSCRIBE, lambda request: seen.append(request))
    client = await connect(server)
    await client.handshake()
    await client.send(packet)
    assert await client.recv_json() == {"rid": 2, "error": SURROGATE_ERROR}
    await assert_silent_then_alive(client)
    assert seen == []
    assert server.broker.channels() == []
    assert not any(r.exc_info for r in caplog.records)  # no traceback


async def test_lone_surrogate_warnings_are_rate_limited(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake()
    for cid in range(2, 52):
        await client.send(f'{{"event":"echo","data":"\\ud800","cid":{cid}}}')
        await client.send('{"event":"echo","data":"\\ud800"}')  # a transmit: not answered
    for cid in range(2, 52):
        assert await client.recv_json() == {"rid": cid, "error": SURROGATE_ERROR}
    await assert_silent_then_alive(client)
    warnings = [r for r in caplog.records if "lone surrogate" in r.getMessage()]
    assert len(warnings) == 1
    assert not warnings[0].exc_info


async def test_a_lone_surrogate_in_the_handshake_closes_4008(connect: ClientFactory) -> None:
    client = await connect(make_server())
    await client.send('{"event":"#handshake","data":{"authToken":"\\ud800"},"cid":1}')
    closed = await client.expect_close()
    assert closed.code == 4008
    assert closed.reason == "Handshake request was malformatted"


@pytest.mark.parametrize(
    ("cid_text", "rid"),
    [
        ("2.5", 2.5),
        ("7.0", 7.0),
        ("-3", -3),
        ("1e300", 1e300),
        ("123456789012345678901234567890", 1.2345678901234568e29),  # read as JS reads it
        ("18446744073709551616", 18446744073709551616),  # 2**64
    ],
)
async def test_any_finite_numeric_cid_is_answered_with_it(
    connect: ClientFactory, cid_text: str, rid: float
) -> None:
    """Protocol 2 servers answer any ``typeof cid === 'number'``; the rid echoes it."""
    client = await connect(make_server())
    await client.handshake()
    await client.send(f'{{"event":"echo","data":1,"cid":{cid_text}}}')
    reply = await client.recv_json()
    assert reply == {"rid": rid, "data": 1}
    await assert_silent_then_alive(client)


async def test_a_non_finite_cid_is_answered_with_a_null_rid_and_a_clear_error(
    connect: ClientFactory,
) -> None:
    client = await connect(make_server())
    await client.handshake()
    await client.send('{"event":"echo","data":1,"cid":1e400}')
    assert await client.recv_json() == {
        "rid": None,
        "error": _err(
            "InvalidMessageError", "The cid is not a finite number, so no response can name it"
        ),
    }
    await assert_silent_then_alive(client)


async def test_binary_frames_are_processed_like_text(connect: ClientFactory) -> None:
    client = await connect(make_server())
    await client.send(json.dumps({"event": "#handshake", "data": {}, "cid": 1}).encode())
    assert (await client.recv_json())["rid"] == 1
    await client.send(b'{"event":"echo","data":"bin","cid":2}')
    assert await client.recv_json() == {"rid": 2, "data": "bin"}
    await client.send(b'[{"event":"echo","data":1,"cid":3},{"event":"echo","data":2,"cid":4}]')
    assert [await client.recv_json(), await client.recv_json()] == [
        {"rid": 3, "data": 1},
        {"rid": 4, "data": 2},
    ]
    await client.send(b"")  # an empty binary frame is an empty message: a pong
    await assert_silent_then_alive(client)


async def test_binary_frames_that_are_not_utf8_are_ignored(connect: ClientFactory) -> None:
    """The reference keeps the socket: such a buffer is a raw message (never a packet)."""
    server = make_server()
    client = await connect(server)
    await client.handshake()
    await client.send(b'{"event":"echo","data":"\xff\xfe","cid":2}')
    await client.send(b"\x80")
    await assert_silent_then_alive(client)


async def test_a_text_frame_of_invalid_utf8_closes_1007_and_only_that_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Invalid UTF-8 in a *text* frame is a protocol violation (RFC 6455 §8.1): 1007, end to
    end; the other connections are untouched."""
    server = make_server()
    async with serving(server) as conns:
        other = await conns.open()
        client = await conns.open()
        payload = b'{"event":"echo","data":"\xff","cid":2}'
        # FIN + text opcode, masked with a zero key (the payload goes as is).
        await client.send_raw(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        closed = await client.expect_close()
        assert closed.code == 1007
        with trio.fail_after(10):
            await conns.ended[client].wait()
        await assert_alive(other)
        assert server.client_count == 1


async def test_oversized_frame_closes_1009(autojump_clock: trio.testing.MockClock) -> None:
    server = make_server(max_payload_bytes=1000)
    async with serving(server) as conns:
        other = await conns.open()
        client = await conns.open()
        await client.send_json({"event": "echo", "data": "x" * 900, "cid": 2})  # under the limit
        assert (await client.recv_json())["rid"] == 2
        await client.send_json({"event": "echo", "data": "x" * 2000, "cid": 3})
        closed = await client.expect_close()
        assert closed.code == 1009
        with trio.fail_after(10):
            await conns.ended[client].wait()
        await assert_alive(other)
        assert server.client_count == 1


async def test_oversized_binary_frame_closes_1009(connect: ClientFactory) -> None:
    client = await connect(make_server(max_payload_bytes=1000))
    await client.handshake()
    await client.send(b"[" + b" " * 5000 + b"]")
    assert (await client.expect_close()).code == 1009


@pytest.mark.parametrize("depth", [2_000, 100_000])
async def test_deeply_nested_json_is_ignored(connect: ClientFactory, depth: int) -> None:
    client = await connect(make_server())
    await client.handshake()
    await client.send("[" * depth + "]" * depth)
    await client.send('{"event":"echo","cid":2,"data":' + "[" * depth + "]" * depth + "}")
    await client.send("[" * depth)
    await client.send('{"a":' * depth)
    await assert_silent_then_alive(client)


# ------------------------------------------------------------------- protocol violations


@pytest.mark.parametrize(
    "frame",
    [
        '{"event":"#subscribe","data":{"channel":"news"},"cid":1}',
        '{"event":"echo","data":1,"cid":1}',
        '{"event":"#publish","data":{"channel":"news","data":1}}',
        '{"rid":1}',
        "",
        "#2",
        "#1",
        "not json",
        "[]",  # an empty batch holds no packet: not a violation
    ],
)
async def test_events_before_the_handshake_close_4009(connect: ClientFactory, frame: str) -> None:
    server = make_server()
    client = await connect(server)
    await client.send(frame)
    if frame == "[]":
        await client.handshake()
        await assert_alive(client)
        return
    closed = await client.expect_close()
    assert closed.code == 4009
    assert server.client_count == 0
    assert server.broker.channels() == []


async def test_handshake_without_cid_closes_4008(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    await client.send_json({"event": "#handshake", "data": {}})
    # No reply, no #disconnect packet: only the close frame.
    with pytest.raises(Closed) as info:
        await client.recv()
    assert info.value.code == 4008
    assert server.client_count == 0


async def test_batch_with_a_violation_stops_there(connect: ClientFactory) -> None:
    client = await connect(make_server())
    await client.send_json(
        [{"event": "echo", "data": 1, "cid": 5}, {"event": "#handshake", "data": {}, "cid": 1}]
    )
    with pytest.raises(Closed) as info:
        await client.recv()
    assert info.value.code == 4009


async def test_second_handshake_is_refused_and_the_connection_stays(
    connect: ClientFactory,
) -> None:
    server = make_server()
    client = await connect(server)
    first = await client.handshake()
    socket_id = first["data"]["id"]
    reply = await client.invoke("#handshake", {"authToken": None}, cid=2)
    assert reply == {
        "rid": 2,
        "error": {"name": "InvalidActionError", "message": "The handshake was already done"},
    }
    await client.send_json({"event": "#handshake", "data": {}})  # transmit: nothing
    await assert_silent_then_alive(client)
    assert list(server.sockets) == [socket_id]


async def test_a_batch_of_1000_mixed_invokes(connect: ClientFactory) -> None:
    server = make_server()
    client = await connect(server)
    await client.handshake()
    batch: list[dict[str, Any]] = [{"event": "#subscribe", "data": "c", "cid": 1}]
    for i in range(2, 1001):
        if i % 100 == 0:
            batch.append({"event": "#publish", "data": {"channel": "c", "data": i}, "cid": i})
        else:
            batch.append({"event": "echo", "data": i, "cid": i})
    await client.send_json(batch)
    replies: dict[int, Any] = {}
    published: list[int] = []
    with trio.fail_after(10):
        while len(replies) < 1000 or len(published) < 10:
            packet = await client.recv_json()
            if "rid" in packet:
                replies[packet["rid"]] = packet
            else:
                published.append(packet["data"]["data"])
    assert replies[1] == {"rid": 1}
    assert all(replies[i] == {"rid": i, "data": i} for i in range(2, 1001) if i % 100)
    assert all(replies[i] == {"rid": i} for i in range(100, 1001, 100))
    assert published == list(range(100, 1001, 100))


# ---------------------------------------------------------------------- resource exhaustion


async def test_a_flood_of_connections_that_never_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = make_server(handshake_timeout_s=3)
    async with serving(server) as conns:
        start = trio.current_time()
        clients = [await conns.open(handshake=False) for _ in range(50)]
        assert conns.running == 50
        for client in clients:
            with trio.fail_after(10):
                packet = await client.recv_json(skip_pings=False)
            assert trio.current_time() - start == pytest.approx(3)
            assert packet["event"] == "#disconnect"
            assert packet["data"]["code"] == 4005
            closed = await client.expect_close()
            assert closed.code == 4005
        with trio.fail_after(10):
            await conns.wait_all()
        assert conns.running == 0
        assert server.client_count == 0
        assert server.broker.channels() == []


async def test_handshake_timeout_s14_style(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(handshake_timeout_s=1.5)
    client = await connect(server)
    start = trio.current_time()
    first = await client.recv()  # no ping before the handshake: the #disconnect comes first
    assert trio.current_time() - start == pytest.approx(1.5)
    packet = json.loads(first)
    assert packet["event"] == "#disconnect"
    assert packet["data"]["code"] == 4005
    with pytest.raises(Closed) as info:
        await client.recv()
    assert info.value.code == 4005


async def test_a_client_that_stops_reading_is_closed_4100(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = make_server(max_buffer_bytes=20_000, ping_interval_s=100, ping_timeout_s=200)
    disconnections: list[tuple[int, str]] = []
    server.on("disconnection")(lambda s, code, reason: disconnections.append((code, reason)))
    async with serving(server) as conns:
        slow = await conns.open(trio.testing.lockstep_stream_pair)
        fast = await conns.open()
        for i, client in enumerate((slow, fast)):
            assert await client.invoke("#subscribe", "news", cid=2 + i) == {"rid": 2 + i}
        assert server.broker.subscribers("news") == 2
        # ``slow`` stops reading: the server's writes block and publishes pile up.
        payload = "p" * 1000
        got: list[int] = []
        for i in range(100):
            server.publish("news", {"i": i, "p": payload})
            packet = await fast.recv_json()
            got.append(packet["data"]["data"]["i"])
        assert got == list(range(100))  # the other subscriber is unaffected
        with trio.fail_after(60):
            await conns.ended[slow].wait()
        assert conns.running == 1
        assert server.client_count == 1
        assert server.broker.subscribers("news") == 1
        # What the slow client finally reads ends with the 4100 close (or the stream ends).
        closed = await slow.expect_close()
        assert closed.code in (4100, 1006)  # the close frame could not be delivered either
        assert disconnections == [(4100, "Slow consumer")]
        await assert_alive(fast)


# ------------------------------------------------------------------------- random frames


def random_frames() -> st.SearchStrategy[str]:
    packets = st.fixed_dictionaries(
        {"event": st.sampled_from(["echo", "#subscribe", "#publish", "#unsubscribe",
                                   "#authenticate", "#removeAuthToken", "#handshake",
                                   "nohandler", "#disconnect"]) | json_text()},
        optional={"data": json_values(max_leaves=8),
                  "cid": st.integers(-5, 10**6) | json_values(max_leaves=1)},
    )  # fmt: skip
    return st.one_of(
        json_values(max_leaves=15).map(json.dumps),
        packets.map(json.dumps),
        st.lists(packets, max_size=5).map(json.dumps),
        json_text(max_size=40),
        st.sampled_from(["", "#1", "#2", "[", "{", "{}"]),
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(random_frames(), min_size=1, max_size=8))
def test_random_frames_never_kill_the_connection(frames: list[str]) -> None:
    async def scenario() -> None:
        server = make_server()
        async with serving(server) as conns:
            victim = await conns.open()
            bystander = await conns.open()
            for frame in frames:
                await victim.send(frame)
            await assert_alive(victim)
            await assert_alive(bystander)
            assert bystander.others == []
            assert server.client_count == 2

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
