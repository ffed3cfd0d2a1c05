"""Revocation: the pure rules (properties), the jti/iat_us claims of signed tokens, the
in-process store, and the Redis store against a real redis-server."""

from __future__ import annotations

import ast
import gc
import itertools
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trio_socketcluster
from trio_socketcluster.auth import AuthEngine, Keyring, decode_unverified
from trio_socketcluster.brokers.local_revocation import LocalRevocationStore
from trio_socketcluster.brokers.redis_revocation import RedisRevocationStore
from trio_socketcluster.errors import (
    AuthError,
    AuthTokenInvalidError,
    BrokerError,
    InvalidArgumentsError,
)
from trio_socketcluster.revocation import (
    IssueClock,
    JtiRevoked,
    Revocation,
    RevocationEvent,
    RevocationList,
    UserRevoked,
    issued_at_us,
    jti_forget_at,
    micros,
    revoked_error,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from redisserver import RedisServer

NOW = 1_800_000_000.0
US = 1_000_000
times = st.floats(min_value=1e9, max_value=4e9, allow_nan=False)
leeways = st.sampled_from([0.0, 0.5, 30.0])


def test_pure_modules_import_no_clock_io_or_randomness() -> None:
    forbidden = {"trio", "socket", "time", "random", "secrets", "asyncio", "os", "httpx",
                 "coredis", "anyio"}  # fmt: skip
    package = Path(trio_socketcluster.__file__).parent
    for name in ("revocation.py", "oidc.py"):
        tree = ast.parse((package / name).read_text())
        roots = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        }
        assert roots, name
        assert not roots & forbidden, (name, roots & forbidden)


# ---------------------------------------------------------------------------------------------
# Pure rules


@given(exp=times, leeway=leeways, now=times)
def test_a_revoked_jti_is_refused_until_its_exp_and_forgotten_after(
    exp: float, leeway: float, now: float
) -> None:
    table = RevocationList()
    table.apply(JtiRevoked(jti="t1", forget_at=jti_forget_at(exp, leeway)))
    token = {"jti": "t1", "exp": exp}
    expected = Revocation.JTI if now < exp + leeway else None
    assert table.check(token, now) is expected
    assert table.check({"jti": "t2", "exp": exp}, now) is None
    table.prune(now)
    assert len(table) == (1 if now < exp + leeway else 0)
    assert table.check(token, now) is expected


def test_a_jti_without_exp_is_revoked_for_ever() -> None:
    table = RevocationList()
    table.apply(JtiRevoked(jti="t", forget_at=jti_forget_at(None, 5)))
    table.prune(1e300)
    assert table.check({"jti": "t"}, 1e300) is Revocation.JTI


