"""The server's heartbeat: one task pings every handshaken socket on its schedule.

Each socket is pinged every ``ping_interval_s`` from its accepted handshake on, and closed
with 4001 once ``ping_timeout_s`` passes without any message from its client (any message
counts, as in the reference). Done by each connection's own watcher, every ping woke that
task through its cancel scope's deadline: trio delivers a deadline as a ``Cancelled``
exception raised through the sleeping frames, about half of an idle server's CPU. Here one
task sleeps until the earliest socket's time, then serves every socket due within
``slack_s`` (a ping may go that much early; a pong timeout is never early), writing each
ping straight to the socket when nothing else is queued, so an idle socket's tasks stay
parked: its dispatch task wakes only to read the pong.

``Server.start_broker`` (which ``serve`` calls) runs it. A socket whose server runs no
heartbeat (``handle_stream`` without ``start_broker``) is pinged by its own watcher, as
before. The token-expiry watcher stays per connection: it only wakes when a token expires
or changes.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["Beating", "Heartbeat"]


class Beating(Protocol):
    def _beat(self, now: float, slack_s: float) -> float | None:
        """Ping if due (``now + slack_s`` reached the socket's time), close on a pong
        timeout (``now`` past it); return when to come back, or ``None`` to forget it."""
        ...


#: ``[when, tie-breaker, socket or None]``: one per socket, reused; a closed socket's entry
#: keeps ``None`` (it is dropped when it comes up) so that the socket itself is freed at once.
Entry = list[float | int | Beating | None]


class Heartbeat:
    def __init__(
        self, slack_s: float = 0.01, after_round: Callable[[float], None] | None = None
    ) -> None:
        self.slack_s = slack_s
        #: Called with trio's clock after each round (the collector's pacing, ``collector``).
        self.after_round = after_round
        self._heap: list[Entry] = []
        self._ties: Iterator[int] = itertools.count()
        self._sleep: trio.CancelScope | None = None
        self.running = False

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, socket: Beating, when: float) -> Entry:
        """Come back to ``socket`` at ``when`` (trio's clock). Returns its entry: set
        ``entry[2] = None`` when the socket closes."""
        entry: Entry = [when, next(self._ties), socket]
        heapq.heappush(self._heap, entry)
        sleep = self._sleep
        if sleep is not None and when < sleep.deadline:
            sleep.deadline = when
        return entry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the sockets until cancelled (``running`` from ``started`` on)."""
        if self.running:
            raise RuntimeError("this heartbeat is already running")
        heap = self._heap
        self.running = True
        task_status.started()
        not_before = -math.inf  # at most one round per slack_s: a round serves all due then
        try:
            while True:
                when: float = heap[0][0] if heap else math.inf  # type: ignore[assignment]
                with trio.CancelScope(deadline=max(when, not_before)) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                self._beat_due(now)
                if self.after_round is not None:
                    self.after_round(now)
                not_before = now + self.slack_s
        finally:
            self.running = False
            self._sleep = None

    def _beat_due(self, now: float) -> None:
        heap, slack = self._heap, self.slack_s
        limit = now + slack
        again: list[Entry] = []
        while heap and heap[0][0] <= limit:  # type: ignore[operator]
            entry = heapq.heappop(heap)
            socket = entry[2]
            if socket is None:
                continue
            when = socket._beat(now, slack)  # type: ignore[union-attr]
            if when is None:
                continue
            entry[0] = when
            again.append(entry)  # pushed after the loop: one visit per socket per round
        for entry in again:
            entry[1] = next(self._ties)
            heapq.heappush(heap, entry)
