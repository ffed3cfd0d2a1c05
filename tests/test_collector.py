"""The garbage-collector policy (``collector.py``): a connection leaves no reference cycles
behind, whichever way it ends, so freezing the survivors of a full collection loses nothing
of ours; and the freeze/thaw rules themselves, on the real collector."""

from __future__ import annotations

import gc
import math
import socket as pysocket
import struct
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from conftest import AUTH_KEY, wait_until
from wsclient import Closed, RawClient, new_client

import trio_socketcluster
from trio_socketcluster import Server, ServerSocket
from trio_socketcluster.collector import PACE_S, THAW_MIN_CLOSES, FreezeSurvivors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

SERVER_CODE = Path(trio_socketcluster.__file__).parent
SERVER_PARTS = ("server", "transport", "protocol", "brokers")


def _ours(obj: Any) -> bool:
    """Is ``obj`` a piece of a server-side connection (an object of our classes, or a
    coroutine, frame or traceback running our code)?"""
    code = None
    if hasattr(obj, "cr_code"):
        code = obj.cr_code
    elif hasattr(obj, "gi_code"):
        code = obj.gi_code
    elif hasattr(obj, "f_code"):
        code = obj.f_code
    elif hasattr(obj, "tb_frame"):
        code = obj.tb_frame.f_code
    if code is not None:
        path = Path(code.co_filename)
        return path.is_relative_to(SERVER_CODE) and path.parent.name in SERVER_PARTS
    module = type(obj).__module__ or ""
    return module.startswith("trio_socketcluster.") and module.split(".")[1] in SERVER_PARTS


@contextmanager
def cyclic_garbage() -> Iterator[list[Any]]:
    """Collects first, then keeps the collector off for the block; the list it yields is
    filled, at the end, with the server-side objects that only a collection would free."""
    found: list[Any] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found.extend(o for o in gc.garbage if _ours(o))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    finally:
        if was_enabled:
            gc.enable()


