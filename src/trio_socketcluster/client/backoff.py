"""The reconnect rule of the SocketCluster clients (v14 and v20), as a pure function.

``reconnect_delay_s(code, attempt, policy, rand)`` answers "how long to wait before the next
connection attempt after a close with ``code``", or ``None`` for "do not reconnect":

* 1000 and codes >= 4500: no reconnect;
* 4000 (ping timeout), 4001 (pong timeout), 1005 (no status): at once on the first attempt,
  then the exponential back-off;
* anything else: ``(initial + randomness * rand) * multiplier ** attempt``, capped at
  ``max_delay``.

``attempt`` counts failed attempts since the last successful handshake (0 for the first retry);
``rand`` is a number in [0, 1) the caller draws (the client takes it from its ``random``
parameter, so tests choose the jitter). Pure: no clock, no randomness of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IMMEDIATE_CODES", "ReconnectPolicy", "reconnect_delay_s"]

#: Close codes after which the first reconnect attempt is immediate.
IMMEDIATE_CODES = frozenset({4000, 4001, 1005})


@dataclass(frozen=True, kw_only=True, slots=True)
class ReconnectPolicy:
    """The clients' ``autoReconnectOptions``, in seconds (defaults as the JS clients)."""

    initial_delay_s: float = 10.0
    randomness_s: float = 10.0
    multiplier: float = 1.5
    max_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if min(self.initial_delay_s, self.randomness_s, self.max_delay_s) < 0:
            raise ValueError("reconnect delays must be >= 0")
        if self.multiplier < 1:
            raise ValueError("the reconnect multiplier must be >= 1")


def reconnect_delay_s(
    code: int, attempt: int, policy: ReconnectPolicy, rand: float
) -> float | None:
    """Seconds to wait before reconnecting after a close with ``code``; ``None``: never."""
    if code == 1000 or code >= 4500:
        return None
    if code in IMMEDIATE_CODES and attempt == 0:
        return 0.0
    base = policy.initial_delay_s + policy.randomness_s * rand
    delay: float = base * policy.multiplier**attempt
    return min(delay, policy.max_delay_s)
