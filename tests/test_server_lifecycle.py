"""A connection's life: heartbeats, pong timeout, and how it ends.

* Heartbeats: every ``ping_interval_s`` both ``#1`` and ``''`` until the first pong, then only
  the detected kind (protocol 1 and 2); a fixed protocol pings only its own kind.
* No pong within ``ping_timeout_s``: close 4001 at exactly that time; events are not pongs.
* Structured concurrency: ``handle_stream`` returns (every connection task has ended) when the
  client closes, when ``disconnect()`` is called, when the transport breaks; cancelling
  ``serve`` (real TCP) closes every socket with 1001 within ``shutdown_timeout_s``; pending
  server invokes fail with ``BadConnectionError``; async handlers are cancelled; the broker
  forgets the socket's subscriptions.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from conftest import make_server
from wsclient import Closed, RawClient, new_client

from trio_socketcluster import BadConnectionError, Server, ServerSocket


class Served:
    """One client connected to ``server.handle_stream`` over memory streams."""

    def __init__(self, client: RawClient, ended: trio.Event) -> None:
        self.client = client
        self.ended = ended


async def serve_one(
    nursery: trio.Nursery,
    server: Server,
    *,
    handshake: bool = True,
    token: str | None = None,
    heartbeat: bool = False,
) -> Served:
    """One connection through ``handle_stream``; with ``heartbeat`` the server's background
    tasks run (``start_broker``: the server's heartbeat pings), else the socket's watcher
    pings."""
    if heartbeat:
        await server.start_broker(nursery)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    ended = trio.Event()

    async def run() -> None:
        try:
            await server.handle_stream(server_stream)
        finally:
            ended.set()

    nursery.start_soon(run)
    client = new_client(client_stream)
    await client.connect()
    if handshake:
        await client.handshake(token)
    return Served(client, ended)


def only_socket(server: Server) -> ServerSocket:
    [socket] = server.sockets.values()
    return socket


# ------------------------------------------------------------------------------ heartbeats


@pytest.fixture(params=[True, False], ids=["server-heartbeat", "watcher"])
def heartbeat(request: pytest.FixtureRequest) -> bool:
    """Who pings: the server's heartbeat task, or (without ``start_broker``) the watcher."""
    return bool(request.param)


async def pings_until(client: RawClient, n: int) -> list[tuple[float, str]]:
    """The next ``n`` pings with their arrival time (fails on anything else)."""
    got: list[tuple[float, str]] = []
    while len(got) < n:
        msg = await client.recv()
        assert msg in ("#1", ""), msg
        assert isinstance(msg, str)
        got.append((trio.current_time(), msg))
    return got


@pytest.mark.parametrize(("pong", "kind"), [("#2", "#1"), ("", "")])
async def test_both_pings_until_the_first_pong_then_one_kind(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    heartbeat: bool,
    pong: str,
    kind: str,
) -> None:
    server = make_server(ping_interval_s=5, ping_timeout_s=20)
    served = await serve_one(nursery, server, heartbeat=heartbeat)
    client = served.client
    t0 = trio.current_time()
    # The probe right after the reply, then one tick: both kinds each time.
    assert await pings_until(client, 4) == [
        (t0, "#1"),
        (t0, ""),
        (t0 + 5, "#1"),
        (t0 + 5, ""),
    ]
    await client.send(pong)
    assert await pings_until(client, 3) == [(t0 + 10, kind), (t0 + 15, kind), (t0 + 20, kind)]
    assert only_socket(server).protocol == (1 if pong == "#2" else 2)
    assert server.client_count == 1
    assert len(server.heartbeat) == (1 if heartbeat else 0)  # who pinged


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_fixed_protocol_pings_only_its_kind(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, heartbeat: bool, protocol: int
) -> None:
    server = make_server(ping_interval_s=5, ping_timeout_s=20, protocol=protocol)
    client = (await serve_one(nursery, server, heartbeat=heartbeat)).client
    t0 = trio.current_time()
    kind = "#1" if protocol == 1 else ""
    assert await pings_until(client, 2) == [(t0 + 5, kind), (t0 + 10, kind)]


async def test_a_v14_disconnect_packet_locks_protocol_1(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, heartbeat: bool
) -> None:
    server = make_server(ping_interval_s=5, ping_timeout_s=20)
    client = (await serve_one(nursery, server, heartbeat=heartbeat)).client
    await pings_until(client, 2)
    await client.send_json({"event": "#disconnect", "data": {"code": 4321, "data": "x"}})
    t0 = trio.current_time()
    assert await pings_until(client, 1) == [(t0 + 5, "#1")]
    assert only_socket(server).client_disconnect_data == {"code": 4321, "data": "x"}


async def test_no_pong_closes_4001_after_ping_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, heartbeat: bool
) -> None:
    server = make_server(ping_interval_s=5, ping_timeout_s=20)
    codes: list[int] = []
    server.on("disconnection")(lambda s, code, reason: codes.append(code))
    served = await serve_one(nursery, server, heartbeat=heartbeat)
    t0 = trio.current_time()
    messages: list[Any] = []
    with pytest.raises(Closed) as info:  # noqa: PT012 (read until the close)
        while True:
            messages.append(await served.client.recv())
    assert info.value.code == 4001
    assert trio.current_time() - t0 == pytest.approx(20)
    assert set(messages) == {"#1", ""}  # no #disconnect packet
    with trio.fail_after(10):
        await served.ended.wait()
    assert codes == [4001]
    assert server.client_count == 0


