"""Every middleware hook wired into the server, on the wire (examples.md §5, §6, §7, §15).

* handshake WS: 401 by default, a chosen status and body, the origin allow-list (403);
* handshake SC: close code 4008 by default or the block's own, ``data.code`` *and*
  ``error.statusCode`` in the reply, then ``#disconnect`` and the close frame;
* subscribe, publish in (block, data change, ack data), publish out (per-subscriber change and
  silent drop; one shared frame when nothing changes), emit (invoke and transmit);
* a middleware that raises: a generic error to the client, a warning in the log, the
  connection goes on;
* a ``RuleBasedStateMachine`` driving subscribe/publish/unsubscribe from several clients
  through a changing subscribe middleware on the real server, against a model of the
  subscriptions and deliveries.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.from_thread
import trio.lowlevel
import trio.testing
from conftest import make_server as make_echo_server
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from wsclient import ClientFactory, Closed, RawClient, Rejected, new_client

from trio_socketcluster import (
    SILENT,
    Allow,
    Block,
    Hook,
    Server,
    ServerSocket,
    SocketClusterError,
)
from trio_socketcluster.protocol.codec import publish_bytes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from trio_socketcluster.middleware import PublishOutRequest
    from trio_socketcluster.transport.base import OutboundMessage


def make_server(**options: Any) -> Server:
    server = make_echo_server(**options)
    received: list[Any] = []
    server.received = received  # type: ignore[attr-defined]

    @server.handler("echo")
    def echo(_s: ServerSocket, data: Any) -> Any:
        received.append(data)
        return data

    return server


def error(name: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "message": message, **fields}


async def collect(client: RawClient, cid: int = 9998) -> list[Any]:
    """Everything that arrived before the answer to an echo."""
    client.others.clear()
    assert await client.invoke("echo", "probe", cid=cid) == {"rid": cid, "data": "probe"}
    return list(client.others)


async def assert_quiet(client: RawClient, cid: int = 9999) -> None:
    """Nothing else arrives before the answer to an echo."""
    before = len(client.others)
    assert await client.invoke("echo", "probe", cid=cid) == {"rid": cid, "data": "probe"}
    assert client.others[before:] == []


# ----------------------------------------------------------------------------- handshake WS


async def test_handshake_ws_block_defaults_to_401(connect: ClientFactory) -> None:
    server = make_server()
    seen: list[str | None] = []

    @server.middleware.middleware(Hook.HANDSHAKE_WS)
    def check(request: Any) -> Block | None:
        seen.append(request.request.header("x-key"))
        return None if request.request.header("x-key") == "good" else SILENT

    with pytest.raises(Rejected) as info:
        await connect(server)
    assert info.value.status == 401
    ok = await connect(server, headers=[(b"x-key", b"good")])
    assert (await ok.handshake())["data"]["isAuthenticated"] is False
    assert seen == [None, "good"]


@pytest.mark.parametrize(
    ("block", "status", "body"),
    [
        (Block("go away", status_code=429), 429, b"go away"),
        (Block(SocketClusterError("no entry", name="E"), status_code=403), 403, b"no entry"),
        (Block(SocketClusterError("with field", statusCode=451)), 451, b"with field"),
        (Block("just text"), 401, b"just text"),
    ],
)
async def test_handshake_ws_block_status_and_body(
    connect: ClientFactory, block: Block, status: int, body: bytes
) -> None:
    server = make_server()
    server.add_middleware(Hook.HANDSHAKE_WS, lambda request: block)
    with pytest.raises(Rejected) as info:
        await connect(server)
    assert info.value.status == status
    assert info.value.body == body
    assert server.client_count == 0


async def test_handshake_ws_async_middleware_and_crash(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()

    @server.middleware.middleware(Hook.HANDSHAKE_WS)
    async def check(request: Any) -> None:
        await trio.lowlevel.checkpoint()
        if request.request.query == "crash":
            raise RuntimeError("secret")

    client = await connect(server, target="/socketcluster/?ok=1")
    await client.handshake()
    with pytest.raises(Rejected) as info:
        await connect(server, target="/socketcluster/?crash")
    assert info.value.status == 401
    assert b"secret" not in info.value.body
    assert "handshakeWS middleware raised" in caplog.text


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (b"http://good.example", True),
        (b"http://good.example:80", True),
        (b"https://good.example", False),  # port 443
        (b"http://evil.example", False),
        (b"http://ood.example", False),  # no substring matching
        (None, False),
    ],
)
async def test_origin_allow_list(
    connect: ClientFactory, origin: bytes | None, allowed: bool
) -> None:
    server = make_server(origins="good.example:80")
    headers = [] if origin is None else [(b"origin", origin)]
    if allowed:
        client = await connect(server, headers=headers)
        await client.handshake()
        return
    with pytest.raises(Rejected) as info:
        await connect(server, headers=headers)
    assert info.value.status == 403
    assert info.value.body.startswith(b"Failed to authorize socket handshake - Invalid origin")


# ----------------------------------------------------------------------------- handshake SC


@pytest.mark.parametrize(
    ("block", "code", "wire_error"),
    [
        (
            Block(SocketClusterError("SC handshake failed", name="TooLazyHandshakeError")),
            4008,
            error("TooLazyHandshakeError", "SC handshake failed", statusCode=4008),
        ),
        (
            Block(
                SocketClusterError("SC handshake failed", name="InvalidAuthQueryHandshakeError"),
                status_code=4501,
            ),
            4501,
            error("InvalidAuthQueryHandshakeError", "SC handshake failed", statusCode=4501),
        ),
        (
            Block(SocketClusterError("by field", name="E", statusCode=4502)),
            4502,
            error("E", "by field", statusCode=4502),
        ),
        (
            SILENT,
            4008,
            error(
                "SilentMiddlewareBlockedError",
                "Action was silently blocked by handshakeSC middleware",
                type="handshakeSC",
                statusCode=4008,
            ),
        ),
        (Block("plain", status_code=4600), 4600, {"message": "plain", "statusCode": 4600}),
    ],
)
async def test_handshake_sc_block(
    connect: ClientFactory, block: Block, code: int, wire_error: dict[str, Any]
) -> None:
    server = make_server()
    seen: list[Any] = []

    @server.middleware.middleware(Hook.HANDSHAKE_SC)
    def check(request: Any) -> Block:
        seen.append(request.data)
        return block

    connections: list[Any] = []
    server.on("connection")(connections.append)
    client = await connect(server)
    await client.send_json({"event": "#handshake", "data": {"authToken": None, "x": 1}, "cid": 1})
    assert await client.recv_json() == {"rid": 1, "error": wire_error, "data": {"code": code}}
    reason = "Server rejected handshake from client"
    assert await client.recv_json() == {
        "event": "#disconnect",
        "data": {"code": code, "data": reason},
    }
    with pytest.raises(Closed) as info:
        await client.recv()
    assert (info.value.code, info.value.reason) == (code, reason)
    assert seen == [{"authToken": None, "x": 1}]
    assert connections == []
    assert server.client_count == 0


async def test_handshake_sc_allow_sees_the_data(connect: ClientFactory) -> None:
    server = make_server()
    seen: list[Any] = []
    server.add_middleware(Hook.HANDSHAKE_SC, lambda request: seen.append(request.socket.state))
    client = await connect(server)
    await client.handshake()
    assert seen == ["connecting"]
    await assert_quiet(client)


# -------------------------------------------------------------------------------- subscribe


async def test_subscribe_middleware(connect: ClientFactory) -> None:
    server = make_server()
    seen: list[tuple[str, Any, bool]] = []

    @server.middleware.middleware(Hook.SUBSCRIBE)
    def check(request: Any) -> Block | None:
        seen.append((request.channel, request.data, request.wait_for_auth))
        if request.channel == "private":
            return Block(SocketClusterError("Not allowed", name="SubscribeBlockedError"))
        if request.channel == "silent":
            return SILENT
        return None

    client = await connect(server)
    await client.handshake()
    sub = {"channel": "news", "data": {"x": 1}, "waitForAuth": True}
    assert await client.invoke("#subscribe", sub, cid=2) == {"rid": 2}
    assert await client.invoke("#subscribe", {"channel": "private"}, cid=3) == {
        "rid": 3,
        "error": error("SubscribeBlockedError", "Not allowed"),
    }
    assert await client.invoke("#subscribe", {"channel": "silent"}, cid=4) == {
        "rid": 4,
        "error": error(
            "SilentMiddlewareBlockedError",
            "Action was silently blocked by subscribe middleware",
            type="subscribe",
        ),
    }
    assert seen == [("news", {"x": 1}, True), ("private", None, False), ("silent", None, False)]
    [socket] = server.sockets.values()
    assert socket.channels == ["news"]
    assert server.broker.channels() == ["news"]


# ------------------------------------------------------------------------------ publish in


async def test_publish_in_block_change_and_ack(connect: ClientFactory) -> None:
    server = make_server()

    @server.middleware.middleware(Hook.PUBLISH_IN)
    def check(request: Any) -> Allow | Block | None:
        if request.channel == "blocked":
            return Block(SocketClusterError("Publish blocked", name="PublishBlockedError"))
        if request.channel == "silent":
            return SILENT
        if request.channel == "mutate":
            return Allow(data={"mutated": request.data}, ack_data={"ack": "custom"})
        return None

    sub = await connect(server)
    pub = await connect(server)
    await sub.handshake()
    await pub.handshake()
    for i, ch in enumerate(["blocked", "silent", "mutate", "plain"]):
        await sub.invoke("#subscribe", ch, cid=10 + i)
    r = await pub.invoke("#publish", {"channel": "blocked", "data": "x"}, cid=3)
    assert r == {"rid": 3, "error": error("PublishBlockedError", "Publish blocked")}
    r = await pub.invoke("#publish", {"channel": "silent", "data": "x"}, cid=4)
    assert r == {
        "rid": 4,
        "error": error(
            "SilentMiddlewareBlockedError",
            "Action was silently blocked by publishIn middleware",
            type="publishIn",
        ),
    }
    r = await pub.invoke("#publish", {"channel": "mutate", "data": "orig"}, cid=5)
    assert r == {"rid": 5, "data": {"ack": "custom"}}
    r = await pub.invoke("#publish", {"channel": "plain", "data": "p"}, cid=6)
    assert r == {"rid": 6}
    assert await collect(sub) == [
        {"event": "#publish", "data": {"channel": "mutate", "data": {"mutated": "orig"}}},
        {"event": "#publish", "data": {"channel": "plain", "data": "p"}},
    ]


async def test_publish_in_does_not_apply_to_server_publish(connect: ClientFactory) -> None:
    server = make_server()
    server.add_middleware(Hook.PUBLISH_IN, lambda request: SILENT)
    client = await connect(server)
    await client.handshake()
    await client.invoke("#subscribe", "c", cid=2)
    server.publish("c", 1)
    assert await client.recv_json() == {"event": "#publish", "data": {"channel": "c", "data": 1}}


# ----------------------------------------------------------------------------- publish out


async def test_publish_out_per_subscriber(connect: ClientFactory) -> None:
    server = make_server()

    @server.middleware.middleware(Hook.PUBLISH_OUT)
    def per_subscriber(request: Any) -> Allow | Block | None:
        name = request.socket.handshake_data.get("name")
        if name == "blocked":
            return SILENT
        if name == "changed":
            return Allow(data=f"OUT:{request.data}")
        return None

    clients: dict[str, RawClient] = {}
    for name in ["plain", "blocked", "changed"]:
        client = clients[name] = await connect(server)
        await client.send_json({"event": "#handshake", "data": {"name": name}, "cid": 1})
        await client.recv_json()
        await client.invoke("#subscribe", "c", cid=2)
    publisher = await connect(server)
    await publisher.handshake()
    assert await publisher.invoke("#publish", {"channel": "c", "data": "orig"}, cid=2) == {
        "rid": 2
    }  # the publisher gets success whatever publish-out does
    got = {name: await collect(client) for name, client in clients.items()}
    assert got == {
        "plain": [{"event": "#publish", "data": {"channel": "c", "data": "orig"}}],
        "changed": [{"event": "#publish", "data": {"channel": "c", "data": "OUT:orig"}}],
        "blocked": [],
    }


@pytest.mark.parametrize("mode", ["none", "unchanged", "async-unchanged", "change-one"])
async def test_publish_out_shares_one_frame_unless_data_changes(
    connect: ClientFactory, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    server = make_server()
    if mode == "unchanged":
        server.add_middleware(Hook.PUBLISH_OUT, lambda request: Allow(data=request.data))
    elif mode == "async-unchanged":

        async def allow(request: Any) -> None:
            await trio.lowlevel.checkpoint()

        server.add_middleware(Hook.PUBLISH_OUT, allow)
    elif mode == "change-one":
        server.add_middleware(
            Hook.PUBLISH_OUT,
            lambda request: Allow(data="x") if request.socket.handshake_data == {"n": 0} else None,
        )
    encoded: list[Any] = []

    def counting(channel: str, data: Any) -> bytes:
        encoded.append(data)
        return publish_bytes(channel, data)

    monkeypatch.setattr("trio_socketcluster.server.socket.publish_bytes", counting)
    sent: list[OutboundMessage] = []
    clients: list[RawClient] = []
    for n in range(4):
        client = await connect(server)
        await client.send_json({"event": "#handshake", "data": {"n": n}, "cid": 1})
        await client.recv_json()
        await client.invoke("#subscribe", "c", cid=2)
        clients.append(client)
    for socket in server.sockets.values():
        transport = socket._transport
        original = transport.send

        def spy(message: OutboundMessage, original: Any = original) -> None:
            if b'"#publish"' in message.payload:
                sent.append(message)
            original(message)

        monkeypatch.setattr(transport, "send", spy)
    server.publish("c", {"big": "data"})
    for client in clients:
        packet = await client.recv_json()
        assert packet["event"] == "#publish"
    assert len(sent) == 4
    if mode == "change-one":
        assert encoded == ["x"]
        assert len({id(m) for m in sent}) == 2
    else:
        assert encoded == []
        assert all(m is sent[0] for m in sent)


# ------------------------------------------------------------------------------------ emit


async def test_emit_middleware_block_and_change(connect: ClientFactory) -> None:
    server = make_server()
    seen: list[tuple[str, Any, bool]] = []

    @server.middleware.middleware(Hook.EMIT)
    def check(request: Any) -> Allow | Block | None:
        seen.append((request.event, request.data, request.is_invoke))
        if request.data == "forbidden":
            return Block(SocketClusterError("Emit blocked", name="EmitBlockedError"))
        if request.data == "silent":
            return SILENT
        if request.data == "change":
            return Allow(data="changed")
        return None

    client = await connect(server)
    await client.handshake()
    assert await client.invoke("echo", "forbidden", cid=2) == {
        "rid": 2,
        "error": error("EmitBlockedError", "Emit blocked"),
    }
    assert await client.invoke("echo", "silent", cid=3) == {
        "rid": 3,
        "error": error(
            "SilentMiddlewareBlockedError",
            "Action was silently blocked by emit middleware",
            type="emit",
        ),
    }
    assert await client.invoke("echo", "change", cid=4) == {"rid": 4, "data": "changed"}
    await client.send_json({"event": "echo", "data": "forbidden"})  # transmit: no answer
    await client.send_json({"event": "echo", "data": "change"})
    await assert_quiet(client, cid=5)
    assert server.received == ["changed", "changed", "probe"]  # type: ignore[attr-defined]
    assert seen[3:] == [
        ("echo", "forbidden", False),
        ("echo", "change", False),
        ("echo", "probe", True),
    ]
    # Reserved events do not go through emit middleware.
    await client.invoke("#subscribe", "forbidden", cid=6)
    assert all(not event.startswith("#") for event, _, _ in seen)


async def test_emit_middleware_blocks_unknown_events_first(connect: ClientFactory) -> None:
    server = make_server()
    server.add_middleware(Hook.EMIT, lambda request: Block("no"))
    client = await connect(server)
    await client.handshake()
    assert await client.invoke("nohandler", cid=2) == {"rid": 2, "error": {"message": "no"}}


# ------------------------------------------------------------------------- raising middleware

HOOK_ACTIONS: dict[Hook, Callable[[RawClient], Awaitable[dict[str, Any]]]] = {
    Hook.SUBSCRIBE: lambda c: c.invoke("#subscribe", "c", cid=2),
    Hook.PUBLISH_IN: lambda c: c.invoke("#publish", {"channel": "c", "data": 1}, cid=2),
    Hook.EMIT: lambda c: c.invoke("other", 1, cid=2),
}


@pytest.mark.parametrize("hook", list(HOOK_ACTIONS), ids=lambda h: h.value)
@pytest.mark.parametrize("is_async", [False, True])
async def test_raising_middleware_gives_a_generic_error(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture, hook: Hook, is_async: bool
) -> None:
    server = make_server()

    @server.handler("other")
    def other(_s: ServerSocket, data: Any) -> Any:
        return data

    def crash(request: Any) -> None:
        if getattr(request, "event", None) != "echo":
            raise RuntimeError("secret internals")

    async def crash_async(request: Any) -> None:
        await trio.lowlevel.checkpoint()
        crash(request)

    server.add_middleware(hook, crash_async if is_async else crash)
    client = await connect(server)
    await client.handshake()
    reply = await HOOK_ACTIONS[hook](client)
    assert reply == {
        "rid": 2,
        "error": error("UnknownError", "Action was blocked: middleware failed"),
    }
    assert f"{hook.value} middleware raised" in caplog.text
    assert "secret internals" in caplog.text  # the traceback is in the log, not on the wire
    await assert_quiet(client)


def explode(request: Any) -> None:
    raise ZeroDivisionError("secret internals")


async def test_raising_publish_out_middleware_drops_the_delivery(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    server.add_middleware(Hook.PUBLISH_OUT, explode)
    client = await connect(server)
    await client.handshake()
    await client.invoke("#subscribe", "c", cid=2)
    server.publish("c", 1)
    await assert_quiet(client)
    assert "publishOut middleware failed" in caplog.text


async def test_raising_handshake_sc_middleware_closes_4008(
    connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    server.add_middleware(Hook.HANDSHAKE_SC, explode)
    client = await connect(server)
    await client.send_json({"event": "#handshake", "data": {}, "cid": 1})
    reply = await client.recv_json()
    assert reply["error"]["name"] == "UnknownError"
    assert reply["data"] == {"code": 4008}
    assert (await client.expect_close()).code == 4008
    assert "handshakeSC middleware raised" in caplog.text


# ---------------------------------------------------------------------------- stateful model

CHANNELS = ["a", "b", "c"]
N_CLIENTS = 3


class TrioThread:
    """A trio run in a thread; sync code (Hypothesis rules) calls into it."""

    def __init__(self, setup: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(setup,), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _main(self, setup: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                try:
                    await setup(nursery)
                finally:
                    self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        with_timeout = _with_timeout(fn)
        return trio.from_thread.run(with_timeout, *args, trio_token=self._token)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)
        if self._error is not None:
            raise self._error


def _with_timeout(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(*args: Any) -> Any:
        with trio.fail_after(10):
            return await fn(*args)

    return guarded


class SubscriptionModel(RuleBasedStateMachine):
    """Random subscribe/publish/unsubscribe from a few clients through a subscribe middleware
    whose block list changes; the server's subscriptions and deliveries follow the model."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: set[str] = set()
        self.silent = False
        self.subs: list[set[str]] = [set() for _ in range(N_CLIENTS)]
        self.cid = 10
        self.server = make_server()
        blocked = self.blocked

        def check(request: Any) -> Block | None:
            if request.channel in blocked:
                return SILENT if self.silent else Block("blocked " + request.channel)
            return None

        self.server.add_middleware(Hook.SUBSCRIBE, check)
        self.clients: list[RawClient] = []
        self.sockets: list[ServerSocket] = []

        async def setup(nursery: trio.Nursery) -> None:
            for _ in range(N_CLIENTS):
                client_stream, server_stream = trio.testing.memory_stream_pair()
                nursery.start_soon(self.server.handle_stream, server_stream)
                client = new_client(client_stream)
                await client.connect()
                reply = await client.handshake()
                self.clients.append(client)
                self.sockets.append(self.server.sockets[reply["data"]["id"]])

        self.trio = TrioThread(setup)

    def teardown(self) -> None:
        async def hang_up() -> None:
            for client in self.clients:  # EOF ends each server connection at once
                await trio.aclose_forcefully(client.stream)

        try:
            self.trio.run(hang_up)
        finally:
            self.trio.stop()

    def next_cid(self) -> int:
        self.cid += 1
        return self.cid

    @rule(channel=st.sampled_from(CHANNELS), silent=st.booleans())
    def toggle_block(self, channel: str, silent: bool) -> None:
        self.blocked ^= {channel}
        self.silent = silent

    @rule(i=st.integers(0, N_CLIENTS - 1), channel=st.sampled_from(CHANNELS))
    def subscribe(self, i: int, channel: str) -> None:
        cid = self.next_cid()
        reply = self.trio.run(self.clients[i].invoke, "#subscribe", {"channel": channel}, cid)
        if channel in self.blocked:
            if self.silent:
                assert reply["error"]["name"] == "SilentMiddlewareBlockedError"
            else:
                assert reply == {"rid": cid, "error": {"message": f"blocked {channel}"}}
        else:
            assert reply == {"rid": cid}
            self.subs[i].add(channel)

    @rule(i=st.integers(0, N_CLIENTS - 1), channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, i: int, channel: str) -> None:
        cid = self.next_cid()
        reply = self.trio.run(self.clients[i].invoke, "#unsubscribe", channel, cid)
        if channel in self.subs[i]:
            assert reply == {"rid": cid}
            self.subs[i].discard(channel)
        else:
            assert reply["error"]["name"] == "BrokerError"

    @rule(
        i=st.integers(0, N_CLIENTS - 1),
        channel=st.sampled_from(CHANNELS),
        data=st.integers(0, 1000),
    )
    def publish(self, i: int, channel: str, data: int) -> None:
        for client in self.clients:
            client.others.clear()
        cid = self.next_cid()
        packet = {"channel": channel, "data": data}
        assert self.trio.run(self.clients[i].invoke, "#publish", packet, cid) == {"rid": cid}
        for client in self.clients:  # an echo round trip collects what arrived before it
            echo_cid = self.next_cid()
            reply = self.trio.run(client.invoke, "echo", "x", echo_cid)
            assert reply == {"rid": echo_cid, "data": "x"}
        for j, client in enumerate(self.clients):
            expected = [{"event": "#publish", "data": packet}] if channel in self.subs[j] else []
            assert client.others == expected, (j, self.subs)

    @invariant()
    def server_matches_model(self) -> None:
        def snapshot() -> tuple[list[set[str]], set[str], dict[str, int]]:
            broker = self.server.broker
            return (
                [set(s.channels) for s in self.sockets],
                set(broker.channels()),
                {ch: broker.subscribers(ch) for ch in CHANNELS},
            )

        sockets, channels, counts = trio.from_thread.run_sync(snapshot, trio_token=self.trio._token)
        assert sockets == self.subs
        assert channels == set().union(*self.subs)
        assert counts == {ch: sum(ch in s for s in self.subs) for ch in CHANNELS}


