"""Frozen server settings, with units in the names.

Defaults follow the reference servers except where the reference is unsafe:

* ``max_payload_bytes`` is 16 MiB (the reference allows 100 MiB): an inbound message over it
  closes the socket with 1009.
* ``max_buffer_bytes`` (8 MiB): a socket whose unsent outbound data exceeds it (a client that
  stopped reading) is closed with 4100 and its buffer dropped.
* ``origins`` are matched exactly on host:port (the reference's substring match is a bug).

Also the names of the environment variables the package reads, each spelled here once
(``AUTH_KEY_ENV`` is read by the command line only; ``CLUSTER_KEY_ENV`` by
``resolve_cluster_key``), and the rules for keys handed over from outside the application
(``check_hs256_key``).

Pure: no I/O, clock or randomness (the environment is a parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from .errors import InvalidOptionsError
from .limits import AdmissionLimits

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "AUTH_KEY_ENV",
    "CLUSTER_KEY_ENV",
    "KEY_RECIPE",
    "MIN_HS256_KEY_BYTES",
    "ServerConfig",
    "check_hs256_key",
    "resolve_cluster_key",
]

#: The HS256 auth key of ``trio-socketcluster serve`` (when there is no ``--auth-key-file``).
AUTH_KEY_ENV: Final = "TRIO_SOCKETCLUSTER_AUTH_KEY"
#: The key the Redis bus is signed with (else derived from the HS256 auth key).
CLUSTER_KEY_ENV: Final = "TRIO_SOCKETCLUSTER_CLUSTER_KEY"
#: RFC 7518 section 3.2: a key used with HS256 must be at least 256 bits.
MIN_HS256_KEY_BYTES: Final = 32
#: How to make a good key (shown when one is refused).
KEY_RECIPE: Final = (
    'python -c "import secrets; print(secrets.token_hex(32))" > auth.key && chmod 600 auth.key'
)


def check_hs256_key(key: str, *, source: str) -> str:
    """``key`` (already stripped), or ``InvalidOptionsError`` saying why it is refused and how
    to make a good one. ``source`` names where it came from, for the message."""
    if not key:
        raise InvalidOptionsError(f"{source} is empty; make a key with: {KEY_RECIPE}")
    size = len(key.encode("utf-8"))
    if size < MIN_HS256_KEY_BYTES:
        raise InvalidOptionsError(
            f"{source} holds a {size}-byte key; an HS256 key must be at least "
            f"{MIN_HS256_KEY_BYTES} bytes (RFC 7518 section 3.2); make one with: {KEY_RECIPE}"
        )
    return key


def resolve_cluster_key(
    environ: Mapping[str, str], auth_key: str | bytes | None
) -> str | bytes | None:
    """The key the Redis bus is signed with: ``$TRIO_SOCKETCLUSTER_CLUSTER_KEY``, else the
    HS256 ``auth_key``, else ``None`` (no shared key: a Redis broker cannot work)."""
    return environ.get(CLUSTER_KEY_ENV) or auth_key or None


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
    """Clock tolerance for ``exp``/``nbf``; feeds the ``AuthEngine`` the server builds (with
    ``Server(auth=engine)`` the engine's own ``leeway_s`` holds, and a different value here is
    refused). Read it as ``server.auth.leeway_s``."""
    renew_before_s: float | None = None
    """When set, the renewal hook is called this many seconds before a token expires."""
    shutdown_timeout_s: float = 5.0
    gc_freeze: bool = True
    """While serving, freeze what survives the garbage collector's middle and full
    collections, so that later ones walk only newer objects, and pace young collections from
    the heartbeat (see ``trio_socketcluster.collector``; docs/operations.md)."""
    metrics: bool = False
    """Serve ``GET /metrics`` (Prometheus text) on the WebSocket port. Prefer
    ``metrics_port`` for a server the public can reach."""
    metrics_port: int | None = None
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on a port of their own (0 picks one),
    bound to ``metrics_host``, beside the WebSocket port (``serve``/``serve_listeners``)."""
    metrics_host: str = "127.0.0.1"
    health_checks: bool = True
    """Answer ``GET /healthz`` (200 while the process runs) and ``GET /readyz`` (200 while
    accepting connections, 503 once draining) on the WebSocket port."""
    max_connections: int | None = None
    """Refuse upgrades (HTTP 503 with ``Retry-After``) while this many connections are open."""
    handshake_rate_per_s: float | None = None
    """Accept at most this many upgrades per second overall (a token bucket; see ``limits``),
    refusing the rest with 503 and ``Retry-After``."""
    handshake_burst: float | None = None
    """The overall bucket's capacity (default: one second's worth, at least 1)."""
    per_address_rate_per_s: float | None = None
    """The same, per client address (the TCP peer: behind a proxy, the proxy's address)."""
    per_address_burst: float | None = None

    @property
    def admission_limits(self) -> AdmissionLimits:
        """The limits ``limits.Admission`` enforces at the upgrade."""
        return AdmissionLimits(
            max_connections=self.max_connections,
            handshake_rate_per_s=self.handshake_rate_per_s,
            handshake_burst=self.handshake_burst,
            per_address_rate_per_s=self.per_address_rate_per_s,
            per_address_burst=self.per_address_burst,
        )

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
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise InvalidOptionsError("metrics_port must be in 0..65535 (0 picks a free port)")
        self.admission_limits  # noqa: B018  (validates the limits)
