"""The in-process broker: one dict of channels, encode-once fan-out.

A publish encodes the ``#publish`` packet once and hands the same ``OutboundMessage`` (whose
WebSocket frame is also built once) to every subscriber. Subscribers of a channel are kept in
insertion order, so deliveries follow subscription order.
"""

from __future__ import annotations

from typing import Any

from ..protocol.codec import publish_bytes
from ..transport.base import OutboundMessage
from .base import Subscriber

__all__ = ["LocalBroker"]


class LocalBroker:
    """Channels and subscribers of this process only."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[Subscriber, None]] = {}

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        subs = self._channels.get(channel)
        if subs is None:
            subs = self._channels[channel] = {}
        subs[subscriber] = None

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subs = self._channels.get(channel)
        if subs is not None:
            subs.pop(subscriber, None)
            if not subs:
                del self._channels[channel]

    def publish(self, channel: str, data: Any) -> None:
        message = OutboundMessage(publish_bytes(channel, data))
        self.fan_out(channel, data, message)

    def fan_out(self, channel: str, data: Any, message: OutboundMessage) -> None:
        """Hand an already encoded publish to every local subscriber of ``channel``."""
        subs = self._channels.get(channel)
        if subs:
            for sub in tuple(subs):
                sub.deliver(channel, data, message)

    def subscribers(self, channel: str) -> int:
        subs = self._channels.get(channel)
        return len(subs) if subs else 0

    def channels(self) -> list[str]:
        return list(self._channels)
