"""What a ``ServerSocket`` needs from the server that accepted it: the ``SocketHost`` interface.

The socket module depends on this protocol, never on ``server.py`` (which constructs sockets),
so the two have no import circle and a socket never reaches into the server's private state.
``Server`` implements it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..auth import AuthEngine
from ..brokers.base import Broker, DistributedBroker
from ..config import ServerConfig
from ..middleware import MiddlewareRegistry
from ..protocol.events import Fault

if TYPE_CHECKING:
    from .socket import ServerSocket

__all__ = ["HandlerEntry", "RenewalHook", "SocketHost"]

#: A registered handler and whether it is ``async`` (it then runs in a task of its own).
HandlerEntry = tuple[Callable[..., Any], bool]
#: ``hook(socket, auth_token)``: a fresh token payload (or an awaitable of one), or ``None``.
RenewalHook = Callable[["ServerSocket", dict[str, Any]], Any]


class SocketHost(Protocol):
    """The server as its sockets see it."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def auth(self) -> AuthEngine: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def distributed_broker(self) -> DistributedBroker | None:
        """The broker again when it is distributed (subscribe waits for it), else ``None``."""
        ...

    @property
    def middleware(self) -> MiddlewareRegistry: ...

    @property
    def renewal_hook(self) -> RenewalHook | None: ...

    def now(self) -> float:
        """Wall-clock seconds for JWT claims (advancing with trio's clock)."""
        ...

    def handler_for(self, event: str) -> HandlerEntry | None:
        """The handler registered for custom event ``event``."""
        ...

    def emit_listener_event(self, event: str, *args: Any) -> None:
        """Call the application's listeners for a socket lifecycle event."""
        ...

    def register_socket(self, socket: ServerSocket) -> None:
        """The socket completed its handshake: list it in ``server.sockets``."""
        ...

    def forget_socket(self, socket: ServerSocket) -> bool:
        """The socket closed: unlist it; whether it was listed."""
        ...

    def warn_client(self, fault: Fault, message: str, *args: Any) -> None:
        """Log a warning a client caused, rate-limited per ``fault`` (no traceback)."""
        ...
