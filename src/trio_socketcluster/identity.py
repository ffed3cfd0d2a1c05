"""External identity providers (the I/O half; the rules are in ``oidc``), and the verifier
that accepts the server's own tokens beside theirs.

* ``IdentityProvider(config)``: fetches the provider's JWKS (from ``jwks_url``, or the URL
  OIDC discovery names) over HTTP with httpx (Trio-native through anyio), caches the keys,
  and refetches when a token names an unknown ``kid`` -- at most once per
  ``refetch_interval_s`` (10 s), whatever the tokens say, successful fetch or not, so
  garbage tokens cannot make the server hammer the provider. The interval is measured on
  trio's clock (``MockClock`` controls it in tests). A key the provider rotates in is thus
  accepted at most ``refetch_interval_s`` after it first appears in a token.
* ``TokenVerifier(engine, providers)``: the server's own ``AuthEngine`` first; a token the
  engine refuses for its algorithm or signature, whose (unverified) ``iss`` is exactly a
  configured provider's issuer, goes to that provider. The result says who vouched for it
  (``VerifiedToken.issuer``: ``None`` for the server's own key).

Errors: the ``AuthEngine``'s (``AuthTokenInvalidError`` and friends). When a provider's
keys could never be fetched, ``AuthTokenError`` with ``isBadToken: false`` (the client
keeps its token and can present it again).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import trio

from .errors import AuthTokenError, AuthTokenInvalidError, InvalidOptionsError
from .oidc import (
    ProviderConfig,
    ProviderKeys,
    discovery_url,
    jwks_uri_from_discovery,
    unknown_kid,
    unverified_claims,
    verify_with_keys,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .auth import AuthEngine

__all__ = ["IdentityProvider", "TokenVerifier", "VerifiedToken"]

log = logging.getLogger("trio_socketcluster.identity")


class _FetchError(Exception):
    pass


class IdentityProvider:
    """Verifies the tokens of one external identity provider (see ``ProviderConfig``).

    ``fetches`` counts HTTP fetch attempts of the key set (discovery included in the
    attempt that needed it). No background task: fetching happens inside ``verify``.
    """

    def __init__(self, config: ProviderConfig) -> None:
        if not isinstance(config, ProviderConfig):
            raise InvalidOptionsError("config must be a ProviderConfig")
        self.config = config
        self.fetches = 0
        self._keys: ProviderKeys | None = None
        self._jwks_url = config.jwks_url
        self._last_attempt: float | None = None
        self._lock = trio.Lock()

    @property
    def issuer(self) -> str:
        return self.config.issuer

    @property
    def keys(self) -> ProviderKeys | None:
        """The key set in use (``None`` before the first successful fetch)."""
        return self._keys

    async def verify(self, token: object, *, now: float) -> dict[str, Any]:
        """The claims of a valid token of this provider at ``now`` (seconds since the epoch).

        May fetch the key set first (first use; unknown ``kid`` and the interval allows).
        Raises only ``AuthTokenError``s. Cancellation during a fetch leaves the old key set.
        """
        keys = self._keys
        if keys is None or unknown_kid(token, keys) is not None:
            keys = await self._refresh_if_allowed(token)
        if keys is None:
            raise AuthTokenError("the identity provider's keys are unavailable", is_bad_token=False)
        return verify_with_keys(token, keys, self.config, now=now)

    async def _refresh_if_allowed(self, token: object) -> ProviderKeys | None:
        async with self._lock:
            # Another task may have fetched while this one waited for the lock.
            keys = self._keys
            if keys is not None and unknown_kid(token, keys) is None:
                return keys
            last = self._last_attempt
            if last is not None and trio.current_time() - last < self.config.refetch_interval_s:
                return keys
            self._last_attempt = trio.current_time()
            self.fetches += 1
            try:
                self._keys = await self._fetch()
            except _FetchError as exc:
                log.warning("fetching the keys of %s failed: %s", self.config.issuer, exc)
            return self._keys

    async def refresh(self) -> ProviderKeys:
        """Fetch the key set now, whatever the interval (``_FetchError`` wrapped as
        ``OSError`` on failure). For start-up checks and tools."""
        async with self._lock:
            self._last_attempt = trio.current_time()
            self.fetches += 1
            try:
                self._keys = await self._fetch()
            except _FetchError as exc:
                raise OSError(str(exc)) from exc
            return self._keys

    async def _fetch(self) -> ProviderKeys:
        config = self.config
        try:
            with trio.fail_after(config.http_timeout_s * 2):
                async with httpx.AsyncClient(
                    timeout=config.http_timeout_s,
                    follow_redirects=False,
                    trust_env=config.trust_env,
                ) as client:
                    if self._jwks_url is None:
                        document = await self._get_json(client, discovery_url(config.issuer))
                        self._jwks_url = jwks_uri_from_discovery(document, config.issuer)
                    jwks = await self._get_json(client, self._jwks_url)
        except (trio.TooSlowError, httpx.HTTPError, ValueError) as exc:
            raise _FetchError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return ProviderKeys.from_jwks(jwks, config)
        except ValueError as exc:
            raise _FetchError(str(exc)) from exc

    async def _get_json(self, client: httpx.AsyncClient, url: str) -> Any:
        limit = self.config.max_document_bytes
        async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise ValueError(f"GET {url}: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ValueError(f"GET {url}: larger than {limit} bytes")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"GET {url}: not JSON") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedToken:
    """A verified token's claims and who vouched for them: ``issuer`` is the provider's
    issuer, or ``None`` for the server's own key."""

    claims: dict[str, Any]
    issuer: str | None


class TokenVerifier:
    """The server's ``AuthEngine`` and any number of ``IdentityProvider``s (distinct
    issuers), as one ``verify``."""

    def __init__(self, engine: AuthEngine, providers: Sequence[IdentityProvider] = ()) -> None:
        by_issuer: dict[str, IdentityProvider] = {}
        for provider in providers:
            if provider.issuer in by_issuer:
                raise InvalidOptionsError(f"two identity providers for {provider.issuer!r}")
            by_issuer[provider.issuer] = provider
        self.engine = engine
        self.providers: Mapping[str, IdentityProvider] = by_issuer

    async def verify(self, token: object, *, now: float) -> VerifiedToken:
        """Verify with the server's key, else with the provider the token's ``iss`` names.

        Raises only ``AuthTokenError``s: the provider's error for tokens routed to it, else
        the engine's. Not a checkpoint unless a provider is asked.
        """
        try:
            return VerifiedToken(claims=self.engine.verify(token, now=now), issuer=None)
        except AuthTokenInvalidError as exc:
            if not self.providers or exc.message not in ("invalid algorithm", "invalid signature"):
                raise
            claims = unverified_claims(token)
            iss = claims.get("iss") if claims is not None else None
            provider = self.providers.get(iss) if isinstance(iss, str) else None
            if provider is None:
                raise
        return VerifiedToken(claims=await provider.verify(token, now=now), issuer=provider.issuer)
