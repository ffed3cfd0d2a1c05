"""The Redis revocation store: revocations shared by every worker and kept across restarts.

What lives in Redis (``prefix`` is the broker's channel prefix, ``tsc:<db>:`` by default)::

    <prefix>rv:j:<jti>    "<forget ms>" or "-"        one revoked token; expires (PXAT) when
                                                      the token would expire anyway
                                                      (exp + leeway), "-" = never (no exp)
    <prefix>rv:u:<user>   "<watermark µs> <forget ms>" tokens of <user> issued up to the
                                                      watermark; expires at <forget ms>
    <prefix>rv            pub/sub channel: one message per revocation (below)

Writes are Lua scripts that merge with what is there (a later forget time and a higher
watermark win, so concurrent writers and replays never undo a revocation), set the key with
its expiry and publish the merged entry, atomically. Messages are lines:
``j\\n<forget ms|->\\n<jti>`` and ``u\\n<watermark µs>\\n<forget ms>\\n<user>``. Whoever
can write to this Redis can revoke (as they could by writing the keys), nobody can
un-revoke through the channel.

**The local mirror.** Every store keeps all entries in a ``RevocationList``: ``run``
subscribes to the channel *first*, then loads every key (SCAN + MGET), so nothing written
in between is missed; from then on messages keep it current and ``check`` answers from
memory, with no Redis round trip. While the subscription is down (and until it is back and
reloaded) ``check`` asks Redis directly (one MGET, ``timeout_s``); when that fails too it
answers from the mirror (``fail_closed=False``, the default: availability over a
revocation made during the outage) or refuses with ``Revocation.UNAVAILABLE``
(``fail_closed=True``: not a bad token, so clients keep their token). A revocation made on
another worker reaches this one's mirror (and its listeners) one pub/sub hop later; a token
presented within that window is accepted and then deauthenticated by the listener.

Listeners hear of each entry that changes the mirror (a revocation made here at once;
others' when their message arrives, or at a reload after a lost subscription).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import anyio
import coredis
import coredis.exceptions
import coredis.retry
import trio

from ..errors import BrokerError, InvalidArgumentsError, InvalidOptionsError
from ..revocation import (
    DEFAULT_USER_CLAIM,
    JtiRevoked,
    Revocation,
    RevocationEvent,
    UserRevoked,
    jti_forget_at,
    user_of,
)
from .local_revocation import TableStore, check_ttl, notify

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["RedisRevocationStore"]

log = logging.getLogger("trio_socketcluster.redis.revocation")

_NEVER: Final = b"-"
_BATCH: Final = 500
# What a failed Redis call raises through coredis/anyio, or our own deadline.
_REDIS_ERRORS: Final = (
    trio.TooSlowError,
    coredis.exceptions.RedisError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)
_GLOB_SPECIAL: Final = re.compile(rb"([*?\[\]\\])")

# KEYS[1] = jti key; ARGV = forget ms or "-", channel, jti
_REVOKE_JTI: Final = b"""
local f = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur == '-' then f = '-'
  elseif f ~= '-' and tonumber(cur) > tonumber(f) then f = cur end
end
if f == '-' then redis.call('SET', KEYS[1], f)
else redis.call('SET', KEYS[1], f, 'PXAT', f) end
redis.call('PUBLISH', ARGV[2], 'j\\n' .. f .. '\\n' .. ARGV[3])
return f
"""

# KEYS[1] = user key; ARGV = watermark us, forget ms, channel, user
_REVOKE_USER: Final = b"""
local w = ARGV[1]
local f = ARGV[2]
local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local cw = string.sub(cur, 1, sp - 1)
  local cf = string.sub(cur, sp + 1)
  if tonumber(cw) > tonumber(w) then w = cw end
  if tonumber(cf) > tonumber(f) then f = cf end
