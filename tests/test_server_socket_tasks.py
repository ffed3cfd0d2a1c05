"""The connection's tasks after the memory work: the handshake task that ends with the
handshake, the expiry watcher's single cancel scope (which also times the heartbeat once the
handshake is accepted), and the writer's ``Wakeup``.

* A handshake that waits (async HANDSHAKE_SC middleware) stops the 4005 timer when it
  arrives; the heartbeat starts only once it is accepted (no ping before the reply), then
  pings on schedule; a blocked handshake never pings.
* A token set, replaced and removed while the watcher sleeps wakes it each time.
* ``Wakeup``: set before or during ``wait``; cancellation leaves it usable.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from conftest import make_server
from test_server_lifecycle import pings_until, serve_one

from trio_socketcluster import Block, Hook, ServerSocket
from trio_socketcluster.transport._common import Wakeup


async def test_heartbeat_starts_when_a_slow_handshake_is_accepted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(ping_interval_s=5, ping_timeout_s=20, handshake_timeout_s=3)

    async def slow(request: Any) -> None:
        await trio.sleep(10)  # longer than handshake_timeout_s: the 4005 timer has stopped

    server.add_middleware(Hook.HANDSHAKE_SC, slow)
    served = await serve_one(nursery, server, handshake=False)
    client = served.client
    t0 = trio.current_time()
    await client.send_json({"event": "#handshake", "data": {}, "cid": 1})
    reply = await client.recv_json(skip_pings=False)  # nothing (no ping) comes before it
    assert reply["rid"] == 1
    assert reply["data"]["id"]
    assert trio.current_time() == t0 + 10
    assert await pings_until(client, 4) == [
        (t0 + 10, "#1"),
        (t0 + 10, ""),
        (t0 + 15, "#1"),
        (t0 + 15, ""),
    ]


async def test_a_blocked_handshake_never_pings(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(ping_interval_s=1, ping_timeout_s=20)

    async def block(request: Any) -> Block:
        await trio.sleep(2)
        return Block(error="no", status_code=4321)

    server.add_middleware(Hook.HANDSHAKE_SC, block)
    served = await serve_one(nursery, server, handshake=False)
    await served.client.send_json({"event": "#handshake", "data": {}, "cid": 1})
    reply = await served.client.recv_json(skip_pings=False)
    assert reply["data"] == {"code": 4321}
    closed = await served.client.expect_close()
    assert closed.code == 4321
    await served.ended.wait()


async def test_watcher_follows_token_changes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(ping_interval_s=100, ping_timeout_s=200)
    removed: list[float] = []
    server.on("deauthenticate")(lambda s, old: removed.append(trio.current_time()))
    served = await serve_one(nursery, server)
    [socket] = server.sockets.values()
    t0 = trio.current_time()
    await socket.set_auth_token({"u": 1}, expires_in_s=50)
    await trio.sleep(10)
    await socket.set_auth_token({"u": 2}, expires_in_s=20)  # earlier than the first
    await trio.sleep(100)
    assert removed == [pytest.approx(t0 + 30, abs=1)]  # exp is in whole seconds
    await socket.set_auth_token({"u": 3}, expires_in_s=5)
    socket.deauthenticate()  # the watcher sleeps without a deadline again
    await trio.sleep(100)
    assert removed == [pytest.approx(t0 + 30, abs=1), t0 + 110]  # the second: deauthenticate()
    assert served.client is not None


async def test_an_async_handler_slot_semaphore_is_made_on_first_use(
    nursery: trio.Nursery,
) -> None:
    server = make_server(max_concurrent_handlers=1)

    @server.handler("slow")
    async def slow(_s: ServerSocket, data: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return data

    served = await serve_one(nursery, server)
    [socket] = server.sockets.values()
    assert socket._handler_slots is None
    for cid in (5, 6):
        assert (await served.client.invoke("slow", cid, cid=cid))["data"] == cid
    assert socket._handler_slots is not None


async def test_wakeup() -> None:
    wake = Wakeup()
    wake.set()
    with trio.fail_after(1):
        await wake.wait()  # set before: returns at once, and clears
    woken: list[float] = []

    async def waiter() -> None:
        await wake.wait()
        woken.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woken
        wake.set()
        wake.set()  # twice: one wake-up
    assert len(woken) == 1
    with trio.move_on_after(0.01) as scope:
        await wake.wait()  # cleared by the waiter: waits, and is cancelled
    assert scope.cancelled_caught
    wake.set()
    with trio.fail_after(1):
        await wake.wait()  # still usable after the cancellation
