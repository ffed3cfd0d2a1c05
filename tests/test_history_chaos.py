"""Chaos tests of channel history and recovery over real sockets, each counting the
publications acknowledged to their publisher against those every subscriber received:

- TCP resets: subscribers (the Python client and the npm clients v14 and v20 with
  ``static/recovery.js``) reach the server through a proxy that cuts every connection with
  an RST during a stream, and between the resets the server closes them cleanly (a plain
  reconnect). Each gets every publication, in order, once. A channel without history under
  the same treatment loses publications (the control: the test can see a loss).
- A worker killed with ``kill -9``: two conformance-app processes over one real
  ``redis-server`` (AOF, fsync always), subscribers and publishers on both; the clients of the
  killed worker reconnect through the proxy to the other one and recover everything.
"""

from __future__ import annotations

import gc
import signal
import warnings
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from conftest import wait_until
from procs import INTEROP, Process, npm_ci
from redisserver import RedisServer, redis_app
from tcpproxy import ResetProxy

import trio_socketcluster
from trio_socketcluster import HistoryConfig, HistoryPolicy, Server, SocketClusterError
from trio_socketcluster.client import Channel, Client, connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    # coredis (6.9) leaves streams of failed connections unclosed (see test_history_redis.py)
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

#: The helper for the stock JS clients, as the package ships it.
HELPER = Path(trio_socketcluster.__file__).parent / "static" / "recovery.js"
END = {"end": True}
FAST: dict[str, Any] = {
    "reconnect_initial_delay_s": 0.1,
    "reconnect_randomness_s": 0.05,
    "reconnect_multiplier": 1.0,
    "reconnect_max_delay_s": 0.2,
}


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


