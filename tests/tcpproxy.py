"""A small TCP proxy for chaos tests, on trio: it forwards each accepted connection to the
first backend port that accepts one (a load balancer in front of workers: when one dies,
new connections go to the next), and ``reset()`` cuts every open connection with a TCP
reset on both sides (``SO_LINGER`` 0, then close: an RST, no FIN, no WebSocket close).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field

import trio

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass(eq=False)
class _Link:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    reset: bool = False


def _linger_zero(stream: trio.SocketStream) -> None:
    with contextlib.suppress(OSError):  # already gone
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


class ResetProxy:
    """``port = await nursery.start(proxy.serve)``; clients connect to ``port``."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends  #: tried in order for each new connection
        self.accepted = 0  #: connections forwarded to a backend
        self.refused = 0  #: connections reset because no backend accepted
        self.resets = 0  #: connections cut by ``reset()``
        self._links: set[_Link] = set()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled (which closes every connection)."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def reset(self) -> int:
        """Cut every open connection with an RST on both sides; how many were open."""
        links = list(self._links)
        for link in links:
            link.reset = True
            link.scope.cancel()
        self.resets += len(links)
        return len(links)

    async def _connect_backend(self) -> trio.SocketStream | None:
        for port in self.backends:
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                continue
        return None

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await self._connect_backend()
        if upstream is None:
            self.refused += 1
            _linger_zero(client)
            await trio.aclose_forcefully(client)
            return
        self.accepted += 1
        link = _Link()
        self._links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            if link.reset:
                _linger_zero(client)
                _linger_zero(upstream)
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(upstream)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    """Copy ``source`` to ``sink``; at its end (EOF or an error) the whole link ends."""
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        done.cancel()
