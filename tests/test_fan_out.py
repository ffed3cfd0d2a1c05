"""The grouped fan-out (``GroupSubscriber``): the in-process broker hands a whole publish to
``ServerSocket.deliver_all``, which looks up the publish-out chain and reads the clock once per
publish; every subscriber still gets every publish in order through its own middleware
verdict, and a subscriber of another kind in the same channel gets its own ``deliver``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from trio_socketcluster import Block, Hook, Server
from trio_socketcluster.brokers.base import GroupSubscriber
from trio_socketcluster.server.socket import ServerSocket
from trio_socketcluster.testing import open_test_clients

if TYPE_CHECKING:
    from trio_socketcluster.history import Publication
    from trio_socketcluster.middleware import PublishOutRequest
    from trio_socketcluster.transport.base import OutboundMessage


class Recorder:
    """A subscriber that is not a socket (an application's own)."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def deliver(
        self,
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None:
        self.got.append(message.payload)


def test_server_sockets_take_the_grouped_path_and_recorders_do_not() -> None:
    assert issubclass(ServerSocket, GroupSubscriber)
    assert not isinstance(Recorder(), GroupSubscriber)


async def test_every_subscriber_gets_every_publish_in_order_with_one_now_per_publish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(auth_key="k" * 32)
    seen: list[tuple[int, float]] = []

    @server.middleware(Hook.PUBLISH_OUT)
    def drop_odd_for_the_second(req: PublishOutRequest) -> Block | None:
        seen.append((req.data, req.now))
        if req.data % 2 and req.socket is sockets[1]:
            return Block()  # silent: this subscriber only
        return None

    async with open_test_clients(server, 3) as clients:
        sockets = [server.sockets[str(c.id)] for c in clients]
        channels = [await c.subscribe("news") for c in clients]
        # a foreign subscriber between the sockets: the fan-out goes past it, in order
        recorder = Recorder()
        server.broker.unsubscribe("news", sockets[2])
        server.broker.subscribe("news", recorder)
        server.broker.subscribe("news", sockets[2])
        for i in range(4):
            server.publish("news", i)
            await trio.sleep(0.5)  # the clock moves between publishes, not within one
        got = [
            [await ch.get(timeout_s=5) for _ in range(n)]
            for ch, n in zip(channels, (4, 2, 4), strict=True)
        ]
    assert got == [[0, 1, 2, 3], [0, 2], [0, 1, 2, 3]]
    assert [payload.count(b'"data":') for payload in recorder.got] == [2, 2, 2, 2]
    assert [payload.split(b'"data":')[2][:1] for payload in recorder.got] == [
        b"0",
        b"1",
        b"2",
        b"3",
    ]
    # one `now` per publish, shared by its three socket deliveries, later for later publishes
    assert [data for data, _now in seen] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    nows = [now for _data, now in seen]
    assert all(nows[3 * i] == nows[3 * i + 1] == nows[3 * i + 2] for i in range(4))
    assert nows[0] < nows[3] < nows[6] < nows[9]
