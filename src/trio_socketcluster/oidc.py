"""The pure rules for tokens of an external identity provider (OpenID Connect / any JWKS
issuer): its settings, its key set, and the checks a token must pass.

What it owns:

* ``ProviderConfig``: issuer, audience, where the keys are (a JWKS URL, or OIDC discovery
  from ``<issuer>/.well-known/openid-configuration``), the asymmetric algorithms allowed
  (RS256 and ES256 by default; never ``HS*``, never ``none``), the refetch interval and the
  HTTP limits.
* ``ProviderKeys.from_jwks``: the usable public keys of a JWKS document, as a verify-only
  ``AuthEngine``. Only RSA (>= 2048 bits), EC (P-256/384/521) and OKP keys are taken, and only
  their public members: ``oct`` (symmetric) keys, keys for another ``use``/``key_ops``, keys
  whose ``alg`` is not allowed and keys with a duplicate ``kid`` are skipped.
* ``verify_with_keys(token, keys, config, now)``: the engine's checks (size, structure,
  algorithm allow-list, ``crit``, ``kid``, signature, ``nbf``/``exp`` with leeway: see
  ``auth``), then ``exp`` required, ``iss`` equal to the issuer and ``aud`` equal to (or a
  list containing) the audience. Comparisons are exact string equality (RFC 8725 §3.8-3.9):
  a list-valued ``iss``, a prefix or a case variant never matches.
* ``unknown_kid(token, keys)``: the ``kid`` a token names that the key set lacks (the
  provider may have rotated a key in: the I/O layer refetches, rate-limited).

Headers that point at keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are never followed nor
trusted: keys come only from the configured JWKS, selected by ``kid``.

Errors are the ``AuthEngine``'s: ``AuthTokenInvalidError`` (bad token) with jsonwebtoken's
messages, ``AuthTokenExpiredError``, ``AuthTokenNotBeforeError``.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from .auth import AuthEngine, Keyring
from .errors import AuthTokenError, AuthTokenInvalidError, InvalidOptionsError

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ProviderConfig",
    "ProviderKeys",
    "check_claims",
    "discovery_url",
    "jwks_uri_from_discovery",
    "unknown_kid",
    "unverified_claims",
    "unverified_header",
    "verify_with_keys",
]

DEFAULT_ALGORITHMS: Final = ("RS256", "ES256")
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_PUBLIC_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}
_FITS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
_MAX_KEYS: Final = 100
_Loaded = tuple[Keyring, str | None, set[str]]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderConfig:
    """One external identity provider.

    ``issuer`` and ``audience`` are compared exactly with the token's ``iss``/``aud``.
    ``jwks_url`` is where the keys are; ``None`` means OIDC discovery (the issuer's
    ``/.well-known/openid-configuration``, whose ``issuer`` must equal ``issuer``).
    ``refetch_interval_s`` bounds key fetches (an unknown ``kid`` refetches at most that
    often); ``http_timeout_s`` bounds each fetch; ``max_document_bytes`` each response.
    ``leeway_s`` is the clock tolerance for ``exp``/``nbf``. Raises ``InvalidOptionsError``.
    """

    issuer: str
    audience: str
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_s: float = 0.0
    refetch_interval_s: float = 10.0
    http_timeout_s: float = 5.0
    max_document_bytes: int = 512 * 1024
    max_token_bytes: int = 8192
    trust_env: bool = field(default=True)  #: use the HTTP(S)_PROXY environment variables

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise InvalidOptionsError("issuer must be a non-empty string")
        if not isinstance(self.audience, str) or not self.audience:
            raise InvalidOptionsError("audience must be a non-empty string")
        if self.jwks_url is not None:
            _check_url(self.jwks_url, "jwks_url")
        else:
            _check_url(self.issuer, "issuer (for discovery)")
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise InvalidOptionsError("algorithms must be a non-empty sequence of names")
        for name in self.algorithms:
            if name not in ASYMMETRIC_ALGORITHMS:
                raise InvalidOptionsError(
                    f"Algorithm {name!r} is not allowed for an identity provider "
                    f"(asymmetric only: {', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
                )
        for name in ("leeway_s", "refetch_interval_s", "http_timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise InvalidOptionsError(f"{name} must be a finite number >= 0")
        if not self.http_timeout_s > 0:
            raise InvalidOptionsError("http_timeout_s must be > 0")
        for name in ("max_document_bytes", "max_token_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 16:
                raise InvalidOptionsError(f"{name} must be an int >= 16")


def _check_url(url: object, what: str) -> None:
    if not isinstance(url, str):
        raise InvalidOptionsError(f"{what} must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidOptionsError(f"{what} must be an http(s) URL: {url!r}")


def discovery_url(issuer: str) -> str:
    """``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery §4)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def jwks_uri_from_discovery(document: object, issuer: str) -> str:
    """The ``jwks_uri`` of a discovery document whose ``issuer`` is exactly ``issuer``
    (Discovery §4.3). ``ValueError`` otherwise."""
    if not isinstance(document, Mapping):
        raise ValueError("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise ValueError(f"the discovery document's issuer is not {issuer!r}")
    uri = document.get("jwks_uri")
    try:
        _check_url(uri, "jwks_uri")
    except InvalidOptionsError as exc:
        raise ValueError(str(exc)) from None
    assert isinstance(uri, str)
    return uri


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True)
class ProviderKeys:
    """The usable keys of one JWKS document: a verify-only engine (``None`` if no key was
    usable), the kids it knows, and how many keys were skipped."""

    engine: AuthEngine | None
    kids: frozenset[str]
    skipped: int

    @classmethod
    def from_jwks(cls, document: object, config: ProviderConfig) -> ProviderKeys:
        """The keys of a JWKS document (``{"keys": [...]}``); ``ValueError`` if it is not
        one. Unusable keys are skipped (counted), never an error: one odd key must not lock
        out the others."""
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise ValueError('a JWKS must be a JSON object with a "keys" list')
        taken: list[tuple[Keyring, set[str]]] = []
        kids: set[str] = set()
        anonymous = False
        skipped = max(0, len(document["keys"]) - _MAX_KEYS)
        for jwk in document["keys"][:_MAX_KEYS]:
            loaded = _load_jwk(jwk, config.algorithms)
            if loaded is None:
                skipped += 1
                continue
            single, kid, algs = loaded
            if kid is None:
                if anonymous:  # several kid-less keys: which one was meant is unknowable
                    skipped += 1
                    continue
                anonymous = True
            elif kid in kids:
                skipped += 1
                continue
            else:
                kids.add(kid)
            taken.append((single, algs))
        if not taken:
            return cls(None, frozenset(), skipped)
        keyring, first_algs = taken[0]
        fitting = set(first_algs)
        for single, algs in taken[1:]:
            keyring = single.rotated(keyring)  # the first key stays the keyring's first
            fitting |= algs
        allowed = [a for a in config.algorithms if a in fitting]
        engine = AuthEngine(
            keyring,
            # An engine needs a "signing" algorithm that fits its first key; it never signs.
            algorithm=next(a for a in allowed if a in first_algs),
            verify_algorithms=allowed,
            default_expiry_s=None,
            leeway_s=config.leeway_s,
            max_token_bytes=config.max_token_bytes,
        )
        return cls(engine, frozenset(kids), skipped)


