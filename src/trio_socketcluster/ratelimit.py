"""A pure limiter for warnings that clients cause: at most one line per cause per interval.

A client that sends a thousand malformed packets must not write a thousand log lines (nor a
traceback each). ``WarningLimiter.allow(cause, now)`` says whether a warning for ``cause`` may
be logged now and, if so, how many were suppressed for that cause since the last one logged;
the caller appends that count to its line. Causes are any hashable values (the protocol's
``Fault`` members); their number is bounded by the caller (an enum), never by clients.

Pure: the time is a parameter, no I/O, clock or randomness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["WarningLimiter"]


class WarningLimiter:
    """At most one warning per cause per ``interval_s`` seconds, counting the rest."""

    __slots__ = ("_interval_s", "_last", "_suppressed")

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s: Final = interval_s
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, cause: Hashable, now: float) -> int | None:
        """``None``: stay quiet (counted). Else log now, mentioning the returned number of
        warnings suppressed for ``cause`` since the previous one."""
        last = self._last.get(cause)
        if last is not None and now - last < self._interval_s:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return None
        self._last[cause] = now
        return self._suppressed.pop(cause, 0)
