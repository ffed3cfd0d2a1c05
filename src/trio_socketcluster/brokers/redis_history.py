"""Channel history in Redis: one stream, one small hash and two Lua scripts per operation.

Shared by every process of a cluster and kept across their restarts (not across a Redis
restart without persistence: that loses the history, and the next append starts a new
epoch). Uses coredis, which runs on Trio through anyio.

Keys, per channel (``{...}`` is a Redis Cluster hash tag, so both keys share a slot):

* ``<prefix>h:{<channel>}:m``: a hash, ``e`` the epoch, ``o`` the last offset, ``t`` the time
  (Redis milliseconds) of the last append;
* ``<prefix>h:{<channel>}:s``: a stream, one entry per kept publication, with id
  ``<offset>-0`` (so a range by offset is an ``XRANGE``) and fields ``t`` (ms) and ``d`` (the
  payload, opaque bytes: the broker stores its signed bus message).

``append`` runs one script, atomically: create the hash with the caller's fresh epoch when it
is missing (and drop any stream left without it), ``HINCRBY`` the offset, ``XADD`` with
``MAXLEN ~ size``, drop up to 64 entries older than ``ttl_s`` from the head, ``PEXPIRE`` both
keys to ``keep_s`` (idle histories vanish; the next append starts a new epoch) and, when asked,
``PUBLISH`` the frame ``H<offset>:<epoch>:<payload>`` on a pub/sub channel. Publishing inside
the script orders the frames by offset for every subscriber, and a subscriber registered
before a read sees every frame the read misses. The caller acknowledges the publication once
``append`` returned (it is stored).

Reads (``recover``, ``read_range``, ``position``) run one script each, so the epoch, the latest
offset and the entries are one snapshot. ``MAXLEN ~`` trims by whole stream nodes, so Redis
may hold a few more than ``size`` entries: reads apply the policy exactly (the last ``size``
offsets, younger than ``ttl_s`` by Redis's clock), the same answers as ``ChannelHistory``.

Times are Redis's own clock (``TIME``) unless a test passes ``now_ms``. The offsets and epochs
are not signed: a writer to Redis can reorder the history, but not forge a payload that the
broker signs and checks.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Final

from ..errors import InvalidOptionsError
from ..history import HistoryPolicy, Publication, RecoverRequest, Recovery

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import coredis

__all__ = ["FRAME_PREFIX", "RedisHistory", "decode_frame"]

#: The first byte of a pub/sub frame published by ``append`` (bus messages start with ``{``).
FRAME_PREFIX: Final = b"H"

_APPEND: Final = """
local meta, stream = KEYS[1], KEYS[2]
local size, ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fresh, payload, now, channel = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = fresh
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 't', now)
end
local last = tonumber(redis.call('HGET', meta, 't')) or now
if now < last then now = last end
local offset = redis.call('HINCRBY', meta, 'o', 1)
redis.call('HSET', meta, 't', now)
redis.call('XADD', stream, 'MAXLEN', '~', size, offset .. '-0', 't', now, 'd', payload)
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
local old = nil
for _, entry in ipairs(head) do
  if tonumber(entry[2][2]) > now - ttl then break end
  old = entry[1]
end
if old then
  local n = tonumber(string.match(old, '^(%d+)'))
  redis.call('XTRIM', stream, 'MINID', (n + 1) .. '-0')
end
redis.call('PEXPIRE', meta, keep)
redis.call('PEXPIRE', stream, keep)
if channel ~= '' then
  redis.call('PUBLISH', channel, 'H' .. offset .. ':' .. epoch .. ':' .. payload)
end
return {offset, epoch}
"""

_READ: Final = """
local meta, stream = KEYS[1], KEYS[2]
local after, upto, fresh, keep, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if now == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local state = redis.call('HMGET', meta, 'e', 'o')
local epoch, latest = state[1], tonumber(state[2])
if not epoch then
  if fresh == '' then return {'', 0, now} end
  epoch, latest = fresh, 0
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 't', now)
  redis.call('PEXPIRE', meta, keep)
