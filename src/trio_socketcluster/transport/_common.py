"""What both transports (``transport.ws`` and ``transport.trio_websocket``) share: the close
state, the wire rules for close codes and reasons, and the writer around an outbound queue.

``OutboundTransport`` owns the fields that are the same in both: ``_state`` (OPEN → CLOSING →
CLOSED) and ``_close`` (the first ``TransportClosed`` decided, ours or the peer's), the writer
flags (one flush at a time: ``_sending``; ``_wake`` for ``run_writer``; ``_idle`` for ``_drain``)
and the overflow bookkeeping (the write in flight gets ``close_timeout_s``, then the stream is
closed). What is queued, and how it is written, is the subclass's: it implements ``flush`` and
``_queued`` and keeps its own ``send`` (the hot path) inline.
"""

from __future__ import annotations

import math
from enum import Enum

import trio

from ..protocol.rules import sendable_code as sendable_code
from ..protocol.rules import truncate_reason as truncate_reason
from .base import SLOW_CONSUMER_CLOSE_CODE, HandshakeRequest, TransportClosed

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


class Wakeup:
    """The writer's doorbell: a reusable ``trio.Event`` for one waiting task.

    ``set`` wakes the task in ``wait``, or, if none is waiting, makes the next ``wait`` return
    at once; ``wait`` clears it on return. One small object per transport instead of a new
    ``Event`` (and its set of waiters) for every wake-up.
    """

    __slots__ = ("_flag", "_task")

    def __init__(self) -> None:
        self._flag = False
        self._task: trio.lowlevel.Task | None = None

    def set(self) -> None:
        self._flag = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

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
        "_abort_after_flush",
        "_close",
        "_close_timeout_s",
        "_idle",
        "_max_buffer_bytes",
        "_request",
        "_send_deadline",
        "_send_scope",
        "_sending",
        "_state",
        "_wake",
    )

    def __init__(
        self, request: HandshakeRequest, *, max_buffer_bytes: int, close_timeout_s: float
    ) -> None:
        self._request = request
        self._max_buffer_bytes = max_buffer_bytes
        self._close_timeout_s = close_timeout_s
        self._state = State.OPEN
        self._close: TransportClosed | None = None
        self._sending = False
        self._send_deadline = math.inf
        self._send_scope: trio.CancelScope | None = None
        self._abort_after_flush = False
        self._wake = Wakeup()
        self._idle = _NO_WAITERS  # see _NO_WAITERS

    @property
    def request(self) -> HandshakeRequest:
        """The upgrade request this connection was accepted with."""
        return self._request

    @property
    def closed(self) -> bool:
        """True once closing has begun (by either side): sends are ignored from then on."""
        return self._state is not State.OPEN

    @property
    def close_code(self) -> int | None:
        """The close code ``receive`` reports (``None`` while open)."""
        return None if self._close is None else self._close.code

    def _queued(self) -> bool:
        """True while anything is queued and not yet handed to the stream."""
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def run_writer(self) -> None:
        """Flush whenever something is queued; return (never raise) once closed.

        Cancellation leaves the transport as ``flush`` documents.
        """
        while self._state is not State.CLOSED:
            await self._wake.wait()
            await self.flush()

    async def _drain(self) -> None:
        """Wait until everything queued is written (or the stream is closed)."""
        while (self._queued() or self._sending) and self._state is not State.CLOSED:
            if self._sending:
                if self._idle is _NO_WAITERS:
                    self._idle = trio.lowlevel.ParkingLot()
                await self._idle.park()
            else:
                await self.flush()

    def _slow_consumer(self) -> None:
        """The overflow policy, once the subclass has dropped its normal queue: close 4100,
        ignore later sends, give the write in flight ``close_timeout_s``, then abort."""
        self._set_close(SLOW_CONSUMER_CLOSE_CODE, "Slow consumer")
        self._state = State.CLOSING
        self._abort_after_flush = True
        self._send_deadline = trio.current_time() + self._close_timeout_s
        if self._send_scope is not None:
            self._send_scope.deadline = self._send_deadline
        self._wake.set()

    def _set_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = TransportClosed(code, reason)

    def _closed_exc(self) -> TransportClosed:
        c = self._close
        return TransportClosed(1006) if c is None else TransportClosed(c.code, c.reason)
