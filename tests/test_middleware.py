"""Laws of the middleware chain (``run_chain``/``run_chain_async``), the registry, and a
stateful check of subscribe middleware in front of a tiny subscription table."""

from __future__ import annotations

import dataclasses
import gc
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trio_socketcluster.errors import (
    AuthTokenInvalidError,
    InvalidActionError,
    SilentMiddlewareBlockedError,
    SocketClusterError,
    UnknownError,
    dehydrate_error,
)
from trio_socketcluster.middleware import (
    ALLOW,
    SILENT,
    UNCHANGED,
    Allow,
    Allowed,
    AuthenticateRequest,
    Block,
    Blocked,
    EmitRequest,
    HandshakeSCRequest,
    HandshakeWSRequest,
    Hook,
    Middleware,
    MiddlewareRegistry,
    Pending,
    PublishInRequest,
    PublishOutRequest,
    Request,
    SubscribeRequest,
    compose,
    is_sync_chain,
    run_chain,
    run_chain_async,
    start_chain,
)
from trio_socketcluster.transport.base import HandshakeRequest

if TYPE_CHECKING:
    from collections.abc import Callable

# --- requests ----------------------------------------------------------------------------------


@dataclass
class FakeSocket:
    id: str


SOCK = FakeSocket("sock-1")
DATALESS = {Hook.HANDSHAKE_WS, Hook.AUTHENTICATE}


def make_request(hook: Hook, data: Any = (), *, now: float = 0.0) -> Request:
    """A request for ``hook`` carrying ``data`` where the hook has data."""
    token = {"username": "alice"}
    match hook:
        case Hook.HANDSHAKE_WS:
            http = HandshakeRequest(path="/socketcluster/", query="", headers=())
            return HandshakeWSRequest(request=http, now=now)
        case Hook.HANDSHAKE_SC:
            return HandshakeSCRequest(socket=SOCK, data=data, now=now)
        case Hook.AUTHENTICATE:
            return AuthenticateRequest(
                socket=SOCK, auth_token=token, signed_auth_token="a.b.c", now=now
            )
        case Hook.SUBSCRIBE:
            return SubscribeRequest(
                socket=SOCK,
                channel="news",
                wait_for_auth=False,
                data=data,
                auth_token=token,
                auth_token_expired=False,
                now=now,
            )
        case Hook.PUBLISH_IN:
            return PublishInRequest(
                socket=SOCK,
                channel="news",
                data=data,
                auth_token=token,
                auth_token_expired=False,
                now=now,
            )
        case Hook.PUBLISH_OUT:
            return PublishOutRequest(
                socket=SOCK, channel="news", data=data, auth_token=None, now=now
            )
        case Hook.EMIT:
            return EmitRequest(
                socket=SOCK,
                event="chat",
                data=data,
                is_invoke=True,
                auth_token=None,
                auth_token_expired=False,
                now=now,
            )


# --- middleware described as data, so that a reference interpreter can predict outcomes ------


@dataclass(frozen=True)
class Spec:
    """One generated middleware: what it does, and whether it is ``async def``."""

    kind: str  # none | allow | append | ack | block | block_str | silent | raise | raise_sc
    arg: int
    is_async: bool


SECRET = "s3cret-internal-detail"
KIND_NAMES = ["none", "allow", "append", "append", "ack", "block", "block_str", "silent"]
KIND_NAMES += ["raise", "raise_sc"]

specs = st.builds(
    Spec,
    kind=st.sampled_from(KIND_NAMES),
    arg=st.integers(0, 9),
    is_async=st.booleans(),
)
spec_lists = st.lists(specs, max_size=6)
hooks = st.sampled_from(list(Hook))


def verdict_of(spec: Spec, request: Any) -> Allow | Block | None:
    match spec.kind:
        case "none":
            return None
        case "allow":
            return ALLOW
        case "append":
            data = getattr(request, "data", ())
            return Allow(data=(*data, spec.arg))
        case "ack":
            return Allow(ack_data={"ack": spec.arg})
        case "block":
            return Block(InvalidActionError(f"blocked {spec.arg}"), status_code=4500 + spec.arg)
        case "block_str":
            return Block(f"not allowed {spec.arg}", bad_token=True)
        case "silent":
            return SILENT
        case "raise":
            raise RuntimeError(f"{SECRET} {spec.arg}")
        case "raise_sc":
            raise AuthTokenInvalidError(f"bad {spec.arg}")
    raise AssertionError(spec.kind)


