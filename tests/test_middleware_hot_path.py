"""The per-delivery shortcuts of ``middleware``: ``start_chain_unless_allowed`` gives ``None``
exactly when ``start_chain`` would allow the request unchanged, and otherwise the very outcome
``start_chain`` gives, running each middleware once; ``publish_out_request`` builds the same
request as the dataclass constructor."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from trio_socketcluster.middleware import (
    UNCHANGED,
    Allow,
    Allowed,
    Block,
    Blocked,
    Pending,
    PublishOutRequest,
    publish_out_request,
    start_chain,
    start_chain_unless_allowed,
)

KINDS = ("none", "allow", "allow-data", "block", "silent", "raise", "bad", "async")


def make(kind: str, calls: list[str], name: str) -> Any:
    def middleware(req: PublishOutRequest) -> Any:
        calls.append(name)
        match kind:
            case "none":
                return None
            case "allow":
                return Allow()
            case "allow-data":
                return Allow(data={"replaced": name})
            case "block":
                return Block("no")
            case "silent":
                return Block()
            case "raise":
                raise ValueError(name)
            case "bad":
                return 42
            case _:

                async def later() -> None:
                    return None

                return later()

    return middleware


def request() -> PublishOutRequest:
    return PublishOutRequest(socket=None, channel="c", data={"d": 1}, auth_token=None, now=1.0)


def summary(outcome: Any) -> Any:
    if isinstance(outcome, Allowed):
        return ("allowed", outcome.data, outcome.ack_data is UNCHANGED, outcome.changed)
    if isinstance(outcome, Blocked):
        return ("blocked", type(outcome.error).__name__, str(outcome.error), outcome.silent)
    assert isinstance(outcome, Pending)
    outcome.close()
    return ("pending",)


@given(st.lists(st.sampled_from(KINDS), max_size=4))
def test_unless_allowed_agrees_with_start_chain(kinds: list[str]) -> None:
    calls_a: list[str] = []
    calls_b: list[str] = []
    chain_a = tuple(make(k, calls_a, str(i)) for i, k in enumerate(kinds))
    chain_b = tuple(make(k, calls_b, str(i)) for i, k in enumerate(kinds))
    full = start_chain(chain_a, request())
    lean = start_chain_unless_allowed(chain_b, request())
    assert calls_a == calls_b  # the same middleware ran, each once
    if lean is None:  # every middleware returned None
        assert all(k == "none" for k in kinds)
        assert isinstance(full, Allowed)
        assert not full.changed
        assert full.ack_data is UNCHANGED
    else:
        assert any(k != "none" for k in kinds)
        assert summary(lean) == summary(full)


def test_publish_out_request_equals_the_constructor() -> None:
    token = {"u": 1}
    fast = publish_out_request(socket="s", channel="c", data=[1], auth_token=token, now=2.5)
    assert fast == PublishOutRequest(socket="s", channel="c", data=[1], auth_token=token, now=2.5)
    assert type(fast) is PublishOutRequest
    assert fast.hook is PublishOutRequest.hook
