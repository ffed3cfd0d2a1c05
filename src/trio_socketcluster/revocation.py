"""Token revocation rules: which tokens a revocation list refuses, and for how long it must
remember each entry.

Two kinds of revocation:

* **by token** (``jti``): the token whose ``jti`` claim is revoked is refused until it would
  have expired anyway (its ``exp`` plus the verifier's leeway); then the entry is forgotten.
* **by user, issued before** (a *watermark*, "log out everywhere"): every token of the user
  issued *at or before* the watermark is refused; tokens issued after it are not, including
  one issued within the same second.

How "issued at or before" is decided, when ``iat`` has whole seconds:

* Tokens the server issues carry a private claim ``iat_us`` (``ISSUED_AT_US_CLAIM``): the
  issue instant in integer microseconds since the epoch. Watermarks are recorded in the same
  unit, and both come from one ``IssueClock`` per process, whose stamps *strictly increase*
  (a stamp is ``max(floor(now * 1e6), last + 1)``). So on one process a token issued after a
  logout-everywhere call is always after its watermark, even under a clock that does not move
  (trio's ``MockClock``) or within the same microsecond; a token issued before it is always
  at or before. Across processes the order is that of their wall clocks.
* A token without ``iat_us`` (minted elsewhere with the same key, or before this claim
  existed) falls back to ``iat``. With whole-second ``iat`` the token may have been issued
  anywhere in ``[iat, iat + 1)``, so it is refused when ``iat <= watermark``: conservative,
  it may refuse a token issued just after the call within the same second, never keeps one
  issued before. A token with neither claim is refused by any watermark of its user.

The alternative, a registry of the jtis issued to each user, would be exact without clocks
but costs a write per issued token and cannot know tokens minted outside the server.

A revoked token is refused as a *bad* token (``revoked_error``: ``AuthTokenInvalidError``
"jwt revoked", ``isBadToken: true``), so the stock clients drop it.

``RevocationList`` is the in-memory table every store keeps (the Redis store mirrors Redis
into one); ``RevocationStore`` is the async interface of the stores (in-process:
``brokers.local_revocation``; Redis: ``brokers.redis_revocation``).

Pure: no I/O, no clock, no randomness; ``now`` and ids are parameters.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol, TypeGuard

from .auth import ISSUED_AT_US_CLAIM
from .errors import AuthTokenError, AuthTokenInvalidError

__all__ = [
    "ISSUED_AT_US_CLAIM",
    "IssueClock",
    "JtiRevoked",
    "Revocation",
    "RevocationEvent",
    "RevocationList",
    "RevocationStore",
    "UserRevoked",
    "issued_at_us",
    "jti_forget_at",
    "micros",
    "revoked_error",
    "user_of",
]

#: The claim that names a token's user for watermarks, unless a store is told otherwise.
DEFAULT_USER_CLAIM: Final = "username"
_US: Final = 1_000_000
_MISSING: Final[Any] = object()


class Revocation(Enum):
    """Why a token is refused."""

    JTI = "jti"  #: its ``jti`` is revoked
    WATERMARK = "watermark"  #: its user's tokens issued up to a watermark are revoked
    UNAVAILABLE = "unavailable"  #: the store cannot tell, and is configured to refuse then


def revoked_error(reason: Revocation) -> AuthTokenError:
    """The error a client receives for a token refused for ``reason``.

    Revoked tokens are bad tokens (``AuthTokenInvalidError`` "jwt revoked", the clients drop
    them); an unavailable store gives ``AuthTokenError`` with ``isBadToken: false`` (the token
    may be fine: the client keeps it and can present it again).
    """
    if reason is Revocation.UNAVAILABLE:
        return AuthTokenError("jwt revocation status unavailable", is_bad_token=False)
    return AuthTokenInvalidError("jwt revoked")


def micros(seconds: float) -> int:
    """Seconds since the epoch as integer microseconds (floor). Monotone in ``seconds``."""
    return math.floor(seconds * _US)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def issued_at_us(claims: Mapping[str, Any]) -> int | None:
    """The latest instant (µs) at which the token may have been issued, as far as a
    watermark is concerned: ``iat_us`` if it is an int, else ``iat`` (seconds, taken as its
    start: see the module docstring), else ``None`` (unknown: any watermark refuses it)."""
    stamp = claims.get(ISSUED_AT_US_CLAIM)
    if _is_int(stamp):
        return int(stamp)
    iat = claims.get("iat")
    if _is_number(iat):
        try:
            return micros(iat)
        except OverflowError:  # too large to compare: treated as unknown
            return None
    return None


def user_of(claims: Mapping[str, Any], user_claim: str = DEFAULT_USER_CLAIM) -> str | None:
    """The user a token belongs to for watermarks: its ``user_claim``, if a string."""
    user = claims.get(user_claim)
    return user if isinstance(user, str) else None


def jti_forget_at(exp: float | None, leeway_s: float) -> float | None:
    """When a revoked jti may be forgotten: once its token is refused as expired anyway
    (``now >= exp + leeway``). ``None`` (never) for a token without a numeric ``exp``."""
    if exp is None or not _is_number(exp):
        return None
    return float(exp) + leeway_s


class IssueClock:
    """Strictly increasing microsecond stamps for one process: issue times of tokens and
    watermarks come from the same clock, so their order on a process is the call order."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -1

    def stamp(self, now: float) -> int:
        """``max(micros(now), last stamp + 1)``."""
        stamp = max(micros(now), self._last + 1)
        self._last = stamp
        return stamp


