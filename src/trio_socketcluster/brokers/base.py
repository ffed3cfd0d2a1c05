"""The ``Broker`` interface: where publishes go and how they reach local subscribers.

A broker keeps the channel → local subscribers table of one process and carries publishes
to every subscriber of the channel, in this process and (for distributed brokers) in others.
Methods are synchronous and never block: ``publish`` either hands the message on (local
fan-out happens before it returns, for the in-process broker) or raises ``BrokerError``.

Capabilities beyond ``Broker`` are explicit, runtime-checkable protocols (checked once with
``isinstance``, never probed attribute by attribute):

* ``RunnableBroker``: needs background tasks (a connection to Redis): ``async def run(self, *,
  task_status)``; the server starts it in its own nursery before serving
  (``Server.start_broker``);
* ``DistributedBroker``: a runnable broker shared by several processes (``RedisBroker``):
  ``wait_synced()`` (subscriptions live cluster-wide, awaited before a subscribe is
  acknowledged), ``set_command_handler``/``send_command`` (cluster-wide actions such as
  ``Server.disconnect_user``);
* ``ObservableBroker``: what ``/metrics`` reads (``delivered``, ``state()``).
* ``FlushingBroker``: queues what it sends out (``RedisBroker``): ``flush()`` returns once the
  queue is written; the server's drain awaits it.
* ``HistoryBroker``: keeps the history of the channels its ``HistoryConfig`` names
  (``set_history``, given by ``Server(history=...)``): ``publish_stored`` answers once the
  publication is stored (its offset and epoch), ``recover`` reads what a subscriber missed.
  On such a channel ``deliver`` gets the ``Publication`` too, and a broker delivers every
  publication of a channel in offset order, each once.

A subscriber is anything with ``deliver(channel, data, message, publication=None)``, where
``message`` is the ``#publish`` packet already encoded once for all receivers and
``publication`` its offset and epoch on a channel with history (the broker passes it only
there). A ``GroupSubscriber`` class also takes a whole fan-out in one ``deliver_all`` call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

if TYPE_CHECKING:
    from ..history import HistoryConfig, HistoryPolicy, Publication, RecoverRequest, Recovery
    from ..transport.base import OutboundMessage

__all__ = [
    "Broker",
    "CommandHandler",
    "DistributedBroker",
    "FlushingBroker",
    "GroupSubscriber",
    "HistoryBroker",
    "ObservableBroker",
    "RunnableBroker",
    "Subscriber",
]

#: ``handler(op, args)``: applies a cluster command another process sent.
CommandHandler = Callable[[str, Mapping[str, Any]], Any]


class Subscriber(Protocol):
    def deliver(
        self,
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None: ...


@runtime_checkable
class GroupSubscriber(Protocol):
    """A subscriber whose class takes a whole fan-out in one call (``ServerSocket``): what
    every delivery of one publish shares (the publish-out chain, the clock reading) is then
    looked up once, not once per subscriber. ``deliver_all`` must deliver to every subscriber
    given, in order, including any of another type (through its ``deliver``). A broker checks
    the first subscriber of a fan-out."""

    @classmethod
    def deliver_all(
        cls,
        subscribers: Sequence[Subscriber],
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None: ...


class Broker(Protocol):
    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Add a local subscriber (idempotent)."""
        ...

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Remove a local subscriber (no-op if absent)."""
        ...

    def publish(self, channel: str, data: Any) -> None:
        """Deliver ``data`` to every subscriber of ``channel``; ``BrokerError`` on failure,
        ``TypeError`` if ``data`` has no JSON form."""
        ...

    def subscribers(self, channel: str) -> int:
        """How many local subscribers ``channel`` has."""
        ...

    def channels(self) -> list[str]:
        """Channels with at least one local subscriber."""
        ...


@runtime_checkable
class ObservableBroker(Protocol):
    """A broker the server's metrics can read (both of ours are)."""

    @property
    def delivered(self) -> int:
        """Publications handed to this process's subscribers, summed over subscribers."""
        ...

    def state(self) -> Mapping[str, float]:
        """The broker's state for ``/metrics`` (``connected``, ``outbound_queue``...)."""
        ...


@runtime_checkable
class RunnableBroker(Protocol):
    """A broker with background tasks, started by the server before it serves."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``task_status.started()`` once publishes are accepted."""
        ...


@runtime_checkable
class DistributedBroker(RunnableBroker, Broker, Protocol):
    """A broker shared by several processes, with a command bus between them."""

    async def wait_synced(self) -> None:
        """Return once every local subscription is live cluster-wide."""
        ...

    def set_command_handler(self, handler: CommandHandler | None) -> None:
        """``handler(op, args)`` applies the commands other processes send."""
        ...

    def send_command(self, op: str, args: Mapping[str, Any]) -> None:
        """Send a command to every other process; ``BrokerError`` if the bus cannot take it."""
        ...


@runtime_checkable
class HistoryBroker(Broker, Protocol):
    """A broker that keeps channel history (the in-process and the Redis brokers).

    The in-process broker answers at once (a ``Publication``, a ``Recovery``); the Redis
    broker returns an awaitable (one Redis round trip). Callers handle both.
    """

    def set_history(self, config: HistoryConfig) -> None:
        """Keep history for the channels ``config`` names (call before serving)."""
        ...

    def history_policy(self, channel: str) -> HistoryPolicy | None:
        """The channel's policy, ``None`` when it keeps no history."""
        ...

    def publish_stored(self, channel: str, data: Any) -> Publication | Awaitable[Publication]:
        """Publish on a channel with history; the publication once stored (its ``data`` is
        ``data``). ``BrokerError`` when it cannot be stored, ``TypeError`` when ``data`` has
        no JSON form (nothing stored)."""
        ...

    def recover(
        self, channel: str, request: RecoverRequest | None
    ) -> Recovery | Awaitable[Recovery]:
        """What a subscriber that had everything up to ``request`` missed (``data`` decoded),
        or "cannot recover" with the channel's position; ``request=None`` asks only for the
        position (``recovered`` false). The subscriber is registered before this is called."""
        ...


@runtime_checkable
class FlushingBroker(Protocol):
    """A broker that queues what it sends to other processes (the server's drain waits for
    ``flush`` before it stops the broker)."""

    async def flush(self) -> None:
        """Return once everything queued before the call has been written out, or dropped
        because the other side is unreachable. Cancellation leaves the queue as it is."""
        ...
