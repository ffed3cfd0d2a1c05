"""Admission control: the connection limit and the handshake token buckets (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_socketcluster.errors import InvalidOptionsError
from trio_socketcluster.limits import Admission, AdmissionLimits

steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=2, allow_nan=False), st.sampled_from("abc")),
    min_size=1,
    max_size=200,
)


@given(steps, st.floats(min_value=0.5, max_value=50), st.integers(min_value=1, max_value=20))
def test_overall_rate_never_admits_more_than_burst_plus_refill(
    gaps: list[tuple[float, str]], rate: float, burst: int
) -> None:
    adm = Admission(AdmissionLimits(handshake_rate_per_s=rate, handshake_burst=burst))
    now = 0.0
    admitted = 0
    for gap, address in gaps:
        now += gap
        refusal = adm.admit(now=now, address=address, open_connections=0)
        if refusal is None:
            admitted += 1
        else:
            assert refusal.cause == "handshake_rate"
            assert refusal.retry_after_s > 0
            assert int(refusal.retry_after_header) >= 1
        assert admitted <= burst + rate * now + 1e-9


@given(steps, st.floats(min_value=0.5, max_value=50), st.integers(min_value=1, max_value=20))
def test_per_address_rate_holds_for_each_address_alone(
    gaps: list[tuple[float, str]], rate: float, burst: int
) -> None:
    adm = Admission(AdmissionLimits(per_address_rate_per_s=rate, per_address_burst=burst))
    now = 0.0
    admitted: dict[str, int] = {}
    first: dict[str, float] = {}
    for gap, address in gaps:
        now += gap
        first.setdefault(address, now)
        if adm.admit(now=now, address=address, open_connections=0) is None:
            admitted[address] = admitted.get(address, 0) + 1
        for addr, n in admitted.items():
            assert n <= burst + rate * (now - first[addr]) + 1e-9


def test_one_address_spending_its_bucket_does_not_refuse_another() -> None:
    adm = Admission(AdmissionLimits(per_address_rate_per_s=1, per_address_burst=2))
    assert adm.admit(now=0, address="10.0.0.1", open_connections=0) is None
    assert adm.admit(now=0, address="10.0.0.1", open_connections=0) is None
    refusal = adm.admit(now=0, address="10.0.0.1", open_connections=0)
    assert refusal is not None
    assert refusal.cause == "address_rate"
    assert refusal.retry_after_header == "1"
    assert adm.admit(now=0, address="10.0.0.2", open_connections=0) is None
    assert adm.admit(now=1.0, address="10.0.0.1", open_connections=0) is None


def test_a_refused_address_spends_nothing_of_the_overall_bucket() -> None:
    adm = Admission(
        AdmissionLimits(
            handshake_rate_per_s=1, handshake_burst=2, per_address_rate_per_s=1,
            per_address_burst=1,
        )
    )  # fmt: skip
    assert adm.admit(now=0, address="a", open_connections=0) is None
    assert adm.admit(now=0, address="a", open_connections=0) is not None  # a's bucket
    assert adm.admit(now=0, address="b", open_connections=0) is None  # overall had 1 left
    refusal = adm.admit(now=0, address="c", open_connections=0)
    assert refusal is not None
    assert refusal.cause == "handshake_rate"


def test_connection_limit() -> None:
    adm = Admission(AdmissionLimits(max_connections=2))
    assert adm.admit(now=0, address=None, open_connections=1) is None
    refusal = adm.admit(now=0, address=None, open_connections=2)
    assert refusal is not None
    assert refusal.cause == "connections"


def test_tracked_addresses_are_bounded_and_forgetting_is_lenient() -> None:
    adm = Admission(
        AdmissionLimits(per_address_rate_per_s=1, per_address_burst=1, max_tracked_addresses=2)
    )
    for address in ("a", "b", "c"):
        assert adm.admit(now=0, address=address, open_connections=0) is None
    assert adm.tracked_addresses() == 2
    assert adm.admit(now=0, address="a", open_connections=0) is None  # forgotten: full again
    assert adm.admit(now=0, address="c", open_connections=0) is not None  # remembered


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections": -1},
        {"handshake_rate_per_s": 0},
        {"per_address_burst": 0.5},
        {"max_tracked_addresses": 0},
    ],
)
def test_bad_limits_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(InvalidOptionsError):
        AdmissionLimits(**options)  # type: ignore[arg-type]