end
local out = {epoch, latest, now}
if upto == '' or tonumber(upto) > tonumber(after) then
  local stop = upto == '' and '+' or (upto .. '-0')
  for _, entry in ipairs(redis.call('XRANGE', stream, '(' .. after .. '-0', stop)) do
    out[#out + 1] = entry[1]
    out[#out + 1] = entry[2][2]
    out[#out + 1] = entry[2][4]
  end
end
return out
"""


def decode_frame(raw: bytes) -> tuple[int, str, bytes] | None:
    """``(offset, epoch, payload)`` of a frame published by ``append``; ``None`` if ``raw`` is
    not one (a plain bus message, or garbage)."""
    if not raw.startswith(FRAME_PREFIX):
        return None
    head, sep, rest = raw[1:].partition(b":")
    epoch, sep2, payload = rest.partition(b":")
    if not sep or not sep2 or not head.isdigit() or not epoch:
        return None
    try:
        return int(head), epoch.decode("ascii"), payload
    except UnicodeDecodeError:
        return None


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _new_epoch() -> str:
    return secrets.token_hex(8)


class RedisHistory:
    """The histories of every channel, in Redis, for every process sharing it.

    ``RedisHistory(client, prefix=...)``; the client can be the broker's (give it
    ``decode_responses=False``, the default). ``prefix`` namespaces the keys (use the broker's
    ``channel_prefix``). ``new_epoch()`` proposes the epoch of a history that has to start
    (default: 16 random hex digits; an epoch must not contain ``:``).

    Every method is one Redis round trip; cancelling one leaves the script either run or not
    (Redis runs a script atomically), but an ``append`` cancelled after it was sent may have
    stored the publication without the caller learning its offset.
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        *,
        prefix: str = "tsc:0:",
        new_epoch: Callable[[], str] = _new_epoch,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._new_epoch = new_epoch
        self._append = client.register_script(_APPEND)
        self._read = client.register_script(_READ)

    def keys(self, channel: str) -> tuple[str, str]:
        """The hash and stream keys of ``channel``."""
        base = f"{self._prefix}h:{{{channel}}}"
        return f"{base}:m", f"{base}:s"

    def _fresh(self) -> str:
        epoch = self._new_epoch()
        if not epoch or ":" in epoch:
            raise InvalidOptionsError("an epoch is a non-empty string without ':'")
        return epoch

    async def append(
        self,
        channel: str,
        payload: bytes,
        policy: HistoryPolicy,
        *,
        publish_to: bytes | str | None = None,
        now_ms: int | None = None,
    ) -> Publication:
        """Store one publication; its ``offset`` and ``epoch`` (``data`` is ``payload``).
        With ``publish_to``, the same script publishes the frame ``H<offset>:<epoch>:<payload>``
        there (``decode_frame`` reads it)."""
        result: Any = await self._append(
            keys=self.keys(channel),
            args=(
                policy.size,
                int(policy.ttl_s * 1000),
                int(policy.keep_for_s * 1000),
                self._fresh(),
                payload,
                "" if now_ms is None else int(now_ms),
                publish_to or "",
            ),
        )
        offset, epoch = result
        return Publication(int(offset), _as_str(epoch), payload)

    async def _snapshot(
        self, channel: str, after: int, upto: int | None, create: bool, keep_ms: int, now_ms: Any
    ) -> tuple[str, int, int, list[tuple[int, int, bytes]]]:
        raw: Sequence[Any] = await self._read(
            keys=self.keys(channel),
            args=(
                after,
                "" if upto is None else upto,
                self._fresh() if create else "",
                keep_ms,
                "" if now_ms is None else int(now_ms),
            ),
        )
        epoch, latest, now = _as_str(raw[0]), int(raw[1]), int(raw[2])
        entries = [
            (int(_as_str(raw[i]).partition("-")[0]), int(raw[i + 1]), _as_bytes(raw[i + 2]))
            for i in range(3, len(raw), 3)
        ]
        return epoch, latest, now, entries

    async def recover(
        self,
        channel: str,
        request: RecoverRequest,
        policy: HistoryPolicy,
        *,
        now_ms: int | None = None,
    ) -> Recovery:
        """The kept publications after ``request.offset`` (payloads as ``data``), or "cannot
        recover"; same rules as ``ChannelHistory.since``. A channel without a history gets one
        (offset 0 and a new epoch), so the answer always names the current epoch."""
        epoch, latest, now, entries = await self._snapshot(
            channel,
            max(request.offset, 0),
            None,
            True,
            int(policy.keep_for_s * 1000),
            now_ms,
        )
        after = request.offset
        if request.epoch != epoch or after < 0 or after > latest:
            return Recovery(False, latest, epoch)
        missed = latest - after
        if missed == 0:
            return Recovery(True, latest, epoch)
        if (
            missed > policy.size
            or len(entries) != missed
            or entries[0][0] != after + 1
            or entries[0][1] <= now - policy.ttl_s * 1000
        ):
            return Recovery(False, latest, epoch)
        return Recovery(True, latest, epoch, tuple(Publication(o, epoch, d) for o, _, d in entries))

    async def read_range(
        self,
        channel: str,
        first: int,
        last: int,
        policy: HistoryPolicy,
        *,
        now_ms: int | None = None,
    ) -> tuple[str, tuple[Publication, ...]]:
        """``(epoch, publications)``: the kept ones with offsets ``first..last`` (a gap to
        fill), in order; some or all may be missing (no longer kept). ``epoch`` is ``""`` when
        the channel has no history."""
        epoch, latest, now, entries = await self._snapshot(
            channel, max(first - 1, 0), last, False, 0, now_ms
        )
        low = max(first, latest - policy.size + 1)
        cutoff = now - policy.ttl_s * 1000
        return epoch, tuple(
            Publication(o, epoch, d) for o, t, d in entries if o >= low and t > cutoff
        )

    async def position(self, channel: str) -> tuple[int, str] | None:
        """``(latest offset, epoch)``, or ``None`` when the channel has no history in Redis
        (the baseline of a ``GapTracker`` once the pub/sub subscription is active)."""
        epoch, latest, _, _ = await self._snapshot(channel, 0, 0, False, 0, None)
        return (latest, epoch) if epoch else None