# ---------------------------------------------------------------------------------------------
# Events: what a store tells its listeners (and what travels between processes)


@dataclass(frozen=True, slots=True, kw_only=True)
class JtiRevoked:
    """The token with ``jti`` is revoked; the entry lives until ``forget_at`` (None: always)."""

    jti: str
    forget_at: float | None

    def revokes(self, claims: Mapping[str, Any]) -> bool:
        """Whether a token with these (verified) claims is one this event revokes."""
        return claims.get("jti") == self.jti


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRevoked:
    """Tokens of ``user`` issued at or before ``before_us`` are revoked, until ``forget_at``."""

    user: str
    before_us: int
    forget_at: float | None
    user_claim: str = DEFAULT_USER_CLAIM

    def revokes(self, claims: Mapping[str, Any]) -> bool:
        """Whether a token with these (verified) claims is one this event revokes."""
        if user_of(claims, self.user_claim) != self.user:
            return False
        issued = issued_at_us(claims)
        return issued is None or issued <= self.before_us


RevocationEvent = JtiRevoked | UserRevoked


# ---------------------------------------------------------------------------------------------
# The table


class RevocationList:
    """Revoked jtis and per-user watermarks, each with the time it may be forgotten.

    Adding is O(log n), checking O(1) (two dict lookups), pruning O(log n) per forgotten
    entry (a heap of forget times with lazy deletion). Entries are monotone: adding a jti
    again or a lower watermark never shortens or lowers what is there (so applying the same
    events in any order, any number of times, gives the same table).
    """

    __slots__ = ("_heap", "_jtis", "_user_claim", "_watermarks")

    def __init__(self, *, user_claim: str = DEFAULT_USER_CLAIM) -> None:
        self._user_claim = user_claim
        self._jtis: dict[str, float | None] = {}
        self._watermarks: dict[str, tuple[int, float | None]] = {}
        # (forget_at, kind, key); an item is stale when the entry's forget_at differs.
        self._heap: list[tuple[float, str, str]] = []

    @property
    def user_claim(self) -> str:
        return self._user_claim

    def __len__(self) -> int:
        return len(self._jtis) + len(self._watermarks)

    def jtis(self) -> Iterator[tuple[str, float | None]]:
        """The revoked jtis with their forget times."""
        return iter(self._jtis.items())

    def watermarks(self) -> Iterator[tuple[str, tuple[int, float | None]]]:
        """The users with their (watermark µs, forget time)."""
        return iter(self._watermarks.items())

    def apply(self, event: RevocationEvent) -> tuple[RevocationEvent, bool]:
        """Add an event's entry, merged with what is there: returns the merged entry and
        whether the table changed."""
        match event:
            case JtiRevoked(jti=jti, forget_at=forget_at):
                old = self._jtis.get(jti, _MISSING)
                if old is not _MISSING:
                    forget_at = _later(old, forget_at)
                self._jtis[jti] = forget_at
                if forget_at is not None and forget_at != old:
                    heapq.heappush(self._heap, (forget_at, "j", jti))
                return JtiRevoked(jti=jti, forget_at=forget_at), forget_at != old
            case UserRevoked(user=user, before_us=before_us, forget_at=forget_at):
                entry = self._watermarks.get(user)
                if entry is not None:
                    before_us = max(before_us, entry[0])
                    forget_at = _later(entry[1], forget_at)
                self._watermarks[user] = (before_us, forget_at)
                if forget_at is not None and (entry is None or forget_at != entry[1]):
                    heapq.heappush(self._heap, (forget_at, "u", user))
                merged = UserRevoked(
                    user=user, before_us=before_us, forget_at=forget_at,
                    user_claim=self._user_claim,
                )  # fmt: skip
                return merged, entry != (before_us, forget_at)

    def prune(self, now: float) -> int:
        """Forget every entry whose forget time is ``<= now``; returns how many."""
        heap = self._heap
        forgotten = 0
        while heap and heap[0][0] <= now:
            forget_at, kind, key = heapq.heappop(heap)
            if kind == "j":
                if key in self._jtis and self._jtis[key] == forget_at:
                    del self._jtis[key]
                    forgotten += 1
            elif key in self._watermarks and self._watermarks[key][1] == forget_at:
                del self._watermarks[key]
                forgotten += 1
        return forgotten

    def check(self, claims: Mapping[str, Any], now: float) -> Revocation | None:
        """Why a token with these (verified) claims is refused at ``now``, or ``None``.

        An entry whose forget time has passed no longer counts, pruned or not.
        """
        jti = claims.get("jti")
        if isinstance(jti, str) and jti in self._jtis:
            forget_at = self._jtis[jti]
            if forget_at is None or now < forget_at:
                return Revocation.JTI
        if self._watermarks:
            user = user_of(claims, self._user_claim)
            if user is not None and user in self._watermarks:
                before_us, forget_at = self._watermarks[user]
                if forget_at is None or now < forget_at:
                    issued = issued_at_us(claims)
                    if issued is None or issued <= before_us:
                        return Revocation.WATERMARK
        return None


