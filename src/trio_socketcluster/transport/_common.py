"""What both transports (``transport.ws`` and ``transport.trio_websocket``) share: the close
state, and the writer around an outbound queue.

The close state is one field, ``_close``: a frozen ``CloseState`` holding the phase
(``State``: OPEN → CLOSING → CLOSED) and, once closing has begun, the close decided (code,
reason, and who decided it: ``ClosedBy``) that ``receive`` reports. The first decision stands:
later transitions change the phase only. Every test of it compares enums.

``OutboundTransport`` owns that field, the writer flags (one flush at a time: ``_sending``;
``_wake`` for ``run_writer``; ``_idle`` for ``_drain``) and the overflow bookkeeping (the
write in flight gets ``close_timeout_s``, then the stream is closed). What is queued, and how
it is written, is the subclass's: it implements ``flush`` and ``_queued`` and keeps its own
``send`` (the hot path) inline. The wire rules for close codes and reasons are
``protocol.rules``'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import trio

from ..protocol.rules import sendable_code as sendable_code
from ..protocol.rules import truncate_reason as truncate_reason
from .base import SLOW_CONSUMER_CLOSE_CODE, HandshakeRequest, TaskStarter, TransportClosed

if TYPE_CHECKING:
    from collections.abc import Callable

#: The ``_idle`` of a transport that nobody has waited on yet: nothing ever parks here (the
#: first ``_drain`` that must wait gives its transport a lot of its own), so unparking it is
#: a no-op, and an idle transport carries no parking lot.
_NO_WAITERS = trio.lowlevel.ParkingLot()

#: The ``_stream_closed`` of a transport whose stream was closed before anyone waited.
STREAM_CLOSED = trio.Event()
STREAM_CLOSED.set()


class State(Enum):
    OPEN = "open"
    """Messages flow both ways."""
    CLOSING = "closing"
    """A close is queued or sent (ours or our echo); sends are ignored."""
    CLOSED = "closed"
    """The stream is closed."""


class ClosedBy(Enum):
    """Who decided the close that ``receive`` reports."""

    LOCAL = "local"
    """Our ``close``: the core or the application."""
    OVERFLOW = "overflow"
    """Our 4100: the peer stopped reading and the outbound buffer overflowed."""
    PEER = "peer"
    """The peer's close frame."""
    PROTOCOL = "protocol"
    """The peer broke the protocol and we failed the connection (1002, 1007, 1009)."""
    NETWORK = "network"
    """No close frame: the stream ended or broke, or ``aclose`` (1006)."""


@dataclass(frozen=True, slots=True)
class CloseState:
    """The close state of a transport: its phase and the close decided (``None`` while open)."""

    state: State
    code: int | None = None
    reason: str = ""
    by: ClosedBy | None = None

    def closing(self, code: int, reason: str, by: ClosedBy) -> CloseState:
        """OPEN → CLOSING, deciding the close (only while open)."""
        assert self.state is State.OPEN, self
        return CloseState(State.CLOSING, code, reason, by)

    def closed(self) -> CloseState:
        """→ CLOSED; the close decided earlier stands, else 1006 (no close frame)."""
        if self.by is None:
            return CloseState(State.CLOSED, 1006, "", ClosedBy.NETWORK)
        return CloseState(State.CLOSED, self.code, self.reason, self.by)

    def closed_with(self, code: int, reason: str, by: ClosedBy) -> CloseState:
        """→ CLOSED, deciding ``code``/``reason`` unless a close was decided before."""
        if self.by is None:
            return CloseState(State.CLOSED, code, reason, by)
        return self.closed()

    def exception(self) -> TransportClosed:
        """What ``receive`` raises in this state (1006 if nothing was decided)."""
        return TransportClosed(1006 if self.code is None else self.code, self.reason)


#: The close state of every open transport (shared: it carries no decision).
OPEN = CloseState(State.OPEN)


