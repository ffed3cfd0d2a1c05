"""The Redis broker against a real ``redis-server`` (started per test on a free port).

In-process tests run several brokers/servers in one Trio run: each ``RedisBroker`` has its own
origin id and connections, so to Redis (and to each other) they are separate processes. The
``interop`` tests at the end run two real server processes with the npm clients on them.
"""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio
import trio.testing
from procs import INTEROP, npm_ci
from redisserver import RedisServer, redis_app
from wsclient import RawClient, new_client

from trio_socketcluster import BrokerError, InvalidOptionsError, Server
from trio_socketcluster.brokers.redis import RedisBroker, derive_bus_key

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trio_socketcluster.transport.base import OutboundMessage

KEY = "cluster-test-key"


class Sub:
    def __init__(self) -> None:
        self.got: list[tuple[str, Any, OutboundMessage]] = []
        self.arrived = trio.Event()

    def deliver(
        self, channel: str, data: Any, message: OutboundMessage, publication: Any = None
    ) -> None:
        self.got.append((channel, data, message))
        self.arrived.set()

    @property
    def data(self) -> list[Any]:
        return [d for _, d, _ in self.got]

    async def wait_for(self, n: int) -> None:
        while len(self.got) < n:
            self.arrived = trio.Event()
            await self.arrived.wait()


@pytest.fixture
async def brokers(redis_server: RedisServer, nursery: trio.Nursery) -> list[RedisBroker]:
    """Two running brokers ("processes") on the test's Redis."""
    made = [
        RedisBroker.from_url(redis_server.url, cluster_key=KEY, reconnect_max_s=0.5)
        for _ in range(2)
    ]
    for broker in made:
        await nursery.start(broker.run)
        await broker.wait_connected()
    return made


def _raw_client(redis_server: RedisServer) -> coredis.Redis[bytes]:
    return coredis.Redis.from_url(redis_server.url)


def _signed(body: dict[str, Any], key: str = KEY) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    sig = hmac.digest(derive_bus_key(key), raw, "sha256").hex().encode()
    return b'{"s":"' + sig + b'","b":' + raw + b"}"


async def test_cross_process_fan_out_once_in_order_encoded_once(
    brokers: list[RedisBroker],
) -> None:
    a, b = brokers
    s1, s2 = Sub(), Sub()
    a.subscribe("news", s1)
    a.subscribe("news", s2)
    with trio.fail_after(5):
        await a.wait_synced()
        for i in range(2000):
            b.publish("news", {"n": i})
        await s1.wait_for(2000)
        await s2.wait_for(2000)
    await trio.testing.wait_all_tasks_blocked()
    assert s1.data == s2.data == [{"n": i} for i in range(2000)]
    # encode-once: both local subscribers got the very same encoded packet
    assert all(m1 is m2 for (_, _, m1), (_, _, m2) in zip(s1.got, s2.got, strict=True))
    assert a.stats.received == 2000
    assert b.stats.sent == 2000
    assert a.stats.dropped == 0
    assert b.stats.lost == 0


async def test_local_publish_delivered_at_once_and_echo_skipped(
    brokers: list[RedisBroker],
) -> None:
    a, b = brokers
    local, remote = Sub(), Sub()
    a.subscribe("c", local)
    b.subscribe("c", remote)
    with trio.fail_after(5):
        await a.wait_synced()
        await b.wait_synced()
        a.publish("c", 1)
        assert local.data == [1]  # synchronous local fan-out
        await remote.wait_for(1)
        b.publish("c", 2)  # Redis pushes this to a after a's own copy (same connection)
        await local.wait_for(2)
    assert local.data == [1, 2]
    assert remote.data == [1, 2]
    assert a.stats.echoes == 1
    assert b.stats.echoes == 1


async def test_one_redis_subscription_per_channel(
    brokers: list[RedisBroker], redis_server: RedisServer
) -> None:
    a, _ = brokers
    channel = a._data_channel("room")
    subs = [Sub() for _ in range(5)]

    async def numsub() -> int:
        async with _raw_client(redis_server) as client:
            return int((await client.pubsub_numsub(channel))[channel])

    with trio.fail_after(5):
        for sub in subs:
            a.subscribe("room", sub)
        await a.wait_synced()
        assert await numsub() == 1
        for sub in subs[:-1]:
            a.unsubscribe("room", sub)
        await a.wait_synced()
        assert await numsub() == 1
        assert a.subscribers("room") == 1
        a.unsubscribe("room", subs[-1])
        await a.wait_synced()
        assert await numsub() == 0
        assert a.channels() == []