def build(spec: Spec, log: list[int]) -> Middleware:
    """A real middleware for ``spec`` that appends its index-free ``arg`` to ``log``."""
    if spec.is_async:

        async def amw(request: Any) -> Allow | Block | None:
            log.append(spec.arg)
            await trio.lowlevel.checkpoint()
            return verdict_of(spec, request)

        return amw

    def mw(request: Any) -> Allow | Block | None:
        log.append(spec.arg)
        return verdict_of(spec, request)

    return mw


def sync_specs(items: list[Spec]) -> list[Spec]:
    return [Spec(s.kind, s.arg, False) for s in items]


def expected(items: list[Spec], hook: Hook) -> tuple[Any, ...]:
    """Reference interpreter: the summary the runners must produce for ``items``."""
    data: Any = None if hook in DATALESS else ()
    ack: Any = UNCHANGED
    err: dict[str, Any]
    for spec in items:
        blocked: tuple[Any, ...] | None = None
        match spec.kind:
            case "append" if hook not in DATALESS:
                data = (*data, spec.arg)
            case "ack" if hook is Hook.PUBLISH_IN:
                ack = {"ack": spec.arg}
            case "block":
                err = {"name": "InvalidActionError", "message": f"blocked {spec.arg}"}
                blocked = (err, 4500 + spec.arg, False, False, None)
            case "block_str":
                blocked = (f"not allowed {spec.arg}", None, hook is Hook.AUTHENTICATE, False, None)
            case "silent":
                err = {
                    "name": "SilentMiddlewareBlockedError",
                    "message": f"Action was silently blocked by {hook.value} middleware",
                    "type": hook.value,
                }
                blocked = (err, None, False, True, None)
            case "raise":
                err = {"name": "UnknownError", "message": "Action was blocked: middleware failed"}
                blocked = (err, None, False, False, RuntimeError)
            case "raise_sc":
                err = {"name": "AuthTokenInvalidError", "message": f"bad {spec.arg}"}
                err["isBadToken"] = True
                blocked = (err, None, hook is Hook.AUTHENTICATE, False, None)
        if blocked is not None:
            error, status, bad, silent, exc = blocked
            if hook is Hook.HANDSHAKE_WS or hook is Hook.HANDSHAKE_SC:
                default = 401 if hook is Hook.HANDSHAKE_WS else 4008
                status = default if status is None else status
            else:
                status = None
            return ("blocked", hook, error, status, bad, silent, exc)
    return ("allowed", data, ack, data not in (None, ()))


def summary(outcome: Allowed | Blocked) -> tuple[Any, ...]:
    if isinstance(outcome, Allowed):
        return ("allowed", outcome.data, outcome.ack_data, outcome.changed)
    exc = None if outcome.exception is None else type(outcome.exception)
    return (
        "blocked",
        outcome.hook,
        dehydrate_error(outcome.error),
        outcome.status_code,
        outcome.bad_token,
        outcome.silent,
        exc,
    )


def calls_expected(items: list[Spec]) -> list[int]:
    """The args of the middleware that must have been called: up to the first blocker."""
    out = []
    for spec in items:
        out.append(spec.arg)
        if spec.kind in ("block", "block_str", "silent", "raise", "raise_sc"):
            break
    return out


# --- laws --------------------------------------------------------------------------------------


@given(hooks)
def test_empty_chain_allows_the_same_object(hook: Hook) -> None:
    data = {"payload": [1, 2]}
    request = make_request(hook, data)
    outcome = run_chain((), request)
    assert isinstance(outcome, Allowed)
    assert outcome.changed is False
    assert outcome.ack_data is UNCHANGED
    if hook in DATALESS:
        assert outcome.data is None
    else:
        assert outcome.data is data


