"""The ``Broker`` interface: where publishes go and how they reach local subscribers.

A broker keeps the channel → local subscribers table of one process and carries publishes
to every subscriber of the channel, in this process and (for distributed brokers) in others.
Methods are synchronous and never block: ``publish`` either hands the message on (local
fan-out happens before it returns, for the in-process broker) or raises ``BrokerError``.

A broker that needs background tasks (a connection to Redis) also has
``async def run(self, *, task_status)``; the server starts it in its own nursery before
serving (``Server.start_broker``).

A subscriber is anything with ``deliver(channel, data, message)``, where ``message`` is the
``#publish`` packet already encoded once for all receivers.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..transport.base import OutboundMessage

__all__ = ["Broker", "Subscriber"]


class Subscriber(Protocol):
    def deliver(self, channel: str, data: Any, message: OutboundMessage) -> None: ...


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
