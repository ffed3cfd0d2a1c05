"""What one middleware adds to a publish and to an invoke, and what the expiry watcher costs.

In-process (memory streams, no sockets): a raw client sends batches of 1,000 invokes or
publishes; we time until the last reply, with and without a one-middleware chain, alternating
runs so that noise hits both sides alike, and print medians and the per-operation difference.
Then the memory of 2,000 idle handshaken connections, with tracemalloc, and the task count.

Run: ``.venv/bin/python benchmarks/middleware_cost.py``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from wsclient import RawClient, new_client  # type: ignore[import-not-found]

from trio_socketcluster import Hook, Server, ServerSocket

if TYPE_CHECKING:
    from trio_socketcluster.middleware import EmitRequest, PublishInRequest

BATCH = 1000
ROUNDS = 15


def make(with_middleware: bool) -> Server:
    server = Server(auth_key="bench")

    @server.handler("echo")
    def echo(_s: ServerSocket, data: Any) -> Any:
        return data

    if with_middleware:

        @server.middleware(Hook.EMIT)
        def emit_ok(req: EmitRequest) -> None:
            return None

        @server.middleware(Hook.PUBLISH_IN)
        def publish_ok(req: PublishInRequest) -> None:
            return None

    return server


async def connect(nursery: trio.Nursery, server: Server) -> RawClient:
    a, b = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, b)
    client = new_client(a)
    await client.connect()
    await client.handshake()
    return client


async def timed_batch(client: RawClient, packets: str, expect: int) -> float:
    start = time.perf_counter()
    await client.send(packets)
    got = 0
    while got < expect:
        msg = await client.recv()
        if msg not in ("", "#1"):
            got += 1
    return time.perf_counter() - start


async def per_op(kind: str) -> dict[str, float]:
    results: dict[bool, list[float]] = {False: [], True: []}
    async with trio.open_nursery() as nursery:
        clients = {}
        for flag in (False, True):
            server = make(flag)
            client = await connect(nursery, server)
            if kind == "publish":
                await client.invoke("#subscribe", {"channel": "c"}, cid=2)
            clients[flag] = client
        if kind == "invoke":
            packets = json.dumps(
                [{"event": "echo", "data": i, "cid": 10 + i} for i in range(BATCH)]
            )
            expect = BATCH
        else:  # each publish: one ack to the publisher and one delivery (it is subscribed)
            packets = json.dumps(
                [{"event": "#publish", "data": {"channel": "c", "data": i}, "cid": 10 + i}
                 for i in range(BATCH)]
            )  # fmt: skip
            expect = 2 * BATCH
        for _ in range(ROUNDS):
            for flag in (False, True):
                results[flag].append(await timed_batch(clients[flag], packets, expect) / BATCH)
        nursery.cancel_scope.cancel()
    base, mw = statistics.median(results[False]), statistics.median(results[True])
    return {"without_us": base * 1e6, "with_us": mw * 1e6, "added_us": (mw - base) * 1e6}


async def idle_memory(n: int = 2000) -> dict[str, float]:
    server = Server(auth_key="bench")
    async with trio.open_nursery() as nursery:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        clients = [await connect(nursery, server) for _ in range(n)]
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        total = sum(s.size_diff for s in after.compare_to(before, "filename"))
        stats = trio.lowlevel.current_statistics()
        nursery.cancel_scope.cancel()
    del clients
    return {
        "bytes_per_connection_incl_test_client": total / n,
        "tasks_total": stats.tasks_living,
        "tasks_per_connection": (stats.tasks_living - tasks_before) / n,
    }


async def main() -> None:
    print("invoke :", {k: round(v, 2) for k, v in (await per_op("invoke")).items()})
    print("publish:", {k: round(v, 2) for k, v in (await per_op("publish")).items()})
    print("idle   :", {k: round(v, 1) for k, v in (await idle_memory()).items()})


if __name__ == "__main__":
    trio.run(main)
