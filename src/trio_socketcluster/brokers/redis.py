"""The Redis broker: publishes cross processes over Redis pub/sub (the only module that imports
a Redis client, coredis, which runs on Trio through anyio).

What it owns:

* the local table, a ``LocalBroker``: local publishes fan out at once through it, and so do
  messages that arrive from other processes (encoded once per process);
* **one Redis subscription per channel per process**, however many local sockets subscribe:
  the first local subscriber makes the subscriber task ``SUBSCRIBE``, the last one leaving
  makes it ``UNSUBSCRIBE`` (the count is the local table's);
* a **bounded outbound queue** (``max_queue`` messages): ``publish`` is synchronous, delivers
  to local subscribers, then enqueues the cluster copy; the publisher task drains the queue in
  pipelined batches. When Redis is unreachable or the queue is full, ``publish`` raises
  ``BrokerError`` *after* the local delivery: the error means "not sent to other processes";
* **the bus format**: every Redis message is JSON, ``{"s":"<hex HMAC>","b":<body>}``, where the
  body is compact JSON ``{"v":1,"o":origin,"n":seq,"t":ms,"k":"p"|"c",...}`` and the HMAC is
  HMAC-SHA256 over the body's exact bytes, keyed by the cluster key (derived from a shared
  secret with a fixed label, so the bus key is never the JWT key). A receiver checks the
  signature, the version, the age (``max_skew_s``) and that ``n`` grows per origin (no
  replay); what fails is dropped and counted in ``stats``. Its own messages (echoes) are
  skipped: local subscribers already had them;
* **faults**: a lost connection is re-established with exponential backoff (``reconnect_min_s``
  to ``reconnect_max_s``, with jitter); every held channel is subscribed again. Messages
  published while a process is disconnected are lost for it: Redis pub/sub is at-most-once.

**Channel history** (``set_history``, from ``Server(history=...)``): a publication on a
channel with a policy is not fanned out locally nor queued; ``publish_stored`` runs the
``RedisHistory`` append script, which stores it in the channel's stream (offset, epoch) and
publishes the frame ``H<offset>:<epoch>:<signed bus message>`` in the same atomic step, so
every process (this one too) receives the channel's frames in offset order, and the publisher
is acknowledged only once Redis stored it. Each process keeps the last offset it delivered
per channel (a ``GapTracker``, started from the stream's position once the channel is
subscribed, and checked again after every reconnect): a frame past a gap (frames lost while
the subscriber connection was down, or a Redis restart) first fills the gap from the stream,
a duplicate is dropped. With Redis persistence (AOF, ``appendfsync always``) every
acknowledged publication survives a Redis crash; without it the history is lost and a new
epoch starts (subscribers recovering get ``recovered: false``).

Cluster commands (``Server.deauthenticate_user`` ...) travel on one control channel, signed the
same way, in order with the publishes of the same process; the server registers the function
that applies them with ``set_command_handler``. ``flush`` waits until what is queued has been
written (the server's drain awaits it before stopping the broker).

``run(task_status=...)`` is started by ``Server.serve`` (``Server.start_broker``); cancelling it
closes the Redis connections, drops what is still queued, and leaves the local table as it is.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import anyio
import coredis
import coredis.exceptions
import coredis.retry
import orjson
import trio

from ..config import CLUSTER_KEY_ENV, resolve_cluster_key
from ..errors import BrokerError, InvalidOptionsError
from ..history import (
    Arrival,
    Catchup,
    GapTracker,
    HistoryConfig,
    HistoryPolicy,
    Publication,
    RecoverRequest,
    Recovery,
)
from ..protocol.codec import encode, publish_bytes
from ..transport.base import OutboundMessage
from .local import LocalBroker, publication_bytes
from .redis_history import RedisHistory, decode_frame

if TYPE_CHECKING:
    from .base import Subscriber

__all__ = ["CLUSTER_KEY_ENV", "BrokerStats", "RedisBroker", "derive_bus_key"]

log = logging.getLogger("trio_socketcluster.redis")

_LABEL: Final = b"trio-socketcluster bus v1"
_HEAD: Final = b'{"s":"'
_MID: Final = b'","b":'
_SIG_END: Final = len(_HEAD) + 64
_BODY_START: Final = _SIG_END + len(_MID)
_MAX_ORIGINS: Final = 4096
_BATCH: Final = 512

CommandHandler = Callable[[str, Mapping[str, Any]], Any]


def derive_bus_key(secret: str | bytes) -> bytes:
    """The HMAC key of the bus, derived from a shared secret (the cluster or the auth key)."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise InvalidOptionsError("the cluster key must not be empty")
    return hmac.digest(raw, _LABEL, "sha256")


