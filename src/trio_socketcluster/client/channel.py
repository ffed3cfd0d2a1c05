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
Messages wait in a bounded buffer (``capacity``); when it is full the oldest is dropped and
counted in ``dropped``, so a slow consumer never stops the connection from answering pings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..errors import BadConnectionError, SocketClusterError
from .inbox import Inbox

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Channel", "ChannelState", "KickedOut"]


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
        self, client: Client, name: str, *, wait_for_auth: bool, data: Any, capacity: int
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
        self._inbox: Inbox[Any] = Inbox(capacity)
        self._changed = trio.lowlevel.ParkingLot()
        self._requesting: object | None = None  # the connection a #subscribe is in flight on

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full."""
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

    async def publish(self, data: Any) -> None:
        """``client.publish(channel.name, data)``."""
        await self.client.publish(self.name, data)

    async def transmit_publish(self, data: Any) -> None:
        """``client.transmit_publish(channel.name, data)``."""
        await self.client.transmit_publish(self.name, data)

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Any:
        return await self._inbox.__anext__()

    # ------------------------------------------------------------------ client side

    def _set_state(self, state: ChannelState) -> None:
        self.state = state
        if state is ChannelState.UNSUBSCRIBED:
            self._requesting = None
            self._inbox.close()
        self._changed.unpark_all()

    def _deliver(self, data: Any) -> None:
        self._inbox.put(data)