@given(hooks, st.lists(st.sampled_from(["none", "allow", "empty_allow"]), max_size=5))
def test_allow_all_middleware_is_the_identity(hook: Hook, kinds: list[str]) -> None:
    data = ["same"]
    request = make_request(hook, data)
    verdicts = {"none": None, "allow": ALLOW, "empty_allow": Allow()}
    chain = [lambda _r, k=k: verdicts[k] for k in kinds]
    outcome = run_chain(chain, request)
    assert outcome == run_chain((), request)
    assert isinstance(outcome, Allowed)
    assert outcome.changed is False


@given(hooks, spec_lists)
def test_sync_runner_matches_the_reference_interpreter(hook: Hook, items: list[Spec]) -> None:
    items = sync_specs(items)
    log: list[int] = []
    outcome = run_chain([build(s, log) for s in items], make_request(hook))
    assert summary(outcome) == expected(items, hook)
    assert log == calls_expected(items)  # order respected, first block short-circuits


@settings(max_examples=60)
@given(hooks, spec_lists)
def test_sync_and_async_runners_agree(hook: Hook, items: list[Spec]) -> None:
    sync_log: list[int] = []
    async_log: list[int] = []
    sync_chain = [build(s, sync_log) for s in sync_specs(items)]
    async_chain = [build(s, async_log) for s in items]
    request = make_request(hook)
    sync_outcome = run_chain(sync_chain, request)
    async_outcome = trio.run(run_chain_async, async_chain, request)
    assert summary(async_outcome) == summary(sync_outcome) == expected(items, hook)
    assert async_log == sync_log
    assert is_sync_chain(sync_chain)
    assert is_sync_chain(async_chain) == (not any(s.is_async for s in items))


@given(hooks, spec_lists, spec_lists, spec_lists)
def test_composition_is_associative(
    hook: Hook, a: list[Spec], b: list[Spec], c: list[Spec]
) -> None:
    log: list[int] = []
    ca, cb, cc = ([build(s, log) for s in sync_specs(x)] for x in (a, b, c))
    request = make_request(hook)
    left = run_chain(compose(compose(ca, cb), cc), request)
    left_log = list(log)
    log.clear()
    right = run_chain(compose(ca, compose(cb, cc)), request)
    assert summary(left) == summary(right)
    assert left_log == log
    assert compose((), ca) == compose(ca, ()) == tuple(ca)


@given(st.sampled_from([h for h in Hook if h not in DATALESS]), st.lists(st.integers(), max_size=8))
def test_data_threads_through_in_order(hook: Hook, tags: list[int]) -> None:
    seen: list[Any] = []

    def appender(tag: int) -> Middleware:
        def mw(request: Any) -> Allow:
            seen.append(request)
            return Allow(data=(*request.data, tag))

        return mw

    request: Any = make_request(hook, ())
    outcome = run_chain([appender(t) for t in tags], request)
    assert isinstance(outcome, Allowed)
    assert outcome.data == tuple(tags)
    # each middleware sees the request with only its data replaced
    assert seen == [dataclasses.replace(request, data=tuple(tags[:i])) for i in range(len(tags))]
    assert all(type(r) is type(request) for r in seen)
    assert outcome.changed is bool(tags)
    assert request.data == ()  # the request itself is untouched


@given(hooks, st.text(min_size=1))
def test_exceptions_become_generic_blocks(hook: Hook, text: str) -> None:
    boom = ValueError(f"{SECRET}:{text}")

    def crash(request: Any) -> None:
        raise boom

    later: list[int] = []
    outcome = run_chain([crash, lambda r: later.append(1)], make_request(hook))
    assert isinstance(outcome, Blocked)
    assert outcome.exception is boom
    assert isinstance(outcome.error, UnknownError)
    assert SECRET not in str(dehydrate_error(outcome.error))
    assert text not in outcome.error.message or text in "Action was blocked: middleware failed"
    assert later == []


def test_deliberate_socketcluster_error_is_the_block_error() -> None:
    class TooLazyHandshakeError(SocketClusterError):
        pass

    def mw(request: Any) -> None:
        raise TooLazyHandshakeError("SC handshake failed", statusCode=4501)

    outcome = run_chain([mw], make_request(Hook.HANDSHAKE_SC))
    assert isinstance(outcome, Blocked)
    assert outcome.exception is None
    assert outcome.status_code == 4501
    assert dehydrate_error(outcome.error) == {
        "name": "TooLazyHandshakeError",
        "message": "SC handshake failed",
        "statusCode": 4501,
    }


