"""The counters and their Prometheus exposition, read back with the official parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from trio_socketcluster.metrics import LATENCY_BUCKETS_S, Gauges, Histogram, Metrics, render


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def gauges(**values: int) -> Gauges:
    return Gauges(
        connections=lambda: values.get("connections", 0),
        authenticated_connections=lambda: values.get("authenticated", 0),
        subscriptions=lambda: values.get("subscriptions", 0),
        broker=lambda: {"connected": 1.0, "outbound_queue": 3.0},
        ready=lambda: values.get("ready", 1) == 1,
    )


def test_every_contract_family_is_exposed_and_parsed() -> None:
    m = Metrics()
    m.handshakes["ok"] += 2
    m.handshakes["rejected"] += 1
    m.count(m.auth_failures, "AuthTokenExpiredError")
    m.count(m.middleware_blocks, "publishIn", 3)
    m.count(m.disconnects, 4001)
    m.messages_received["invoke"] += 4
    m.publications += 5
    m.deliveries += 6
    text = render(m, gauges(connections=7, authenticated=2, subscriptions=9, ready=0))
    got = samples(text)
    p = "trio_socketcluster_"
    assert got[(p + "connections", ())] == 7
    assert got[(p + "authenticated_connections", ())] == 2
    assert got[(p + "subscriptions", ())] == 9
    assert got[(p + "ready", ())] == 0
    assert got[(p + "handshakes_total", (("result", "ok"),))] == 2
    assert got[(p + "handshakes_total", (("result", "rejected"),))] == 1
    assert got[(p + "auth_failures_total", (("reason", "AuthTokenExpiredError"),))] == 1
    assert got[(p + "middleware_blocks_total", (("hook", "publishIn"),))] == 3
    assert got[(p + "disconnects_total", (("code", "4001"),))] == 1
    assert got[(p + "messages_received_total", (("type", "invoke"),))] == 4
    assert got[(p + "publications_total", ())] == 5
    assert got[(p + "deliveries_total", ())] == 6
    assert got[(p + "broker", (("field", "outbound_queue"),))] == 3
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families[p + "handshake_duration_seconds"] == "histogram"
    assert families[p + "invoke_duration_seconds"] == "histogram"


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative_and_complete(values: list[float]) -> None:
    hist = Histogram()
    for v in values:
        hist.observe(v)
    cumulative = hist.cumulative()
    assert [le for le, _ in cumulative] == [*map(repr, LATENCY_BUCKETS_S), "+Inf"]
    counts = [n for _, n in cumulative]
    assert counts == sorted(counts)
    assert counts[-1] == len(values) == hist.count
    for le, n in cumulative[:-1]:
        assert n == sum(1 for v in values if v <= float(le))


def test_histogram_is_parsed_with_its_sum_and_count() -> None:
    m = Metrics()
    m.invoke_latency.observe(0.002)
    m.invoke_latency.observe(0.2)
    got = samples(render(m, gauges()))
    name = "trio_socketcluster_invoke_duration_seconds"
    assert got[(name + "_count", ())] == 2
    assert abs(got[(name + "_sum", ())] - 0.202) < 1e-9
    assert got[(name + "_bucket", (("le", "0.0025"),))] == 1
    assert got[(name + "_bucket", (("le", "+Inf"),))] == 2
