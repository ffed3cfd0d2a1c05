"""What counting costs in fan-out: one publish to N subscribers through ``LocalBroker``, with
the delivery count (``delivered += len(subs)``, what ``/metrics`` reads) and without it (a
subclass with the previous ``fan_out``), in alternating rounds; medians printed.

    python benchmarks/metrics_cost.py [subscribers] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

from trio_socketcluster.brokers.local import LocalBroker

if TYPE_CHECKING:
    from trio_socketcluster.transport.base import OutboundMessage


class Sink:
    """A subscriber doing what a socket's fast path does: append the frame to a buffer."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def deliver(self, channel: str, data: Any, message: OutboundMessage, pub: Any = None) -> None:
        self.buf += message.frame
        if len(self.buf) > 1 << 20:
            self.buf = bytearray()


class Uncounted(LocalBroker):
    def fan_out(
        self, channel: str, data: Any, message: OutboundMessage, publication: Any = None
    ) -> None:
        subs = self._channels.get(channel)
        if not subs:
            return
        for sub in tuple(subs):
            sub.deliver(channel, data, message)


def run(broker: LocalBroker, publishes: int) -> float:
    start = time.perf_counter()
    for i in range(publishes):
        broker.publish("news", i)
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 21
    brokers: dict[str, LocalBroker] = {"counted": LocalBroker(), "uncounted": Uncounted()}
    for broker in brokers.values():
        for _ in range(n):
            broker.subscribe("news", Sink())
    times: dict[str, list[float]] = {k: [] for k in brokers}
    for _ in range(rounds):
        for name, broker in brokers.items():
            times[name].append(run(broker, 200))
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {k: v / (200 * n) * 1e9 for k, v in med.items()}
    print(f"subscribers={n} rounds={rounds}")
    for k in brokers:
        print(f"  {k:9s} {per[k]:.1f} ns per delivery")
    print(f"  cost of counting: {(med['counted'] / med['uncounted'] - 1) * 100:+.2f} %")


if __name__ == "__main__":
    main()
