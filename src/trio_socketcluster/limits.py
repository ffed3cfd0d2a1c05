"""Admission control at the HTTP upgrade: a connection limit and handshake rate limits.

``Admission`` decides, for each WebSocket upgrade, whether to accept it now. It refuses when
the server already holds ``max_connections`` sockets, when the overall handshake rate is
spent (a token bucket: ``handshake_rate_per_s`` refill, ``handshake_burst`` capacity), or
when one client address has spent its own bucket (``per_address_rate_per_s``,
``per_address_burst``). A refusal carries the cause (a fixed label for metrics and logs) and
``retry_after_s``: when a token will be there again (rounded up to whole seconds for the
``Retry-After`` header of the HTTP 503 the server sends).

Per-address buckets are kept for at most ``max_tracked_addresses`` addresses (least recently
used forgotten first: a forgotten address starts again with a full bucket, so the bound
can only make the limit more lenient, never refuse a client that should pass).

Pure: time is a parameter; no I/O, clock or randomness.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from .errors import InvalidOptionsError
from .middleware import TokenBucket

__all__ = ["Admission", "AdmissionLimits", "Refusal"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AdmissionLimits:
    """What ``Admission`` enforces; ``None`` switches a limit off (the default for all)."""

    max_connections: int | None = None
    handshake_rate_per_s: float | None = None
    handshake_burst: float | None = None
    per_address_rate_per_s: float | None = None
    per_address_burst: float | None = None
    max_tracked_addresses: int = 65536

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 0:
            raise InvalidOptionsError("max_connections must be >= 0")
        for rate, burst, what in (
            (self.handshake_rate_per_s, self.handshake_burst, "handshake"),
            (self.per_address_rate_per_s, self.per_address_burst, "per_address"),
        ):
            if rate is not None and rate <= 0:
                raise InvalidOptionsError(f"{what}_rate_per_s must be > 0")
            if burst is not None and burst < 1:
                raise InvalidOptionsError(f"{what}_burst must be >= 1")
        if self.max_tracked_addresses < 1:
            raise InvalidOptionsError("max_tracked_addresses must be >= 1")

    @property
    def active(self) -> bool:
        return (
            self.max_connections is not None
            or self.handshake_rate_per_s is not None
            or self.per_address_rate_per_s is not None
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade was refused, and when to try again."""

    cause: str  # "connections", "handshake_rate" or "address_rate"
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 (RFC 9110 §10.2.3 delay-seconds)."""
        return str(max(1, math.ceil(self.retry_after_s)))


def _burst(rate: float, burst: float | None) -> float:
    return burst if burst is not None else max(1.0, rate)


def _wait_for_token(bucket: TokenBucket) -> float:
    return max(0.0, (1.0 - bucket.tokens) / bucket.rate_per_s)


class Admission:
    """The admission state of one server: its buckets. Not thread-safe; one trio task at a
    time calls ``admit`` (the accept path)."""

    __slots__ = ("_addresses", "_overall", "limits")

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._overall: TokenBucket | None = None
        self._addresses: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, *, now: float, address: str | None, open_connections: int) -> Refusal | None:
        """Decide on one upgrade at ``now``; ``None`` admits it (and spends its tokens)."""
        lim = self.limits
        if lim.max_connections is not None and open_connections >= lim.max_connections:
            # No token to wait for: a slot frees when someone leaves. Ask for a short wait.
            return Refusal("connections", 1.0)
        overall = self._overall
        if lim.handshake_rate_per_s is not None:
            if overall is None:
                overall = TokenBucket.full(
                    rate_per_s=lim.handshake_rate_per_s,
                    burst=_burst(lim.handshake_rate_per_s, lim.handshake_burst),
                    now=now,
                )
            _, probe = overall.take(now, 0.0)  # refill only
            if probe.tokens < 1.0:
                self._overall = probe
                return Refusal("handshake_rate", _wait_for_token(probe))
        per: TokenBucket | None = None
        if lim.per_address_rate_per_s is not None and address is not None:
            per = self._addresses.pop(address, None)
            if per is None:
                per = TokenBucket.full(
                    rate_per_s=lim.per_address_rate_per_s,
                    burst=_burst(lim.per_address_rate_per_s, lim.per_address_burst),
                    now=now,
                )
            admitted, per = per.take(now)
            self._remember(address, per)
            if not admitted:
                return Refusal("address_rate", _wait_for_token(per))
        if overall is not None:
            _, self._overall = overall.take(now)
        return None

    def _remember(self, address: str, bucket: TokenBucket) -> None:
        addresses = self._addresses
        addresses[address] = bucket  # most recently used last
        while len(addresses) > self.limits.max_tracked_addresses:
            addresses.popitem(last=False)

    def tracked_addresses(self) -> int:
        return len(self._addresses)