async def test_tampered_and_foreign_messages_are_dropped_and_counted(
    brokers: list[RedisBroker], redis_server: RedisServer
) -> None:
    a, b = brokers
    sub = Sub()
    a.subscribe("t", sub)
    channel = a._data_channel("t")
    now_ms = int(time.time() * 1000)
    good = {"v": 1, "o": "forger", "n": 1, "t": now_ms, "k": "p", "c": "t", "d": "ok"}
    tampered = _signed(good).replace(b'"ok"', b'"XX"')
    other_key = _signed(dict(good, n=2), key="another cluster")
    stale = _signed(dict(good, n=3, t=now_ms - 3_600_000))
    not_json = b'{"s":"' + b"0" * 64 + b'","b":nope}'
    with trio.fail_after(5):
        await a.wait_synced()
        async with _raw_client(redis_server) as client:
            for raw in (tampered, other_key, stale, not_json, b"garbage", b'{"pickle":1}'):
                await client.publish(channel, raw)
            await client.publish(channel, _signed(good))  # the genuine one
            await client.publish(channel, _signed(good))  # replayed: same origin and seq
            await client.publish(channel, _signed(dict(good, n=4, d="later")))
        await sub.wait_for(2)  # the last one: every earlier message was handled
    assert sub.data == ["ok", "later"]
    assert a.stats.dropped_bad_signature == 3  # tampered, other key, bad hex
    assert a.stats.dropped_malformed == 2
    assert a.stats.dropped_stale == 1
    assert a.stats.dropped_replayed == 1
    assert a.stats.as_dict()["dropped"] == 7
    assert b.stats.dropped == 0


async def test_publish_errors(redis_server: RedisServer, nursery: trio.Nursery) -> None:
    broker = RedisBroker.from_url(redis_server.url, cluster_key=KEY, max_queue=3)
    sub = Sub()
    broker.subscribe("x", sub)
    with pytest.raises(BrokerError, match="unreachable"):  # not running yet: no connection
        broker.publish("x", 1)
    assert sub.data == [1]  # local subscribers were served anyway
    with pytest.raises(TypeError):
        broker.publish("x", object())
    assert sub.data == [1]
    await nursery.start(broker.run)
    await broker.wait_connected()
    for i in range(3):  # no checkpoint: the publisher task cannot drain in between
        broker.publish("x", i)
    with pytest.raises(BrokerError, match="queue is full"):
        broker.publish("x", 99)
    assert broker.stats.rejected == 2


async def test_redis_restart_resubscribes_and_delivery_resumes(
    brokers: list[RedisBroker], redis_server: RedisServer
) -> None:
    a, b = brokers
    sub = Sub()
    a.subscribe("s", sub)
    with trio.fail_after(20):
        await a.wait_synced()
        for i in range(100):
            b.publish("s", i)
        await sub.wait_for(100)
        redis_server.kill()
        refused = 0
        await a.wait_disconnected()  # both notice the crash
        await b.wait_disconnected()
        for i in range(100, 200):  # mid-outage: refused (the publisher's ack gets the error)
            try:
                b.publish("s", i)
            except BrokerError:
                refused += 1
        redis_server.start()
        await a.wait_synced()  # reconnected and resubscribed
        await b.wait_connected()
        for i in range(200, 300):
            b.publish("s", i)
        await sub.wait_for(200)
    assert refused == 100
    assert sub.data == list(range(100)) + list(range(200, 300))  # the gap is the outage
    assert a.stats.reconnects >= 1
    assert b.stats.reconnects >= 1
    assert a.local.subscribers("s") == 1


async def _client(server: Server, nursery: trio.Nursery, token: str | None) -> RawClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream)
    client = new_client(client_stream)
    await client.connect("/socketcluster/")
    reply = await client.handshake(token)
    assert reply["data"]["isAuthenticated"] is (token is not None)
    return client


async def _next_event(client: RawClient, event: str) -> Any:
    while True:
        packet = await client.recv_json()
        if packet.get("event") == event:
            return packet.get("data")