end
redis.call('SET', KEYS[1], w .. ' ' .. f, 'PXAT', f)
redis.call('PUBLISH', ARGV[3], 'u\\n' .. w .. '\\n' .. f .. '\\n' .. ARGV[4])
return w .. ' ' .. f
"""


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _forget_from(raw: bytes) -> float | None:
    return None if raw == _NEVER else int(raw) / 1000


class RedisRevocationStore(TableStore):
    """A ``RevocationStore`` in Redis, with a local mirror kept current over pub/sub.

    ``RedisRevocationStore(client, prefix=...)`` takes a ``coredis.Redis[bytes]`` (give it
    ``retry_policy=NoRetryPolicy()``); ``from_url`` builds one from the broker's URL. ``run``
    must be running (``await nursery.start(store.run)``) for anything else to work.
    ``clock``, ``leeway_s`` and ``user_claim`` are as for ``LocalRevocationStore``.
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        *,
        prefix: str = "tsc:0:",
        clock: Callable[[], float] = time.time,
        leeway_s: float = 0.0,
        user_claim: str = DEFAULT_USER_CLAIM,
        fail_closed: bool = False,
        timeout_s: float = 2.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
    ) -> None:
        super().__init__(clock=clock, leeway_s=leeway_s, user_claim=user_claim)
        if not timeout_s > 0:
            raise InvalidOptionsError("timeout_s must be > 0")
        self._client = client
        self._prefix = _encode(prefix)
        self._jti_prefix = self._prefix + b"rv:j:"
        self._user_prefix = self._prefix + b"rv:u:"
        self._channel = self._prefix + b"rv"
        self._fail_closed = fail_closed
        self._timeout_s = timeout_s
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._synced = False
        self._synced_changed = trio.Event()

    @classmethod
    def from_url(
        cls, url: str, *, connect_timeout_s: float = 2.0, **options: Any
    ) -> RedisRevocationStore:
        """A store for ``redis://[user:password@]host:port/db`` (or ``rediss://``,
        ``unix://``): give it the broker's URL. The default prefix is the broker's
        (``tsc:<db>:``). Other keyword arguments go to ``RedisRevocationStore``."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidOptionsError(f"not a Redis URL: {url!r}")
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        options.setdefault("prefix", f"tsc:{db or 0}:")
        client = coredis.Redis.from_url(
            url, retry_policy=coredis.retry.NoRetryPolicy(), connect_timeout=connect_timeout_s
        )
        return cls(client, **options)

    # ------------------------------------------------------------------ RevocationStore

    @property
    def synced(self) -> bool:
        """Whether the mirror is complete and kept current (``check`` needs no Redis)."""
        return self._synced

    async def wait_synced(self) -> None:
        """Return once the mirror is complete and subscribed."""
        while not self._synced:
            await self._synced_changed.wait()

    async def revoke_jti(self, jti: str, exp: float | None) -> JtiRevoked:
        """Refuse the token ``jti`` on every worker until ``exp + leeway_s``.

        Applied to this process first (listeners called), then written to Redis;
        ``BrokerError`` if Redis did not take it (this process still refuses the token).
        Cancellation may leave the write done or not done.
        """
        if not isinstance(jti, str):
            raise InvalidArgumentsError("jti must be a string")
        event = JtiRevoked(jti=jti, forget_at=jti_forget_at(exp, self._leeway_s))
        merged = self._apply(event)
        forget = _NEVER if event.forget_at is None else b"%d" % _ms(event.forget_at)
        await self._write(
            _REVOKE_JTI, self._jti_prefix + _encode(jti), [forget, self._channel, _encode(jti)]
        )
        assert isinstance(merged, JtiRevoked)
        return merged

    async def revoke_user_before(
        self, user: str, *, ttl_s: float, at_us: int | None = None
    ) -> UserRevoked:
        """Refuse ``user``'s tokens issued up to now (or ``at_us``) on every worker, for
        ``ttl_s`` seconds (plus the leeway). Same order, errors and cancellation as
        ``revoke_jti``."""
        if not isinstance(user, str):
            raise InvalidArgumentsError("user must be a string")
        check_ttl(ttl_s)
        now = self._clock()
        before = self._stamps.stamp(now) if at_us is None else at_us
        forget_ms = _ms(now + ttl_s + self._leeway_s)
        event = UserRevoked(
            user=user, before_us=before, forget_at=forget_ms / 1000,
            user_claim=self.table.user_claim,
        )  # fmt: skip
        merged = self._apply(event)
        await self._write(
            _REVOKE_USER,
            self._user_prefix + _encode(user),
            [b"%d" % before, b"%d" % forget_ms, self._channel, _encode(user)],
        )
        assert isinstance(merged, UserRevoked)
        return merged

    async def check(self, claims: Mapping[str, Any]) -> Revocation | None:
        """Why these verified claims are refused now, or ``None``.

        From the mirror while synced (not a checkpoint); otherwise one MGET to Redis (see the
        module docstring for what happens when that fails). Cancellation leaves nothing.
        """
        now = self._clock()
        table = self.table
        table.prune(now)
        verdict = table.check(claims, now)
        if verdict is not None or self._synced:
            return verdict
        jti = claims.get("jti")
        user = user_of(claims, table.user_claim)
        keys = []
        if isinstance(jti, str):
            keys.append(self._jti_prefix + _encode(jti))
        if user is not None:
            keys.append(self._user_prefix + _encode(user))
        if not keys:
            return None
        try:
            with trio.fail_after(self._timeout_s):
                values = await self._client.mget(keys)
        except _REDIS_ERRORS as exc:
            log.debug("revocation lookup failed: %r", exc)
            return Revocation.UNAVAILABLE if self._fail_closed else None
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                self._apply_entry(key, value)
        return table.check(claims, now)

    # ------------------------------------------------------------------ internals

    def _apply_remote(self, event: RevocationEvent) -> None:
        merged, changed = self.table.apply(event)
        if changed:
            try:
                notify(self._listeners, merged)
            except Exception:  # a listener of the server or the application: its fault
                log.exception("a revocation listener failed")

    async def _write(self, script: bytes, key: bytes, args: list[bytes]) -> None:
        try:
            with trio.fail_after(self._timeout_s):
                await self._client.eval(script, [key], args)
        except _REDIS_ERRORS as exc:
            raise BrokerError(
                f"Redis did not take the revocation (applied on this process only): {exc!r}"
            ) from exc

    def _apply_entry(self, key: bytes, value: bytes) -> None:
        """Apply one key as loaded from Redis."""
        try:
            if key.startswith(self._jti_prefix):
                jti = _decode(key[len(self._jti_prefix) :])
                self._apply_remote(JtiRevoked(jti=jti, forget_at=_forget_from(value)))
            elif key.startswith(self._user_prefix):
                user = _decode(key[len(self._user_prefix) :])
                before, forget = value.split(b" ", 1)
                self._apply_remote(
                    UserRevoked(
                        user=user, before_us=int(before), forget_at=_forget_from(forget),
                        user_claim=self.table.user_claim,
                    )
                )  # fmt: skip
        except ValueError:
            log.warning("malformed revocation entry %r = %r", key, value)

    def receive(self, raw: bytes) -> None:
        """Apply one message of the channel (public for tests and tools)."""
        try:
            kind, rest = raw.split(b"\n", 1)
            if kind == b"j":
                forget, jti = rest.split(b"\n", 1)
                self._apply_remote(JtiRevoked(jti=_decode(jti), forget_at=_forget_from(forget)))
            elif kind == b"u":
                before, forget, user = rest.split(b"\n", 2)
                self._apply_remote(
                    UserRevoked(
                        user=_decode(user), before_us=int(before),
                        forget_at=_forget_from(forget), user_claim=self.table.user_claim,
                    )
                )  # fmt: skip
            else:
                raise ValueError(kind)
        except ValueError:
            log.warning("malformed revocation message %r", raw[:200])

    def _on_message(self, message: Mapping[str, Any]) -> None:
        data = message.get("data")
        if isinstance(data, bytes):
            self.receive(data)

    def _set_synced(self, synced: bool) -> None:
        if synced != self._synced:
            self._synced = synced
            self._synced_changed.set()
            self._synced_changed = trio.Event()

    async def _load(self) -> None:
        pattern = _GLOB_SPECIAL.sub(rb"\\\1", self._prefix) + b"rv:[ju]:*"
        batch: list[bytes] = []
        async for key in self._client.scan_iter(match=pattern, count=_BATCH):
            batch.append(key)
            if len(batch) >= _BATCH:
                await self._load_batch(batch)
                batch = []
        if batch:
            await self._load_batch(batch)

    async def _load_batch(self, keys: list[bytes]) -> None:
        values = await self._client.mget(keys)
        for key, value in zip(keys, values, strict=True):
            if value is not None:  # expired between SCAN and MGET
                self._apply_entry(key, value)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the mirror subscribed and complete until cancelled.

        ``task_status.started()`` comes after the first attempt, successful or not (then
        ``check`` asks Redis directly until a later attempt succeeds). Cancellation closes
        the connections and leaves the mirror as it was.
        """
        started = False
        attempt = 0
        try:
            async with self._client:
                while True:
                    try:
                        async with self._client.pubsub(
                            retry_policy=None, ignore_subscribe_messages=True
                        ) as pubsub:
                            await pubsub.subscribe(**{self._channel.decode(): self._on_message})
                            async with trio.open_nursery() as nursery:
                                nursery.start_soon(self._drain, pubsub)
                                with trio.fail_after(max(self._timeout_s, 30.0)):
                                    await self._load()
                                self._set_synced(True)
                                attempt = 0
                                if not started:
                                    started = True
                                    task_status.started()
                    except* (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        log.debug("Redis revocation subscriber connection closed")
                    except* Exception as group:
                        (log.warning if attempt == 0 else log.debug)(
                            "Redis revocation subscriber failed: %r", group.exceptions[0]
                        )
                    self._set_synced(False)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(self._backoff(attempt))
                    attempt += 1
        finally:
            self._set_synced(False)

    def _backoff(self, attempt: int) -> float:
        low, high = self._reconnect
        return min(high, low * 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0)

    @staticmethod
    async def _drain(pubsub: Any) -> None:
        # Messages are handled inline by the channel handler; coredis still queues a None per
        # message for its iterator: drain them.
        while True:
            await pubsub.get_message()
