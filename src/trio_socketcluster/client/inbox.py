"""A bounded, drop-oldest message queue for one reader (channels and receivers).

The connection's reader task must never wait for the application (pings would stop being
answered), so ``put`` never blocks: when ``capacity`` items are waiting, the oldest is dropped
and counted in ``dropped``. ``close()`` lets the reader drain what is left, then ends its
iteration.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """See the module docstring. Iterate with ``async for``, or ``await get()``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[T] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Queue ``item`` (dropping the oldest if full). Ignored once closed."""
        if self._closed:
            return
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._lot.unpark_all()

    def close(self) -> None:
        """No more items: the reader gets what is queued, then the end."""
        self._closed = True
        self._lot.unpark_all()

    async def get(self) -> T:
        """The next item; ``trio.EndOfChannel`` once closed and drained."""
        await trio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._lot.park()
        return self._items.popleft()

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
