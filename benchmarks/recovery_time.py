"""Recovery of missed publications on a channel with history, timed on a real client.

    python benchmarks/recovery_time.py [--missed 1000] [--repeat 9] [--redis redis://...]

The conformance application (``examples/conformance_app.py``, whose ``news`` keeps its last
1,000 publications) runs in its own process, pinned to CPU 0 (``taskset``, when present);
with ``--redis`` it uses the Redis broker, so the history is a Redis Stream. This process
(pinned to CPU 1) runs the Python client. Each repetition: a subscriber receives one
publication on ``news`` (so it knows its position) and leaves; a publisher publishes
``missed`` more (each acknowledged: stored); a new subscriber subscribes with
``{"recover": position}``. Timed from the ``#subscribe`` to its acknowledgement
(``ack_ms``) and to the last missed publication received (``last_ms``); a plain
``#subscribe`` round trip on a channel without history is timed too (``plain_subscribe_ms``).
Every repetition checks that all ``missed`` arrive, in order, once, and
``recovered`` is true. Prints one JSON object (medians, and every repetition).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from trio_socketcluster.client import connect

ROOT = Path(__file__).resolve().parent.parent
AUTH_KEY = "bench-secret"
PAYLOAD = "x" * 32
ALICE = {"username": "alice", "password": "alice-pass"}


def start_server(redis: str | None) -> tuple[subprocess.Popen[str], int]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {**os.environ, "PORT": "0", "AUTH_KEY": AUTH_KEY, "HOST": "127.0.0.1"}
    script = ROOT / "examples" / "conformance_app.py"
    if redis:
        env["BROKER"] = redis
        script = ROOT / "tests" / "redis_app.py"  # the conformance app on $BROKER
    proc = subprocess.Popen(
        [*pin, sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY "):
            return proc, int(line.split()[1])
    raise RuntimeError("the conformance app exited before READY")


async def one(url: str, missed: int, rep: int) -> dict[str, Any]:
    async with connect(url) as pub:
        await pub.invoke("login", ALICE)
        async with connect(url) as sub:
            news = await sub.subscribe("news")
            await pub.publish("news", {"rep": rep, "s": -1, "p": PAYLOAD})
            await news.get(timeout_s=10)
            position = {"offset": news.offset, "epoch": news.epoch}
        for s in range(missed):
            await pub.publish("news", {"rep": rep, "s": s, "p": PAYLOAD})
        async with connect(url, buffer_size=missed + 10) as sub:
            t0 = time.perf_counter()
            await sub.subscribe("plain-timing")
            plain_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            news = await sub.subscribe("news", data={"recover": position})
            ack_ms = (time.perf_counter() - t0) * 1000
            got = [await news.get(timeout_s=30) for _ in range(missed)]
            last_ms = (time.perf_counter() - t0) * 1000
            if [m["s"] for m in got] != list(range(missed)) or not news.recovered:
                raise AssertionError(f"repetition {rep}: not every missed publication, in order")
    return {"plain_subscribe_ms": plain_ms, "ack_ms": ack_ms, "last_ms": last_ms}


async def run(url: str, missed: int, repeat: int) -> list[dict[str, Any]]:
    await one(url, 10, -1)  # warm-up
    return [await one(url, missed, rep) for rep in range(repeat)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--missed", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--redis", help="a Redis URL: the server uses the Redis broker")
    args = ap.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {1})
    server, port = start_server(args.redis)
    try:
        reps = trio.run(run, f"ws://127.0.0.1:{port}/socketcluster/", args.missed, args.repeat)
    finally:
        server.terminate()
        server.wait(15)
    medians = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    print(json.dumps({
        "missed": args.missed, "broker": "redis" if args.redis else "local",
        "median_ms": medians, "max_last_ms": max(r["last_ms"] for r in reps),
        "repetitions": reps,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
