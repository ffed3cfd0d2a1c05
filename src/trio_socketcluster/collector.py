"""How a serving process works with CPython's cyclic garbage collector.

Every open connection holds about 85 objects the collector tracks (its three tasks with
their coroutines and cancel scopes, two nurseries, the transport, the socket). CPython
collects its oldest generation whenever a quarter more objects have survived into it since
the last full collection, and a full collection walks every tracked object: with 10,000
open connections one took 0.65 s, and while connections arrive they come back every 25 %
of growth: half the CPU of a stream of handshakes went to walking connections that were
plainly alive, and each walk stopped every connection for its duration.

``FreezeSurvivors`` (``ServerConfig.gc_freeze``, on by default) moves what survives a
collection of the middle generation into the collector's permanent generation
(``gc.freeze()``, constant time): it was found reachable twice, by a young collection and
by this one, and later collections walk only what arrived since. Each object of a new
connection is walked twice instead of three times (young, middle, then full), and full
collections find the oldest generation nearly empty: in a stream of 10,000 handshakes the
collector's share of the CPU fell from 16 % to about 10 % (freezing only after full collections
had brought it down from half). Objects are still freed by reference counting when they are
dropped, so a closed connection's objects go at once: a connection leaves no reference
cycles behind (``tests/test_collector.py`` checks every way a connection ends). What a
frozen object that later becomes part of a garbage cycle holds would wait, so the permanent
generation is thawed (``gc.unfreeze()``) each time the connections closed since the last
thaw outnumber the connections open then (at least ``THAW_MIN_CLOSES``): nothing is frozen
again until the next full collection, at CPython's usual moment, has walked everything once
and freed any such cycles; its survivors are frozen.

CPython starts a young collection when its allocations minus its deallocations pass a
threshold. A crowd of connections that all wake within seconds defeats that count: each wake
allocates a new parked read (about 12 tracked objects) and frees the previous one, so the
count stays flat while the young generation fills with objects that are all alive; at 19,000
connections one young collection then walked 200,000 of them (0.15 s), and the middle
collection after it walked them again. So ``pace`` (called by the server's heartbeat after
each of its rounds, which come every few milliseconds when many sockets are connected) also
collects the young and middle generations at least every ``PACE_S`` while the policy is on:
each walks only what 0.1 s of activity allocated, and its survivors are frozen as above.

``GcPause`` pauses the collector for a drain (see ``server.py``).

Both are process-wide (the collector is); several servers in one process share them.
"""

from __future__ import annotations

import gc
import math
from typing import Any

__all__ = ["PACE_S", "THAW_MIN_CLOSES", "FreezeSurvivors", "GcPause"]

_OLDEST = len(gc.get_threshold()) - 1
_MIDDLE = _OLDEST - 1

#: The thaw rule's floor: a small server thaws at most once per this many closed connections.
THAW_MIN_CLOSES = 1000

#: ``pace`` collects the young and middle generations at most this often (seconds).
PACE_S = 0.1


class FreezeSurvivors:
    """Freeze the survivors of every middle and full collection while a server runs, and
    pace the young and middle collections (see the module docstring).
    ``with FreezeSurvivors():`` per serving server; ``connection_opened`` /
    ``connection_closed`` feed the thaw rule."""

    _active = 0  # servers using it, in this process
    open_connections = 0
    closed_since_thaw = 0
    thaw_after = THAW_MIN_CLOSES
    freezes = 0  # collections whose survivors were frozen
    thaws = 0
    thawed = False  # thawed, and no full collection since
    next_pace = -math.inf  # trio's clock

    def __enter__(self) -> FreezeSurvivors:
        cls = FreezeSurvivors
        if cls._active == 0:
            gc.callbacks.append(_after_collection)
        cls._active += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        cls = FreezeSurvivors
        cls._active -= 1
        if cls._active == 0:
            gc.callbacks.remove(_after_collection)
            # Nothing stays frozen once no server runs: the collector is as we found it.
            gc.unfreeze()

    @staticmethod
    def pace(now: float) -> None:
        """Collect the young and middle generations if ``PACE_S`` has passed since the last
        time (``now``: trio's clock), while the policy is on and the collector enabled (the
        drain pauses it). See the module docstring."""
        cls = FreezeSurvivors
        if now >= cls.next_pace and cls._active and gc.isenabled():
            cls.next_pace = now + PACE_S
            gc.collect(_MIDDLE)

    @staticmethod
    def connection_opened() -> None:
        FreezeSurvivors.open_connections += 1

    @staticmethod
    def connection_closed() -> None:
        cls = FreezeSurvivors
        cls.open_connections -= 1
        cls.closed_since_thaw += 1
        if cls.closed_since_thaw >= cls.thaw_after and cls._active:
            cls.thaw()

    @staticmethod
    def thaw() -> None:
        """Give every frozen object back to the oldest generation (constant time)."""
        cls = FreezeSurvivors
        gc.unfreeze()
        cls.thaws += 1
        cls.thawed = True
        cls.closed_since_thaw = 0
        cls.thaw_after = max(THAW_MIN_CLOSES, cls.open_connections)


def _after_collection(phase: str, info: dict[str, Any]) -> None:
    # Right after a collection of the middle generation (or a full one) the younger
    # generations are empty and what they held was just found reachable: freezing costs a
    # list splice per generation. After a thaw, the oldest generation holds what was frozen,
    # unchecked: only a full collection may freeze it again.
    if phase != "stop":
        return
    generation = info["generation"]
    if generation == _OLDEST:
        FreezeSurvivors.thawed = False
    elif generation != _MIDDLE or FreezeSurvivors.thawed:
        return
    gc.freeze()
    FreezeSurvivors.freezes += 1


class GcPause:
    """Pauses Python's cyclic garbage collector from ``start()`` until the ``with`` block ends.

    The drain unwinds every connection's tasks at once: thousands of ``Cancelled`` exceptions
    with their tracebacks, closures and cancel statuses, many in reference cycles. Each of
    them counts towards the collector's thresholds, and every collection of the older
    generations walks the whole heap, which holds every open connection: with 10,000 sockets
    the collector took two thirds of the stop, and its share grew with the square of the
    socket count. Paused, the stop is linear; reference counting still frees almost all of it
    at once, and the cycles left wait for the next collection after ``serve`` returns (the
    pause lasts ``shutdown_timeout_s`` at most, however many servers drain together: the
    collector is enabled again when the last one ends, unless it was disabled before).
    """

    _active = 0  # pauses started and not ended, in this process
    _was_enabled = False

    def __init__(self) -> None:
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if GcPause._active == 0:
            GcPause._was_enabled = gc.isenabled()
            gc.disable()
        GcPause._active += 1

    def __enter__(self) -> GcPause:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._started:
            return
        self._started = False
        GcPause._active -= 1
        if GcPause._active == 0 and GcPause._was_enabled:
            gc.enable()
