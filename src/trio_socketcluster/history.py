"""Channel history and recovery: the policies, the in-memory store and the ordering rules.

What it owns (pure: time, epochs and payloads are parameters; no I/O, clock or randomness):

* ``HistoryPolicy(size=, ttl_s=)``: a channel keeps its last ``size`` publications, each for
  ``ttl_s`` seconds; its offset counter and epoch live ``keep_s`` after its last publication
  (default ``max(ttl_s, 1 day)``), after which the channel's history is *lost* (a new epoch).
* ``HistoryConfig``: which channels keep history. ``channels`` maps exact names to policies;
  ``patterns`` maps globs to policies. Glob syntax: ``*`` matches any run of characters (the
  empty one too, ``/`` and ``.`` included); every other character, ``?`` and ``[`` too, is
  literal. An exact name wins over every pattern; among patterns the first declared that
  matches wins.
* ``ChannelHistory`` (one channel, in memory) and ``MemoryHistory`` (every channel of a
  process, for the in-process broker): ``append`` gives the publication its offset (1, 2, …
  per channel) under the channel's epoch; ``since``/``recover`` answer a recovery request with
  every kept publication after an offset, or "cannot recover" (``Recovery.recovered`` false).
* ``parse_recover``: the ``{"recover": {"offset": N, "epoch": E}}`` part of ``#subscribe``
  data. A malformed request becomes one that can never succeed (epoch ``""``).
* ``GapTracker``: what a process subscribed to a cluster-wide publish stream does with each
  arrival ``(offset, epoch)`` of a channel: deliver it, drop a duplicate, or first fetch the
  missing range from the shared history (a gap, or a new epoch that did not start at 1).
* ``Catchup`` and ``merge_recovery``: the rule that makes recovery gap-free and duplicate-free
  while others publish. The subscriber is registered for live publications **before** the
  history is read; live publications that arrive while the read is in flight are buffered
  (bounded); the read's result is delivered first, then the buffer, and from then on a live
  publication is delivered only if its offset is above the last one delivered (same epoch).
  A publication is stored before it is published live, so every offset above the recovery
  point is either in the read or arrives live after registration: none is missed, and the
  offset filter removes the ones that are in both.

Offsets are ints from 1; epochs are non-empty strings chosen by whoever creates a history
(``new_epoch`` callables here, a random token in the Redis store).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

from .errors import InvalidOptionsError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_KEEP_S",
    "Arrival",
    "Catchup",
    "ChannelHistory",
    "GapTracker",
    "HistoryConfig",
    "HistoryPolicy",
    "MemoryHistory",
    "Publication",
    "RecoverRequest",
    "Recovery",
    "Verdict",
    "merge_recovery",
    "parse_recover",
    "publish_fields",
]

#: How long a channel's offset and epoch outlive its last publication by default (1 day), so
#: a subscriber of a quiet channel still recovers (with nothing to replay) after a while away.
DEFAULT_KEEP_S: Final = 86_400.0


def _positive_int(value: object) -> bool:
    return type(value) is int and value >= 1


def _positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class HistoryPolicy:
    """How much of a channel's past is kept: the last ``size`` publications, each at most
    ``ttl_s`` seconds; the offset counter and epoch for ``keep_s`` after the last publication
    (``None``: ``max(ttl_s, DEFAULT_KEEP_S)``)."""

    size: int
    ttl_s: float
    keep_s: float | None = None

    def __post_init__(self) -> None:
        if not _positive_int(self.size):
            raise InvalidOptionsError("history size must be an int >= 1")
        if not _positive_seconds(self.ttl_s):
            raise InvalidOptionsError("history ttl_s must be a finite number > 0")
        if self.keep_s is not None and (
            not _positive_seconds(self.keep_s) or self.keep_s < self.ttl_s
        ):
            raise InvalidOptionsError("history keep_s must be finite and >= ttl_s")

    @property
    def keep_for_s(self) -> float:
        """How long the offset and epoch outlive the last publication."""
        return self.keep_s if self.keep_s is not None else max(self.ttl_s, DEFAULT_KEEP_S)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """Which channels keep history, and how much.

    ``HistoryConfig(channels={"news": p}, patterns={"room-*": q})``: exact names win over
    patterns; among patterns, the first declared that matches. In a pattern ``*`` matches any
    run of characters and nothing else is special. A pattern without ``*`` is refused (it
    belongs in ``channels``).
    """

    channels: Mapping[str, HistoryPolicy] = field(default_factory=dict)
    patterns: Mapping[str, HistoryPolicy] = field(default_factory=dict)
    _compiled: tuple[tuple[re.Pattern[str], HistoryPolicy], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        channels = dict(self.channels)
        patterns = dict(self.patterns)
        for name, policy in (*channels.items(), *patterns.items()):
            if not isinstance(name, str) or not name:
                raise InvalidOptionsError("history channel names and patterns are non-empty str")
            if not isinstance(policy, HistoryPolicy):
                raise InvalidOptionsError(f"history policy for {name!r} is not a HistoryPolicy")
        for pattern in patterns:
            if "*" not in pattern:
                raise InvalidOptionsError(
                    f"history pattern {pattern!r} has no '*': put exact names in channels"
                )
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "patterns", patterns)
        object.__setattr__(
            self, "_compiled", tuple((_glob_regex(p), pol) for p, pol in patterns.items())
        )

    def policy_for(self, channel: str) -> HistoryPolicy | None:
        """The channel's policy, or ``None`` when it keeps no history."""
        policy = self.channels.get(channel)
        if policy is not None:
            return policy
        for regex, pol in self._compiled:
            if regex.fullmatch(channel):
                return pol
        return None

    def __bool__(self) -> bool:
        return bool(self.channels or self.patterns)