def _later(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return max(a, b)


# ---------------------------------------------------------------------------------------------
# The store interface


RevocationListener = Callable[[RevocationEvent], None]


class RevocationStore(Protocol):
    """Where revocations live: in-process, or shared by every worker (Redis).

    The server calls ``issue_stamp()`` for the ``iat_us`` of every token it signs (so tokens
    and watermarks are ordered on the process), ``check`` at the handshake and at
    ``#authenticate`` (after the signature and times verified), and ``listen`` once: its
    listener is called for every revocation applied here, whether made on this process or
    another, and deauthenticates the live sockets whose token ``event.revokes``.
    """

    @property
    def leeway_s(self) -> float:
        """The verifier's clock tolerance: jti entries live until ``exp + leeway_s``."""
        ...

    def issue_stamp(self) -> int:
        """A fresh ``iat_us`` for a token signed now (strictly increasing on this process)."""
        ...

    async def revoke_jti(self, jti: str, exp: float | None) -> JtiRevoked:
        """Refuse the token ``jti`` (whose ``exp`` claim is given) until it expires."""
        ...

    async def revoke_user_before(
        self, user: str, *, ttl_s: float, at_us: int | None = None
    ) -> UserRevoked:
        """Refuse ``user``'s tokens issued up to now (or ``at_us``), for ``ttl_s`` seconds
        (at least the longest lifetime of the tokens the server issues)."""
        ...

    async def check(self, claims: Mapping[str, Any]) -> Revocation | None:
        """Why a token with these verified claims is refused now, or ``None``."""
        ...

    def listen(self, listener: RevocationListener) -> Callable[[], None]:
        """Call ``listener(event)`` for every revocation applied; returns the remover."""
        ...
