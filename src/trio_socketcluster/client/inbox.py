"""A bounded message log that every reader sees whole: the buffer behind channels and receivers.

The connection's reader task must never wait for the application (pings would stop being
answered), so ``put`` never blocks. Readers never take messages away from each other:

* each ``async for`` loop (each ``__aiter__`` call: a ``Reader``) gets **every** message from
  the moment it started, in order, whatever other loops do;
* a new loop starts at the oldest message no loop or ``get()`` has received yet, so messages
  that arrived while nobody was reading (between ``subscribe`` and the first loop, or after a
  ``break``) go to the next loop instead of being lost;
* ``get()`` returns that same next message no one has received yet, and ``get(timeout_s=...)``
  gives up with ``TimeoutError``. Cancelling ``get()`` (or a loop's ``__anext__``) never loses
  a message: it is taken only when it is returned.

Bound and overflow policy: the log keeps at most ``capacity`` messages. When a new message
arrives and it is full, the oldest is dropped: if no one had received it yet it is counted in
``dropped``; a loop that had not reached it yet skips it and counts it in its own
``Reader.dropped``. Messages every live reader has passed are freed at once; a reader that was
abandoned (``break``) stops holding messages as soon as it is garbage-collected, and until then
holds at most ``capacity`` of them.

``close()`` ends the log: readers get what is left for them, then their iteration ends
(``get()`` raises ``BadConnectionError``).
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Generic, TypeVar

import trio

from ..errors import BadConnectionError, TimeoutError

__all__ = ["Inbox", "Reader"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """See the module docstring. ``async for item in inbox``, or ``await inbox.get()``."""

    def __init__(self, capacity: int, *, name: str = "inbox") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.name = name
        self.dropped = 0
        """Messages dropped (buffer full) before anyone received them."""
        self._items: deque[T] = deque()
        self._first = 0  # the sequence number of _items[0]
        self._unread = 0  # the first sequence number no reader has received
        self._readers: weakref.WeakSet[Reader[T]] = weakref.WeakSet()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Messages no one has received yet."""
        return self._end - max(self._unread, self._first)

    @property
    def _end(self) -> int:
        return self._first + len(self._items)

    def put(self, item: T) -> None:
        """Append ``item`` (dropping the oldest if full). Never blocks; ignored once closed."""
        if self._closed:
            return
        if len(self._items) >= self.capacity:
            self._items.popleft()
            if self._first >= self._unread:
                self.dropped += 1
                self._unread = self._first + 1
            self._first += 1
        self._items.append(item)
        self._lot.unpark_all()

    def close(self) -> None:
        """No more items: readers get what is left for them, then the end."""
        self._closed = True
        self._lot.unpark_all()

    async def get(self, *, timeout_s: float | None = None) -> T:
        """The oldest message no one has received yet, waiting for one if needed.

        Raises ``TimeoutError`` after ``timeout_s`` seconds without one (``None``: wait as
        long as it takes), ``BadConnectionError`` once the log is closed and drained.
        Cancellation takes nothing.
        """
        reader = Reader(self, track=False)
        if timeout_s is None:
            return await reader.next()
        with trio.move_on_after(timeout_s):
            return await reader.next()
        raise TimeoutError(f"No message on {self.name} within {timeout_s} s")

    def __aiter__(self) -> Reader[T]:
        return Reader(self)

    async def __anext__(self) -> T:
        """``get()``, ending with ``StopAsyncIteration`` instead of ``BadConnectionError``."""
        try:
            return await self.get()
        except BadConnectionError:
            raise StopAsyncIteration from None

    def _received(self, position: int) -> None:
        """A reader received the message before ``position``: free what no one needs."""
        if position > self._unread:
            self._unread = position
        self._trim()

    def _trim(self) -> None:
        low = self._unread
        for reader in self._readers:
            low = min(low, reader._position)
        while self._first < low and self._items:
            self._items.popleft()
            self._first += 1


class Reader(Generic[T]):
    """One ``async for`` loop over an ``Inbox``: every message from where it started."""

    def __init__(self, inbox: Inbox[T], *, track: bool = True) -> None:
        self._inbox = inbox
        self._position = max(inbox._unread, inbox._first)
        self._shared = not track  # get(): always the next message no one has received
        self.dropped = 0
        """Messages this reader missed because the buffer was full."""
        if track:
            inbox._readers.add(self)

    def __aiter__(self) -> Reader[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.next()
        except BadConnectionError:
            raise StopAsyncIteration from None

    async def next(self) -> T:
        """The reader's next message; ``BadConnectionError`` once closed and drained."""
        inbox = self._inbox
        await trio.lowlevel.checkpoint()
        while True:
            if self._shared:
                self._position = max(self._position, inbox._unread)
            if self._position < inbox._first:
                self.dropped += inbox._first - self._position
                self._position = inbox._first
            if self._position < inbox._end:
                item = inbox._items[self._position - inbox._first]
                self._position += 1
                inbox._received(self._position)
                return item
            if inbox._closed:
                raise BadConnectionError(f"{inbox.name} has ended")
            await inbox._lot.park()