@dataclass(frozen=True, slots=True)
class Publication:
    """One publication of a channel with history, as delivered: ``#publish`` carries
    ``offset`` and ``epoch`` beside ``channel`` and ``data``."""

    offset: int
    epoch: str
    data: Any


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to a recovery request. ``offset`` is the channel's latest offset when the
    history was read and ``epoch`` its current epoch, whether or not it ``recovered``;
    ``publications`` (empty unless recovered) are the kept ones after the requested offset,
    in offset order."""

    recovered: bool
    offset: int
    epoch: str
    publications: tuple[Publication, ...] = ()

    def ack(self) -> dict[str, Any]:
        """The data of the ``#subscribe`` acknowledgement."""
        return {"recovered": self.recovered, "offset": self.offset, "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class RecoverRequest:
    """``#subscribe`` data ``{"recover": {"offset": N, "epoch": E}}``."""

    offset: int
    epoch: str


_NEVER: Final = RecoverRequest(0, "")  # epochs are never empty: this one never recovers


def parse_recover(data: Any) -> RecoverRequest | None:
    """The recovery request in ``#subscribe`` data: ``None`` when there is none (data not an
    object, or no ``recover`` key); a request that cannot succeed when ``recover`` is there
    but malformed (offset not an int >= 0, epoch not a non-empty string)."""
    if not isinstance(data, dict) or "recover" not in data:
        return None
    req = data["recover"]
    if not isinstance(req, dict):
        return _NEVER
    offset, epoch = req.get("offset"), req.get("epoch")
    if type(offset) is not int or offset < 0 or not isinstance(epoch, str) or not epoch:
        return _NEVER
    return RecoverRequest(offset, epoch)


def publish_fields(channel: str, data: Any, publication: Publication | None) -> dict[str, Any]:
    """The data of a ``#publish`` event: ``channel`` and ``data``, plus ``offset`` and
    ``epoch`` on a channel with history (without history it looks exactly as before)."""
    if publication is None:
        return {"channel": channel, "data": data}
    return {
        "channel": channel,
        "data": data,
        "offset": publication.offset,
        "epoch": publication.epoch,
    }


class ChannelHistory:
    """The kept publications of one channel, in memory.

    ``now`` is any clock in seconds that does not go backwards within a process (the trio
    clock); a time earlier than the last append counts as the last append's time.
    """

    __slots__ = ("_entries", "_last_time", "epoch", "latest", "policy")

    def __init__(self, policy: HistoryPolicy, *, epoch: str, now: float) -> None:
        if not isinstance(epoch, str) or not epoch:
            raise InvalidOptionsError("an epoch is a non-empty string")
        self.policy = policy
        self.epoch = epoch
        self.latest = 0  #: the offset of the last publication (0: none yet)
        self._last_time = now  #: last append, or creation
        self._entries: deque[tuple[float, Publication]] = deque(maxlen=policy.size)

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, data: Any, now: float) -> Publication:
        """Store one publication; its offset is ``latest + 1``."""
        now = max(now, self._last_time)
        self._last_time = now
        self.latest += 1
        pub = Publication(self.latest, self.epoch, data)
        self._entries.append((now, pub))  # the deque drops the oldest at size
        self.trim(now)
        return pub

    def trim(self, now: float) -> int:
        """Drop publications older than ``ttl_s``; how many were dropped."""
        cutoff = now - self.policy.ttl_s
        entries = self._entries
        dropped = 0
        while entries and entries[0][0] <= cutoff:
            entries.popleft()
            dropped += 1
        return dropped

    def expired(self, now: float) -> bool:
        """Whether the channel's offset and epoch are past ``keep_s`` (its history is lost)."""
        return now - self._last_time >= self.policy.keep_for_s

    def since(self, offset: int, epoch: str, now: float) -> Recovery:
        """Every kept publication after ``offset`` of ``epoch``, or "cannot recover" when the
        epoch differs, the offset is ahead of ``latest``, or one of them is no longer kept."""
        latest = self.latest
        if epoch != self.epoch or offset < 0 or offset > latest:
            return Recovery(False, latest, self.epoch)
        missed = latest - offset
        if missed == 0:
            return Recovery(True, latest, self.epoch)
        entries = self._entries
        if missed > len(entries):
            return Recovery(False, latest, self.epoch)
        first = entries[-missed]  # offsets are contiguous: this one is offset + 1
        if first[0] <= now - self.policy.ttl_s:
            return Recovery(False, latest, self.epoch)
        pubs = [pub for _, pub in islice(reversed(entries), missed)]
        pubs.reverse()
        return Recovery(True, latest, self.epoch, tuple(pubs))


