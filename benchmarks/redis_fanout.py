"""Cross-process fan-out through the Redis broker, against one process with the local broker.

    python benchmarks/redis_fanout.py --redis redis://127.0.0.1:6379/0 [--messages 20000]
        [--subscribers 100]

* ``single``: one process, ``LocalBroker``, ``2 x subscribers`` local subscribers on a channel;
  publish ``messages`` and time it.
* ``cluster``: a publisher process and two subscriber processes (``subscribers`` each), all
  ``RedisBroker``s on one Redis; the time runs from the first publish to the last delivery
  in the slower subscriber process.

Subscribers are stubs that count (no WebSocket writes): this measures the broker path (sign,
Redis, verify, decode, encode once, fan out), not the network to clients. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

from trio_socketcluster.brokers.local import LocalBroker
from trio_socketcluster.brokers.redis import RedisBroker
from trio_socketcluster.errors import BrokerError

if TYPE_CHECKING:
    from trio_socketcluster.transport.base import OutboundMessage

KEY = "bench-cluster-key"
PAYLOAD = {"s": 12345, "t": 98765.4321, "p": "x" * 32}


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def deliver(self, channel: str, data: Any, message: OutboundMessage) -> None:
        self.n += 1


def single(messages: int, subscribers: int) -> dict[str, Any]:
    broker = LocalBroker()
    subs = [Counter() for _ in range(subscribers)]
    for sub in subs:
        broker.subscribe("bench", sub)
    start = time.perf_counter()
    for i in range(messages):
        broker.publish("bench", dict(PAYLOAD, i=i))
    elapsed = time.perf_counter() - start
    return {"mode": "single", "seconds": elapsed, "deliveries": messages * subscribers,
            "deliveries_per_s": messages * subscribers / elapsed,
            "messages_per_s": messages / elapsed}  # fmt: skip


async def subscriber(url: str, messages: int, subscribers: int) -> None:
    broker = RedisBroker.from_url(url, cluster_key=KEY)
    subs = [Counter() for _ in range(subscribers)]
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        for sub in subs:
            broker.subscribe("bench", sub)
        await broker.wait_synced()
        print("READY", flush=True)
        first = None
        while subs[0].n < messages:
            await trio.sleep(0.001)
            if first is None and subs[0].n:
                first = time.time()
        print(json.dumps({"done": time.time(), "first": first, "stats": broker.stats.as_dict()}))
        nursery.cancel_scope.cancel()


async def publisher(url: str, messages: int) -> None:
    broker = RedisBroker.from_url(url, cluster_key=KEY, max_queue=50_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        await broker.wait_connected()
        start = time.time()
        i = 0
        while i < messages:
            try:
                broker.publish("bench", dict(PAYLOAD, i=i))
                i += 1
            except BrokerError:
                await trio.sleep(0.0005)
            if i % 1000 == 0:
                await trio.lowlevel.checkpoint()
        while broker.stats.sent < messages:  # noqa: ASYNC110 (a benchmark polls a counter)
            await trio.sleep(0.001)
        print(json.dumps({"start": start, "stats": broker.stats.as_dict()}))
        nursery.cancel_scope.cancel()


def cluster(url: str, messages: int, subscribers: int) -> dict[str, Any]:
    me = [sys.executable, __file__, "--redis", url, "--messages", str(messages),
          "--subscribers", str(subscribers)]  # fmt: skip
    subs = [subprocess.Popen([*me, "--role", "sub"], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    for proc in subs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
    pub = subprocess.run([*me, "--role", "pub"], capture_output=True, text=True, check=True)
    pub_out = json.loads(pub.stdout)
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in subs]
    elapsed = max(o["done"] for o in outs) - pub_out["start"]
    deliveries = messages * subscribers * 2
    return {"mode": "cluster", "seconds": elapsed, "deliveries": deliveries,
            "deliveries_per_s": deliveries / elapsed, "messages_per_s": messages / elapsed,
            "publisher": pub_out["stats"], "subscribers": [o["stats"] for o in outs]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--role", choices=["sub", "pub"])
    args = parser.parse_args()
    if args.role == "sub":
        trio.run(subscriber, args.redis, args.messages, args.subscribers)
    elif args.role == "pub":
        trio.run(publisher, args.redis, args.messages)
    else:
        print(json.dumps(single(args.messages, args.subscribers * 2)))
        print(json.dumps(cluster(args.redis, args.messages, args.subscribers)))


if __name__ == "__main__":
    main()
