"""Properties of the built-in middleware: token channels, origins, the token bucket and the
per-socket rate limit, channel-name validation and payload size."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trio_socketcluster.errors import (
    InvalidArgumentsError,
    InvalidOptionsError,
    ResourceLimitError,
    ServerProtocolError,
)
from trio_socketcluster.middleware import (
    Allowed,
    Blocked,
    EmitRequest,
    HandshakeWSRequest,
    Middleware,
    PublishInRequest,
    PublishOutRequest,
    SubscribeRequest,
    TokenBucket,
    allowed_origins,
    max_payload_size,
    origin_allowed,
    rate_limit,
    run_chain,
    token_channels,
    valid_channel_names,
)
from trio_socketcluster.transport.base import HandshakeRequest


@dataclass
class FakeSocket:
    id: str


SOCK = FakeSocket("s1")

channel_names = st.sampled_from(["news", "private-a", "private-b", "chat", "x"]) | st.text(
    max_size=12
)
tokens = st.one_of(
    st.none(),
    st.just("not-a-mapping"),
    st.fixed_dictionaries({"username": st.just("alice")}),
    st.fixed_dictionaries({"channels": st.lists(channel_names, max_size=4)}),
    st.fixed_dictionaries({"channels": channel_names}),  # a string claim is not a list
    st.fixed_dictionaries({"rooms": st.lists(channel_names, max_size=4)}),
)


def publish_in(channel: str, token: Any, expired: bool = False, data: Any = None) -> Any:
    return PublishInRequest(
        socket=SOCK,
        channel=channel,
        data=data,
        auth_token=token,
        auth_token_expired=expired,
        now=0.0,
    )


def subscribe(channel: Any, token: Any, expired: bool = False, data: Any = None) -> Any:
    return SubscribeRequest(
        socket=SOCK,
        channel=channel,
        wait_for_auth=False,
        data=data,
        auth_token=token,
        auth_token_expired=expired,
        now=0.0,
    )


def emit(data: Any, *, socket: Any = SOCK, now: float = 0.0) -> Any:
    return EmitRequest(
        socket=socket,
        event="chat",
        data=data,
        is_invoke=False,
        auth_token=None,
        auth_token_expired=False,
        now=now,
    )


def granted(token: Any, claim: str, channel: str, expired: bool) -> bool:
    """Model: the token lists the channel under ``claim`` (and is not expired)."""
    if expired or not isinstance(token, dict):
        return False
    value = token.get(claim)
    return isinstance(value, list) and channel in value


# --- token_channels ----------------------------------------------------------------------------


@given(channel_names, tokens, st.booleans(), st.sampled_from(["channels", "rooms"]))
def test_token_channels_publish(channel: str, token: Any, expired: bool, claim: str) -> None:
    mw = token_channels(claim=claim)
    outcome = run_chain([mw], publish_in(channel, token, expired))
    if granted(token, claim, channel, expired):
        assert isinstance(outcome, Allowed)
    else:
        assert isinstance(outcome, Blocked)
        assert outcome.error == f"You are not authorized to publish to {channel}"


@given(channel_names, tokens, st.booleans(), st.booleans(), st.sampled_from([None, "private-"]))
def test_token_channels_subscribe(
    channel: str, token: Any, expired: bool, check: bool, prefix: str | None
) -> None:
    mw = token_channels(subscribe=check, subscribe_prefix=prefix)
    outcome = run_chain([mw], subscribe(channel, token, expired))
    checked = (check or prefix is not None) and channel.startswith(prefix or "")
    if not checked or granted(token, "channels", channel, expired):
        assert isinstance(outcome, Allowed)
    else:
        assert isinstance(outcome, Blocked)
        assert outcome.error == f"You are not authorized to subscribe to {channel}"


def test_token_channels_conformance_rules() -> None:
    mw = token_channels(subscribe_prefix="private-")
    alice = {"username": "alice", "channels": ["private-a", "news"]}
    assert isinstance(run_chain([mw], subscribe("public", None)), Allowed)
    assert isinstance(run_chain([mw], subscribe("private-a", alice)), Allowed)
    assert isinstance(run_chain([mw], subscribe("private-b", alice)), Blocked)
    assert isinstance(run_chain([mw], subscribe("private-a", alice, expired=True)), Blocked)
    assert isinstance(run_chain([mw], publish_in("news", alice)), Allowed)
    assert isinstance(run_chain([mw], publish_in("public", None)), Blocked)  # nowhere unauth
    other = PublishOutRequest(socket=SOCK, channel="x", data=None, auth_token=None, now=0.0)
    assert isinstance(run_chain([mw], other), Allowed)  # other hooks untouched


# --- origins -----------------------------------------------------------------------------------

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)


def ws_request(origin: str | None) -> HandshakeWSRequest:
    headers = () if origin is None else (("origin", origin),)
    http = HandshakeRequest(path="/socketcluster/", query="", headers=headers)
    return HandshakeWSRequest(request=http, now=0.0)


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        ("*:*", "http://anything.org", True),
        ("*:*", None, True),
        ("example.com:*", "http://example.com", True),
        ("example.com:*", "https://example.com:8443", True),
        ("example.com:*", "http://ample.com", False),  # the reference's substring bug
        ("example.com:*", "http://www.example.com", False),
        ("foo.org:443", "https://foo.org", True),  # https defaults to 443 (S19)
        ("foo.org:443", "wss://foo.org", True),
        ("foo.org:443", "http://foo.org", False),
        ("foo.org:80", "http://foo.org", True),
        ("*:8080", "http://a.b:8080", True),
        ("*:8080", "http://a.b:8081", False),
        ("a.com:1 b.org:*", "http://b.org:5", True),
        ("a.com:1,b.org:*", "http://b.org:5", True),
        (["a.com:1", "b.org:*"], "http://a.com:1", True),
        ("a.com:*", None, False),  # no Origin: host null, port 80
        ("null:80", None, True),
        ("null:*", "null", True),
        ("*:80", None, True),
        ("a.com:*", "http://a.com:99999", False),  # invalid port
        ("EXAMPLE.com:*", "http://Example.COM", True),
        ("[::1]:8000", "http://[::1]:8000", True),
    ],
)
def test_origin_table(origins: Any, origin: str | None, allowed: bool) -> None:
    assert origin_allowed(origins, origin) is allowed


@given(hosts, ports, st.sampled_from(["http", "https", "ws", "wss"]))
def test_exact_entry_allows_its_origin(host: str, port: int, scheme: str) -> None:
    assert origin_allowed(f"{host}:{port}", f"{scheme}://{host}:{port}")
    assert origin_allowed(f"{host}:*", f"{scheme}://{host}:{port}")
    assert origin_allowed(f"*:{port}", f"{scheme}://{host}:{port}")
    default = 443 if scheme in ("https", "wss") else 80
    assert origin_allowed(f"{host}:{port}", f"{scheme}://{host}") is (port == default)


@given(hosts, hosts, ports)
def test_no_substring_matching(listed: str, other: str, port: int) -> None:
    assume(listed != other)
    entries = f"{listed}:* {listed}:{port}"
    assert not origin_allowed(entries, f"http://{other}:{port}")
    assert not origin_allowed(entries, f"http://{other}")


@pytest.mark.parametrize("bad", ["example.com", "example.com:http", ":80", "a.com:-1", ""])
def test_invalid_origin_entries(bad: str) -> None:
    if bad == "":
        assert not origin_allowed(bad, "http://a.com")  # an empty list allows nothing
        return
    with pytest.raises(InvalidOptionsError):
        origin_allowed([bad], "http://a.com")
    with pytest.raises(InvalidOptionsError):
        allowed_origins(bad)


def test_allowed_origins_middleware() -> None:
    mw = allowed_origins("example.com:443")
    assert isinstance(run_chain([mw], ws_request("https://example.com")), Allowed)
    outcome = run_chain([mw], ws_request("http://evil.org"))
    assert isinstance(outcome, Blocked)
    assert outcome.status_code == 403
    assert isinstance(outcome.error, ServerProtocolError)
    assert outcome.error.message == (
        "Failed to authorize socket handshake - Invalid origin: http://evil.org"
    )
    missing = run_chain([mw], ws_request(None))
    assert isinstance(missing, Blocked)
    assert str(missing.error).endswith("Invalid origin: null")


# --- token bucket ------------------------------------------------------------------------------

rates = st.floats(0, 1000, allow_nan=False)
bursts = st.floats(0, 100, allow_nan=False)
steps = st.lists(
    st.tuples(st.floats(0, 10, allow_nan=False), st.floats(0.01, 5, allow_nan=False)),
    max_size=60,
)


@given(rates, bursts, st.floats(0, 1e6, allow_nan=False), steps)
def test_bucket_admits_at_most_burst_plus_rate_times_elapsed(
    rate: float, burst: float, start: float, takes: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket.full(rate_per_s=rate, burst=burst, now=start)
    now = start
    admitted = 0.0
    for dt, cost in takes:
        now += dt
        ok, bucket = bucket.take(now, cost)
        admitted += cost if ok else 0.0
        assert -1e-9 <= bucket.tokens <= burst + 1e-9
        assert admitted <= burst + rate * (now - start) + 1e-6 * (1 + admitted)


@given(st.floats(0.1, 100), st.floats(1, 50), st.floats(0, 1e6, allow_nan=False))
def test_bucket_refills(rate: float, burst: float, start: float) -> None:
    bucket = TokenBucket(rate_per_s=rate, burst=burst, tokens=0.0, updated=start)
    ok, bucket = bucket.take(start)
    assert not ok
    later = start + 1.0 / rate + 1e-6 * max(1.0, start)
    ok, bucket = bucket.take(later)
    assert ok
    # waiting forever never fills past burst
    _ok, bucket = bucket.take(later + 1e9)
    assert bucket.tokens <= burst - 1 + 1e-9


def test_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=5.0, tokens=1.0, updated=10.0)
    ok, after = bucket.take(5.0)
    assert ok
    assert after.tokens == 0.0
    assert after.updated == 10.0
    ok, after = after.take(9.0)
    assert not ok


def test_cost_above_burst_is_never_admitted() -> None:
    bucket = TokenBucket.full(rate_per_s=10.0, burst=2.0, now=0.0)
    assert not bucket.take(1000.0, cost=3.0)[0]


# --- rate_limit --------------------------------------------------------------------------------


@given(
    st.floats(0, 50, allow_nan=False),
    st.integers(0, 10),
    st.lists(st.tuples(st.integers(0, 2), st.floats(0, 0.5, allow_nan=False)), max_size=80),
)
def test_rate_limit_per_socket_law(
    rate: float, burst: int, events: list[tuple[int, float]]
) -> None:
    limiter = rate_limit(rate_per_s=rate, burst=burst)
    sockets = [FakeSocket(f"s{i}") for i in range(3)]
    now = 0.0
    admitted = [0, 0, 0]
    for which, dt in events:
        now += dt
        outcome = run_chain([limiter], emit(None, socket=sockets[which], now=now))
        if isinstance(outcome, Allowed):
            admitted[which] += 1
        else:
            assert isinstance(outcome.error, ResourceLimitError)
            assert outcome.error.message == "Rate limit exceeded"
    for count in admitted:
        assert count <= burst + rate * now + 1e-6
    assert len(limiter) == len({w for w, _ in events})


def test_rate_limit_burst_refill_and_forget() -> None:
    limiter = rate_limit(rate_per_s=2.0, burst=3)
    a, b = FakeSocket("a"), FakeSocket("b")

    def ok(socket: FakeSocket, now: float) -> bool:
        return isinstance(run_chain([limiter], emit(1, socket=socket, now=now)), Allowed)

    assert [ok(a, 0.0) for _ in range(4)] == [True, True, True, False]
    assert ok(b, 0.0)  # sockets are independent
    assert ok(a, 0.5)
    assert not ok(a, 0.5)
    limiter.forget(a)
    limiter.forget(FakeSocket("never-seen"))
    assert [ok(a, 0.5) for _ in range(4)] == [True, True, True, False]
    # sockets without a string id are keyed by identity
    anon1, anon2 = object(), object()
    for _ in range(3):
        run_chain([limiter], emit(1, socket=anon1, now=1.0))
    assert isinstance(run_chain([limiter], emit(1, socket=anon1, now=1.0)), Blocked)
    assert isinstance(run_chain([limiter], emit(1, socket=anon2, now=1.0)), Allowed)
    # requests without a socket are not limited
    assert limiter(HandshakeWSRequest(request=ws_request(None).request, now=0.0)) is None


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (1.0, -1.0), (math.nan, 1.0)])
def test_rate_limit_rejects_bad_options(rate: float, burst: float) -> None:
    with pytest.raises(InvalidOptionsError):
        rate_limit(rate_per_s=rate, burst=burst)


# --- valid_channel_names -----------------------------------------------------------------------

DEFAULT_PATTERN = re.compile(r"[\w\-.:/@#]+")


@given(st.text(max_size=40) | st.from_regex(DEFAULT_PATTERN, fullmatch=True), st.integers(0, 30))
def test_channel_names_model(channel: str, max_length: int) -> None:
    mw = valid_channel_names(max_length=max_length)
    should_pass = len(channel) <= max_length and DEFAULT_PATTERN.fullmatch(channel) is not None
    for request in (subscribe(channel, None), publish_in(channel, None)):
        outcome = run_chain([mw], request)
        if should_pass:
            assert isinstance(outcome, Allowed)
        else:
            assert isinstance(outcome, Blocked)
            assert isinstance(outcome.error, InvalidArgumentsError)


def test_channel_names_edges() -> None:
    mw = valid_channel_names()
    assert isinstance(run_chain([mw], subscribe("room/1@a#b:c-d.e", None)), Allowed)
    for bad in ["news\n", "", "a b", "x" * 257]:
        assert isinstance(run_chain([mw], subscribe(bad, None)), Blocked)
    assert isinstance(run_chain([mw], subscribe(123, None)), Blocked)
    custom = valid_channel_names(pattern=r"^room-\d+$")
    assert isinstance(run_chain([custom], subscribe("room-12", None)), Allowed)
    assert isinstance(run_chain([custom], subscribe("room-x", None)), Blocked)
    assert isinstance(run_chain([mw], emit(None)), Allowed)  # no channel: not its business


# --- max_payload_size --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(json_values, st.integers(0, 200))
def test_payload_size_model(data: Any, limit: int) -> None:
    size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    mw: Middleware = max_payload_size(limit)
    for request in (emit(data), publish_in("c", None, data=data), subscribe("c", None, data=data)):
        outcome = run_chain([mw], request)
        if size <= limit:
            assert isinstance(outcome, Allowed)
            assert outcome.changed is False
        else:
            assert isinstance(outcome, Blocked)
            assert isinstance(outcome.error, ResourceLimitError)
            assert str(size) in outcome.error.message


def test_payload_size_counts_utf8_bytes_and_rejects_unencodable() -> None:
    assert isinstance(run_chain([max_payload_size(4)], emit("é")), Allowed)  # "é" = 4 bytes
    assert isinstance(run_chain([max_payload_size(3)], emit("é")), Blocked)
    outcome = run_chain([max_payload_size(1000)], emit({1, 2}))
    assert isinstance(outcome, Blocked)
    assert isinstance(outcome.error, InvalidArgumentsError)
    with pytest.raises(InvalidOptionsError):
        max_payload_size(-1)