class MemoryHistory:
    """The histories of every channel of one process (the in-process broker's store).

    ``new_epoch()`` names a new history (the broker passes a random token). A channel's
    history is created by its first ``append`` or ``recover`` and forgotten by ``sweep`` once
    idle for its policy's ``keep_s``; it comes back with a new epoch.
    """

    __slots__ = ("_histories", "_new_epoch", "config")

    def __init__(self, config: HistoryConfig, *, new_epoch: Callable[[], str]) -> None:
        self.config = config
        self._new_epoch = new_epoch
        self._histories: dict[str, ChannelHistory] = {}

    def __len__(self) -> int:
        return len(self._histories)

    def policy(self, channel: str) -> HistoryPolicy | None:
        return self.config.policy_for(channel)

    def _history(self, channel: str, policy: HistoryPolicy, now: float) -> ChannelHistory:
        hist = self._histories.get(channel)
        if hist is not None and hist.expired(now):
            hist = None
        if hist is None or hist.policy != policy:  # a changed policy restarts the history
            hist = ChannelHistory(policy, epoch=self._new_epoch(), now=now)
            self._histories[channel] = hist
        return hist

    def append(self, channel: str, data: Any, now: float) -> Publication | None:
        """Store a publication; ``None`` (nothing stored) when the channel keeps no history."""
        policy = self.config.policy_for(channel)
        if policy is None:
            return None
        return self._history(channel, policy, now).append(data, now)

    def recover(self, channel: str, request: RecoverRequest, now: float) -> Recovery | None:
        """Answer a recovery request; ``None`` when the channel keeps no history."""
        policy = self.config.policy_for(channel)
        if policy is None:
            return None
        return self._history(channel, policy, now).since(request.offset, request.epoch, now)

    def position(self, channel: str, now: float) -> tuple[int, str] | None:
        """``(latest offset, epoch)`` of the channel; ``None`` when it keeps no history."""
        policy = self.config.policy_for(channel)
        if policy is None:
            return None
        hist = self._history(channel, policy, now)
        return hist.latest, hist.epoch

    def sweep(self, now: float) -> int:
        """Trim every history by age and forget the expired ones; how many were forgotten."""
        gone = [name for name, hist in self._histories.items() if hist.expired(now)]
        for name in gone:
            del self._histories[name]
        for hist in self._histories.values():
            hist.trim(now)
        return len(gone)


# ---------------------------------------------------------------------------- ordering rules


class Arrival(Enum):
    """What to do with a publication arriving from the cluster-wide stream."""

    DELIVER = "deliver"  #: the next offset (or the first one seen): deliver it
    DUPLICATE = "duplicate"  #: at or below the last offset delivered: drop it
    GAP = "gap"  #: offsets are missing before it: fetch ``Verdict.missing`` first
    NEW_EPOCH = "new_epoch"  #: the history was lost and restarted: fetch ``missing`` (maybe
    #: empty) of the new epoch first


@dataclass(frozen=True, slots=True)
class Verdict:
    arrival: Arrival
    missing: range = range(0)  #: offsets to read from the shared history before delivering


