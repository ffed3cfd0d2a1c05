"""The trio layer: the ``Server`` and the per-connection ``ServerSocket``."""

from .server import Server
from .socket import Reply, ServerSocket

__all__ = ["Reply", "Server", "ServerSocket"]
