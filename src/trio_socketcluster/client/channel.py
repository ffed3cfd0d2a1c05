"""A client's subscription to one channel: its state and the messages published on it.

A ``Channel`` is created by ``Client.subscribe`` and lives until it is unsubscribed, kicked
out, refused by the server, or the client closes for good. Its states (``ChannelState``):

* ``PENDING``: wanted, not (yet) confirmed: before the server's answer, while the client
  reconnects (subscribed channels go back to pending and are re-requested after every
  handshake), and for ``wait_for_auth`` channels while the client is unauthenticated;
* ``SUBSCRIBED``: the server confirmed the ``#subscribe``;
* ``UNSUBSCRIBED``: final. ``unsubscribe()`` was called, the server refused the subscription
  (``error`` holds why), the server kicked the client out (``kicked_out`` holds the message),
  or the client closed. Subscribing again creates a new ``Channel``.

Iterating (``async for data in channel``) yields the data of each publish, in order, and ends
once the channel is unsubscribed and the messages that arrived before are consumed. A kick-out
therefore ends the iteration; look at ``channel.kicked_out`` to tell it from ``unsubscribe()``.

Several loops on one channel (two tasks, or two parts of a program that both called
``subscribe("news")`` and got the same ``Channel``) each get **every** message from the moment
they started; they never take messages from each other. Messages that arrive while no loop
runs wait for the next loop (or ``get()``). ``await channel.get(timeout_s=5)`` waits for the
next message no one has received, or raises ``TimeoutError``. The buffer is bounded
(``capacity``): when it is full the oldest message is dropped and counted in ``dropped``, so a
slow consumer never stops the connection from answering pings (details in ``inbox``).

This module does not import ``client``: a ``Channel`` talks to its client through the small
``ChannelOwner`` protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..errors import BadConnectionError, SocketClusterError
from .inbox import Inbox, Reader

__all__ = ["Channel", "ChannelOwner", "ChannelState", "KickedOut"]


class ChannelOwner(Protocol):
    """What a ``Channel`` needs from its client (``Client`` implements it)."""

    async def publish(
        self, channel: str, data: Any = None, *, timeout_s: float | None = None
    ) -> None: ...

    async def transmit_publish(self, channel: str, data: Any = None) -> None: ...

    async def _unsubscribe(self, channel: Channel) -> None: ...


class ChannelState(enum.Enum):
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


@dataclass(frozen=True, kw_only=True, slots=True)
class KickedOut:
    """The server's ``#kickOut``: the channel and the message it gave (if any)."""

    channel: str
    message: Any = None


class Channel:
    """See the module docstring."""

    def __init__(
        self, client: ChannelOwner, name: str, *, wait_for_auth: bool, data: Any, capacity: int
    ) -> None:
        self.client = client
        self.name = name
        self.wait_for_auth = wait_for_auth
        self.data = data
        self.state = ChannelState.PENDING
        self.error: SocketClusterError | None = None
        """The last subscribe failure (it is kept pending if it was a ``wait_for_auth``
        channel and the client was unauthenticated then)."""
        self.kicked_out: KickedOut | None = None
        self._inbox: Inbox[Any] = Inbox(capacity, name=f"channel {name!r}")
        self._changed = trio.lowlevel.ParkingLot()
        self._requesting: object | None = None  # the connection a #subscribe is in flight on
        #: On a channel with history: the offset and epoch of the last publication received
        #: (or the position the server gave when subscribing); ``None`` until known.
        self.offset: int | None = None
        self.epoch: str | None = None
        #: Whether the last re-subscription recovered every missed publication (``None``:
        #: no recovery asked yet). ``False`` means some may be lost (history gone or trimmed).
        self.recovered: bool | None = None
        self.duplicates = 0  #: publications dropped because their offset was already received

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full before any loop received them."""
        return self._inbox.dropped

    @property
    def subscribed(self) -> bool:
        return self.state is ChannelState.SUBSCRIBED

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} {self.state.value}>"

    # ------------------------------------------------------------------ application side

    async def wait_subscribed(self) -> None:
        """Wait until the server confirmed the subscription.

        Raises the server's refusal (``error``), or ``BadConnectionError`` if the channel
        ended otherwise. A pending ``wait_for_auth`` channel waits for authentication.
        Cancellation leaves the channel as it is.
        """
        await trio.lowlevel.checkpoint()
        while True:
            if self.state is ChannelState.SUBSCRIBED:
                return
            if self.state is ChannelState.UNSUBSCRIBED:
                if self.error is not None:
                    raise self.error
                raise BadConnectionError(f"The channel {self.name!r} was unsubscribed")
            await self._changed.park()

    async def unsubscribe(self) -> None:
        """Stop the subscription (sends ``#unsubscribe`` if connected). Idempotent."""
        await self.client._unsubscribe(self)

    async def publish(self, data: Any, *, timeout_s: float | None = None) -> None:
        """``client.publish(channel.name, data, timeout_s=timeout_s)``."""
        await self.client.publish(self.name, data, timeout_s=timeout_s)

    async def transmit_publish(self, data: Any) -> None:
        """``client.transmit_publish(channel.name, data)``."""
        await self.client.transmit_publish(self.name, data)

    def __aiter__(self) -> Reader[Any]:
        """A new loop: every message from now on (and those no one has received yet)."""
        return self._inbox.__aiter__()

    async def get(self, *, timeout_s: float | None = None) -> Any:
        """The next message no loop or ``get()`` has received yet, waiting if needed.

        Raises ``TimeoutError`` after ``timeout_s`` seconds (``None``: no limit), and
        ``BadConnectionError`` once the channel is unsubscribed and drained. Cancellation
        takes no message.
        """
        return await self._inbox.get(timeout_s=timeout_s)

    async def __anext__(self) -> Any:
        """``get()``, ending with ``StopAsyncIteration`` instead of ``BadConnectionError``."""
        return await self._inbox.__anext__()

    # ------------------------------------------------------------------ client side

    def _set_state(self, state: ChannelState) -> None:
        self.state = state
        if state is ChannelState.UNSUBSCRIBED:
            self._requesting = None
            self._inbox.close()
        self._changed.unpark_all()

    def _deliver(self, data: Any, offset: Any = None, epoch: Any = None) -> None:
        if type(offset) is int and isinstance(epoch, str):
            if epoch == self.epoch and self.offset is not None and offset <= self.offset:
                self.duplicates += 1
                return
            self.offset, self.epoch = offset, epoch
        self._inbox.put(data)

    def _subscribe_data(self) -> Any:
        """The ``#subscribe`` data: the channel's ``data``, plus ``recover`` once the channel
        knows its position (so a re-subscription after a reconnect gets what it missed)."""
        if self.epoch is None or self.offset is None:
            return self.data
        if self.data is not None and not isinstance(self.data, dict):
            return self.data  # nowhere to put the request
        return {**(self.data or {}), "recover": {"offset": self.offset, "epoch": self.epoch}}

    def _subscribed(self, ack: Any) -> None:
        """The ``#subscribe`` acknowledgement: on a channel with history, the position."""
        if not isinstance(ack, dict):
            return
        offset, epoch = ack.get("offset"), ack.get("epoch")
        if type(offset) is not int or not isinstance(epoch, str):
            return
        recovered = ack.get("recovered")
        if isinstance(recovered, bool):
            self.recovered = recovered
            if recovered:
                return  # the missed publications follow and move the position
        if epoch != self.epoch or self.offset is None or self.offset < offset:
            self.offset, self.epoch = offset, epoch
