"""Channel history in Redis (``brokers.redis_history``) against a real ``redis-server``
(started per test on a free port, without persistence).

Several ``coredis`` clients in one Trio run stand for several server processes; a new client
object after the old one is closed stands for a restarted process.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import coredis
import pytest
import trio

from trio_socketcluster import InvalidOptionsError
from trio_socketcluster.brokers.redis_history import RedisHistory, decode_frame
from trio_socketcluster.history import HistoryPolicy, Publication, RecoverRequest, Recovery

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from redisserver import RedisServer

POLICY = HistoryPolicy(size=1000, ttl_s=300)


def _client(redis_server: RedisServer) -> coredis.Redis[bytes]:
    return coredis.Redis.from_url(redis_server.url)


def _epochs(tag: str) -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{tag}{next(counter)}"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    async with _client(redis_server) as c:
        yield c


async def test_append_then_recover(client: coredis.Redis[bytes]) -> None:
    hist = RedisHistory(client, new_epoch=_epochs("a"))
    pubs = [await hist.append("news", f"m{i}".encode(), POLICY) for i in range(1, 6)]
    assert pubs == [Publication(i, "a1", f"m{i}".encode()) for i in range(1, 6)]
    rec = await hist.recover("news", RecoverRequest(2, "a1"), POLICY)
    assert rec == Recovery(True, 5, "a1", tuple(pubs[2:]))
    assert await hist.recover("news", RecoverRequest(5, "a1"), POLICY) == Recovery(True, 5, "a1")
    for bad in (RecoverRequest(2, "zz"), RecoverRequest(6, "a1"), RecoverRequest(0, "")):
        assert await hist.recover("news", bad, POLICY) == Recovery(False, 5, "a1")
    assert await hist.position("news") == (5, "a1")
    assert await hist.position("other") is None
    epoch, got = await hist.read_range("news", 2, 3, POLICY)
    assert (epoch, got) == ("a1", tuple(pubs[1:3]))
    assert await hist.read_range("news", 3, 2, POLICY) == ("a1", ())
    assert await hist.read_range("nothing", 1, 3, POLICY) == ("", ())


async def test_recover_on_a_new_channel_names_its_epoch(client: coredis.Redis[bytes]) -> None:
    hist = RedisHistory(client, new_epoch=_epochs("n"))
    rec = await hist.recover("fresh", RecoverRequest(3, "old"), POLICY)
    assert rec == Recovery(False, 0, "n1")
    assert await hist.append("fresh", b"x", POLICY) == Publication(1, "n1", b"x")  # same epoch
    meta, _ = hist.keys("fresh")
    ttl_ms = await client.pttl(meta)
    assert 0 < ttl_ms <= POLICY.keep_for_s * 1000


async def test_offsets_are_contiguous_under_concurrent_appends_from_two_clients(
    redis_server: RedisServer,
) -> None:
    got: list[Publication] = []
    async with _client(redis_server) as one, _client(redis_server) as two:
        histories = [RedisHistory(one), RedisHistory(two)]

        async def writer(hist: RedisHistory, tag: str) -> None:
            for i in range(150):
                got.append(await hist.append("busy", f"{tag}{i}".encode(), POLICY))

        async with trio.open_nursery() as nursery:
            for hist, tag in zip(histories, ("a", "b"), strict=True):
                for k in range(3):  # three tasks per client
                    nursery.start_soon(writer, hist, f"{tag}{k}-")
        assert sorted(p.offset for p in got) == list(range(1, 901))
        assert len({p.epoch for p in got}) == 1
        rec = await histories[1].recover("busy", RecoverRequest(0, got[0].epoch), POLICY)
        assert rec.recovered
        by_offset = {p.offset: p.data for p in got}
        assert [(p.offset, p.data) for p in rec.publications] == sorted(by_offset.items())


async def test_size_trimming(client: coredis.Redis[bytes]) -> None:
    policy = HistoryPolicy(size=5, ttl_s=300)
    hist = RedisHistory(client, new_epoch=_epochs("s"))
    for i in range(1, 401):
        await hist.append("c", str(i).encode(), policy)
    _, stream = hist.keys("c")
    length = await client.xlen(stream)
    assert 5 <= length < 400  # MAXLEN ~ trims whole nodes
    rec = await hist.recover("c", RecoverRequest(395, "s1"), policy)
    assert [p.offset for p in rec.publications] == [396, 397, 398, 399, 400]
    # Offset 395 may still be in Redis, but the policy keeps only the last 5: exact on read.
    assert await hist.recover("c", RecoverRequest(394, "s1"), policy) == Recovery(False, 400, "s1")
    assert await hist.recover("c", RecoverRequest(1, "s1"), policy) == Recovery(False, 400, "s1")
    _, got = await hist.read_range("c", 390, 400, policy)
    assert [p.offset for p in got] == [396, 397, 398, 399, 400]


async def test_age_trimming_by_the_given_clock(client: coredis.Redis[bytes]) -> None:
    policy = HistoryPolicy(size=1000, ttl_s=10)
    hist = RedisHistory(client, new_epoch=_epochs("t"))
    for i in range(100):  # offsets 1..100 at 0..99 ms
        await hist.append("c", b"old", policy, now_ms=i)
    ok = await hist.recover("c", RecoverRequest(0, "t1"), policy, now_ms=9_000)
    assert ok.recovered
    assert len(ok.publications) == 100
    gone = await hist.recover("c", RecoverRequest(0, "t1"), policy, now_ms=10_050)
    assert gone == Recovery(False, 100, "t1")  # offset 1 is 10.05 s old at read time
    assert (await hist.recover("c", RecoverRequest(60, "t1"), policy, now_ms=10_050)).recovered
    _, stream = hist.keys("c")
    await hist.append("c", b"new", policy, now_ms=20_000)  # each append drops up to 64 old
    assert await client.xlen(stream) == 101 - 64
    await hist.append("c", b"new", policy, now_ms=20_001)
    assert await client.xlen(stream) == 2
    rec = await hist.recover("c", RecoverRequest(100, "t1"), policy, now_ms=20_002)
    assert [p.offset for p in rec.publications] == [101, 102]
    _, got = await hist.read_range("c", 1, 102, policy, now_ms=29_999)
    assert [p.offset for p in got] == [101, 102]


async def test_a_clock_going_back_is_clamped(client: coredis.Redis[bytes]) -> None:
    policy = HistoryPolicy(size=10, ttl_s=1)
    hist = RedisHistory(client, new_epoch=_epochs("c"))
    await hist.append("c", b"a", policy, now_ms=5_000)
    await hist.append("c", b"b", policy, now_ms=1_000)  # stored at 5 000
    rec = await hist.recover("c", RecoverRequest(1, "c1"), policy, now_ms=5_999)
    assert rec.recovered
    assert not (await hist.recover("c", RecoverRequest(1, "c1"), policy, now_ms=6_000)).recovered


async def test_epoch_changes_after_flushall(client: coredis.Redis[bytes]) -> None:
    hist = RedisHistory(client, new_epoch=_epochs("f"))
    await hist.append("c", b"a", POLICY)
    await hist.append("c", b"b", POLICY)
    await client.flushall()
    new = await hist.append("c", b"c", POLICY)  # each append proposes a fresh epoch
    assert (new.offset, new.epoch) == (1, "f3")
    assert await hist.recover("c", RecoverRequest(2, "f1"), POLICY) == Recovery(False, 1, "f3")


async def test_a_stream_left_without_its_hash_is_dropped(client: coredis.Redis[bytes]) -> None:
    """Eviction can take one key and not the other: the new epoch starts a clean stream
    (otherwise XADD of id 1-0 below the old ids would fail)."""
    hist = RedisHistory(client, new_epoch=_epochs("d"))
    for _ in range(3):
        await hist.append("c", b"x", POLICY)
    meta, stream = hist.keys("c")
    await client.delete([meta])
    assert await hist.append("c", b"y", POLICY) == Publication(1, "d4", b"y")
    assert await client.xlen(stream) == 1


async def test_idle_histories_expire_and_come_back_with_a_new_epoch(
    client: coredis.Redis[bytes],
) -> None:
    policy = HistoryPolicy(size=10, ttl_s=5, keep_s=60)
    hist = RedisHistory(client, new_epoch=_epochs("x"))
    await hist.append("c", b"a", policy)
    meta, stream = hist.keys("c")
    for key in (meta, stream):
        assert 59_000 < await client.pttl(key) <= 60_000  # refreshed by every append
    await client.delete([meta, stream])  # what Redis's expiry does once keep_s has passed
    new = await hist.append("c", b"b", policy)
    assert (new.offset, new.epoch) == (1, "x2")


async def test_history_survives_a_process_restart_and_is_lost_with_redis(
    redis_server: RedisServer,
) -> None:
    async with _client(redis_server) as first:
        hist = RedisHistory(first, new_epoch=_epochs("p"))
        stored = [await hist.append("c", f"{i}".encode(), POLICY) for i in range(1, 4)]
    async with _client(redis_server) as second:  # a restarted server process
        hist = RedisHistory(second, new_epoch=_epochs("q"))
        assert await hist.read_range("c", 2, 3, POLICY) == ("p1", tuple(stored[1:]))
        assert (await hist.recover("c", RecoverRequest(1, "p1"), POLICY)).publications == tuple(
            stored[1:]
        )
        assert (await hist.append("c", b"4", POLICY)).offset == 4
    redis_server.stop()  # no persistence: a restart loses everything
    redis_server.start()
    async with _client(redis_server) as third:
        hist = RedisHistory(third, new_epoch=_epochs("r"))
        assert await hist.position("c") is None
        assert await hist.append("c", b"5", POLICY) == Publication(1, "r1", b"5")


async def test_append_publishes_the_frame_in_the_same_script(
    client: coredis.Redis[bytes], redis_server: RedisServer
) -> None:
    hist = RedisHistory(client, new_epoch=_epochs("b"))
    frames: list[bytes] = []
    async with _client(redis_server) as sub_client, sub_client.pubsub() as pubsub:
        await pubsub.subscribe("bus:news")
        for i in range(3):
            await hist.append(
                "news", b'{"s":"x:y"}' + str(i).encode(), POLICY, publish_to="bus:news"
            )
        with trio.fail_after(5):
            while len(frames) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None and isinstance(message["data"], bytes):
                    frames.append(message["data"])
    assert [decode_frame(f) for f in frames] == [
        (i + 1, "b1", b'{"s":"x:y"}' + str(i).encode()) for i in range(3)
    ]


@pytest.mark.parametrize(
    "raw",
    [b'{"s":"..."}', b"H", b"Hx:e:p", b"H1:e", b"H1::p", b"H:e:p", b"H1:\xff:p"],
)
def test_decode_frame_refuses_what_is_not_a_frame(raw: bytes) -> None:
    assert decode_frame(raw) is None


def test_decode_frame_keeps_colons_in_the_payload() -> None:
    assert decode_frame(b"H12:ep:a:b") == (12, "ep", b"a:b")


async def test_an_epoch_with_a_colon_is_refused(client: coredis.Redis[bytes]) -> None:
    hist = RedisHistory(client, new_epoch=lambda: "a:b")
    with pytest.raises(InvalidOptionsError):
        await hist.append("c", b"x", POLICY)
