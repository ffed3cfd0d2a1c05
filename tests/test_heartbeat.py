"""The server's heartbeat task (``server/heartbeat.py``) on its own, with stand-in sockets
and trio's mock clock: served in time order, one round per ``slack_s`` serving everything
due within it, closed sockets dropped, a new earlier socket waking the sleep; then on a real
server over TCP, a silent client closed with 4001 and an answering one kept."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from conftest import AUTH_KEY
from wsclient import Closed, new_client

from trio_socketcluster import Server
from trio_socketcluster.server.heartbeat import Heartbeat

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


Log = list[tuple[float, str]]


class Stand:
    """A socket stand-in: comes back every ``every`` seconds ``times`` times."""

    def __init__(self, name: str, every: float, times: int, log: Log) -> None:
        self.name, self.every, self.left, self.log = name, every, times, log

    def _beat(self, now: float, slack_s: float) -> float | None:
        self.log.append((now, self.name))
        self.left -= 1
        return now + self.every if self.left else None


@asynccontextmanager
async def running(slack_s: float = 0.0) -> AsyncIterator[tuple[Heartbeat, float, Log]]:
    """A heartbeat running in a nursery for the block, the start time and a log for the
    stand-ins; cancelled after the block."""
    heartbeat = Heartbeat(slack_s=slack_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(heartbeat.run)
        yield heartbeat, trio.current_time(), []
        nursery.cancel_scope.cancel()


def since(t0: float, log: Log) -> Log:
    return [(round(t - t0, 6), name) for t, name in log]


async def test_sockets_are_served_in_time_order(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (heartbeat, t0, log):
        heartbeat.add(Stand("a", 3, 3, log), t0 + 3)
        heartbeat.add(Stand("b", 2, 3, log), t0 + 2)
        await trio.sleep(20)
        assert len(heartbeat) == 0  # both said None after three visits
    assert since(t0, log) == [(2, "b"), (3, "a"), (4, "b"), (6, "a"), (6, "b"), (9, "a")]
    assert not heartbeat.running


async def test_one_round_serves_everything_due_within_the_slack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(0.5) as (heartbeat, t0, log):
        for i in range(5):
            heartbeat.add(Stand(str(i), 10, 1, log), t0 + 1 + i * 0.1)  # 1.0 .. 1.4
        heartbeat.add(Stand("late", 10, 1, log), t0 + 1.6)
        await trio.sleep(5)
    # One round at 1.0 serves everything due up to 1.5; the next comes at 1.6.
    assert [t for t, _ in since(t0, log)] == [1, 1, 1, 1, 1, 1.6]


async def test_a_closed_socket_is_dropped_and_an_earlier_one_wakes_the_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (heartbeat, t0, log):
        closed = heartbeat.add(Stand("closed", 1, 5, log), t0 + 100)
        closed[2] = None  # what a socket's cleanup does
        await trio.sleep(1)
        heartbeat.add(Stand("early", 1, 1, log), trio.current_time() + 2)  # before t0 + 100
        await trio.sleep(200)
    assert since(t0, log) == [(3, "early")]
    assert len(heartbeat) == 0


async def test_after_round_runs_once_per_round(autojump_clock: trio.testing.MockClock) -> None:
    rounds: list[float] = []
    async with running(slack_s=0.5) as (heartbeat, t0, log):
        heartbeat.after_round = rounds.append
        heartbeat.add(Stand("a", 2, 2, log), t0 + 1)
        heartbeat.add(Stand("b", 2, 2, log), t0 + 1.2)  # within the slack: the same round
        await trio.sleep(10)
    assert since(t0, log) == [(1, "a"), (1, "b"), (3, "a"), (3, "b")]
    assert [round(t - t0, 6) for t in rounds] == [1, 3]


async def test_running_twice_is_refused() -> None:
    async with running() as (heartbeat, _, _):
        with pytest.raises(RuntimeError, match="already running"):
            await heartbeat.run()


@pytest.mark.parametrize("answer", [True, False])
async def test_on_a_real_server(answer: bool) -> None:
    """Over TCP with ``serve``: the heartbeat pings every 0.1 s; a client that answers is
    still there after 1.5 s (ping_timeout_s 0.5), a silent one is closed with 4001 after
    0.5 s and not before."""
    server = Server(auth_key=AUTH_KEY, ping_interval_s=0.1, ping_timeout_s=0.5, protocol=2)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        client = new_client(await trio.open_tcp_stream("127.0.0.1", port))
        await client.connect()
        await client.handshake()
        assert len(server.heartbeat) == 1
        t0 = trio.current_time()
        pings = 0
        closed: Closed | None = None
        with trio.move_on_after(1.5):
            while True:
                try:
                    message: Any = await client.recv()
                except Closed as exc:
                    closed = exc
                    break
                assert message == ""
                pings += 1
                if answer:
                    await client.send("")
        if answer:
            assert closed is None
            assert server.client_count == 1
            assert 10 <= pings <= 16
        else:
            assert closed is not None
            assert closed.code == 4001
            assert 0.5 <= trio.current_time() - t0 < 1.0
            assert 3 <= pings <= 6
        await client.stream.aclose()
        nursery.cancel_scope.cancel()
