"""What the server counts, and its Prometheus text exposition.

The hot paths (a delivery, a received packet) only add one to a plain ``int`` or ``dict``
entry of ``Metrics``; nothing is locked, formatted or allocated per event. At scrape time
``render`` turns the counts into the Prometheus text format through the official
``prometheus-client`` (a custom collector over these counts, so its parser reads the output
exactly). Gauges (open connections, subscriptions, the broker's state) are read from the
server at scrape time through ``Gauges``, never kept twice.

Labels never carry a channel name, a user or anything else a client chooses: ``type`` is one
of a fixed set of packet kinds, ``hook`` a middleware hook, ``reason`` an auth error name,
``code`` a close code (an integer the server chose or validated).

Pure counting: no I/O, clock or randomness (latencies are measured by the caller).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = [
    "LATENCY_BUCKETS_S",
    "MESSAGE_TYPES",
    "Gauges",
    "Histogram",
    "Metrics",
    "render",
]

PREFIX = "trio_socketcluster_"

#: Upper bounds (seconds) of the latency histograms: 100 µs to 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip

#: The ``type`` label of ``messages_received_total``: a fixed set, whatever the client sends.
MESSAGE_TYPES: tuple[str, ...] = (
    "handshake", "authenticate", "removeAuthToken", "subscribe", "unsubscribe", "publish",
    "invoke", "transmit", "response", "pong", "disconnect", "invalid",
)  # fmt: skip


class Histogram:
    """Cumulative-bucket latency histogram (the Prometheus shape), counted with ``observe``."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value_s)] += 1
        self.sum += value_s

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


def _counts() -> dict[Any, int]:
    return {}


@dataclass(slots=True, eq=False)
class Metrics:
    """The server's counters. Incremented in place by the trio layer; read by ``render``."""

    handshakes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "rejected": 0})
    auth_failures: dict[str, int] = field(default_factory=_counts)
    middleware_blocks: dict[str, int] = field(default_factory=_counts)
    disconnects: dict[int, int] = field(default_factory=_counts)
    messages_received: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(MESSAGE_TYPES, 0)
    )
    publications: int = 0
    deliveries: int = 0
    slow_consumer_closes: int = 0
    refused_connections: dict[str, int] = field(default_factory=_counts)
    recoveries: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    recovered_publications: int = 0
    handshake_latency: Histogram = field(default_factory=Histogram)
    invoke_latency: Histogram = field(default_factory=Histogram)

    def count(self, table: dict[Any, int], key: Any, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


@dataclass(frozen=True, kw_only=True, slots=True)
class Gauges:
    """Readers of the values the server already holds, called at scrape time."""

    connections: Callable[[], int]
    authenticated_connections: Callable[[], int]
    subscriptions: Callable[[], int]
    #: ``{"connected": 1.0, "outbound_queue": 12.0, ...}``: the broker's own state.
    broker: Callable[[], Mapping[str, float]] = lambda: {}
    #: 1 while accepting connections, 0 once draining.
    ready: Callable[[], bool] = lambda: True


class _Collector:
    def __init__(self, metrics: Metrics, gauges: Gauges) -> None:
        self._m = metrics
        self._g = gauges

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m, g = self._m, self._g

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        def counter(name: str, doc: str, label: str, table: Mapping[Any, int]) -> Any:
            family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
            for key, value in sorted(table.items(), key=lambda kv: str(kv[0])):
                family.add_metric([str(key)], value)
            return family

        yield gauge("connections", "Sockets that completed the handshake and are open.",
                    g.connections())  # fmt: skip
        yield gauge("authenticated_connections", "Open sockets that are authenticated.",
                    g.authenticated_connections())  # fmt: skip
        yield gauge("subscriptions", "Socket-channel subscriptions.", g.subscriptions())
        yield gauge("ready", "1 while accepting connections, 0 once draining.",
                    1.0 if g.ready() else 0.0)  # fmt: skip
        yield counter("handshakes", "Handshakes answered (ok) or refused by middleware "
                      "(rejected).", "result", m.handshakes)  # fmt: skip
        yield counter("auth_failures", "Auth tokens refused, by the error the client got.",
                      "reason", m.auth_failures)  # fmt: skip
        yield counter("middleware_blocks", "Actions blocked by middleware.", "hook",
                      m.middleware_blocks)  # fmt: skip
        yield counter("disconnects", "Closed sockets, by close code.", "code", m.disconnects)
        yield counter("messages_received", "Inbound packets, by kind.", "type",
                      m.messages_received)  # fmt: skip
        yield counter("refused_connections", "Upgrades refused before the handshake "
                      "(limits), by cause.", "cause", m.refused_connections)  # fmt: skip
        yield counter("recoveries", "Subscriptions asking to recover missed publications.",
                      "result", m.recoveries)  # fmt: skip
        for name, doc, value in (
            ("publications", "Publications accepted.", m.publications),
            ("deliveries", "#publish frames queued to sockets.", m.deliveries),
            ("slow_consumer_closes", "Sockets closed because they stopped reading (4100).",
             m.slow_consumer_closes),
            ("recovered_publications", "Missed publications sent on recovery.",
             m.recovered_publications),
        ):  # fmt: skip
            family = CounterMetricFamily(PREFIX + name, doc)
            family.add_metric([], value)
            yield family
        for name, doc, hist in (
            ("handshake_duration_seconds", "From #handshake received to its reply queued "
             "(token verification included).", m.handshake_latency),
            ("invoke_duration_seconds", "From an invoke received to its reply queued.",
             m.invoke_latency),
        ):  # fmt: skip
            yield HistogramMetricFamily(
                PREFIX + name, doc, buckets=hist.cumulative(), sum_value=hist.sum
            )
        broker = GaugeMetricFamily(PREFIX + "broker", "The broker's state.", labels=["field"])
        for key, reading in sorted(g.broker().items()):
            broker.add_metric([key], reading)
        yield broker


def render(metrics: Metrics, gauges: Gauges) -> str:
    """The Prometheus text exposition (version 0.0.4) of ``metrics`` and ``gauges``."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics, gauges))
    return generate_latest(registry).decode("utf-8")
