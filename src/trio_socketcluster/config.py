"""Frozen server settings, with units in the names.

Defaults follow the reference servers except where the reference is unsafe:

* ``max_payload_bytes`` is 16 MiB (the reference allows 100 MiB): an inbound message over it
  closes the socket with 1009.
* ``max_buffer_bytes`` (8 MiB): a socket whose unsent outbound data exceeds it (a client that
  stopped reading) is closed with 4100 and its buffer dropped.
* ``origins`` are matched exactly on host:port (the reference's substring match is a bug).

Pure: no I/O, clock or randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import InvalidOptionsError

__all__ = ["ServerConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    path: str = "/socketcluster/"
    origins: str | tuple[str, ...] = "*:*"
    protocol: Literal["auto", 1, 2] = "auto"
    """``auto`` detects each client's protocol from its first pong (see docs/protocol.md)."""
    ping_interval_s: float = 8.0
    ping_timeout_s: float = 20.0
    handshake_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    max_payload_bytes: int = 16 * 2**20
    max_buffer_bytes: int = 8 * 2**20
    allow_client_publish: bool = True
    socket_channel_limit: int | None = None
    max_concurrent_handlers: int = 64
    """Async handlers run concurrently per socket up to this many; then reading pauses."""
    auth_key: str | bytes | None = None
    auth_private_key: str | bytes | None = None
    auth_public_key: str | bytes | None = None
    auth_algorithm: str | None = None
    auth_verify_algorithms: tuple[str, ...] | None = None
    auth_default_expiry_s: float | None = 86400
    auth_leeway_s: float = 0
    renew_before_s: float | None = None
    """When set, the renewal hook is called this many seconds before a token expires."""
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise InvalidOptionsError("path must start with '/'")
        if self.ping_interval_s <= 0 or self.ping_timeout_s <= self.ping_interval_s:
            raise InvalidOptionsError(
                "ping_timeout_s must be greater than ping_interval_s (clients reset their "
                "timer only on pings)"
            )
        if self.protocol not in ("auto", 1, 2):
            raise InvalidOptionsError("protocol must be 'auto', 1 or 2")
        if self.max_payload_bytes <= 0 or self.max_buffer_bytes <= 0:
            raise InvalidOptionsError("size limits must be positive")
        if self.socket_channel_limit is not None and self.socket_channel_limit < 0:
            raise InvalidOptionsError("socket_channel_limit must be >= 0")
        if (self.auth_private_key is None) != (self.auth_public_key is None):
            raise InvalidOptionsError("auth_private_key and auth_public_key go together")
        if self.max_concurrent_handlers < 1:
            raise InvalidOptionsError("max_concurrent_handlers must be >= 1")
