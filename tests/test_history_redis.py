"""Channel history with the Redis broker, against a real ``redis-server``: two servers
("workers": each has its own broker, origin and connections) share one Redis. Offsets are
shared, recovery works on the other worker, and the chaos test kills Redis (``kill -9``)
under a stream of publications and counts acknowledged against delivered.
"""

from __future__ import annotations

import gc
import warnings
from typing import TYPE_CHECKING, Any

import pytest
import trio
from conftest import wait_until
from redisserver import RedisServer

from trio_socketcluster import HistoryConfig, HistoryPolicy, Server, SocketClusterError
from trio_socketcluster.brokers.redis import RedisBroker
from trio_socketcluster.testing import open_test_client

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from trio_socketcluster.client import Channel

# coredis (6.9) leaves the anyio memory streams of connections that failed (Redis killed)
# unclosed, in reference cycles; the garbage collector may find them during any later step.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

KEY = "cluster-test-key"


@pytest.fixture(autouse=True)
def collect_coredis_garbage() -> Iterator[None]:
    """Collect those streams at the end of each test, with that one warning silenced."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


HISTORY = HistoryConfig(channels={"news": HistoryPolicy(size=10_000, ttl_s=300)})


def worker(url: str) -> Server:
    broker = RedisBroker.from_url(url, cluster_key=KEY, reconnect_min_s=0.02, reconnect_max_s=0.2)
    return Server(auth_key="k", broker=broker, history=HISTORY)


async def collect(channel: Channel, into: list[Any]) -> None:
    async for data in channel:
        into.append(data)


async def test_two_workers_share_offsets_and_recover_from_each_other(
    redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    a, b = worker(redis_server.url), worker(redis_server.url)
    for server in (a, b):
        await server.start_broker(nursery)
    fast: dict[str, Any] = {"reconnect_initial_delay_s": 0.2, "reconnect_randomness_s": 0.0}
    async with (
        open_test_client(a) as pub_a,
        open_test_client(b) as pub_b,
        open_test_client(b, **fast) as sub,
    ):
        channel = await sub.subscribe("news")
        got: list[Any] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, channel, got)
            acks = []
            for i in range(10):
                acks.append(await (pub_a if i % 2 else pub_b).publish("news", i))
            assert [ack["offset"] for ack in acks] == list(range(1, 11))
            assert len({ack["epoch"] for ack in acks}) == 1
            await wait_until(lambda: len(got) == 10)
            assert got == list(range(10))
            assert channel.offset == 10
            # cut the subscriber; publish meanwhile; it recovers from Redis
            (sock,) = [s for s in b.sockets.values() if "news" in s.channels]
            sock.disconnect(1001, "cut")
            for i in range(10, 30):
                await pub_a.publish("news", i)
            await wait_until(lambda: len(got) == 30)
            inner.cancel_scope.cancel()
        assert got == list(range(30))
        assert channel.recovered is True
        assert channel.duplicates == 0


async def test_a_gap_in_the_frames_is_filled_from_the_stream(
    redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    """Frames that never reach a worker (here: stored without publishing, as when its
    subscriber connection was down) are read from the stream when the next frame shows the
    gap."""
    a = worker(redis_server.url)
    await a.start_broker(nursery)
    broker = a.broker
    assert isinstance(broker, RedisBroker)
    async with open_test_client(a) as client:
        channel = await client.subscribe("news")
        await client.publish("news", 0)
        assert await channel.get(timeout_s=5) == 0
        policy = HISTORY.policy_for("news")
        assert policy is not None
        for i in (1, 2, 3):  # stored, never published: this worker misses the frames
            await broker.history.append(
                "news", broker._bus_message({"k": "p", "c": "news", "d": i}), policy
            )
        await client.publish("news", 4)
        got = [await channel.get(timeout_s=5) for _ in range(4)]
        assert got == [1, 2, 3, 4]
        assert broker.stats.gaps_filled == 3
        assert channel.duplicates == 0


async def test_redis_kill_9_loses_no_acknowledged_publication(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Chaos: Redis killed with SIGKILL and restarted (AOF, fsync always) in the middle of a
    stream; subscribers on both workers. Every publication acknowledged to its publisher
    reaches both subscribers, in order, once."""
    redis = RedisServer(
        extra_args=("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    )
    redis.start()
    try:
        a, b = worker(redis.url), worker(redis.url)
        for server in (a, b):
            await server.start_broker(nursery)
        async with (
            open_test_client(a) as pub,
            open_test_client(a) as sub_a,
            open_test_client(b) as sub_b,
        ):
            ch_a = await sub_a.subscribe("news")
            ch_b = await sub_b.subscribe("news")
            got_a: list[Any] = []
            got_b: list[Any] = []
            acked: list[int] = []
            async with trio.open_nursery() as inner:
                inner.start_soon(collect, ch_a, got_a)
                inner.start_soon(collect, ch_b, got_b)

                async def stream() -> None:
                    for i in range(600):
                        try:
                            await pub.publish("news", i, timeout_s=2)
                        except (SocketClusterError, TimeoutError):
                            await trio.sleep(0.01)
                            continue
                        acked.append(i)
                        await trio.sleep(0.002)

                inner.start_soon(stream)
                await wait_until(lambda: len(acked) >= 150)
                redis.kill()
                await trio.sleep(0.3)
                redis.start()
                await wait_until(lambda: len(acked) >= 400, timeout_s=30)
                last = acked[-1]
                await wait_until(lambda: last in got_a and last in got_b)
                inner.cancel_scope.cancel()
        for got in (got_a, got_b):
            assert got == sorted(set(got)), "in order, once"
            missing = set(acked) - set(got)
            assert not missing, f"{len(missing)} acknowledged publications lost"
    finally:
        redis.kill()