class Subscriber:
    """What one subscriber received (``data`` items before ``END``) and whether it ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[Any] = []
        self.done = trio.Event()
        self.info: dict[str, Any] = {}


async def python_subscriber(
    client: Client, channel_name: str, sub: Subscriber, *, task_status: Any
) -> None:
    channel = await client.subscribe(channel_name)
    await channel.wait_subscribed()
    task_status.started(channel)
    async for data in channel:
        if data == END:
            break
        sub.received.append(data)
    sub.info = {"recovered": channel.recovered, "duplicates": channel.duplicates}
    sub.done.set()


class NodeSubscriber(Subscriber):
    """``tests/interop/recover_sub.js``: a stock npm client with the recovery helper."""

    def __init__(self, major: int, url: str, channel: str) -> None:
        super().__init__(f"npm v{major}")
        node = npm_ci(INTEROP, "the recovery chaos tests")
        self.proc = Process(
            [node, "recover_sub.js", str(major), url, channel, str(HELPER)], cwd=INTEROP
        )

    async def wait_subscribed(self) -> None:
        line = await trio.to_thread.run_sync(self.proc.lines.wait_for, "SUBSCRIBED", 20.0)
        assert line is not None, f"{self.name} never subscribed: {self.proc.stderr_text()}"

    async def wait_result(self, timeout_s: float = 30.0) -> None:
        import json

        line = await trio.to_thread.run_sync(self.proc.lines.wait_for, "{", timeout_s)
        assert line is not None, f"{self.name} did not finish: {self.proc.stderr_text()}"
        result = json.loads(line)
        assert "failure" not in result, result
        self.received, self.info = result.pop("received"), result
        self.done.set()

    def close(self) -> None:
        self.proc.stop()


@asynccontextmanager
async def node_subscribers(
    url: str, channel: str, majors: tuple[int, ...] = (14, 20)
) -> AsyncIterator[list[NodeSubscriber]]:
    subs: list[NodeSubscriber] = []
    try:
        for major in majors:
            subs.append(NodeSubscriber(major, url, channel))
        for sub in subs:
            await sub.wait_subscribed()
        yield subs
    finally:
        for sub in subs:
            sub.close()


def assert_exactly_once_in_order(sub: Subscriber, acked: list[tuple[str, int]]) -> None:
    """Every acknowledged ``[publisher, i]`` received, none twice, each publisher's in order
    (publications stored but never acknowledged, cut with their worker, may appear too)."""
    got = [(p, i) for p, i in sub.received]
    twice = [(k, x) for k, x in enumerate(got) if x in got[:k]]
    assert not twice, f"{sub.name}: duplicates (index, item) {twice[:10]} {sub.info}"
    missing = sorted(set(acked) - set(got))
    assert not missing, f"{sub.name}: {len(missing)} acknowledged publications lost: {missing[:10]}"
    for name in {p for p, _ in got}:
        mine = [i for p, i in got if p == name]
        assert mine == sorted(mine), f"{sub.name}: {name}'s publications out of order"


# --------------------------------------------------------------------------- TCP resets


async def test_tcp_resets_during_a_stream_lose_nothing_with_history(
    nursery: trio.Nursery,
) -> None:
    server = Server(
        auth_key="k",
        history=HistoryConfig(channels={"news": HistoryPolicy(size=1000, ttl_s=300)}),
    )
    (listener,) = await nursery.start(server.serve, "127.0.0.1", 0)
    server_url = f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/socketcluster/"
    proxy = ResetProxy([listener.socket.getsockname()[1]])
    proxy_url = f"ws://127.0.0.1:{await nursery.start(proxy.serve)}/socketcluster/"
    n = 600
    py_news, py_plain = Subscriber("python news"), Subscriber("python plain")
    async with AsyncExitStack() as stack:
        pub = await stack.enter_async_context(connect(server_url))
        sub_news = await stack.enter_async_context(connect(proxy_url, **FAST))
        sub_plain = await stack.enter_async_context(connect(proxy_url, **FAST))
        npm = await stack.enter_async_context(node_subscribers(proxy_url, "news"))
        async with trio.open_nursery() as inner:
            news: Channel = await inner.start(python_subscriber, sub_news, "news", py_news)
            await inner.start(python_subscriber, sub_plain, "plain", py_plain)
            acked: list[int] = []

            async def stream() -> None:
                for i in range(n):
                    ack = await pub.publish("news", i, timeout_s=5)
                    assert ack["offset"] == i + 1
                    acked.append(i)
                    await pub.publish("plain", i, timeout_s=5)
                    await trio.sleep(0.002)

            inner.start_soon(stream)
            cuts = []
            for k, at in enumerate((100, 200, 300, 400, 500)):
                await wait_until(lambda: len(acked) >= at)  # noqa: B023 (awaited at once)
                # every subscriber is back (connected and subscribed) before the next cut
                await wait_until(
                    lambda: len([s for s in server.sockets.values() if s.channels]) == 4
                )
                if k % 2 == 0:
                    cuts.append(proxy.reset())  # RST on both sides
                else:  # a plain reconnect: the server closes the subscribers' sockets
                    subscribed = [s for s in server.sockets.values() if s.channels]
                    for sock in subscribed:
                        sock.disconnect(1012, "restart")
                    cuts.append(len(subscribed))
            await wait_until(lambda: len(acked) == n)
            await pub.publish("news", END, timeout_s=5)
            await pub.publish("plain", END, timeout_s=5)
            for node_sub in npm:
                await node_sub.wait_result()
            with trio.fail_after(20):
                await py_news.done.wait()
                await py_plain.done.wait()
    assert all(cut >= 4 for cut in cuts), cuts  # every subscriber was cut each time
    for sub in [py_news, *npm]:
        assert sub.received == list(range(n)), sub.name  # in order, once, nothing lost
    assert py_news.info == {"recovered": True, "duplicates": 0}
    assert news.offset == n + 1
    for node_sub in npm:
        assert node_sub.info["subscribes"] >= 6, node_sub.info
        assert node_sub.info["connects"] >= 6, node_sub.info
        assert node_sub.info["position"]["offset"] == n + 1
    # the control: the same cuts on a channel without history lose publications
    assert len(py_plain.received) < n
    assert py_plain.received == sorted(set(py_plain.received))


# --------------------------------------------------------------------------- kill -9 a worker


async def test_a_worker_killed_with_kill_9_loses_no_acknowledged_publication(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    redis = RedisServer(
        extra_args=("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    )
    redis.start()
    auth_key = "chaos-test-auth-key-0123456789abcdef"
    apps = [redis_app(redis.url, auth_key) for _ in range(2)]
    try:
        port_a, port_b = (app.wait_ready(30, name="a conformance-app worker")[0] for app in apps)
        url_b = f"ws://127.0.0.1:{port_b}/socketcluster/"
        proxy = ResetProxy([port_a, port_b])  # a load balancer: A while it lives, then B
        proxy_url = f"ws://127.0.0.1:{await nursery.start(proxy.serve)}/socketcluster/"
        alice = {"username": "alice", "password": "alice-pass"}
        subs = [Subscriber("python via A"), Subscriber("python on B")]
        async with AsyncExitStack() as stack:
            pub_a = await stack.enter_async_context(connect(proxy_url, **FAST))
            pub_b = await stack.enter_async_context(connect(url_b))
            sub_a = await stack.enter_async_context(connect(proxy_url, **FAST))
            sub_b = await stack.enter_async_context(connect(url_b))
            for client in (pub_a, pub_b, sub_a, sub_b):
                await client.invoke("waitSynced")
            for client in (pub_a, pub_b):
                await client.invoke("login", alice)
            assert await pub_a.invoke("pid") == apps[0].proc.pid
            assert await sub_a.invoke("pid") == apps[0].proc.pid
            npm = await stack.enter_async_context(node_subscribers(proxy_url, "news"))
            async with trio.open_nursery() as inner:
                for client, sub in zip((sub_a, sub_b), subs, strict=True):
                    await inner.start(python_subscriber, client, "news", sub)
                acked: list[tuple[str, int]] = []
                failed: list[tuple[str, int]] = []
                stop = trio.Event()

                async def stream(name: str, client: Client) -> None:
                    i = 0
                    while not stop.is_set():
                        try:
                            await client.publish("news", [name, i], timeout_s=2)
                        except (SocketClusterError, TimeoutError):
                            failed.append((name, i))
                            await trio.sleep(0.05)
                        else:
                            acked.append((name, i))
                        i += 1
                        await trio.sleep(0.004)

                inner.start_soon(stream, "a", pub_a)
                inner.start_soon(stream, "b", pub_b)
                await wait_until(lambda: len(acked) >= 150)
                apps[0].signal(signal.SIGKILL)
                killed_at = len(acked)
                await wait_until(lambda: len(acked) >= killed_at + 250 and
                                 any(name == "a" for name, _ in acked[killed_at:]))  # fmt: skip
                stop.set()
                assert await pub_a.invoke("pid") == apps[1].proc.pid  # moved to B
                await pub_b.publish("news", END, timeout_s=5)
                for node_sub in npm:
                    await node_sub.wait_result()
                with trio.fail_after(20):
                    for sub in subs:
                        await sub.done.wait()
        for sub in [*subs, *npm]:
            assert_exactly_once_in_order(sub, acked)
        assert subs[0].info["recovered"] is True
        assert subs[0].info["duplicates"] == 0
        assert proxy.refused == 0
        assert proxy.accepted >= 2 * 4
    finally:
        for app in apps:
            app.stop(20)
        redis.kill()