def test_status_code_defaults_per_hook() -> None:
    for hook, status in [(Hook.HANDSHAKE_WS, 401), (Hook.HANDSHAKE_SC, 4008), (Hook.EMIT, None)]:
        outcome = run_chain([lambda r: Block("no")], make_request(hook))
        assert isinstance(outcome, Blocked)
        assert outcome.status_code == status
    # an explicit status wins, but only on the handshake hooks
    ws = run_chain([lambda r: Block("no", status_code=403)], make_request(Hook.HANDSHAKE_WS))
    emit = run_chain([lambda r: Block("no", status_code=403)], make_request(Hook.EMIT))
    assert isinstance(ws, Blocked)
    assert ws.status_code == 403
    assert isinstance(emit, Blocked)
    assert emit.status_code is None


def test_silent_block_error_per_hook() -> None:
    for hook in Hook:
        outcome = run_chain([lambda r: Block.silent()], make_request(hook))
        assert isinstance(outcome, Blocked)
        assert outcome.silent
        assert isinstance(outcome.error, SilentMiddlewareBlockedError)
        assert outcome.error.type == hook.value
    emit = run_chain([lambda r: SILENT], make_request(Hook.EMIT))
    assert dehydrate_error(emit.error) == {  # type: ignore[union-attr]
        "message": "Action was silently blocked by emit middleware",
        "name": "SilentMiddlewareBlockedError",
        "type": "emit",
    }


def test_string_error_stays_a_string() -> None:
    outcome = run_chain(
        [lambda r: Block(f"You are not authorized to publish to {r.channel}")],
        make_request(Hook.PUBLISH_IN),
    )
    assert isinstance(outcome, Blocked)
    assert dehydrate_error(outcome.error) == "You are not authorized to publish to news"


def test_bad_token_only_on_authenticate() -> None:
    auth = run_chain([lambda r: Block("x", bad_token=True)], make_request(Hook.AUTHENTICATE))
    emit = run_chain([lambda r: Block("x", bad_token=True)], make_request(Hook.EMIT))
    plain = run_chain([lambda r: Block("x")], make_request(Hook.AUTHENTICATE))
    assert isinstance(auth, Blocked)
    assert auth.bad_token is True
    assert isinstance(emit, Blocked)
    assert emit.bad_token is False
    assert isinstance(plain, Blocked)
    assert plain.bad_token is False


def test_data_and_ack_ignored_where_meaningless() -> None:
    ws = run_chain([lambda r: Allow(data=1, ack_data=2)], make_request(Hook.HANDSHAKE_WS))
    emit = run_chain([lambda r: Allow(data=1, ack_data=2)], make_request(Hook.EMIT))
    pub = run_chain([lambda r: Allow(data=1, ack_data=2)], make_request(Hook.PUBLISH_IN))
    assert ws == Allowed(data=None, ack_data=UNCHANGED, changed=False)
    assert emit == Allowed(data=1, ack_data=UNCHANGED, changed=True)
    assert pub == Allowed(data=1, ack_data=2, changed=True)


def test_wrong_return_value_is_a_failure() -> None:
    returns_true: Any = lambda r: True  # noqa: E731 - an app bug, deliberately mistyped
    outcome = run_chain([returns_true], make_request(Hook.EMIT))
    assert isinstance(outcome, Blocked)
    assert isinstance(outcome.exception, TypeError)
    assert isinstance(outcome.error, UnknownError)


def test_sync_runner_refuses_async_middleware_without_warning() -> None:
    async def amw(request: Any) -> None:
        return None

    assert not is_sync_chain([amw])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="run_chain_async"):
            run_chain([amw], make_request(Hook.EMIT))
        gc.collect()