async def test_any_inbound_message_keeps_the_connection_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, heartbeat: bool
) -> None:
    # The v14 rule (docs/protocol.md): events count as proof of life, so a client whose pongs
    # are queued behind its own traffic is not closed; silence afterwards still is.
    server = make_server(ping_interval_s=5, ping_timeout_s=20)
    client = (await serve_one(nursery, server, heartbeat=heartbeat)).client
    for i in range(60):
        await trio.sleep(1)
        assert await client.invoke("echo", i, cid=10 + i) == {"rid": 10 + i, "data": i}
    t_last = trio.current_time()
    with pytest.raises(Closed) as info:  # noqa: PT012 (read until the close)
        while True:
            await client.recv()
    assert info.value.code == 4001
    assert trio.current_time() - t_last == pytest.approx(20, abs=1)


async def test_a_pong_resets_the_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, heartbeat: bool
) -> None:
    server = make_server(ping_interval_s=5, ping_timeout_s=20)
    client = (await serve_one(nursery, server, heartbeat=heartbeat)).client
    t0 = trio.current_time()
    await trio.sleep(15)
    await client.send("")
    with pytest.raises(Closed) as info:  # noqa: PT012 (read until the close)
        while True:
            await client.recv()
    assert info.value.code == 4001
    assert trio.current_time() - t0 == pytest.approx(35)


# ------------------------------------------------------------------ structured concurrency


async def test_handle_stream_returns_when_the_client_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    codes: list[tuple[int, str]] = []
    server.on("disconnection")(lambda s, code, reason: codes.append((code, reason)))
    served = await serve_one(nursery, server)
    await served.client.close(4321, "bye")
    with trio.fail_after(10):
        await served.ended.wait()
    assert codes == [(4321, "bye")]
    assert server.client_count == 0


async def test_handle_stream_returns_after_disconnect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    served = await serve_one(nursery, server)
    socket = only_socket(server)
    socket.disconnect(4500, "bye")
    socket.disconnect(4600, "again")  # idempotent
    assert await served.client.recv_json() == {
        "event": "#disconnect",
        "data": {"code": 4500, "data": "bye"},
    }
    closed = await served.client.expect_close()
    assert (closed.code, closed.reason) == (4500, "bye")
    with trio.fail_after(10):
        await served.ended.wait()
    assert socket.state == "closed"
    assert socket.close_code == 4500
    assert server.client_count == 0


async def test_handle_stream_returns_when_the_transport_breaks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    served = await serve_one(nursery, server)
    socket = only_socket(server)
    await served.client.invoke("#subscribe", "c", cid=2)
    await trio.aclose_forcefully(served.client.stream)  # no close frame
    with trio.fail_after(10):
        await served.ended.wait()
    assert socket.close_code == 1006
    assert server.client_count == 0
    assert server.broker.channels() == []


