"""Graceful drain under load, with real processes and real sockets: SIGTERM to the conformance
application while a publisher keeps 8 acknowledged publishes in flight to 100 subscribers.

Counted: every publication whose acknowledgement the publisher received reached every
subscriber, every socket saw close code 1001, the process exited 0. The number of runs is
``DRAIN_CHAOS_RUNS`` (default 20, about 30 s); a variant drives the real npm clients.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import trio
from procs import INTEROP, REPO, Process, npm_ci

from trio_socketcluster.client import ClientState, connect

if TYPE_CHECKING:
    from collections.abc import Callable

RUNS = int(os.environ.get("DRAIN_CHAOS_RUNS", "20"))
SUBSCRIBERS = 100
IN_FLIGHT = 8
ACKS_BEFORE_SIGTERM = 200
AUTH_KEY = "drain-test-key-" + "0" * 32
APP = str(REPO / "examples" / "conformance_app.py")


@dataclass
class Observed:
    acked: set[int] = field(default_factory=set)
    received: list[set[int]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    publisher_close: int | None = None


async def _subscriber(
    url: str, out: set[int], closes: list[int | None], ready: Callable[[], None]
) -> None:
    async with connect(url, auto_reconnect=False, buffer_size=100_000) as client:
        channel = await client.subscribe("news")
        ready()
        async for data in channel:
            out.add(int(data))
        await client.wait_for(lambda c: c.state is ClientState.CLOSED)
        closes.append(None if client.last_close is None else client.last_close.code)


async def _stream(port: int, pid: int) -> Observed:
    url = f"ws://127.0.0.1:{port}/socketcluster/"
    seen = Observed()
    subscribed = trio.Semaphore(0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(SUBSCRIBERS):
                got: set[int] = set()
                seen.received.append(got)
                nursery.start_soon(_subscriber, url, got, seen.closes, subscribed.release)
            for _ in range(SUBSCRIBERS):
                await subscribed.acquire()
            async with connect(url, auto_reconnect=False) as publisher:
                await publisher.invoke("login", {"username": "alice", "password": "alice-pass"})
                counter = iter(range(10**9))
                sent = trio.Event()

                async def publish_loop() -> None:
                    while publisher.state is ClientState.OPEN:
                        n = next(counter)
                        try:
                            await publisher.publish("news", n, timeout_s=10)
                        except Exception:  # the drain: not acknowledged
                            return
                        seen.acked.add(n)
                        if len(seen.acked) == ACKS_BEFORE_SIGTERM and not sent.is_set():
                            os.kill(pid, signal.SIGTERM)
                            sent.set()

                async with trio.open_nursery() as publishers:
                    for _ in range(IN_FLIGHT):
                        publishers.start_soon(publish_loop)
                await publisher.wait_for(lambda c: c.state is ClientState.CLOSED)
                last = publisher.last_close
                seen.publisher_close = None if last is None else last.code
    return seen


def _one_run() -> tuple[Observed, int]:
    app = Process([sys.executable, APP], env={"PORT": "0", "AUTH_KEY": AUTH_KEY})
    try:
        port = app.wait_ready(name="the conformance app")[0]
        seen = trio.run(_stream, port, app.proc.pid)
        status = app.proc.wait(timeout=15)
    finally:
        app.stop()
    return seen, status


@pytest.mark.parametrize("run", range(RUNS))
def test_sigterm_under_a_publish_stream_loses_no_acknowledged_publication(run: int) -> None:
    seen, status = _one_run()
    assert status == 0
    assert len(seen.acked) >= ACKS_BEFORE_SIGTERM
    lost = sum(len(seen.acked - got) for got in seen.received)
    assert lost == 0, f"{lost} acknowledged deliveries lost"
    assert seen.closes == [1001] * SUBSCRIBERS
    assert seen.publisher_close == 1001


@pytest.mark.interop
@pytest.mark.parametrize("publisher", [14, 20])
def test_sigterm_with_the_npm_clients_loses_no_acknowledged_publication(publisher: int) -> None:
    """The same with the real npm clients: 10 v14 and 10 v20 subscribers, a v14 or v20
    publisher keeping 8 acknowledged publishes in flight."""
    node = npm_ci(INTEROP, "the npm clients")
    app = Process([sys.executable, APP], env={"PORT": "0", "AUTH_KEY": AUTH_KEY})
    try:
        port = app.wait_ready(name="the conformance app")[0]
        args = {
            "url": f"ws://127.0.0.1:{port}/socketcluster/", "v14": 10, "v20": 10,
            "inFlight": IN_FLIGHT, "acksBeforeStop": ACKS_BEFORE_SIGTERM, "pubMajor": publisher,
        }  # fmt: skip
        clients = Process([node, "drain.js", json.dumps(args)], cwd=INTEROP)
        try:
            assert clients.lines.wait_for("STOP", 30) is not None, clients.stderr_text()
            app.signal(signal.SIGTERM)
            line = clients.lines.wait_for("{", 30)
        finally:
            clients.stop()
            errors = clients.stderr_text()
        status = app.proc.wait(timeout=15)
    finally:
        app.stop()
    assert line is not None, errors
    out = json.loads(line)
    assert "error" not in out, out["error"]
    acked = set(out["acked"])
    assert len(acked) >= ACKS_BEFORE_SIGTERM
    lost = sum(len(acked - set(got)) for got in out["received"])
    assert lost == 0, f"{lost} acknowledged deliveries lost"
    assert out["closes"] == [1001] * 21
    assert status == 0