class Charging:
    """A plain-function middleware with a side effect (like a rate limiter's charge)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: Any) -> None:
        self.calls += 1


async def test_plain_then_awaitable_returning_middleware_runs_each_once() -> None:
    # The bug: a plain function before one that *returns* an awaitable (a lambda returning a
    # coroutine) made the sync runner raise, and the caller reran the whole chain async.
    first, last = Charging(), Charging()

    async def verdict() -> Allow:
        return Allow(data="changed")

    chain: list[Middleware] = [first, lambda request: verdict(), last]
    outcome = start_chain(chain, make_request(Hook.EMIT, "data"))
    assert isinstance(outcome, Pending)
    assert (first.calls, last.calls) == (1, 0)
    final = await outcome.resume()
    assert isinstance(final, Allowed)
    assert final.data == "changed"
    assert (first.calls, last.calls) == (1, 1)


@settings(max_examples=60)
@given(hooks, spec_lists)
def test_start_chain_then_resume_calls_each_middleware_once(hook: Hook, items: list[Spec]) -> None:
    # Async middleware wrapped in plain lambdas: the sync driver cannot know in advance.
    log: list[int] = []
    chain: list[Middleware] = [
        (lambda mw: lambda request: mw(request))(build(s, log)) if s.is_async else build(s, log)
        for s in items
    ]
    outcome = start_chain(chain, make_request(hook))
    if isinstance(outcome, Pending):
        outcome = trio.run(outcome.resume)
    assert summary(outcome) == expected(items, hook)
    assert log == calls_expected(items)


def test_is_sync_chain_sees_async_call_methods() -> None:
    class AsyncCallable:
        async def __call__(self, request: Any) -> None:
            return None

    class SyncCallable:
        def __call__(self, request: Any) -> None:
            return None

    assert not is_sync_chain([SyncCallable(), AsyncCallable()])
    assert is_sync_chain([SyncCallable(), print])
    assert is_sync_chain([])


async def test_async_runner_lets_cancellation_through() -> None:
    async def slow(request: Any) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await run_chain_async([slow], make_request(Hook.EMIT))
    assert scope.cancelled_caught


# --- registry ----------------------------------------------------------------------------------


def test_registry_order_remove_and_decorator() -> None:
    reg = MiddlewareRegistry()
    assert reg.chain(Hook.EMIT) == ()
    assert Hook.EMIT not in reg
    assert not reg.has(Hook.EMIT)

    def a(r: Any) -> None:
        return None

    def b(r: Any) -> None:
        return None

    @reg.middleware(Hook.EMIT)
    def c(r: Any) -> None:
        return None

    reg.add(Hook.EMIT, a)
    reg.add(Hook.EMIT, b)
    reg.add(Hook.PUBLISH_IN, a)
    assert reg.chain(Hook.EMIT) == (c, a, b)
    assert reg.chain(Hook.EMIT) is reg.chain(Hook.EMIT)  # cached, no copy per call
    assert Hook.EMIT in reg
    assert reg.has(Hook.PUBLISH_IN)
    assert not reg.has(Hook.SUBSCRIBE)
    reg.remove(Hook.EMIT, a)
    assert reg.chain(Hook.EMIT) == (c, b)
    with pytest.raises(ValueError, match="not in list"):
        reg.remove(Hook.EMIT, a)
    with pytest.raises(ValueError, match="not in list"):
        reg.remove(Hook.SUBSCRIBE, a)
    reg.remove(Hook.PUBLISH_IN, a)
    assert not reg.has(Hook.PUBLISH_IN)
    with pytest.raises(TypeError):
        reg.add("emit", a)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reg.add(Hook.EMIT, 42)  # type: ignore[arg-type]


# --- stateful: subscribe middleware in front of a subscription table ----------------------------


class SubscriptionTable:
    """The tiny pure table under test: socket -> channels, fed through the middleware."""

    def __init__(self, registry: MiddlewareRegistry) -> None:
        self.registry = registry
        self.subs: dict[str, set[str]] = {}

    def subscribe(self, socket: FakeSocket, channel: str, token: Any) -> Allowed | Blocked:
        request = SubscribeRequest(
            socket=socket,
            channel=channel,
            wait_for_auth=False,
            data=None,
            auth_token=token,
            auth_token_expired=False,
            now=0.0,
        )
        outcome = run_chain(self.registry.chain(Hook.SUBSCRIBE), request)
        if isinstance(outcome, Allowed):
            self.subs.setdefault(socket.id, set()).add(channel)
        return outcome

    def unsubscribe(self, socket: FakeSocket, channel: str) -> bool:
        chans = self.subs.get(socket.id)
        if chans is None or channel not in chans:
            return False
        chans.discard(channel)
        if not chans:
            del self.subs[socket.id]
        return True

    def publish(self, channel: str) -> set[str]:
        return {sid for sid, chans in self.subs.items() if channel in chans}


# Subscribe-middleware kinds and the model's prediction for each: the error it would give.
MwKind = str
KINDS: list[MwKind] = ["allow", "private", "silent_x", "crash_y"]


def kind_middleware(kind: MwKind) -> Middleware:
    def allow(r: SubscribeRequest) -> None:
        return None

    def private(r: SubscribeRequest) -> Block | None:
        if r.channel.startswith("private-") and r.auth_token is None:
            return Block(f"You are not authorized to subscribe to {r.channel}")
        return None

    def silent_x(r: SubscribeRequest) -> Block | None:
        return SILENT if r.channel.startswith("x") else None

    def crash_y(r: SubscribeRequest) -> None:
        if r.channel.startswith("y"):
            raise KeyError(r.channel)

    table: dict[str, Callable[[SubscribeRequest], Block | None]] = {
        "allow": allow,
        "private": private,
        "silent_x": silent_x,
        "crash_y": crash_y,
    }
    return table[kind]


def model_error(kind: MwKind, channel: str, token: Any) -> Any:
    if kind == "private" and channel.startswith("private-") and token is None:
        return f"You are not authorized to subscribe to {channel}"
    if kind == "silent_x" and channel.startswith("x"):
        return "silent"
    if kind == "crash_y" and channel.startswith("y"):
        return "crash"
    return None


SOCKETS = [FakeSocket(f"s{i}") for i in range(3)]
CHANNELS = ["news", "private-a", "x1", "y1", "private-xy"]


class SubscribeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.registry = MiddlewareRegistry()
        self.table = SubscriptionTable(self.registry)
        self.model_chain: list[tuple[MwKind, Middleware]] = []
        self.model_subs: set[tuple[str, str]] = set()

    @rule(kind=st.sampled_from(KINDS))
    def add_middleware(self, kind: MwKind) -> None:
        fn = kind_middleware(kind)
        self.registry.add(Hook.SUBSCRIBE, fn)
        self.model_chain.append((kind, fn))

    @rule(data=st.data())
    def remove_middleware(self, data: st.DataObject) -> None:
        if not self.model_chain:
            return
        i = data.draw(st.integers(0, len(self.model_chain) - 1))
        _kind, fn = self.model_chain.pop(i)
        self.registry.remove(Hook.SUBSCRIBE, fn)

    @rule(
        socket=st.sampled_from(SOCKETS),
        channel=st.sampled_from(CHANNELS),
        token=st.sampled_from([None, {"username": "bob"}]),
    )
    def subscribe(self, socket: FakeSocket, channel: str, token: Any) -> None:
        outcome = self.table.subscribe(socket, channel, token)
        first = next(
            (e for k, _ in self.model_chain if (e := model_error(k, channel, token)) is not None),
            None,
        )
        if first is None:
            assert isinstance(outcome, Allowed)
            self.model_subs.add((socket.id, channel))
            return
        assert isinstance(outcome, Blocked)
        if first == "silent":
            assert outcome.silent
        elif first == "crash":
            assert isinstance(outcome.exception, KeyError)
            assert channel not in str(dehydrate_error(outcome.error))
        else:
            assert outcome.error == first

    @rule(socket=st.sampled_from(SOCKETS), channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, socket: FakeSocket, channel: str) -> None:
        was = (socket.id, channel) in self.model_subs
        assert self.table.unsubscribe(socket, channel) == was
        self.model_subs.discard((socket.id, channel))

    @rule(channel=st.sampled_from(CHANNELS))
    def publish(self, channel: str) -> None:
        assert self.table.publish(channel) == {s for s, c in self.model_subs if c == channel}

    @invariant()
    def registry_matches_model(self) -> None:
        assert self.registry.chain(Hook.SUBSCRIBE) == tuple(fn for _, fn in self.model_chain)
        assert self.registry.has(Hook.SUBSCRIBE) == bool(self.model_chain)

    @invariant()
    def table_matches_model(self) -> None:
        flat = {(s, c) for s, chans in self.table.subs.items() for c in chans}
        assert flat == self.model_subs


TestSubscribeMachine = SubscribeMachine.TestCase