async def test_handle_stream_returns_before_the_handshake_too(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    served = await serve_one(nursery, server, handshake=False)
    await trio.aclose_forcefully(served.client.stream)
    with trio.fail_after(10):
        await served.ended.wait()


async def test_async_handlers_are_cancelled_when_the_connection_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    started = trio.Event()
    outcome: list[str] = []

    @server.handler("forever")
    async def forever(socket: ServerSocket, _d: Any) -> None:
        try:
            started.set()
            await trio.sleep_forever()
        except trio.Cancelled:
            outcome.append("cancelled")
            raise

    served = await serve_one(nursery, server)
    await served.client.send_json({"event": "forever", "cid": 2})
    await started.wait()
    await served.client.close()
    with trio.fail_after(10):
        await served.ended.wait()
    assert outcome == ["cancelled"]


async def test_pending_server_invokes_fail_with_bad_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(ack_timeout_s=1000)
    served = await serve_one(nursery, server)
    socket = only_socket(server)
    results: list[Any] = []
    done = trio.Event()

    async def ask() -> None:  # an application task outside the connection
        try:
            results.append(await socket.invoke("ask", 1))
        except BadConnectionError as exc:
            results.append(exc)
        done.set()

    nursery.start_soon(ask)
    assert await served.client.recv_json() == {"event": "ask", "data": 1, "cid": 1}
    await served.client.close()
    with trio.fail_after(10):
        await done.wait()
    [error] = results
    assert isinstance(error, BadConnectionError)
    with pytest.raises(BadConnectionError):
        await socket.invoke("ask", 2)  # after the close: at once


async def test_subscriptions_are_removed_from_the_broker_on_close(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server()
    a = await serve_one(nursery, server)
    b = await serve_one(nursery, server)
    for i, ch in enumerate(["x", "y", "z"]):
        await a.client.invoke("#subscribe", ch, cid=10 + i)
    await b.client.invoke("#subscribe", "x", cid=2)
    assert sorted(server.broker.channels()) == ["x", "y", "z"]
    await a.client.close()
    with trio.fail_after(10):
        await a.ended.wait()
    assert server.broker.channels() == ["x"]
    assert server.broker.subscribers("x") == 1
    server.publish("x", 1)
    assert await b.client.recv_json() == {"event": "#publish", "data": {"channel": "x", "data": 1}}


# ------------------------------------------------------------------------------- serving


async def tcp_client(port: int) -> RawClient:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = new_client(stream)
    await client.connect()
    await client.handshake()
    return client


@pytest.mark.parametrize("answer_close", [True, False])
async def test_cancelling_serve_closes_every_socket_with_1001(answer_close: bool) -> None:
    server = make_server(shutdown_timeout_s=0.5, ping_interval_s=100, ping_timeout_s=200)
    closes: list[int | None] = []
    disconnections: list[int] = []
    server.on("disconnection")(lambda s, code, reason: disconnections.append(code))
    returned = trio.Event()
    serve_scope = trio.CancelScope()

    async def run_server(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with serve_scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)
        returned.set()

    async def watch(client: RawClient) -> None:
        closed = await client.expect_close()
        closes.append(closed.code)
        if answer_close:
            await client.close(closed.code or 1000)
        else:
            await returned.wait()  # keep the stream open, never answer
            await trio.aclose_forcefully(client.stream)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(run_server)
            port = listeners[0].socket.getsockname()[1]
            clients = [await tcp_client(port) for _ in range(3)]
            assert server.client_count == 3
            assert await clients[0].invoke("echo", "x", cid=2) == {"rid": 2, "data": "x"}
            for client in clients:
                nursery.start_soon(watch, client)
            start = trio.current_time()
            serve_scope.cancel()
            await returned.wait()
            elapsed = trio.current_time() - start
    assert elapsed < 0.5 + 1.0  # a peer that never answers would hold the 2 s close wait
    assert closes == [1001, 1001, 1001]
    assert sorted(disconnections) == [1001, 1001, 1001]
    assert server.client_count == 0


async def test_serve_reports_its_listeners_and_accepts_connections() -> None:
    server = make_server()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            client = await tcp_client(port)
            reply = await client.invoke("echo", {"over": "tcp"}, cid=2)
            assert reply == {"rid": 2, "data": {"over": "tcp"}}
            assert json.dumps(client.others) == "[]"
            await client.close()
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------- every close has a reason

CLOSE_CASES = {
    # name: (how the client provokes it, expected code, expected reason)
    "handshake timeout": (
        "wait", 4005, "Did not receive #handshake from client before timeout"
    ),
    "handshake without cid": (
        '{"event":"#handshake","data":{}}', 4008, "Handshake request was malformatted"
    ),
    "message before the handshake": (
        '{"event":"echo","cid":1}', 4009, "Server received a message before the client handshake"
    ),
    "pong timeout": ("handshake-then-wait", 4001, "Client pong timed out"),
    "disconnect()": ("bye", 1000, "Socket closed normally"),
    "disconnect(4500)": ("bye4500", 4500, "Socket closed by the server"),
    "disconnect(4600, 'gone')": ("bye4600", 4600, "gone"),
    "shutdown": ("shutdown", 1001, "Server is shutting down"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CLOSE_CASES))
async def test_every_close_code_we_send_carries_a_reason(
    autojump_clock: trio.testing.MockClock, case: str
) -> None:
    provoke, code, reason = CLOSE_CASES[case]
    server = make_server(handshake_timeout_s=5, ping_interval_s=5, ping_timeout_s=20)
    server.add_handler("bye", lambda socket, _d: socket.disconnect())
    server.add_handler("bye4500", lambda socket, _d: socket.disconnect(4500))
    server.add_handler("bye4600", lambda socket, _d: socket.disconnect(4600, "gone"))
    ended: list[tuple[int | None, str | None]] = []
    server.on("disconnection")(lambda _s, c, r: ended.append((c, r)))
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(stream: trio.abc.Stream) -> None:
            with scope:
                await server.handle_stream(stream)

        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(run, server_stream)
        client = new_client(client_stream)
        await client.connect()
        if provoke.startswith("{"):
            await client.send(provoke)
        elif provoke != "wait":
            await client.handshake()
            if provoke.startswith("bye"):
                await client.send_json({"event": provoke, "cid": 2})
            elif provoke == "shutdown":
                scope.cancel()
        closed = await client.expect_close()
    assert (closed.code, closed.reason) == (code, reason)
    if provoke not in ("wait",) and not provoke.startswith("{"):
        assert ended == [(code, reason)]  # the listener sees the same