@dataclass(slots=True)
class BrokerStats:
    """Counters since the broker was made (read them; ``as_dict()`` for JSON)."""

    published: int = 0  #: cluster copies enqueued by ``publish``
    sent: int = 0  #: messages written to Redis (publishes and commands)
    lost: int = 0  #: enqueued messages dropped because Redis failed before they were sent
    rejected: int = 0  #: ``publish``/commands refused with ``BrokerError`` (down, queue full)
    received: int = 0  #: publishes from other processes fanned out locally
    commands: int = 0  #: commands from other processes applied
    echoes: int = 0  #: our own messages coming back from Redis (skipped)
    dropped_bad_signature: int = 0
    dropped_malformed: int = 0
    dropped_stale: int = 0  #: timestamp further than ``max_skew_s`` from our clock
    dropped_replayed: int = 0  #: sequence number not above the last one seen from its origin
    reconnects: int = 0  #: connections re-established after a failure
    stored: int = 0  #: publications stored in a channel history (and published with it)
    gaps_filled: int = 0  #: publications read from a history to fill a gap in the frames
    gaps_lost: int = 0  #: offsets of a gap no longer in the history (lost for this process)

    @property
    def dropped(self) -> int:
        """Every bus message refused on arrival."""
        return (
            self.dropped_bad_signature
            + self.dropped_malformed
            + self.dropped_stale
            + self.dropped_replayed
        )

    def as_dict(self) -> dict[str, int]:
        out = asdict(self)
        out["dropped"] = self.dropped
        return out


