"""The client-warning limiter: one line per cause per interval, the rest counted (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_socketcluster.ratelimit import WarningLimiter


def test_one_per_cause_per_interval_with_the_suppressed_count() -> None:
    limiter = WarningLimiter(interval_s=60)
    assert limiter.allow("a", now=0) == 0
    assert limiter.allow("a", now=1) is None
    assert limiter.allow("a", now=59.9) is None
    assert limiter.allow("b", now=2) == 0  # causes are independent
    assert limiter.allow("a", now=60) == 2
    assert limiter.allow("a", now=61) is None
    assert limiter.allow("a", now=200) == 1


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 1000)), max_size=60))
def test_every_warning_is_logged_or_counted_once(events: list[tuple[str, float]]) -> None:
    limiter = WarningLimiter(interval_s=10)
    logged: dict[str, list[float]] = {}
    counted = 0
    for cause, now in sorted(events, key=lambda e: e[1]):
        got = limiter.allow(cause, now)
        if got is not None:
            counted += got + 1
            times = logged.setdefault(cause, [])
            assert not times or now - times[-1] >= 10  # never two within the interval
            times.append(now)
    pending = sum(limiter._suppressed.values())
    assert counted + pending == len(events)
