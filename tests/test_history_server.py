"""Channel history end to end on the in-process broker: the wire format of ``#publish`` and of
the acknowledgements, recovery on ``#subscribe`` (raw frames), and the Python client that
tracks offsets and recovers by itself after a reconnect, while others publish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
from conftest import wait_until

from trio_socketcluster import (
    SILENT,
    Allow,
    HistoryConfig,
    HistoryPolicy,
    Hook,
    InvalidOptionsError,
    LocalBroker,
    Server,
)
from trio_socketcluster.client import ClientState
from trio_socketcluster.history import Publication, RecoverRequest
from trio_socketcluster.testing import open_test_client

if TYPE_CHECKING:
    from wsclient import ClientFactory, RawClient

    from trio_socketcluster.transport.base import OutboundMessage

POLICY = HistoryPolicy(size=1000, ttl_s=300)


def history_server(**options: Any) -> Server:
    return Server(
        auth_key="k",
        history=HistoryConfig(channels={"news": POLICY}, patterns={"room-*": POLICY}),
        **options,
    )


async def subscribe(client: RawClient, channel: str, data: Any = None, cid: int = 2) -> Any:
    packet: dict[str, Any] = {"channel": channel}
    if data is not None:
        packet["data"] = data
    return await client.invoke("#subscribe", packet, cid=cid)


async def publish(client: RawClient, channel: str, data: Any, cid: int) -> Any:
    return await client.invoke("#publish", {"channel": channel, "data": data}, cid=cid)


async def publishes(client: RawClient, n: int) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        packet = await client.recv_json()
        if packet.get("event") == "#publish":
            out.append(packet["data"])
    return out


async def test_publish_on_a_history_channel_carries_offset_and_epoch(
    connect: ClientFactory,
) -> None:
    server = history_server()
    sub = await connect(server)
    await sub.handshake()
    ack = await subscribe(sub, "news")
    epoch = ack["data"]["epoch"]
    assert ack["data"] == {"offset": 0, "epoch": epoch}  # no recovery asked: the position
    pub = await connect(server)
    await pub.handshake()
    for i in range(1, 4):
        reply = await publish(pub, "news", {"n": i}, cid=10 + i)
        assert reply["data"] == {"offset": i, "epoch": epoch}
    got = await publishes(sub, 3)
    assert got == [
        {"channel": "news", "data": {"n": i}, "offset": i, "epoch": epoch} for i in (1, 2, 3)
    ]
    # a pattern channel has its own offsets; a channel without a policy is unchanged
    await subscribe(sub, "room-1", cid=3)
    await subscribe(sub, "plain", cid=4)
    assert (await publish(pub, "room-1", "r", cid=20))["data"]["offset"] == 1
    assert "data" not in await publish(pub, "plain", "p", cid=21)
    got = await publishes(sub, 2)
    assert got[0]["offset"] == 1
    assert got[0]["epoch"] != epoch
    assert got[1] == {"channel": "plain", "data": "p"}


async def test_subscribe_with_recover_replays_what_was_missed_then_live(
    connect: ClientFactory,
) -> None:
    server = history_server()
    pub = await connect(server)
    await pub.handshake()
    acks = [(await publish(pub, "news", i, cid=10 + i))["data"] for i in range(1, 6)]
    epoch = acks[0]["epoch"]
    sub = await connect(server)
    await sub.handshake()
    ack = await subscribe(sub, "news", {"recover": {"offset": 2, "epoch": epoch}})
    assert ack["data"] == {"recovered": True, "offset": 5, "epoch": epoch}
    server.publish("news", 6)
    got = await publishes(sub, 4)
    assert [(p["offset"], p["data"]) for p in got] == [(3, 3), (4, 4), (5, 5), (6, 6)]


@pytest.mark.parametrize(
    "recover",
    [
        {"offset": 1, "epoch": "another"},  # not the channel's epoch
        {"offset": 99, "epoch": None},  # malformed (epoch filled in below when None)
        {"offset": 9, "epoch": "same"},  # ahead of the channel
        "nonsense",
    ],
)
async def test_subscribe_that_cannot_recover_sends_nothing_old(
    connect: ClientFactory, recover: Any
) -> None:
    server = history_server()
    pub = await connect(server)
    await pub.handshake()
    epoch = (await publish(pub, "news", 1, cid=10))["data"]["epoch"]
    if isinstance(recover, dict) and recover["epoch"] == "same":
        recover = {**recover, "epoch": epoch}
    sub = await connect(server)
    await sub.handshake()
    ack = await subscribe(sub, "news", {"recover": recover})
    assert ack["data"] == {"recovered": False, "offset": 1, "epoch": epoch}
    server.publish("news", 2)
    assert [p["data"] for p in await publishes(sub, 1)] == [2]


async def test_trimmed_history_cannot_recover() -> None:
    now = [0.0]
    broker = LocalBroker(
        HistoryConfig(channels={"c": HistoryPolicy(size=3, ttl_s=10)}), clock=lambda: now[0]
    )
    pubs = [broker.publish_stored("c", i) for i in range(5)]

    assert not broker.recover("c", RecoverRequest(1, pubs[0].epoch)).recovered
    rec = broker.recover("c", RecoverRequest(2, pubs[0].epoch))
    assert [p.data for p in rec.publications] == [2, 3, 4]
    now[0] = 20.0  # older than ttl_s
    assert not broker.recover("c", RecoverRequest(2, pubs[0].epoch)).recovered


async def test_recovered_publications_go_through_publish_out_middleware(
    connect: ClientFactory,
) -> None:
    server = history_server()
    server.add_middleware(
        Hook.PUBLISH_OUT,
        lambda request: Allow(data=request.data * 10) if request.data % 2 else SILENT,
    )
    pub = await connect(server)
    await pub.handshake()
    epoch = (await publish(pub, "news", 1, cid=10))["data"]["epoch"]
    for i in range(2, 6):
        await publish(pub, "news", i, cid=10 + i)
    sub = await connect(server)
    await sub.handshake()
    ack = await subscribe(sub, "news", {"recover": {"offset": 0, "epoch": epoch}})
    assert ack["data"]["recovered"] is True
    got = await publishes(sub, 3)
    assert [(p["offset"], p["data"]) for p in got] == [(1, 10), (3, 30), (5, 50)]


def test_history_needs_a_history_broker() -> None:
    class Plain:
        def subscribe(self, channel: str, subscriber: Any) -> None: ...
        def unsubscribe(self, channel: str, subscriber: Any) -> None: ...
        def publish(self, channel: str, data: Any) -> None: ...
        def subscribers(self, channel: str) -> int:
            return 0

        def channels(self) -> list[str]:
            return []

    with pytest.raises(InvalidOptionsError, match="keeps no channel history"):
        Server(history=HistoryConfig(channels={"c": POLICY}), broker=Plain())
    with pytest.raises(InvalidOptionsError):
        Server(history={"c": POLICY})  # type: ignore[arg-type]


def test_local_broker_delivers_the_publication_and_encodes_once() -> None:
    broker = LocalBroker(HistoryConfig(channels={"c": POLICY}), clock=lambda: 0.0)
    seen: list[tuple[Any, bytes, Publication | None]] = []

    class Sub:
        def deliver(
            self, channel: str, data: Any, message: OutboundMessage, publication: Any = None
        ) -> None:
            seen.append((data, message.payload, publication))

    a, b = Sub(), Sub()
    broker.subscribe("c", a)
    broker.subscribe("c", b)
    broker.subscribe("plain", a)
    pub = broker.publish_stored("c", [1])
    broker.publish("plain", 2)
    assert seen[0][2] == pub
    assert seen[0][1] is seen[1][1]
    assert seen[2] == (2, b'{"event":"#publish","data":{"channel":"plain","data":2}}', None)
    with pytest.raises(TypeError):
        broker.publish_stored("c", object())
    assert broker.recover("c", None).offset == 1  # nothing stored by the refused one


# ------------------------------------------------------------------------ the Python client


@pytest.mark.parametrize("concurrent", [False, True])
async def test_python_client_recovers_after_a_reconnect(concurrent: bool) -> None:
    server = history_server()
    # after a 1001 the client waits 0.2 s, then reconnects (and re-subscribes)
    fast: dict[str, Any] = {"reconnect_initial_delay_s": 0.2, "reconnect_randomness_s": 0.0}
    async with (
        open_test_client(server, **fast) as client,
        open_test_client(server) as publisher,
    ):
        channel = await client.subscribe("news")
        received: list[Any] = []

        async def consume() -> None:
            async for data in channel:
                received.append(data)

        total = 300
        sent = 0

        async def publish_all(upto: int) -> None:
            nonlocal sent
            while sent < upto:
                sent += 1
                ack = await publisher.publish("news", sent)
                assert ack["offset"] == sent

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await publish_all(50)
            await wait_until(lambda: len(received) == 50)
            assert channel.offset == 50
            assert channel.recovered is None
            # cut the client's connection (it reconnects at once) while others publish
            if concurrent:
                nursery.start_soon(publish_all, total)
            (sock,) = [s for s in server.sockets.values() if "news" in s.channels]
            sock.disconnect(1001, "cut")
            if not concurrent:
                await wait_until(lambda: client.state is not ClientState.OPEN)
                await publish_all(total)
                assert len(received) == 50  # everything else is missed, then recovered
            await wait_until(lambda: len(received) >= total)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert received == list(range(1, total + 1))
        assert channel.recovered is True
        assert channel.duplicates == 0
        assert channel.offset == total


async def test_python_client_not_recovered_after_history_loss() -> None:
    server = history_server()
    fast: dict[str, Any] = {"reconnect_initial_delay_s": 0.0, "reconnect_randomness_s": 0.0}
    async with open_test_client(server, **fast) as client:
        channel = await client.subscribe("news")
        server.publish("news", "old")
        assert await channel.get(timeout_s=2) == "old"
        old_epoch = channel.epoch
        server.broker.set_history(server.history)  # type: ignore[attr-defined]
        server.publish("news", "lost")  # delivered live (offset 1 of the new epoch)
        assert await channel.get(timeout_s=2) == "lost"
        assert channel.epoch != old_epoch
        assert channel.offset == 1
        server.broker.set_history(server.history)  # type: ignore[attr-defined]
        (sock,) = server.sockets.values()
        sock.disconnect(4000, "cut")
        await wait_until(lambda: channel.recovered is not None)
        assert channel.recovered is False
        server.publish("news", "new")
        assert await channel.get(timeout_s=2) == "new"
        assert channel.offset == 1


class LaggingBroker(LocalBroker):
    """Stores at once but hands frames to subscribers only on ``flush()``: as with Redis, where
    the pub/sub frame of a publication can arrive after a history read that already saw it."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: list[tuple[str, Any, OutboundMessage, Publication]] = []

    def fan_out(
        self,
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None:
        if publication is None:
            super().fan_out(channel, data, message)
        else:
            self.in_flight.append((channel, data, message, publication))

    def flush(self) -> None:
        frames, self.in_flight = self.in_flight, []
        for frame in frames:
            super().fan_out(*frame)


async def test_live_frames_of_publications_already_recovered_are_dropped(
    connect: ClientFactory,
) -> None:
    broker = LaggingBroker()
    server = history_server(broker=broker)
    pub = await connect(server)
    await pub.handshake()
    epoch = (await publish(pub, "news", 1, cid=10))["data"]["epoch"]
    broker.flush()
    for i in (2, 3):  # stored; their frames still on the way
        await publish(pub, "news", i, cid=10 + i)
    sub = await connect(server)
    await sub.handshake()
    ack = await subscribe(sub, "news", {"recover": {"offset": 1, "epoch": epoch}})
    assert ack["data"] == {"recovered": True, "offset": 3, "epoch": epoch}
    broker.flush()  # the frames of 2 and 3 arrive late: already delivered from the read
    await publish(pub, "news", 4, cid=14)
    broker.flush()
    await publish(pub, "news", 5, cid=15)
    broker.flush()
    got = await publishes(sub, 4)
    assert [(p["offset"], p["data"]) for p in got] == [(2, 2), (3, 3), (4, 4), (5, 5)]