class RedisBroker:
    """A ``Broker`` that reaches the subscribers of every process sharing one Redis.

    ``RedisBroker(client, cluster_key=...)`` takes a ``coredis.Redis`` client (give it
    ``retry_policy=NoRetryPolicy()``: the broker retries itself); ``from_url`` builds one.
    ``channel_prefix`` namespaces the Redis channels (pub/sub ignores database numbers, so
    ``from_url`` puts the database number in the default prefix).
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        *,
        cluster_key: str | bytes,
        channel_prefix: str = "tsc:0:",
        max_queue: int = 10_000,
        max_skew_s: float = 60.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
        send_timeout_s: float = 5.0,
        origin: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queue < 1:
            raise InvalidOptionsError("max_queue must be at least 1")
        self.local = LocalBroker()
        self.stats = BrokerStats()
        self.origin = origin or f"{os.getpid()}-{secrets.token_hex(6)}"
        self._client = client
        self._key = derive_bus_key(cluster_key)
        self._prefix = channel_prefix
        self._control = f"{channel_prefix}ctl".encode()
        self._max_queue = max_queue
        self._max_skew_ms = max_skew_s * 1000.0
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._send_timeout_s = send_timeout_s
        self._clock = clock
        self._seq = 0
        self._seen: dict[str, int] = {}
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._queue_changed = trio.Event()
        self._enqueued = 0  # messages ever queued
        self._retired = 0  # of those, written to Redis or dropped (the queue is FIFO)
        self._retired_changed = trio.Event()
        self._up = False  # the publisher's connection works (publish accepts)
        self._up_changed = trio.Event()
        self._held: dict[str, None] = {}  # channels with local subscribers, in order
        self._active: set[str] = set()  # channels subscribed on the current Redis connection
        self._subs_changed = trio.Event()
        self._idle = trio.Event()  # set while Redis subscriptions match ``_held``
        self._command_handler: CommandHandler | None = None
        self.history = RedisHistory(client, prefix=channel_prefix)
        self._history_config: HistoryConfig | None = None
        self._policies: dict[str, HistoryPolicy | None] = {}
        self._tracker = GapTracker()
        self._fills: dict[str, Catchup] = {}  # channels whose gap is being read
        self._nursery: trio.Nursery | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster_key: str | bytes | None = None,
        connect_timeout_s: float = 2.0,
        **options: Any,
    ) -> RedisBroker:
        """A broker for ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``).

        ``cluster_key`` (else ``$TRIO_SOCKETCLUSTER_CLUSTER_KEY``) signs the bus messages;
        every process of the cluster needs the same one. Other keyword arguments go to
        ``RedisBroker``.
        """
        key = cluster_key if cluster_key is not None else resolve_cluster_key(os.environ, None)
        if not key:
            raise InvalidOptionsError(
                f"a Redis broker needs a cluster key shared by every process: pass auth_key "
                f"(the bus key is derived from it) or set ${CLUSTER_KEY_ENV}"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidOptionsError(f"not a Redis URL: {url!r}")
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        options.setdefault("channel_prefix", f"tsc:{db or 0}:")
        client = coredis.Redis.from_url(
            url,
            retry_policy=coredis.retry.NoRetryPolicy(),
            connect_timeout=connect_timeout_s,
        )
        return cls(client, cluster_key=key, **options)

    # ------------------------------------------------------------------ Broker interface

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        self.local.subscribe(channel, subscriber)
        if channel not in self._held:
            self._held[channel] = None
            self._changed()

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        self.local.unsubscribe(channel, subscriber)
        if channel in self._held and not self.local.subscribers(channel):
            del self._held[channel]
            self._tracker.forget(channel)
            self._fills.pop(channel, None)
            self._changed()

    def publish(self, channel: str, data: Any) -> None:
        """Deliver to local subscribers, then enqueue the copy for the other processes.

        ``TypeError`` (nothing delivered) if ``data`` has no JSON form; ``BrokerError`` (local
        subscribers served, other processes not) when Redis is unreachable or the queue full.
        On a channel with history the publication is stored in Redis in the background and
        reaches every subscriber (local ones too) from there (``publish_stored`` waits).
        """
        if self._history_config is not None and self.history_policy(channel) is not None:
            if not self._up or self._nursery is None:
                self.stats.rejected += 1
                raise BrokerError("Redis is unreachable: not stored")
            payload = self._bus_message({"k": "p", "c": channel, "d": data})
            self._nursery.start_soon(self._store_in_background, channel, payload)
            return
        message = OutboundMessage(publish_bytes(channel, data))
        self.local.fan_out(channel, data, message)
        self._enqueue(self._data_channel(channel), {"k": "p", "c": channel, "d": data})
        self.stats.published += 1

    def subscribers(self, channel: str) -> int:
        return self.local.subscribers(channel)

    def channels(self) -> list[str]:
        return self.local.channels()

    # ------------------------------------------------------------------ history

    def set_history(self, config: HistoryConfig) -> None:
        """Keep history (in Redis) for the channels ``config`` names."""
        self._history_config = config if config else None
        self._policies = {}

    def history_policy(self, channel: str) -> HistoryPolicy | None:
        config = self._history_config
        if config is None:
            return None
        try:
            return self._policies[channel]
        except KeyError:
            policy = config.policy_for(channel)
            if len(self._policies) >= 65_536:
                self._policies.clear()
            self._policies[channel] = policy
            return policy

    def _bus_message(self, fields: dict[str, Any]) -> bytes:
        self._seq += 1
        body = encode(
            {"v": 1, "o": self.origin, "n": self._seq, "t": int(self._clock() * 1000), **fields}
        )
        return self._sign(body)

    async def publish_stored(self, channel: str, data: Any) -> Publication:
        """Store the publication in Redis (which publishes it to every process); its offset
        and epoch once stored. ``BrokerError`` when Redis does not answer in time (it may
        still have stored it), ``TypeError`` when ``data`` has no JSON form."""
        policy = self.history_policy(channel)
        if policy is None:
            raise LookupError(f"channel {channel!r} keeps no history")
        payload = self._bus_message({"k": "p", "c": channel, "d": data})
        if not self._up:
            self.stats.rejected += 1
            raise BrokerError("Redis is unreachable: not stored")
        pub = await self._append(channel, payload, policy)
        return Publication(pub.offset, pub.epoch, data)

    async def _append(self, channel: str, payload: bytes, policy: HistoryPolicy) -> Publication:
        try:
            with trio.fail_after(self._send_timeout_s):
                pub = await self.history.append(
                    channel, payload, policy, publish_to=self._data_channel(channel)
                )
        except Exception as exc:
            self.stats.rejected += 1
            raise BrokerError(f"Redis did not store the publication: {exc!r}") from None
        self.stats.stored += 1
        self.stats.sent += 1
        return pub

    async def _store_in_background(self, channel: str, payload: bytes) -> None:
        policy = self.history_policy(channel)
        if policy is None:
            return
        try:
            await self._append(channel, payload, policy)
        except BrokerError as exc:
            self.stats.lost += 1
            log.warning("publication on %r lost: %s", channel, exc)

    async def recover(self, channel: str, request: RecoverRequest | None) -> Recovery:
        """What a subscriber missed since ``request``, read from Redis (``data`` decoded and
        its signature checked); ``BrokerError`` when Redis does not answer in time."""
        policy = self.history_policy(channel)
        if policy is None:
            raise LookupError(f"channel {channel!r} keeps no history")
        try:
            with trio.fail_after(self._send_timeout_s):
                rec = await self.history.recover(channel, request or RecoverRequest(0, ""), policy)
        except Exception as exc:
            raise BrokerError(f"Redis did not answer the history read: {exc!r}") from None
        pubs = self._decode_publications(rec.publications)
        if len(pubs) != len(rec.publications):  # a forged or damaged entry: cannot vouch
            return Recovery(False, rec.offset, rec.epoch)
        return Recovery(rec.recovered, rec.offset, rec.epoch, pubs)

    def _decode_publications(self, pubs: tuple[Publication, ...]) -> tuple[Publication, ...]:
        out = []
        for pub in pubs:
            msg = self._verified(pub.data) if isinstance(pub.data, bytes) else None
            if msg is not None:
                out.append(Publication(pub.offset, pub.epoch, msg.get("d")))
        return tuple(out)

    def _verified(self, raw: bytes) -> dict[str, Any] | None:
        """The body of a signed bus message, or ``None`` (counted) if it is not one."""
        if (
            len(raw) < _BODY_START + 3
            or not raw.startswith(_HEAD)
            or raw[_SIG_END:_BODY_START] != _MID
            or not raw.endswith(b"}")
        ):
            self.stats.dropped_malformed += 1
            return None
        body = raw[_BODY_START:-1]
        expected = hmac.digest(self._key, body, "sha256").hex().encode("ascii")
        if not hmac.compare_digest(expected, raw[len(_HEAD) : _SIG_END]):
            self.stats.dropped_bad_signature += 1
            return None
        try:
            msg = json.loads(body)
        except ValueError:
            self.stats.dropped_malformed += 1
            return None
        if not isinstance(msg, dict) or msg.get("v") != 1 or not isinstance(msg.get("c"), str):
            self.stats.dropped_malformed += 1
            return None
        return msg

    def _receive_frame(self, raw: bytes) -> None:
        frame = decode_frame(raw)
        if frame is None:
            self.stats.dropped_malformed += 1
            return
        offset, epoch, payload = frame
        msg = self._verified(payload)
        if msg is None:
            return
        channel: str = msg["c"]
        if not self.local.subscribers(channel) or self.history_policy(channel) is None:
            return
        self.stats.received += 1
        self._arrive(channel, Publication(offset, epoch, msg.get("d")))

    def _arrive(self, channel: str, pub: Publication) -> None:
        fill = self._fills.get(channel)
        if fill is not None:
            for p in fill.live(pub):
                self._fan_out(channel, p)
            return
        verdict = self._tracker.observe(channel, pub.offset, pub.epoch)
        if verdict.arrival is Arrival.DELIVER:
            self._fan_out(channel, pub)
        elif verdict.arrival is not Arrival.DUPLICATE:
            missing = verdict.missing
            if not missing:
                self._fan_out(channel, pub)
                return
            self._start_fill(channel, missing, pub.epoch, pub)

    def _start_fill(
        self, channel: str, missing: range, epoch: str, first_live: Publication | None
    ) -> None:
        catchup = Catchup(after=missing.start - 1, epoch=epoch, max_buffer=100_000)
        if first_live is not None:
            catchup.live(first_live)
        if self._nursery is None:
            return
        self._fills[channel] = catchup
        self._nursery.start_soon(self._fill, channel, catchup, missing)

    async def _fill(self, channel: str, catchup: Catchup, missing: range) -> None:
        first, last = missing.start, missing.stop - 1
        while True:
            pubs: tuple[Publication, ...] = ()
            policy = self.history_policy(channel)
            try:
                if policy is not None:
                    with trio.fail_after(self._send_timeout_s):
                        epoch, raw = await self.history.read_range(channel, first, last, policy)
                    if epoch == catchup.epoch:
                        pubs = self._decode_publications(raw)
            except Exception as exc:
                log.warning("filling a gap on %r failed: %r", channel, exc)
            if self._fills.get(channel) is not catchup:
                return  # unsubscribed meanwhile
            self.stats.gaps_filled += len(pubs)
            self.stats.gaps_lost += max(0, last - first + 1 - len(pubs))
            for p in catchup.recovered(pubs):
                self._fan_out(channel, p)
            if not catchup.pending:
                del self._fills[channel]
                position = self._tracker.position(channel)
                if position is None or position[0] != catchup.epoch or position[1] < catchup.last:
                    self._tracker.start(channel, catchup.last, catchup.epoch)
                return
            first, last = catchup.last + 1, catchup.last + 1_000_000

    def _fan_out(self, channel: str, pub: Publication) -> None:
        try:
            message = OutboundMessage(publication_bytes(channel, encode(pub.data), pub))
        except TypeError:
            self.stats.dropped_malformed += 1
            return
        self.local.fan_out(channel, pub.data, message, pub)

    async def _resync(self, channel: str) -> None:
        """After (re)subscribing a channel with history: its position in Redis becomes the
        baseline, or, if frames were missed meanwhile, the gap is filled at once."""
        policy = self.history_policy(channel)
        if policy is None:
            return
        try:
            with trio.fail_after(self._send_timeout_s):
                position = await self.history.position(channel)
        except Exception as exc:
            log.warning("reading the position of %r failed: %r", channel, exc)
            return
        if position is None or channel in self._fills or channel not in self._held:
            return
        offset, epoch = position
        last = self._tracker.position(channel)
        if last is None:
            self._tracker.start(channel, offset, epoch)
        elif last[0] == epoch and offset > last[1]:
            self._tracker.start(channel, offset, epoch)
            self._start_fill(channel, range(last[1] + 1, offset + 1), epoch, None)
        elif last[0] != epoch:
            self._tracker.start(channel, offset, epoch)
            if offset:
                self._start_fill(channel, range(1, offset + 1), epoch, None)

    # ------------------------------------------------------------------ cluster commands

    def set_command_handler(self, handler: CommandHandler | None) -> None:
        """``handler(op, args)`` applies commands that other processes send (``send_command``)."""
        self._command_handler = handler

    def send_command(self, op: str, args: Mapping[str, Any]) -> None:
        """Send a command to every *other* process (the caller applies it locally itself).
        ``BrokerError`` when Redis is unreachable or the queue full."""
        self._enqueue(self._control, {"k": "c", "op": op, "a": dict(args)})

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """Whether publishes are currently accepted for the other processes."""
        return self._up

    @property
    def delivered(self) -> int:
        """Publications handed to this process's subscribers (summed over subscribers)."""
        return self.local.delivered

    def state(self) -> dict[str, float]:
        """For the server's metrics: ``connected`` (1/0), ``outbound_queue`` (messages
        waiting for Redis) and every count of ``stats``."""
        out: dict[str, float] = {
            "connected": 1.0 if self._up else 0.0,
            "outbound_queue": float(len(self._queue)),
        }
        out.update((k, float(v)) for k, v in self.stats.as_dict().items())
        return out

    async def wait_connected(self) -> None:
        """Return once the publisher's connection works."""
        while not self._up:
            await self._up_changed.wait()

    async def wait_disconnected(self) -> None:
        """Return once publishes are refused (Redis found unreachable)."""
        while self._up:
            await self._up_changed.wait()

    async def wait_synced(self) -> None:
        """Return once every channel held locally is subscribed on Redis (and the connection
        up). A subscription becomes live one Redis round trip after the first local subscriber
        arrives: publishes from other processes in between are not seen."""
        while True:
            idle = self._idle
            if idle.is_set() and self._in_sync():
                return
            if idle.is_set():
                self._idle = trio.Event()
                continue
            await idle.wait()

    def _in_sync(self) -> bool:
        return self._up and self._active == self._held.keys()

    def _changed(self) -> None:
        if self._idle.is_set():
            self._idle = trio.Event()
        self._subs_changed.set()

    # ------------------------------------------------------------------ bus encoding

    def _data_channel(self, channel: str) -> bytes:
        return f"{self._prefix}c:{channel}".encode()

    def _enqueue(self, redis_channel: bytes, fields: dict[str, Any]) -> None:
        if not self._up:
            self.stats.rejected += 1
            raise BrokerError("Redis is unreachable: not sent to the other processes")
        if len(self._queue) >= self._max_queue:
            self.stats.rejected += 1
            raise BrokerError("The broker's outbound queue is full: not sent to other processes")
        self._seq += 1
        body = encode(
            {"v": 1, "o": self.origin, "n": self._seq, "t": int(self._clock() * 1000), **fields}
        )
        self._queue.append((redis_channel, self._sign(body)))
        self._enqueued += 1
        self._queue_changed.set()

    def _retire(self, count: int) -> None:
        self._retired += count
        self._retired_changed.set()
        self._retired_changed = trio.Event()

    async def flush(self) -> None:
        """Return once every message queued before the call has been written to Redis, or
        dropped because Redis failed (``stats.lost``). The server's drain awaits this (bounded
        by its deadline) before it stops the broker. Cancellation leaves the queue as is."""
        target = self._enqueued
        while self._retired < target:
            await self._retired_changed.wait()

    def _sign(self, body: bytes) -> bytes:
        sig = hmac.digest(self._key, body, "sha256").hex().encode("ascii")
        return b"".join((_HEAD, sig, _MID, body, b"}"))

    def receive(self, raw: bytes) -> None:
        """Handle one bus message as it came from Redis (public for tests and tools)."""
        if raw.startswith(b"H"):
            self._receive_frame(raw)
            return
        stats = self.stats
        if (
            len(raw) < _BODY_START + 3
            or not raw.startswith(_HEAD)
            or raw[_SIG_END:_BODY_START] != _MID
            or not raw.endswith(b"}")
        ):
            stats.dropped_malformed += 1
            return
        body = raw[_BODY_START:-1]
        expected = hmac.digest(self._key, body, "sha256").hex().encode("ascii")
        if not hmac.compare_digest(expected, raw[len(_HEAD) : _SIG_END]):
            stats.dropped_bad_signature += 1
            return
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:  # integers beyond 64 bits
                msg = json.loads(body)
            except ValueError:
                stats.dropped_malformed += 1
                return
        if not isinstance(msg, dict) or msg.get("v") != 1:
            stats.dropped_malformed += 1
            return
        origin, seq, ts, kind = msg.get("o"), msg.get("n"), msg.get("t"), msg.get("k")
        if (
            not isinstance(origin, str)
            or type(seq) is not int
            or not isinstance(ts, int | float)
            or kind not in ("p", "c")
        ):
            stats.dropped_malformed += 1
            return
        if origin == self.origin:
            stats.echoes += 1
            return
        if abs(self._clock() * 1000 - ts) > self._max_skew_ms:
            stats.dropped_stale += 1
            return
        last = self._seen.pop(origin, None)
        if last is not None and seq <= last:
            self._seen[origin] = last
            stats.dropped_replayed += 1
            return
        self._seen[origin] = seq  # re-inserted last: the dict is in least-recent order
        if len(self._seen) > _MAX_ORIGINS:
            del self._seen[next(iter(self._seen))]
        if kind == "p":
            channel = msg.get("c")
            if not isinstance(channel, str):
                stats.dropped_malformed += 1
                return
            data = msg.get("d")
            stats.received += 1
            if self.local.subscribers(channel):
                self.local.fan_out(channel, data, OutboundMessage(publish_bytes(channel, data)))
            return
        op, args = msg.get("op"), msg.get("a")
        if not isinstance(op, str) or not isinstance(args, dict):
            stats.dropped_malformed += 1
            return
        stats.commands += 1
        handler = self._command_handler
        if handler is not None:
            try:
                handler(op, args)
            except Exception:  # a signed command from a worker: a server-side fault
                log.exception("cluster command %r failed", op)

    def _on_pubsub_message(self, message: Mapping[str, Any]) -> None:
        data = message.get("data")
        if isinstance(data, bytes):
            self.receive(data)
        else:
            self.stats.dropped_malformed += 1

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then keep the publisher and subscriber connections alive until cancelled.

        ``task_status.started()`` comes after the first connection attempt, whether or not it
        succeeded (the server serves local traffic while Redis is away). Cancellation closes
        the connections; queued messages are dropped (counted in ``stats.lost``).
        """
        try:
            async with self._client, trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._check_connection()
                nursery.start_soon(self._publisher)
                nursery.start_soon(self._subscriber)
                task_status.started()
        finally:
            self._nursery = None
            self._set_up(False)

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        self._up_changed.set()
        self._up_changed = trio.Event()
        if not up:
            self.stats.lost += len(self._queue)
            self._retire(len(self._queue))
            self._queue.clear()
            self._changed()  # wake the subscriber's sync loop

    async def _check_connection(self) -> bool:
        try:
            with trio.fail_after(self._send_timeout_s):
                await self._client.ping()
        except Exception as exc:
            log.debug("Redis ping failed: %r", exc)
            self._set_up(False)
            return False
        self._set_up(True)
        return True

    def _backoff(self, attempt: int) -> float:
        low, high = self._reconnect
        return min(high, low * 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0)

    async def _publisher(self) -> None:
        attempt = 0
        while True:
            if not self._up:
                if not await self._check_connection():
                    await trio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                if attempt:
                    self.stats.reconnects += 1
                    log.info("Redis publisher connection restored")
                attempt = 0
            if not self._queue:
                self._queue_changed = trio.Event()
                with trio.move_on_after(1.0):  # also notice a drop seen by the subscriber
                    await self._queue_changed.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            try:
                with trio.fail_after(self._send_timeout_s):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for channel, payload in batch:
                            pipe.publish(channel, payload)
            except Exception as exc:
                log.warning("Redis publish failed (%d messages lost): %r", len(batch), exc)
                self.stats.lost += len(batch)
                self._retire(len(batch))
                self._set_up(False)
                continue
            self.stats.sent += len(batch)
            self._retire(len(batch))

    async def _subscriber(self) -> None:
        attempt = 0
        ever = False
        while True:
            try:
                try:
                    async with self._client.pubsub(
                        retry_policy=None, ignore_subscribe_messages=True
                    ) as pubsub:
                        await pubsub.subscribe(**{self._control.decode(): self._on_pubsub_message})
                        self._active = set()
                        if ever:
                            self.stats.reconnects += 1
                            log.info("Redis subscriber connection restored")
                        ever = True
                        attempt = 0
                        async with trio.open_nursery() as nursery:
                            # Messages are handled inline by the channel handlers; coredis still
                            # queues a None per message for its iterator: drain them.
                            nursery.start_soon(self._drain, pubsub)
                            await self._sync_subscriptions(pubsub)
                except* anyio.ClosedResourceError:
                    # coredis unsubscribes on a connection it has just closed when cancelled
                    # (or when the connection broke): nothing to do but reconnect.
                    log.debug("Redis subscriber connection closed")
            except Exception as exc:
                (log.warning if attempt == 0 else log.debug)(
                    "Redis subscriber connection failed: %r", exc
                )
            self._active = set()
            self._set_up(False)
            await trio.sleep(self._backoff(attempt))
            attempt += 1

    @staticmethod
    async def _drain(pubsub: Any) -> None:
        while True:
            await pubsub.get_message()

    async def _sync_subscriptions(self, pubsub: Any) -> None:
        while True:
            self._subs_changed = trio.Event()
            wanted = set(self._held)
            add = [c for c in self._held if c not in self._active]
            remove = [c for c in self._active if c not in wanted]
            for i in range(0, len(add), _BATCH):
                chunk = add[i : i + _BATCH]
                handlers = {self._data_channel(c).decode(): self._on_pubsub_message for c in chunk}
                await pubsub.subscribe(**handlers)
                self._active.update(chunk)
                if self._history_config is not None and self._nursery is not None:
                    for c in chunk:
                        if self.history_policy(c) is not None:
                            self._nursery.start_soon(self._resync, c)
            for i in range(0, len(remove), _BATCH):
                chunk = remove[i : i + _BATCH]
                await pubsub.unsubscribe(*(self._data_channel(c) for c in chunk))
                self._active.difference_update(chunk)
            if add or remove:
                continue
            if not self._up:  # the publisher is reconnecting
                await self._up_changed.wait()
                continue
            self._idle.set()
            with trio.move_on_after(30.0):
                await self._subs_changed.wait()
