"""The connection's tasks after the memory work: the handshake task that ends with the
handshake, the expiry watcher's single cancel scope (which also times the heartbeat once the
handshake is accepted), and the writer's ``Wakeup``.

* A handshake that waits (async HANDSHAKE_SC middleware) stops the 4005 timer when it
  arrives; the heartbeat starts only once it is accepted (no ping before the reply), then
  pings on schedule; a blocked handshake never pings.
* A token set, replaced and removed while the watcher sleeps wakes it each time.
* ``Wakeup``: set before or during ``wait``; cancellation leaves it usable; its starter.
* The writer task starts only when a write does not go out at once: idle connections over
  TCP (replies written by the reading task, pings by the server's heartbeat) have none; a
  client that stops reading gets one, and every message once it reads again.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from conftest import make_server, wait_until
from test_collector import connected, serving
from test_server_lifecycle import pings_until, serve_one
from wsproto.events import TextMessage

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


async def test_wakeup_starter_runs_once_when_nobody_waits() -> None:
    wake = Wakeup()
    started: list[int] = []
    wake.starter = lambda: started.append(1)
    wake.set()
    wake.set()
    assert started == [1]
    with trio.fail_after(1):
        await wake.wait()  # the flag is still set for the task the starter started


def task_names() -> list[str]:
    """Every running task's name, from the root down."""
    names: list[str] = []
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [root]
    while todo:
        task = todo.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return names


async def test_idle_connections_have_no_writer_task() -> None:
    server = make_server(ping_interval_s=0.05, ping_timeout_s=5)
    async with serving(server) as port:
        clients = [await connected(port) for _ in range(3)]
        for client in clients:
            assert (await client.invoke("echo", "x", cid=2))["data"] == "x"
        pinged = [0] * 3
        with trio.fail_after(10):
            for i, client in enumerate(clients):
                while pinged[i] < 2:  # the heartbeat's pings arrive, and are answered
                    if await client.recv() == "#1":
                        pinged[i] += 1
                        await client.send("#2")
        names = task_names()
        assert sum(n.endswith("ServerSocket._expiry_watcher") for n in names) == 3
        assert not [n for n in names if n.endswith("run_writer")], names
        for client in clients:
            await client.close(1000)


async def test_a_client_that_stops_reading_gets_a_writer_then_everything() -> None:
    server = make_server(ping_interval_s=100, ping_timeout_s=200)
    async with serving(server) as port:
        client = await connected(port)
        reply = await client.invoke("#subscribe", {"channel": "c"}, cid=2)
        assert "error" not in reply
        payload = "x" * 60_000
        sent = 0
        with trio.fail_after(20):  # until the kernel's buffers are full: the writer starts
            while not [n for n in task_names() if n.endswith("run_writer")]:
                server.publish("c", {"n": sent, "p": payload})
                sent += 1
                await trio.lowlevel.checkpoint()
        for n in range(sent, sent + 5):  # and some more, queued behind
            server.publish("c", {"n": n, "p": payload})
        sent += 5
        seen: list[int] = []
        with trio.fail_after(20):
            while len(seen) < sent:
                packet = await client.recv_json()
                assert packet["event"] == "#publish"
                assert packet["data"]["data"]["p"] == payload
                seen.append(packet["data"]["data"]["n"])
        assert seen == list(range(sent))
        [socket] = server.sockets.values()
        assert socket.close_code is None
        await client.close(1000)
        await wait_until(lambda: not server.sockets)
        names = task_names()
        assert not [n for n in names if n.endswith("run_writer")], names


async def test_a_reply_queued_before_a_wait_in_the_same_read_is_not_held_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The dispatch task writes its replies after each read; when a later message of the
    same read waits (an async middleware), the replies queued before it go out first."""
    server = make_server(ping_interval_s=100, ping_timeout_s=200)

    async def slow_for_some(request: Any) -> None:
        if request.event == "slow":
            await trio.sleep(10)

    server.add_middleware(Hook.EMIT, slow_for_some)

    @server.handler("slow")
    def slow(_s: ServerSocket, data: Any) -> Any:
        return data

    served = await serve_one(nursery, server)
    client = served.client
    t0 = trio.current_time()
    both = b"".join(
        client.ws.send(TextMessage(data=json.dumps({"event": e, "data": e, "cid": cid})))
        for e, cid in (("echo", 2), ("slow", 3))
    )
    await client.send_raw(both)  # one read on the server's side
    first = await client.recv_json()
    assert (first["rid"], trio.current_time()) == (2, t0)
    second = await client.recv_json()
    assert (second["rid"], second["data"], trio.current_time()) == (3, "slow", t0 + 10)
