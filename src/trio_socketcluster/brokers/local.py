"""The in-process broker: one dict of channels, encode-once fan-out, and channel history in
memory.

A publish encodes the ``#publish`` packet once and hands the same ``OutboundMessage`` (whose
WebSocket frame is also built once) to every subscriber. Subscribers of a channel are kept in
insertion order, so deliveries follow subscription order.

With a ``HistoryConfig`` (``LocalBroker(history=...)`` or ``set_history``), a publish on a
channel with a policy is first stored in a ``MemoryHistory`` (its offset and epoch), then
fanned out with ``offset`` and ``epoch`` in the packet; ``recover`` answers from the same
store. Everything is synchronous, so publications reach subscribers in offset order and a
subscriber registered before ``recover`` misses nothing. Epochs are random per process: a
restart loses the history, and recovering clients get ``recovered: false``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Final

import trio

from ..history import (
    HistoryConfig,
    HistoryPolicy,
    MemoryHistory,
    Publication,
    RecoverRequest,
    Recovery,
)
from ..protocol.codec import encode, publish_bytes
from ..transport.base import OutboundMessage
from .base import GroupSubscriber

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Subscriber

__all__ = ["LocalBroker", "publication_bytes"]

_SWEEP_EVERY_S: Final = 60.0
_NO_REQUEST: Final = RecoverRequest(0, "")  # never recovers: answers with the position


def publication_bytes(channel: str, data_json: bytes, publication: Publication) -> bytes:
    """The ``#publish`` packet of a publication on a channel with history, from the data's
    JSON (``encode(data)``): ``channel``, ``data``, ``offset`` and ``epoch``."""
    return b"".join((
        b'{"event":"#publish","data":{"channel":', encode(channel), b',"data":', data_json,
        b',"offset":', str(publication.offset).encode(), b',"epoch":',
        encode(publication.epoch), b"}}",
    ))  # fmt: skip


def _new_epoch() -> str:
    return secrets.token_hex(8)


class LocalBroker:
    """Channels and subscribers of this process only (and their history, if configured).

    ``clock`` (default ``trio.current_time``) times the history's ``ttl_s``; ``new_epoch``
    names a new history (default: 16 random hex digits).
    """

    def __init__(
        self,
        history: HistoryConfig | None = None,
        *,
        clock: Callable[[], float] = trio.current_time,
        new_epoch: Callable[[], str] = _new_epoch,
    ) -> None:
        self._channels: dict[str, dict[Subscriber, None]] = {}
        self._grouped: dict[type, bool] = {}  # subscriber type -> is a GroupSubscriber
        self._clock = clock
        self._new_epoch = new_epoch
        self._store: MemoryHistory | None = None
        self._policies: dict[str, HistoryPolicy | None] = {}
        self._next_sweep = 0.0
        if history is not None:
            self.set_history(history)
        #: Publications handed to local subscribers, summed over subscribers (one addition per
        #: publication, read by the server's metrics).
        self.delivered = 0

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
        if self._store is not None and self.history_policy(channel) is not None:
            self.publish_stored(channel, data)
            return
        message = OutboundMessage(publish_bytes(channel, data))
        self.fan_out(channel, data, message)

    def fan_out(
        self,
        channel: str,
        data: Any,
        message: OutboundMessage,
        publication: Publication | None = None,
    ) -> None:
        """Hand an already encoded publish to every local subscriber of ``channel``."""
        subs = self._channels.get(channel)
        if not subs:
            return
        self.delivered += len(subs)
        group = tuple(subs)
        first = group[0]
        kind = type(first)
        grouped = self._grouped.get(kind)
        if grouped is None:  # an isinstance against a protocol costs microseconds: once a type
            grouped = self._grouped[kind] = isinstance(first, GroupSubscriber)
        if grouped:
            kind.deliver_all(group, channel, data, message, publication)  # type: ignore[attr-defined]
        elif publication is None:
            for sub in group:
                sub.deliver(channel, data, message)
        else:
            for sub in group:
                sub.deliver(channel, data, message, publication)

    def subscribers(self, channel: str) -> int:
        subs = self._channels.get(channel)
        return len(subs) if subs else 0

    def channels(self) -> list[str]:
        return list(self._channels)

    # ------------------------------------------------------------------ history

    def set_history(self, config: HistoryConfig) -> None:
        """Keep history for the channels ``config`` names (replaces what was kept)."""
        self._store = MemoryHistory(config, new_epoch=self._new_epoch) if config else None
        self._policies = {}

    def history_policy(self, channel: str) -> HistoryPolicy | None:
        store = self._store
        if store is None:
            return None
        policies = self._policies
        try:
            return policies[channel]
        except KeyError:
            policy = store.policy(channel)
            if len(policies) >= 65_536:  # a cache, bounded against many channel names
                policies.clear()
            policies[channel] = policy
            return policy

    def publish_stored(self, channel: str, data: Any) -> Publication:
        """Store the publication, then deliver it (with its offset and epoch)."""
        store = self._store
        if store is None:
            raise LookupError("this broker keeps no history")
        data_json = encode(data)  # TypeError before anything is stored
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY_S
            store.sweep(now)
        pub = store.append(channel, data, now)
        if pub is None:
            raise LookupError(f"channel {channel!r} keeps no history")
        message = OutboundMessage(publication_bytes(channel, data_json, pub))
        self.fan_out(channel, data, message, pub)
        return pub

    def recover(self, channel: str, request: RecoverRequest | None) -> Recovery:
        store = self._store
        rec = (
            None if store is None else store.recover(channel, request or _NO_REQUEST, self._clock())
        )
        if rec is None:
            raise LookupError(f"channel {channel!r} keeps no history")
        return rec

    def state(self) -> dict[str, float]:
        """Nothing to report: an in-process broker is always up."""
        return {}
