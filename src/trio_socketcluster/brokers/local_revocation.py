"""The in-process revocation store: a ``RevocationList`` in memory, for a single process
(with ``LocalBroker``). Revocations do not survive a restart; use the Redis store for that.

Nothing runs in the background: expired entries are pruned on every revocation and check
(a heap peek when there is nothing to forget).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentsError, InvalidOptionsError
from ..revocation import (
    DEFAULT_USER_CLAIM,
    IssueClock,
    JtiRevoked,
    Revocation,
    RevocationEvent,
    RevocationList,
    RevocationListener,
    UserRevoked,
    jti_forget_at,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["LocalRevocationStore", "TableStore", "notify"]


def notify(listeners: list[RevocationListener], event: RevocationEvent) -> None:
    """Call every listener with ``event``; a listener that raises does not stop the others
    (the first exception is re-raised after all were called)."""
    error: Exception | None = None
    for listener in list(listeners):
        try:
            listener(event)
        except Exception as exc:
            error = error or exc
    if error is not None:
        raise error


def check_ttl(ttl_s: float) -> None:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
        raise InvalidArgumentsError("ttl_s must be a positive number of seconds")


class TableStore:
    """What every store shares: the local revocation table, the clock, the issue stamps and
    the listeners. ``clock`` gives seconds since the epoch (the server passes
    ``Server.now``, which follows trio's clock); ``leeway_s`` is the verifier's clock
    tolerance; ``user_claim`` names the claim that identifies a user for watermarks."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 0.0,
        user_claim: str = DEFAULT_USER_CLAIM,
    ) -> None:
        if not isinstance(leeway_s, int | float) or not leeway_s >= 0:
            raise InvalidOptionsError("leeway_s must be a number >= 0")
        self.table = RevocationList(user_claim=user_claim)
        self._clock = clock
        self._leeway_s = float(leeway_s)
        self._stamps = IssueClock()
        self._listeners: list[RevocationListener] = []

    @property
    def leeway_s(self) -> float:
        return self._leeway_s

    def issue_stamp(self) -> int:
        return self._stamps.stamp(self._clock())

    def listen(self, listener: RevocationListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _apply(self, event: RevocationEvent) -> RevocationEvent:
        """Merge ``event`` into the local table and tell the listeners (this process)."""
        self.table.prune(self._clock())
        merged, _ = self.table.apply(event)
        notify(self._listeners, merged)
        return merged


class LocalRevocationStore(TableStore):
    """A ``RevocationStore`` in this process's memory (``clock``, ``leeway_s``,
    ``user_claim`` as for ``TableStore``)."""

    async def revoke_jti(self, jti: str, exp: float | None) -> JtiRevoked:
        """Refuse the token ``jti`` until ``exp + leeway_s``; listeners hear of it at once.
        Not a checkpoint."""
        if not isinstance(jti, str):
            raise InvalidArgumentsError("jti must be a string")
        merged = self._apply(JtiRevoked(jti=jti, forget_at=jti_forget_at(exp, self._leeway_s)))
        assert isinstance(merged, JtiRevoked)
        return merged

    async def revoke_user_before(
        self, user: str, *, ttl_s: float, at_us: int | None = None
    ) -> UserRevoked:
        """Refuse ``user``'s tokens issued up to now (``at_us``: that stamp instead) for
        ``ttl_s`` seconds (plus the leeway). Not a checkpoint."""
        if not isinstance(user, str):
            raise InvalidArgumentsError("user must be a string")
        check_ttl(ttl_s)
        now = self._clock()
        before = self._stamps.stamp(now) if at_us is None else at_us
        event = UserRevoked(
            user=user, before_us=before, forget_at=now + ttl_s + self._leeway_s,
            user_claim=self.table.user_claim,
        )  # fmt: skip
        merged = self._apply(event)
        assert isinstance(merged, UserRevoked)
        return merged

    async def check(self, claims: Mapping[str, Any]) -> Revocation | None:
        """Why these verified claims are refused now, or ``None``. Not a checkpoint."""
        now = self._clock()
        self.table.prune(now)
        return self.table.check(claims, now)