def _load_jwk(jwk: object, algorithms: Sequence[str]) -> _Loaded | None:
    """A one-key verify-only keyring for a JWK, its kid and the allowed algorithms it fits;
    ``None`` if the key is not usable for signature verification here."""
    if not isinstance(jwk, Mapping):
        return None
    kty = jwk.get("kty")
    # "oct" (symmetric) and unknown key types are never keys here.
    if not isinstance(kty, str) or kty not in _FITS:
        return None
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        return None
    if "use" in jwk and jwk["use"] != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    algs = {a for a in _FITS[kty] if a in algorithms}
    if "alg" in jwk:
        algs &= {jwk["alg"]} if isinstance(jwk["alg"], str) else set()
    if not algs:
        return None
    try:
        public = {m: jwk[m] for m in _PUBLIC_MEMBERS[kty]}
        key: RSAKey | ECKey | OKPKey
        if kty == "RSA":
            key = RSAKey.import_key(public)
        elif kty == "EC":
            key = ECKey.import_key(public)
        else:
            key = OKPKey.import_key(public)
        keyring = Keyring.asymmetric(None, key.as_pem(private=False), kid=kid)
    except (KeyError, TypeError, ValueError, JoseError, InvalidOptionsError):
        return None
    if kty == "EC":  # the curve decides the one ES algorithm that fits
        algs &= {
            {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(jwk.get("crv")), "")
        }
    elif kty == "OKP" and jwk.get("crv") not in ("Ed25519", "Ed448"):
        return None
    return (keyring, kid, algs) if algs else None


# ---------------------------------------------------------------------------------------------
# Tokens


def _segment(token: object, index: int) -> Any:
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    text = parts[index]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):
        return None


def unverified_header(token: object) -> dict[str, Any] | None:
    """The JOSE header of a compact token *without checking anything*, or ``None``."""
    header = _segment(token, 0)
    return header if isinstance(header, dict) else None


def unverified_claims(token: object) -> dict[str, Any] | None:
    """The payload of a compact token *without checking anything* (for routing only)."""
    claims = _segment(token, 1)
    return claims if isinstance(claims, dict) else None


def unknown_kid(token: object, keys: ProviderKeys) -> str | None:
    """The ``kid`` the token's header names if the key set lacks it, else ``None``."""
    header = unverified_header(token)
    if header is None:
        return None
    kid = header.get("kid")
    if isinstance(kid, str) and kid not in keys.kids:
        return kid
    return None


def check_claims(claims: Mapping[str, Any], config: ProviderConfig) -> None:
    """``exp`` present, ``iss`` exactly the issuer, ``aud`` the audience or a list holding
    it; ``AuthTokenInvalidError`` (jsonwebtoken's messages) otherwise."""
    if not _is_number(claims.get("exp")):
        raise AuthTokenInvalidError("jwt exp required")
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss != config.issuer:
        raise AuthTokenInvalidError(f"jwt issuer invalid. expected: {config.issuer}")
    aud = claims.get("aud")
    if isinstance(aud, str):
        ok = aud == config.audience
    elif isinstance(aud, list):
        ok = any(isinstance(a, str) and a == config.audience for a in aud)
    else:
        ok = False
    if not ok:
        raise AuthTokenInvalidError(f"jwt audience invalid. expected: {config.audience}")


def verify_with_keys(
    token: object, keys: ProviderKeys, config: ProviderConfig, *, now: float
) -> dict[str, Any]:
    """The claims of a provider token valid at ``now``; raises only ``AuthTokenError``s.

    Signature and times first (the engine), then the claims: nothing of the payload is
    looked at before the signature verified.
    """
    if keys.engine is None:
        if token is None or token == "":
            raise AuthTokenInvalidError("jwt must be provided")
        raise AuthTokenInvalidError("invalid signature")
    claims = keys.engine.verify(token, now=now)
    try:
        check_claims(claims, config)
    except AuthTokenError:
        raise
    except Exception as exc:  # pragma: no cover - check_claims raises only the above
        raise AuthTokenError(str(exc)) from exc
    return claims