class GapTracker:
    """The last ``(epoch, offset)`` delivered per channel by one process's subscription to a
    cluster-wide stream (Redis pub/sub), and the verdict on each arrival.

    ``start(channel, offset, epoch)`` sets the baseline (the history's position read once the
    subscription is active); without one, the first arrival is delivered as it is. ``observe``
    advances the position past the arrival whatever the verdict (except a duplicate): on a gap
    the caller reads the missing range (a ``Catchup`` orders what arrives meanwhile); if the
    read fails or the range is no longer kept, that part is lost for this process.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}

    def start(self, channel: str, offset: int, epoch: str) -> None:
        self._last[channel] = (epoch, offset)

    def forget(self, channel: str) -> None:
        self._last.pop(channel, None)

    def position(self, channel: str) -> tuple[str, int] | None:
        return self._last.get(channel)

    def observe(self, channel: str, offset: int, epoch: str) -> Verdict:
        last = self._last.get(channel)
        if last is not None and last[0] == epoch:
            if offset <= last[1]:
                return Verdict(Arrival.DUPLICATE)
            self._last[channel] = (epoch, offset)
            if offset == last[1] + 1:
                return Verdict(Arrival.DELIVER)
            return Verdict(Arrival.GAP, range(last[1] + 1, offset))
        self._last[channel] = (epoch, offset)
        if last is None:
            return Verdict(Arrival.DELIVER)
        return Verdict(Arrival.NEW_EPOCH, range(1, offset))


class Catchup:
    """One subscriber's join of a history read with the live stream of a channel.

    Make it when the subscriber is registered for live publications, *before* reading the
    history: ``Catchup(after=N, epoch=E)`` (N: the last offset the subscriber has). Feed every
    live publication to ``live()`` and the read's result to ``recovered()``; deliver what they
    return, in order. While the read is in flight live publications are buffered, at most
    ``max_buffer``; past that the buffer is dropped and ``recovered()`` leaves the catch-up
    ``pending``: read again after ``last`` (everything dropped is in the history) and call
    ``recovered()`` with that read.

    Once caught up, a live publication is delivered if its offset is above ``last`` in the
    same epoch; one of another epoch (the history was lost meanwhile) is delivered and becomes
    the new position.
    """

    __slots__ = ("_buffer", "_overflowed", "epoch", "last", "max_buffer", "pending")

    def __init__(self, *, after: int, epoch: str, max_buffer: int = 10_000) -> None:
        if max_buffer < 0:
            raise InvalidOptionsError("max_buffer must be >= 0")
        self.last = after
        self.epoch = epoch
        self.max_buffer = max_buffer
        self.pending = True  #: a history read is awaited
        self._buffer: list[Publication] = []
        self._overflowed = False

    def _accept(self, pub: Publication) -> bool:
        if pub.epoch != self.epoch:
            self.epoch = pub.epoch
            self.last = pub.offset
            return True
        if pub.offset > self.last:
            self.last = pub.offset
            return True
        return False

    def live(self, pub: Publication) -> tuple[Publication, ...]:
        """A live publication: what to deliver now (nothing while the read is pending)."""
        if self.pending:
            if len(self._buffer) < self.max_buffer:
                self._buffer.append(pub)
            else:
                self._overflowed = True
            return ()
        return (pub,) if self._accept(pub) else ()

    def resolve(self, recovery: Recovery) -> tuple[Publication, ...]:
        """A recovery's answer: its publications when it recovered; otherwise nothing old,
        and live publications count from the recovery's ``offset`` and ``epoch``."""
        if not recovery.recovered:
            self.last, self.epoch = recovery.offset, recovery.epoch
        return self.recovered(recovery.publications)

    def recovered(self, publications: Iterable[Publication]) -> tuple[Publication, ...]:
        """The history read (offsets ascending, one epoch): what to deliver now. Afterwards
        ``pending`` is false, unless the buffer overflowed (then read again after ``last``)."""
        out = [pub for pub in publications if self._accept(pub)]
        buffered, self._buffer = self._buffer, []
        if self._overflowed:
            self._overflowed = False
            return tuple(out)
        self.pending = False
        out.extend(pub for pub in buffered if self._accept(pub))
        return tuple(out)


def merge_recovery(
    after: int,
    epoch: str,
    recovered: Sequence[Publication],
    buffered: Sequence[Publication],
) -> tuple[Publication, ...]:
    """The deliveries of a recovery after ``after``: the history read, then the publications
    that arrived live while it was in flight, each offset once, in order (``Catchup`` with an
    unbounded buffer)."""
    catchup = Catchup(after=after, epoch=epoch, max_buffer=len(buffered))
    for pub in buffered:
        catchup.live(pub)
    return catchup.recovered(recovered)