def make_app(**options: Any) -> Server:
    server = Server(auth_key=AUTH_KEY, **options)

    @server.handler("login")
    async def login(socket: ServerSocket, data: Any) -> str:
        await socket.set_auth_token({"username": data})
        return "ok"

    @server.handler("echo")
    async def echo(_socket: ServerSocket, data: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return data

    @server.handler("kick")
    def kick(socket: ServerSocket, _data: Any) -> None:
        socket.disconnect(4000, "kicked")

    return server


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def connected(port: int, *, handshake: bool = True) -> RawClient:
    client = new_client(await trio.open_tcp_stream("127.0.0.1", port))
    await client.connect()
    if handshake:
        await client.handshake()
    return client


async def until_closed(client: RawClient) -> Closed:
    with trio.fail_after(10):
        closed = await client.expect_close()
    await client.stream.aclose()
    return closed


async def normal_life(port: int) -> None:
    """Log in, subscribe, publish, invoke an async handler, close with 1000."""
    client = await connected(port)
    assert (await client.invoke("login", "alice", cid=2))["data"] == "ok"
    await client.send_json({"event": "#subscribe", "data": {"channel": "news"}, "cid": 3})
    await client.send_json({"event": "#publish", "data": {"channel": "news", "data": 1}, "cid": 4})
    assert (await client.invoke("echo", "hi", cid=5))["data"] == "hi"
    await client.send_json({"event": "#unsubscribe", "data": "news", "cid": 6})
    await client.close(1000)


async def tcp_reset(port: int) -> None:
    """Handshaken, then the TCP connection is reset (no close frame)."""
    client = await connected(port)
    sock = client.stream.socket  # type: ignore[attr-defined]
    sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.stream.aclose()


async def kicked(port: int) -> None:
    client = await connected(port)
    await client.send_json({"event": "kick", "data": None})
    assert (await until_closed(client)).code == 4000


async def handshake_timeout(port: int) -> None:
    client = await connected(port, handshake=False)
    assert (await until_closed(client)).code == 4005


async def pong_timeout(port: int) -> None:
    """Handshaken, then silent: the server's pings go unanswered."""
    client = await connected(port)
    assert (await until_closed(client)).code == 4001


async def protocol_error(port: int) -> None:
    client = await connected(port)
    await client.send_raw(b"\x83\x80\x00\x00\x00\x00")  # reserved opcode 3
    assert (await until_closed(client)).code == 1002


async def too_big(port: int) -> None:
    client = await connected(port)
    await client.send_json({"event": "echo", "data": "x" * 5000, "cid": 2})
    assert (await until_closed(client)).code == 1009


async def bad_token(port: int) -> None:
    client = await connected(port, handshake=False)
    reply = await client.handshake("not.a.token")
    assert reply["data"]["isAuthenticated"] is False
    await client.close(1000)


async def refused_upgrade(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(10):
        assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 4")
    await stream.aclose()


ENDINGS: list[Callable[[int], Any]] = [
    normal_life, tcp_reset, kicked, handshake_timeout, pong_timeout,
    protocol_error, too_big, bad_token, refused_upgrade,
]  # fmt: skip

OPTIONS = {
    "handshake_timeout_s": 0.3,
    "ping_interval_s": 0.1,
    "ping_timeout_s": 0.4,
    "max_payload_bytes": 4096,
}


async def run_endings(server: Server, endings: list[Callable[[int], Any]], times: int) -> None:
    base = FreezeSurvivors.open_connections
    async with serving(server) as port:
        for ending in endings:
            for _ in range(times):
                await ending(port)
        await wait_until(lambda: FreezeSurvivors.open_connections == base)
        await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda f: f.__name__)
async def test_a_connection_leaves_no_cycles(ending: Callable[[int], Any]) -> None:
    server = make_app(**OPTIONS)  # held here: the server's own cycles are not a connection's
    with cyclic_garbage() as garbage:
        await run_endings(server, [ending], times=5)
    kinds = sorted({type(o).__qualname__ for o in garbage})
    assert garbage == [], f"{len(garbage)} server-side objects in cycles: {kinds}"


async def test_the_cycle_check_sees_a_connection_in_a_cycle() -> None:
    """The detector itself: a handler that ties the socket to itself is found."""
    server = make_app(**OPTIONS)

    @server.handler("tie")
    def tie(socket: ServerSocket, _data: Any) -> None:
        socket.handshake_data = socket  # a cycle through the socket's own attribute

    async def tied(port: int) -> None:
        client = await connected(port)
        await client.invoke("tie", cid=2)
        await client.close(1000)

    with cyclic_garbage() as garbage:
        await run_endings(server, [tied], times=3)
    assert sum(isinstance(o, ServerSocket) for o in garbage) == 3


async def test_survivors_of_a_full_collection_are_frozen_while_serving() -> None:
    async with serving(make_app()):
        gc.collect()
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the process: modules, functions, the server
        # The oldest generation, which the next full collection walks, is empty.
        assert len(gc.get_objects(generation=2)) == 0
    assert gc.get_freeze_count() == 0  # nothing stays frozen once no server runs
    gc.collect()
    assert len(gc.get_objects(generation=2)) >= frozen * 0.9


async def test_survivors_of_a_middle_collection_are_frozen_too() -> None:
    """What survives a collection of the middle generation (found reachable twice) is frozen:
    the oldest generation stays empty and full collections have almost nothing to walk."""
    async with serving(make_app()):
        gc.collect()
        freezes = FreezeSurvivors.freezes
        kept = [[i] for i in range(5000)]  # survivors of the next collections
        gc.collect(1)
        assert FreezeSurvivors.freezes == freezes + 1
        assert len(gc.get_objects(generation=2)) == 0
        assert sum(gc.is_tracked(x) for x in kept) == len(kept)
        gc.collect(0)  # a young collection alone freezes nothing
        assert FreezeSurvivors.freezes == freezes + 1


async def test_after_a_thaw_only_a_full_collection_freezes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thaw hands the frozen objects back unchecked: a middle collection must not freeze
    them again before a full collection has walked them (and freed any garbage cycles)."""
    monkeypatch.setattr(FreezeSurvivors, "thawed", False)
    async with serving(make_app()):
        cycle: list[Any] = []
        cycle.append(cycle)
        gc.collect()
        assert gc.get_freeze_count() > 0  # the cycle among them
        del cycle  # frozen garbage: only a collection after a thaw frees it
        FreezeSurvivors.thaw()
        assert gc.get_freeze_count() == 0
        freezes = FreezeSurvivors.freezes
        assert gc.collect(1) == 0  # the cycle is in the oldest generation now
        assert FreezeSurvivors.freezes == freezes
        assert gc.get_freeze_count() == 0
        assert gc.collect() >= 1  # the full collection frees it, then freezes
        assert FreezeSurvivors.freezes == freezes + 1
        assert not FreezeSurvivors.thawed
        assert gc.get_freeze_count() > 10_000


def test_pace_collects_the_young_and_middle_generations_every_pace_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However flat CPython's allocation count stays (objects replaced as fast as they are
    made), ``pace`` (the heartbeat calls it after each round) collects the young and middle
    generations every ``PACE_S``, and its survivors are frozen; never while the collector
    is paused (the drain) or no server runs the policy."""
    monkeypatch.setattr(FreezeSurvivors, "next_pace", -math.inf)
    monkeypatch.setattr(FreezeSurvivors, "thawed", False)
    collected: list[int] = []

    def probe(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            collected.append(info["generation"])

    gc.callbacks.append(probe)
    try:
        FreezeSurvivors.pace(0.0)
        assert collected == []  # no server runs the policy
        with FreezeSurvivors():
            kept = [[i] for i in range(1000)]
            gc.collect(0)  # young survivors, in the middle generation now
            assert len(gc.get_objects(generation=1)) >= len(kept)
            collected.clear()
            FreezeSurvivors.pace(100.0)
            assert collected == [1]
            assert len(gc.get_objects(generation=1)) == 0  # walked, frozen
            FreezeSurvivors.pace(100.0 + PACE_S / 2)
            assert collected == [1]
            FreezeSurvivors.pace(100.0 + PACE_S)
            assert collected == [1, 1]
            gc.disable()
            try:
                FreezeSurvivors.pace(200.0)
            finally:
                gc.enable()
            assert collected == [1, 1]
    finally:
        gc.callbacks.remove(probe)


async def test_off_when_the_option_says_so() -> None:
    async with serving(make_app(gc_freeze=False)):
        gc.collect()
        assert gc.get_freeze_count() == 0
        assert len(gc.get_objects(generation=2)) > 10_000


async def test_thawed_after_a_turnover_of_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the connections closed since the last thaw outnumber those open then (at least
    ``THAW_MIN_CLOSES``, lowered here), the frozen objects go back to the collector."""
    monkeypatch.setattr(FreezeSurvivors, "closed_since_thaw", 0)
    monkeypatch.setattr(FreezeSurvivors, "thaw_after", 3)
    thaws = FreezeSurvivors.thaws
    server = make_app()
    async with serving(server) as port:
        gc.collect()
        assert gc.get_freeze_count() > 0
        for _ in range(2):
            await (await connected(port)).close(1000)
        await wait_until(lambda: FreezeSurvivors.closed_since_thaw >= 2)
        assert FreezeSurvivors.thaws == thaws
        assert gc.get_freeze_count() > 0
        await (await connected(port)).close(1000)
        await wait_until(lambda: FreezeSurvivors.thaws > thaws)
        assert gc.get_freeze_count() == 0
        assert FreezeSurvivors.closed_since_thaw == 0
        assert FreezeSurvivors.thaw_after == max(THAW_MIN_CLOSES, FreezeSurvivors.open_connections)