@given(
    watermark=st.integers(min_value=10**15, max_value=4 * 10**15),
    delta=st.integers(min_value=-3 * US, max_value=3 * US),
)
def test_a_watermark_refuses_exactly_the_tokens_issued_up_to_it(watermark: int, delta: int) -> None:
    table = RevocationList()
    table.apply(UserRevoked(user="alice", before_us=watermark, forget_at=None))
    issued = watermark + delta
    token = {"username": "alice", "iat": issued // US, "iat_us": issued}
    assert (table.check(token, NOW) is Revocation.WATERMARK) == (issued <= watermark)
    assert table.check({**token, "username": "bob"}, NOW) is None


@given(watermark=st.integers(min_value=10**15, max_value=4 * 10**15))
def test_a_token_issued_within_the_same_second_after_the_watermark_works(watermark: int) -> None:
    table = RevocationList()
    table.apply(UserRevoked(user="alice", before_us=watermark, forget_at=None))
    after = {"username": "alice", "iat": watermark // US, "iat_us": watermark + 1}
    assert table.check(after, NOW) is None
    # Without iat_us the same-second token cannot be told apart: refused (conservative).
    assert table.check({"username": "alice", "iat": watermark // US}, NOW) is Revocation.WATERMARK
    assert table.check({"username": "alice"}, NOW) is Revocation.WATERMARK  # no iat at all
    assert table.check({"username": "alice", "iat": watermark // US + 1}, NOW) is None


@given(nows=st.lists(st.one_of(times, st.just(NOW)), min_size=1, max_size=50))
def test_issue_stamps_strictly_increase_even_on_a_still_or_backward_clock(
    nows: list[float],
) -> None:
    clock = IssueClock()
    stamps = [clock.stamp(now) for now in nows]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert all(s >= micros(n) for s, n in zip(stamps, nows, strict=True))


events = st.one_of(
    st.builds(
        JtiRevoked,
        jti=st.sampled_from(["a", "b"]),
        forget_at=st.one_of(st.none(), st.floats(min_value=0, max_value=10)),
    ),
    st.builds(
        UserRevoked,
        user=st.sampled_from(["alice", "bob"]),
        before_us=st.integers(0, 10),
        forget_at=st.one_of(st.none(), st.floats(min_value=0, max_value=10)),
    ),
)


@given(st.lists(events, max_size=8), st.randoms())
def test_applying_events_in_any_order_gives_the_same_table(
    batch: list[RevocationEvent], rnd: Any
) -> None:
    one, two = RevocationList(), RevocationList()
    for event in batch:
        one.apply(event)
    shuffled = list(batch)
    rnd.shuffle(shuffled)
    for event in shuffled + shuffled:  # twice: replays change nothing
        two.apply(event)
    assert dict(one.jtis()) == dict(two.jtis())
    assert dict(one.watermarks()) == dict(two.watermarks())
    for now in (0.0, 5.0, 11.0):
        one.prune(now)
        two.prune(now)
        assert dict(one.jtis()) == dict(two.jtis())
        assert dict(one.watermarks()) == dict(two.watermarks())


def test_event_revokes_matches_the_table() -> None:
    watermark = UserRevoked(user="alice", before_us=5 * US, forget_at=None)
    assert watermark.revokes({"username": "alice", "iat": 5})
    assert not watermark.revokes({"username": "alice", "iat": 5, "iat_us": 5 * US + 1})
    assert not watermark.revokes({"username": "bob", "iat": 1})
    assert JtiRevoked(jti="x", forget_at=None).revokes({"jti": "x"})
    assert not JtiRevoked(jti="x", forget_at=None).revokes({"jti": "y"})


def test_issue_time_falls_back_to_iat_and_ignores_junk() -> None:
    assert issued_at_us({"iat": 7, "iat_us": 7_000_123}) == 7_000_123
    assert issued_at_us({"iat": 7, "iat_us": "7000123"}) == 7 * US
    assert issued_at_us({"iat": 7, "iat_us": True}) == 7 * US
    assert issued_at_us({"iat": 1e303}) is None
    assert issued_at_us({"iat": "7"}) is None


def test_revoked_tokens_are_bad_tokens() -> None:
    for reason in (Revocation.JTI, Revocation.WATERMARK):
        error = revoked_error(reason)
        assert isinstance(error, AuthTokenInvalidError)
        assert error.to_wire() == {
            "name": "AuthTokenInvalidError", "message": "jwt revoked", "isBadToken": True,
        }  # fmt: skip
    assert revoked_error(Revocation.UNAVAILABLE).to_wire()["isBadToken"] is False


# ---------------------------------------------------------------------------------------------
# Signing with jti and iat_us

ENGINE = AuthEngine(Keyring.symmetric("test-auth-key"))


def test_signed_tokens_carry_the_given_jti_and_issue_stamp() -> None:
    stamp = micros(NOW) + 999_999
    token = ENGINE.sign({"username": "alice"}, now=NOW, jti="j-1", issued_at_us=stamp)
    claims = ENGINE.verify(token, now=NOW)
    assert claims["jti"] == "j-1"
    assert claims["iat_us"] == stamp
    assert claims["iat"] == stamp // US
    assert claims["exp"] == claims["iat"] + 86400


def test_a_renewed_token_is_a_new_token() -> None:
    old = ENGINE.verify(
        ENGINE.sign({"username": "a"}, now=NOW, jti="old", issued_at_us=micros(NOW)), now=NOW
    )
    renewed = ENGINE.verify(
        ENGINE.sign(old, now=NOW + 5, jti="new", issued_at_us=micros(NOW + 5)), now=NOW + 5
    )
    assert renewed["jti"] == "new"
    assert renewed["iat_us"] == micros(NOW + 5)
    assert renewed["iat"] == old["iat"]  # a payload iat wins, as before


def test_sign_without_jti_is_unchanged() -> None:
    claims = decode_unverified(ENGINE.sign({"username": "a"}, now=NOW + 0.7))
    assert claims == {"username": "a", "iat": int(NOW), "exp": int(NOW) + 86400}


@pytest.mark.parametrize("kwargs", [{"jti": ""}, {"jti": 5}, {"issued_at_us": 1.5},
                                    {"issued_at_us": True}])  # fmt: skip
def test_sign_refuses_bad_ids(kwargs: dict[str, Any]) -> None:
    with pytest.raises(AuthError):
        ENGINE.sign({"a": 1}, now=NOW, **kwargs)


# ---------------------------------------------------------------------------------------------
# The in-process store


def wall(offset: float = NOW) -> Any:
    """A clock following trio's (so MockClock controls it), starting at ``offset``."""
    start = trio.current_time()
    return lambda: offset + trio.current_time() - start


async def test_local_store_jti(mock_clock: trio.testing.MockClock) -> None:
    store = LocalRevocationStore(clock=wall(), leeway_s=2)
    heard: list[RevocationEvent] = []
    remove = store.listen(heard.append)
    token = {"jti": "j", "exp": NOW + 10}
    assert await store.check(token) is None
    event = await store.revoke_jti("j", NOW + 10)
    assert heard == [event]
    assert event.forget_at == NOW + 12
    assert event.revokes(token)
    assert await store.check(token) is Revocation.JTI
    mock_clock.jump(11.9)
    assert await store.check(token) is Revocation.JTI
    mock_clock.jump(0.1)
    assert await store.check(token) is None
    assert len(store.table) == 0
    remove()
    await store.revoke_jti("k", None)
    assert len(heard) == 1


async def test_local_store_logout_everywhere_on_a_still_clock(
    mock_clock: trio.testing.MockClock,
) -> None:
    store = LocalRevocationStore(clock=wall())
    before = {"username": "alice", "iat": int(NOW), "iat_us": store.issue_stamp()}
    await store.revoke_user_before("alice", ttl_s=100)
    after = {"username": "alice", "iat": int(NOW), "iat_us": store.issue_stamp()}
    # trio's clock has not moved: the stamps alone order the three calls.
    assert await store.check(before) is Revocation.WATERMARK
    assert await store.check(after) is None
    mock_clock.jump(100)
    assert await store.check(before) is None
    assert len(store.table) == 0


async def test_local_store_arguments() -> None:
    store = LocalRevocationStore()
    with pytest.raises(InvalidArgumentsError):
        await store.revoke_user_before("a", ttl_s=0)
    with pytest.raises(InvalidArgumentsError):
        await store.revoke_jti(5, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The Redis store, against a real redis-server


@pytest.fixture(autouse=True)
def collect_coredis_garbage() -> Iterator[None]:
    """coredis (6.9) leaves the anyio memory streams of failed or cancelled connections
    unclosed, in reference cycles: their ResourceWarning would surface in whichever later
    test the garbage collector happens to run. Collect them here, at the end of each test
    of this module, with that one warning silenced."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
async def stores(
    redis_server: RedisServer, nursery: trio.Nursery
) -> tuple[RedisRevocationStore, RedisRevocationStore]:
    """Two stores (two workers) on one Redis, both synced."""
    a = RedisRevocationStore.from_url(redis_server.url, leeway_s=1)
    b = RedisRevocationStore.from_url(redis_server.url, leeway_s=1)
    for store in (a, b):
        await nursery.start(store.run)
        with trio.fail_after(10):
            await store.wait_synced()
    return a, b


async def raw_client(url: str) -> coredis.Redis[bytes]:
    return coredis.Redis.from_url(url)


class Heard:
    """A listener that records events and lets a test await the n-th."""

    def __init__(self) -> None:
        self.events: list[RevocationEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: RevocationEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.events) < count:
                await self._changed.wait()


async def test_redis_revocation_reaches_every_worker(
    stores: tuple[RedisRevocationStore, RedisRevocationStore],
) -> None:
    a, b = stores
    heard = Heard()
    b.listen(heard)
    token = {"jti": "j1", "exp": 4e9, "username": "alice", "iat_us": a.issue_stamp()}
    assert await b.check(token) is None
    await a.revoke_jti("j1", 4e9)
    assert await a.check(token) is Revocation.JTI  # at once on the revoking worker
    await heard.wait_for(1)
    assert heard.events == [JtiRevoked(jti="j1", forget_at=4e9 + 1)]
    assert await b.check(token) is Revocation.JTI
    await a.revoke_user_before("alice", ttl_s=86400)
    await heard.wait_for(2)
    event = heard.events[1]
    assert isinstance(event, UserRevoked)
    assert event.revokes({**token, "jti": "other"})
    assert await b.check({**token, "jti": "other"}) is Revocation.WATERMARK
    fresh = {"username": "alice", "jti": "j2", "iat_us": b.issue_stamp() + 10**6}
    assert await b.check(fresh) is None


async def test_redis_revocations_survive_a_restart_of_the_store(
    redis_server: RedisServer,
) -> None:
    now = NOW
    async with trio.open_nursery() as nursery:
        first = RedisRevocationStore.from_url(redis_server.url, clock=lambda: now)
        await nursery.start(first.run)
        await first.revoke_jti("kept", 4e9)
        await first.revoke_jti("gone", NOW - 10)  # already expired: Redis drops it
        await first.revoke_user_before("bob", ttl_s=600, at_us=micros(NOW))
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        second = RedisRevocationStore.from_url(redis_server.url, clock=lambda: now)
        await nursery.start(second.run)
        assert second.synced
        assert await second.check({"jti": "kept"}) is Revocation.JTI
        assert await second.check({"jti": "gone"}) is None
        assert await second.check({"username": "bob", "iat": int(NOW)}) is Revocation.WATERMARK
        assert dict(second.table.jtis()) == {"kept": 4e9}
        nursery.cancel_scope.cancel()


async def test_redis_keys_expire_when_the_token_would(
    stores: tuple[RedisRevocationStore, RedisRevocationStore], redis_server: RedisServer
) -> None:
    a, _ = stores
    exp = time.time() + 120
    await a.revoke_jti("ttl", exp)
    await a.revoke_user_before("carol", ttl_s=300)
    client = await raw_client(redis_server.url)
    async with client:
        jti_ttl = await client.pttl(b"tsc:0:rv:j:ttl")
        user_ttl = await client.pttl(b"tsc:0:rv:u:carol")
        forever = await a.revoke_jti("no-exp", None)
        assert forever.forget_at is None
        assert await client.pttl(b"tsc:0:rv:j:no-exp") == -1
    # exp + leeway (1 s) from now, within the test's own run time
    assert 110_000 < jti_ttl <= 121_000, jti_ttl
    assert 290_000 < user_ttl <= 301_000


async def test_redis_watermarks_only_move_forward(
    stores: tuple[RedisRevocationStore, RedisRevocationStore], redis_server: RedisServer
) -> None:
    a, b = stores
    await a.revoke_user_before("dave", ttl_s=600, at_us=5 * US)
    await b.revoke_user_before("dave", ttl_s=60, at_us=3 * US)  # a late, older call
    client = await raw_client(redis_server.url)
    async with client:
        value = await client.get(b"tsc:0:rv:u:dave")
    assert value is not None
    assert value.split()[0] == b"5000000"
    assert await b.check({"username": "dave", "iat_us": 4 * US}) is Revocation.WATERMARK


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # coredis: see collect_coredis_garbage
async def test_redis_store_without_redis(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    async with trio.open_nursery() as nursery:
        open_ = RedisRevocationStore.from_url(url, timeout_s=0.5, reconnect_max_s=0.1)
        closed = RedisRevocationStore.from_url(
            url, timeout_s=0.5, reconnect_max_s=0.1, fail_closed=True
        )
        for store in (open_, closed):
            await nursery.start(store.run)
            assert not store.synced
        token = {"jti": "x", "username": "eve"}
        assert await open_.check(token) is None
        assert await closed.check(token) is Revocation.UNAVAILABLE
        with pytest.raises(BrokerError):
            await open_.revoke_jti("x", 4e9)
        assert await open_.check(token) is Revocation.JTI  # still refused on this worker
        assert await open_.check({"jti": "other"}) is None
        nursery.cancel_scope.cancel()


async def test_redis_store_asks_redis_while_not_synced(
    stores: tuple[RedisRevocationStore, RedisRevocationStore], redis_server: RedisServer
) -> None:
    a, _ = stores
    await a.revoke_jti("direct", 4e9)
    client = await raw_client(redis_server.url)
    lagging = RedisRevocationStore(client)
    # Not running its subscriber: it is not synced, so check asks Redis (MGET).
    async with client:
        assert await lagging.check({"jti": "direct"}) is Revocation.JTI
        assert await lagging.check({"jti": "unknown"}) is None
    assert dict(lagging.table.jtis()) == {"direct": 4e9 + 1}


def test_redis_store_ignores_malformed_messages() -> None:
    store = RedisRevocationStore(coredis.Redis())
    for raw in (b"", b"x\n1\n2", b"j\nnot-a-number\nid", b"u\n1\nuser", b"u\nx\n1\nuser"):
        store.receive(raw)
    assert len(store.table) == 0
    store.receive(b"u\n7\n9000\nzo\ne")
    assert dict(store.table.watermarks()) == {"zo\ne": (7, 9.0)}