SubscriptionModel.TestCase.settings = settings(
    max_examples=50, stateful_step_count=25, deadline=None
)
TestSubscriptionModel = SubscriptionModel.TestCase


async def test_publish_out_lambda_returning_a_coroutine_is_awaited(connect: ClientFactory) -> None:
    """A plain callable that returns a coroutine is not a sync middleware: it is awaited."""
    server = Server(auth_key="k")

    async def shout(req: PublishOutRequest) -> Allow:
        return Allow(data=f"{req.data}!")

    server.add_middleware(Hook.PUBLISH_OUT, lambda req: shout(req))
    client = await connect(server)
    await client.handshake()
    assert await client.invoke("#subscribe", {"channel": "c"}, cid=2) == {"rid": 2}
    server.publish("c", "hi")
    assert await client.recv_json() == {
        "event": "#publish",
        "data": {"channel": "c", "data": "hi!"},
    }


# ---------------------------------------------- a mixed chain runs each middleware exactly once

MIXED_HOOKS = [Hook.EMIT, Hook.SUBSCRIBE, Hook.PUBLISH_IN, Hook.PUBLISH_OUT, Hook.AUTHENTICATE]


@pytest.mark.parametrize("hook", MIXED_HOOKS, ids=lambda h: h.value)
async def test_a_plain_then_a_coroutine_returning_middleware_charge_once_per_action(
    connect: ClientFactory, hook: Hook
) -> None:
    """``[plain fn, lambda returning a coroutine]``: the server's drivers (``start_chain``,
    then ``Pending.resume``) run the plain one once, await the coroutine once."""
    server = make_server()
    charged: list[str] = []
    awaited: list[str] = []

    def plain(request: Any) -> None:
        charged.append("plain")

    async def later(request: Any) -> None:
        await trio.lowlevel.checkpoint()
        awaited.append("async")

    server.add_middleware(hook, plain)
    server.add_middleware(hook, lambda request: later(request))

    @server.handler("login")
    async def login(socket: ServerSocket, _data: Any) -> str:
        return await socket.set_auth_token({"u": 1})

    client = await connect(server)
    await client.handshake()
    await client.invoke("#subscribe", "c", cid=2)
    actions = 1
    match hook:
        case Hook.EMIT:
            assert await client.invoke("echo", 5, cid=3) == {"rid": 3, "data": 5}
            actions = 2  # the login below is an emit too
        case Hook.SUBSCRIBE:
            assert await client.invoke("#subscribe", "d", cid=3) == {"rid": 3}
            actions = 2  # the first subscribe too
        case Hook.PUBLISH_IN | Hook.PUBLISH_OUT:
            assert await client.invoke("#publish", {"channel": "c", "data": 1}, cid=3) == {"rid": 3}
            publish = {"event": "#publish", "data": {"channel": "c", "data": 1}}
            if hook is Hook.PUBLISH_OUT:  # delivered after the async verdict
                assert await client.recv_json() == publish
            else:  # delivered before the acknowledgement
                assert client.others == [publish]
        case Hook.AUTHENTICATE:
            pass
    reply = await client.invoke("login", cid=4)
    if hook is Hook.AUTHENTICATE:
        assert await client.invoke("#authenticate", reply["data"], cid=5) == {
            "rid": 5,
            "data": {"isAuthenticated": True, "authError": None},
        }
    assert charged == ["plain"] * actions
    assert awaited == ["async"] * actions