class Wakeup:
    """The writer's doorbell: a reusable ``trio.Event`` for one waiting task.

    ``set`` wakes the task in ``wait``, or, if none is waiting, makes the next ``wait`` return
    at once; ``wait`` clears it on return. One small object per transport instead of a new
    ``Event`` (and its set of waiters) for every wake-up. ``starter``, if given, is called
    (once) by the first ``set`` that finds no task waiting: it starts the waiting task.
    """

    __slots__ = ("_flag", "_task", "starter")

    def __init__(self) -> None:
        self._flag = False
        self._task: trio.lowlevel.Task | None = None
        self.starter: Callable[[], None] | None = None

    @property
    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
        elif self.starter is not None:
            starter = self.starter
            self.starter = None
            starter()

    async def wait(self) -> None:
        """Return once ``set`` has been called (a checkpoint either way)."""
        if self._flag:
            await trio.lowlevel.checkpoint()
        else:
            assert self._task is None, "one task waits at a time"
            self._task = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        self._flag = False


class OutboundTransport:
    """The close state and the writer of a transport (see the module docstring)."""

    __slots__ = (
        "_close",
        "_close_timeout_s",
        "_idle",
        "_max_buffer_bytes",
        "_request",
        "_send_deadline",
        "_send_scope",
        "_sending",
        "_wake",
        "_writer_nursery",
    )

    def __init__(
        self, request: HandshakeRequest, *, max_buffer_bytes: int, close_timeout_s: float
    ) -> None:
        self._request = request
        self._max_buffer_bytes = max_buffer_bytes
        self._close_timeout_s = close_timeout_s
        self._close = OPEN
        self._sending = False
        self._send_deadline = math.inf
        self._send_scope: trio.CancelScope | None = None
        self._wake = Wakeup()
        self._idle = _NO_WAITERS  # see _NO_WAITERS
        self._writer_nursery: TaskStarter | None = None

    @property
    def request(self) -> HandshakeRequest:
        """The upgrade request this connection was accepted with."""
        return self._request

    @property
    def close_state(self) -> CloseState:
        """The phase and the close decided (see the module docstring)."""
        return self._close

    @property
    def closed(self) -> bool:
        """True once closing has begun (by either side): sends are ignored from then on."""
        return self._close.state is not State.OPEN

    @property
    def close_code(self) -> int | None:
        """The close code ``receive`` reports (``None`` while open)."""
        return self._close.code

    def _queued(self) -> bool:
        """True while anything is queued and not yet handed to the stream."""
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def run_writer(self) -> None:
        """Flush whenever something is queued; return (never raise) once closed.

        Cancellation leaves the transport as ``flush`` documents.
        """
        while self._close.state is not State.CLOSED:
            await self._wake.wait()
            await self.flush()

    def start_writer_in(self, nursery: TaskStarter) -> None:
        """Start ``run_writer`` in ``nursery`` when it is first needed, instead of now: when
        something is queued that the socket did not take at once, or a pong or an overflow
        needs writing. A connection whose writes all go out at once (replies written by the
        reading task, pings by the server's heartbeat) never has a writer task; a close
        writes its own frame (``close``, ``aclose``)."""
        self._writer_nursery = nursery
        if self._wake.is_set:
            self._start_writer()
        else:
            self._wake.starter = self._start_writer

    def _start_writer(self) -> None:
        nursery = self._writer_nursery
        self._writer_nursery = None
        # A local close or the peer's writes its frame itself; an overflow needs the writer.
        if nursery is not None and (self._close.state is State.OPEN or self._abort_after_flush):
            nursery.start_soon(self.run_writer)

    async def _drain(self) -> None:
        """Wait until everything queued is written (or the stream is closed)."""
        while (self._queued() or self._sending) and self._close.state is not State.CLOSED:
            if self._sending:
                if self._idle is _NO_WAITERS:
                    self._idle = trio.lowlevel.ParkingLot()
                await self._idle.park()
            else:
                await self.flush()

    def _slow_consumer(self) -> None:
        """The overflow policy, once the subclass has dropped its normal queue: close 4100,
        ignore later sends, give the write in flight ``close_timeout_s``, then abort."""
        self._close = self._close.closing(
            SLOW_CONSUMER_CLOSE_CODE, "Slow consumer", ClosedBy.OVERFLOW
        )
        self._send_deadline = trio.current_time() + self._close_timeout_s
        if self._send_scope is not None:
            self._send_scope.deadline = self._send_deadline
        self._wake.set()

    @property
    def _abort_after_flush(self) -> bool:
        """After an overflow, the stream is closed once the write in flight ends."""
        return self._close.by is ClosedBy.OVERFLOW