async def test_cluster_wide_commands(redis_server: RedisServer, nursery: trio.Nursery) -> None:
    servers = [Server(auth_key=KEY, broker=redis_server.url) for _ in range(2)]
    for server in servers:
        await server.start_broker(nursery)
    a, b = servers
    token = a.auth.sign({"username": "alice", "jti": "t-1"}, now=a.now())
    bob = a.auth.sign({"username": "bob"}, now=a.now())
    with trio.fail_after(10):
        for server in servers:
            await server.broker.wait_connected()  # type: ignore[attr-defined]
        alice_a = await _client(a, nursery, token)
        alice_b = await _client(b, nursery, token)
        bob_b = await _client(b, nursery, bob)

        assert a.deauthenticate_user("alice") == 1  # this process: one socket
        assert await _next_event(alice_a, "#removeAuthToken") is None
        assert await _next_event(alice_b, "#removeAuthToken") is None
        assert b.sockets[next(iter(b.sockets))].server is b
        assert [s.authenticated for s in b.sockets.values()].count(True) == 1  # bob only

        await alice_b.invoke("#authenticate", token, cid=7)
        revoked = await b.revoke_token("t-1", exp=None)
        assert revoked.jti == "t-1"
        assert revoked.forget_at is None
        assert await _next_event(alice_b, "#removeAuthToken") is None
        reply = await alice_b.invoke("#authenticate", token, cid=9)  # refused from now on
        assert reply["error"]["message"] == "jwt revoked"

        assert "error" not in await bob_b.invoke("#subscribe", {"channel": "room"}, cid=8)
        assert a.kick_out("room", "bye") == 0  # nobody on this process
        assert await _next_event(bob_b, "#kickOut") == {"message": "bye", "channel": "room"}

        a.disconnect_user("bob", 4321, "go away")
        closed = await bob_b.expect_close()
        assert (closed.code, closed.reason) == (4321, "go away")
    for server in servers:
        assert server.broker.stats.dropped == 0  # type: ignore[attr-defined]


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIO_SOCKETCLUSTER_CLUSTER_KEY", raising=False)
    monkeypatch.delenv("TRIO_SOCKETCLUSTER_AUTH_KEY", raising=False)
    with pytest.raises(InvalidOptionsError, match="cluster key"):
        RedisBroker.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(InvalidOptionsError, match="not a Redis URL"):
        RedisBroker.from_url("http://127.0.0.1/", cluster_key=KEY)
    with pytest.raises(InvalidOptionsError):
        Server(broker="redis://127.0.0.1:1/0", auth_public_key=None)
    server = Server(auth_key="k", broker="redis://127.0.0.1:1/3")
    assert isinstance(server.broker, RedisBroker)
    assert server.broker._prefix == "tsc:3:"  # pub/sub ignores db numbers: the prefix does not


# --------------------------------------------------------------------------- real processes


def _node(script_args: list[str], timeout_s: float = 60.0) -> dict[str, Any]:
    node = npm_ci(INTEROP, "the interop tests")
    proc = subprocess.run(
        [node, str(INTEROP / "cluster.js"), *script_args],
        capture_output=True, text=True, timeout=timeout_s, check=False, cwd=INTEROP,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def two_processes(redis_server: RedisServer) -> Iterator[list[str]]:
    auth_key = os.urandom(16).hex()
    apps = [redis_app(redis_server.url, auth_key) for _ in range(2)]
    try:
        urls = [f"ws://127.0.0.1:{app.wait_ready(30)[0]}/socketcluster/" for app in apps]
        yield urls
    finally:
        for app in apps:
            assert app.stop(20) == 0, app.stderr_text()


@pytest.mark.interop
@pytest.mark.parametrize(("sub_major", "pub_major"), [(14, 20), (20, 14), (20, 20)])
def test_npm_clients_across_two_processes(
    two_processes: list[str], sub_major: int, pub_major: int
) -> None:
    sub_url, pub_url = two_processes
    n = 500
    result = _node(["pubsub", json.dumps({
        "subMajor": sub_major, "pubMajor": pub_major, "subUrl": sub_url, "pubUrl": pub_url,
        "count": n,
    })])  # fmt: skip
    assert result.get("error") is None, result
    assert result["acks"] == n
    assert result["received"] == list(range(n))  # once each, in order


@pytest.mark.interop
def test_npm_deauthenticate_user_cluster_wide(two_processes: list[str]) -> None:
    result = _node(["deauth", json.dumps({"urls": two_processes})])
    assert result.get("error") is None, result
    assert result["count"] == 1  # the process that ran the command had one alice
    assert result["deauthenticated"] == [True, True]  # alice on both processes
    assert result["bobStillAuthenticated"] is True
