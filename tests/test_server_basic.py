"""The server end to end over in-memory streams: handshake, RPC, pub/sub, closing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

from trio_socketcluster import Reply, Server, ServerSocket, SocketClusterError

if TYPE_CHECKING:
    from wsclient import ClientFactory

    from trio_socketcluster.transport.base import OutboundMessage


def make_app() -> Server:
    server = Server(auth_key="k")

    @server.handler("echo")
    def echo(_s: ServerSocket, data: Any) -> Any:
        return data

    @server.handler("fail")
    def fail(_s: ServerSocket, _d: Any) -> Any:
        raise SocketClusterError("it failed", name="CustomError", extra=1)

    @server.handler("failString")
    def fail_string(_s: ServerSocket, _d: Any) -> Any:
        return Reply(error="just a string")

    @server.handler("boom")
    def boom(_s: ServerSocket, _d: Any) -> Any:
        raise RuntimeError("secret internals")

    @server.handler("slow")
    async def slow(_s: ServerSocket, data: Any) -> Any:
        await trio.sleep(1)
        return data

    return server


async def test_handshake_reply_and_probe_pings(connect: ClientFactory) -> None:
    server = make_app()
    client = await connect(server)
    await client.send_json({"event": "#handshake", "data": {"authToken": None}, "cid": 7})
    reply = json.loads(await client.recv())
    assert reply["rid"] == 7
    assert set(reply["data"]) == {"id", "pingTimeout", "isAuthenticated"}
    assert reply["data"]["pingTimeout"] == 20000
    assert reply["data"]["isAuthenticated"] is False
    assert len(reply["data"]["id"]) == 20
    # protocol unknown: both pings are sent right after the reply
    assert [await client.recv(), await client.recv()] == ["#1", ""]
    assert server.client_count == 1
    assert reply["data"]["id"] in server.sockets


async def test_rpc_results_errors_and_no_handler(connect: ClientFactory) -> None:
    client = await connect(make_app())
    await client.handshake()
    assert await client.invoke("echo", {"a": [1, "x"]}, cid=2) == {
        "rid": 2,
        "data": {"a": [1, "x"]},
    }
    assert await client.invoke("fail", cid=3) == {
        "rid": 3,
        "error": {"name": "CustomError", "message": "it failed", "extra": 1},
    }
    assert await client.invoke("failString", cid=4) == {"rid": 4, "error": "just a string"}
    boom = await client.invoke("boom", cid=5)
    assert boom["error"]["name"] == "UnknownError"
    assert "secret" not in json.dumps(boom)
    nohandler = await client.invoke("nohandler", cid=6)
    assert nohandler["error"]["name"] == "NoHandlerError"


async def test_batch_of_invokes_answered_in_order(connect: ClientFactory) -> None:
    client = await connect(make_app())
    await client.handshake()
    await client.send_json([{"event": "echo", "data": i, "cid": 10 + i} for i in range(1000)])
    got = [await client.recv_json() for _ in range(1000)]
    assert got == [{"rid": 10 + i, "data": i} for i in range(1000)]


async def test_transmit_is_never_answered(connect: ClientFactory) -> None:
    client = await connect(make_app())
    await client.handshake()
    await client.send_json({"event": "echo", "data": 1})
    await client.send_json({"event": "nohandler", "data": 1})
    assert await client.invoke("echo", 2, cid=3) == {"rid": 3, "data": 2}
    assert client.others == []


async def test_async_handler_does_not_block_the_connection(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(make_app())
    await client.handshake()
    await client.send_json({"event": "slow", "data": "s", "cid": 2})
    await client.send_json({"event": "echo", "data": "e", "cid": 3})
    assert await client.recv_json() == {"rid": 3, "data": "e"}
    assert await client.recv_json() == {"rid": 2, "data": "s"}


async def test_pubsub_encode_once_and_unsubscribe(connect: ClientFactory) -> None:
    server = make_app()
    a = await connect(server)
    b = await connect(server)
    await a.handshake()
    await b.handshake()
    assert await a.invoke("#subscribe", {"channel": "news"}, cid=2) == {"rid": 2}
    assert await b.invoke("#subscribe", "news", cid=2) == {"rid": 2}  # string form
    await b.send_json({"event": "#publish", "data": {"channel": "news", "data": "hi"}, "cid": 3})
    expected = {"event": "#publish", "data": {"channel": "news", "data": "hi"}}
    assert await a.recv_json() == expected
    got_b = [await b.recv_json(), await b.recv_json()]
    assert sorted(map(json.dumps, got_b)) == sorted(map(json.dumps, [expected, {"rid": 3}]))
    await a.send_json({"event": "#unsubscribe", "data": "news"})
    not_subscribed = await a.invoke("#unsubscribe", "other", cid=4)
    assert not_subscribed["error"]["name"] == "BrokerError"
    server.publish("news", 2)
    assert await b.recv_json() == {"event": "#publish", "data": {"channel": "news", "data": 2}}
    assert await a.invoke("echo", "after", cid=5) == {"rid": 5, "data": "after"}
    assert a.others == []  # a got nothing after unsubscribing


async def test_publish_frames_are_shared_by_all_subscribers() -> None:
    from trio_socketcluster.brokers.local import LocalBroker

    seen: list[OutboundMessage] = []

    class Sub:
        def deliver(
            self, channel: str, data: Any, message: OutboundMessage, publication: Any = None
        ) -> None:
            seen.append(message)

    broker = LocalBroker()
    subs = [Sub() for _ in range(100)]
    for s in subs:
        broker.subscribe("c", s)
    broker.publish("c", {"x": 1})
    assert len(seen) == 100
    assert all(m is seen[0] for m in seen)
    assert seen[0].frame is seen[0].frame  # framed once


async def test_bad_subscribe_and_publish_requests(connect: ClientFactory) -> None:
    client = await connect(make_app())
    await client.handshake()
    r = await client.invoke("#subscribe", {"channel": 123}, cid=2)
    assert r["error"] == {
        "name": "InvalidActionError",
        "message": "Subscribe channel name was malformatted",
    }
    r = await client.invoke("#publish", {"data": 1}, cid=3)
    assert r["error"]["name"] == "InvalidActionError"
    r = await client.invoke("#publish", "nonsense", cid=4)
    assert r["error"]["name"] == "InvalidActionError"


async def test_channel_limit_and_client_publish_disabled(connect: ClientFactory) -> None:
    server = Server(auth_key="k", socket_channel_limit=2, allow_client_publish=False)
    client = await connect(server)
    await client.handshake()
    assert await client.invoke("#subscribe", {"channel": "a"}, cid=2) == {"rid": 2}
    assert await client.invoke("#subscribe", {"channel": "b"}, cid=3) == {"rid": 3}
    assert await client.invoke("#subscribe", {"channel": "b"}, cid=4) == {"rid": 4}
    r = await client.invoke("#subscribe", {"channel": "c"}, cid=5)
    assert r["error"]["name"] == "BrokerError"
    assert "limit of 2" in r["error"]["message"]
    r = await client.invoke("#publish", {"channel": "a", "data": 1}, cid=6)
    assert r["error"] == {
        "name": "InvalidActionError",
        "message": "Client publish feature is disabled",
    }


async def test_kick_out_sends_kickout_and_unsubscribes(connect: ClientFactory) -> None:
    server = make_app()

    @server.handler("kickme")
    def kickme(socket: ServerSocket, channel: Any) -> None:
        socket.kick_out(channel, "you are kicked")

    client = await connect(server)
    await client.handshake()
    for i, ch in enumerate(["x", "y"]):
        await client.invoke("#subscribe", {"channel": ch}, cid=2 + i)
    await client.send_json({"event": "kickme", "data": None, "cid": 9})
    got = [await client.recv_json(), await client.recv_json(), await client.recv_json()]
    assert got == [
        {"event": "#kickOut", "data": {"message": "you are kicked", "channel": "x"}},
        {"event": "#kickOut", "data": {"message": "you are kicked", "channel": "y"}},
        {"rid": 9},
    ]
    assert server.broker.channels() == []


async def test_disconnect_with_code_and_reason(connect: ClientFactory) -> None:
    server = make_app()

    @server.handler("bye")
    def bye(socket: ServerSocket, _d: Any) -> None:
        socket.disconnect(4500, "bye")

    client = await connect(server)
    await client.handshake()
    await client.send_json({"event": "bye", "cid": 2})
    assert await client.recv_json() == {"rid": 2}
    assert await client.recv_json() == {
        "event": "#disconnect",
        "data": {"code": 4500, "data": "bye"},
    }
    closed = await client.expect_close()
    assert (closed.code, closed.reason) == (4500, "bye")


async def test_server_invokes_and_transmits_to_client(connect: ClientFactory) -> None:
    server = make_app()
    results: list[Any] = []

    @server.handler("callme")
    async def callme(socket: ServerSocket, _d: Any) -> None:
        results.append(await socket.invoke("ask", {"q": 1}))
        try:
            await socket.invoke("ask", 2)
        except SocketClusterError as exc:
            results.append((exc.name, exc.message))

    client = await connect(server)
    await client.handshake()
    await client.send_json({"event": "callme", "cid": 2})
    ask = await client.recv_json()
    assert ask == {"event": "ask", "data": {"q": 1}, "cid": 1}
    await client.send_json({"rid": 1, "data": "answer"})
    ask2 = await client.recv_json()
    assert ask2["cid"] == 2
    await client.send_json({"rid": 2, "error": {"name": "X", "message": "y"}})
    assert await client.recv_json() == {"rid": 2}
    assert results == ["answer", ("X", "y")]


async def test_server_invoke_times_out(
    connect: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(auth_key="k", ack_timeout_s=3)
    outcome: list[str] = []

    @server.handler("callme")
    async def callme(socket: ServerSocket, _d: Any) -> None:
        start = trio.current_time()
        try:
            await socket.invoke("ask")
        except SocketClusterError as exc:
            outcome.append(f"{exc.name} after {trio.current_time() - start:.0f}s")

    client = await connect(server)
    await client.handshake()
    await client.send_json({"event": "callme", "cid": 2})
    assert await client.recv_json() == {"event": "ask", "cid": 1}
    assert await client.recv_json() == {"rid": 2}
    assert outcome == ["TimeoutError after 3s"]


async def test_reserved_outbound_event_names_are_refused(connect: ClientFactory) -> None:
    server = make_app()
    errors: list[str] = []

    @server.handler("try")
    def try_(socket: ServerSocket, name: str) -> None:
        try:
            socket.transmit(name, 1)
        except SocketClusterError as exc:
            errors.append(exc.name)

    client = await connect(server)
    await client.handshake()
    for i, name in enumerate(["connect", "#publish", "disconnect", "fine"]):
        await client.invoke("try", name, cid=10 + i)
    assert errors == ["InvalidActionError"] * 3
    assert client.others == [{"event": "fine", "data": 1}]


def test_broker_capabilities_are_explicit_protocols() -> None:
    """The server checks what a broker can do with ``isinstance`` against runtime-checkable
    protocols: the in-process broker has no background task and no bus; Redis has both."""
    from trio_socketcluster.brokers.base import DistributedBroker, RunnableBroker
    from trio_socketcluster.brokers.local import LocalBroker

    local = LocalBroker()
    assert not isinstance(local, RunnableBroker)
    assert not isinstance(local, DistributedBroker)
    server = Server(auth_key="k")
    assert server.distributed_broker is None
    pytest.importorskip("coredis")
    from trio_socketcluster.brokers.redis import RedisBroker

    redis = RedisBroker.from_url("redis://127.0.0.1:1/0", cluster_key="k" * 32)
    assert isinstance(redis, DistributedBroker)
    assert isinstance(redis, RunnableBroker)
    server.set_broker(redis)
    assert server.distributed_broker is redis
