"""The pure JWT auth engine: keys, signing and verification of SocketCluster auth tokens.

This module owns everything about auth tokens that does not need I/O:

* ``Keyring``: the immutable set of keys (one HMAC secret, or RSA / EC / Ed25519 / Ed448
  key pairs), which one signs, which ones verify (selected by ``kid``), and the public JWKS.
* ``AuthEngine``: ``sign(payload, now=...)`` and ``verify(token, now=...)`` with the exact
  behaviour and error messages of the reference server (``jsonwebtoken`` behind
  ``sc-auth``/``ag-auth``, protocol spec section 5).
* Helpers the server and clients share: ``is_expired``, ``expiry_of``, ``iso_date`` (JS
  ``Date.prototype.toISOString``) and ``decode_unverified``.

The cryptography is joserfc's (its JWS algorithm models and JWK key classes); the compact
serialisation is parsed here, strictly, so that every failure maps to the reference's error
and message and nothing but an ``AuthTokenError`` ever escapes ``verify``.

Verification order (same as ``jsonwebtoken.verify``; our additions marked *)::

    None / ""                         AuthTokenInvalidError  "jwt must be provided"
    not a str (int, bytes, dict ...)  AuthTokenError         "Invalid token format - Token must
                                                             be a string" (one line)
    * longer than max_token_bytes     AuthTokenInvalidError  "jwt too large"
    not exactly three "."-parts       AuthTokenInvalidError  "jwt malformed"
    empty signature segment           AuthTokenInvalidError  "jwt signature is required"
    header not base64url JSON object  AuthTokenInvalidError  "invalid token"
    alg not in the allow-list         AuthTokenInvalidError  "invalid algorithm"
    * crit header, non-string kid     AuthTokenInvalidError  "invalid token"
    * kid names none of our keys      AuthTokenInvalidError  "invalid signature"
    signature does not verify         AuthTokenInvalidError  "invalid signature"
    * payload not a JSON object       AuthTokenInvalidError  "jwt malformed"
    nbf not a number                  AuthTokenInvalidError  "invalid nbf value"
    now < nbf - leeway                AuthTokenNotBeforeError "jwt not active", date=ISO(nbf)
    exp not a number                  AuthTokenInvalidError  "invalid exp value"
    now >= exp + leeway               AuthTokenExpiredError  "jwt expired", expiry=ISO(exp)
    anything unexpected               AuthTokenError         (its message)

Notes on deliberate choices:

* ``max_token_bytes`` (default 8192) bounds the work an unauthenticated peer can cause; the
  reference has no such limit (its only bound is the WebSocket ``maxPayload``).
* The payload is parsed only *after* the signature verified; the header is parsed before
  (it names the algorithm). Base64url must be canonical (no padding, no stray bits), so no
  two different strings verify as the same token.
* ``jsonwebtoken`` compares ``floor(now)`` with the claims; we compare ``now`` itself. For
  integral claims and leeway (all tokens this engine signs) the results are identical.
* A ``kid`` is only ever compared with the kids of our own keys (never a path or a URL); a
  token without ``kid`` is tried against every key that fits its algorithm (that is how
  tokens signed before a rotation to a kid'd key keep verifying). ``jku``/``jwk``/``x5u``
  headers are ignored: keys come from the keyring only.
* A verifier accepts either HMAC algorithms or asymmetric ones, never both, never ``none``;
  an HMAC secret that is a PEM/SSH key is refused, so a public key can never act as one.

Pure: no I/O, no clock, no randomness; ``now`` (seconds since the epoch) and keys are
parameters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from .errors import (
    AuthError,
    AuthTokenError,
    AuthTokenExpiredError,
    AuthTokenInvalidError,
    AuthTokenNotBeforeError,
    InvalidOptionsError,
)

if TYPE_CHECKING:
    from joserfc.jwa import JWSAlgModel

__all__ = [
    "DEFAULT_EXPIRY_S",
    "DEFAULT_MAX_TOKEN_BYTES",
    "ISSUED_AT_US_CLAIM",
    "AuthEngine",
    "Keyring",
    "decode_unverified",
    "expiry_of",
    "is_expired",
    "iso_date",
]

#: ``authDefaultExpiry`` of the reference: tokens live one day unless told otherwise.
DEFAULT_EXPIRY_S: Final = 86400
#: Tokens longer than this are refused before any parsing ("jwt too large").
DEFAULT_MAX_TOKEN_BYTES: Final = 8192
#: The private claim ``sign(issued_at_us=...)`` sets: the issue instant in integer µs.
ISSUED_AT_US_CLAIM: Final = "iat_us"

_HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {
        "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512",
        "EdDSA", "Ed25519", "Ed448",
    }
)  # fmt: skip
_SUPPORTED_ALGORITHMS: Final = _HMAC_ALGORITHMS | _ASYMMETRIC_ALGORITHMS
_MIN_RSA_BITS: Final = 2048
# Text that marks a PEM / SSH / certificate key: such a thing must never be an HMAC secret.
_KEY_MARKERS: Final = (b"-----BEGIN ", b"---- BEGIN ", b"ssh-rsa ", b"ssh-dss ", b"ssh-ed25519 ")
_KEY_MARKER_PREFIXES: Final = (b"ecdsa-sha2-",)
# Public JWK members per key type; anything else (d, p, q, dp, dq, qi, oth, k ...) never leaves.
_PUBLIC_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}
# JS Date's range: +-8.64e15 ms around the epoch (ECMA-262 "Time Values and Time Range").
_JS_MAX_TIME_MS: Final = 8.64e15
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_JSON_SEPARATORS: Final = (",", ":")

_Key = OctKey | RSAKey | ECKey | OKPKey
_Kind = Literal["hmac", "asymmetric"]


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True, eq=False)
class _KeyEntry:
    """One key of a keyring: the key that verifies, and the one that signs (if any)."""

    kid: str | None
    verifier: _Key
    signer: _Key | None

    def fits(self, algorithm: str) -> bool:
        """Whether joserfc's model for ``algorithm`` accepts this key (type and curve)."""
        try:
            _model(algorithm).check_key(self.verifier)
        except JoseError:
            return False
        return True


class Keyring:
    """An immutable set of signing and verification keys.

    Build one with ``Keyring.symmetric`` (an HMAC secret, like the reference's ``authKey``)
    or ``Keyring.asymmetric`` (``authPrivateKey``/``authPublicKey``), and rotate with
    ``old.rotated(new)``: the newest key signs, every key verifies. A keyring holds either
    HMAC secrets or asymmetric keys, never both.
    """

    __slots__ = ("_entries", "_kind")

    def __init__(self, entries: Sequence[_KeyEntry], kind: _Kind) -> None:
        """Internal: use ``symmetric``, ``asymmetric`` and ``rotated``."""
        if not entries:
            raise InvalidOptionsError("A keyring needs at least one key")
        kids = [e.kid for e in entries if e.kid is not None]
        if len(kids) != len(set(kids)):
            raise InvalidOptionsError("Key ids (kid) in a keyring must be unique")
        self._entries: tuple[_KeyEntry, ...] = tuple(entries)
        self._kind: _Kind = kind

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def symmetric(cls, secret: str | bytes, *, kid: str | None = None) -> Keyring:
        """An HMAC keyring. A ``str`` secret is used as its UTF-8 bytes, as the reference does
        with its default random ``authKey`` (a 64-character hex *string*).

        Raises ``InvalidOptionsError`` for an empty secret or one that looks like a PEM, SSH
        or certificate key (asymmetric keys belong in ``Keyring.asymmetric``).
        """
        _check_kid(kid)
        if isinstance(secret, str):
            raw = secret.encode("utf-8", "surrogatepass")
        elif isinstance(secret, bytes | bytearray):
            raw = bytes(secret)
        else:
            raise InvalidOptionsError("The auth key must be a str or bytes")
        if not raw:
            raise InvalidOptionsError("The auth key must not be empty")
        if any(m in raw for m in _KEY_MARKERS) or raw.lstrip().startswith(_KEY_MARKER_PREFIXES):
            raise InvalidOptionsError(
                "The auth key looks like a PEM/SSH key; asymmetric keys must be given to "
                "Keyring.asymmetric, never used as an HMAC secret"
            )
        key = OctKey(raw, raw)
        return cls([_KeyEntry(kid=kid, verifier=key, signer=key)], "hmac")

    @classmethod
    def asymmetric(
        cls,
        private_pem: str | bytes | None,
        public_pem: str | bytes,
        *,
        kid: str | None = None,
    ) -> Keyring:
        """An RSA (>= 2048 bits), EC (P-256/384/521) or Ed25519/Ed448 keyring from PEM text.

        ``public_pem`` is a public key or an X.509 certificate; ``private_pem`` (unencrypted
        PKCS#8 or traditional PEM) may be ``None`` for a verify-only keyring, otherwise it
        must be the private half of ``public_pem``. Raises ``InvalidOptionsError``.
        """
        _check_kid(kid)
        public = _load_public(public_pem)
        verifier = _wrap_key(public, public_pem)
        signer: _Key | None = None
        if private_pem is not None:
            private = _load_private(private_pem)
            if _spki(private.public_key()) != _spki(public):
                raise InvalidOptionsError("The auth private key does not match the public key")
            signer = _wrap_key(private, private_pem)
        return cls([_KeyEntry(kid=kid, verifier=verifier, signer=signer)], "asymmetric")

    def rotated(self, newer: Keyring) -> Keyring:
        """A keyring where ``newer``'s signing key signs and all keys of both verify.

        Kids must stay unique, and HMAC and asymmetric keys cannot be mixed
        (``InvalidOptionsError``).
        """
        if newer._kind != self._kind:
            raise InvalidOptionsError("Cannot rotate between HMAC and asymmetric keys")
        return Keyring((*newer._entries, *self._entries), self._kind)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def is_symmetric(self) -> bool:
        """True for HMAC secrets, False for asymmetric key pairs."""
        return self._kind == "hmac"

    @property
    def can_sign(self) -> bool:
        """Whether the signing (newest) key has its private half."""
        return self._entries[0].signer is not None

    @property
    def signing_kid(self) -> str | None:
        """The ``kid`` put in the header of new tokens (``None``: no ``kid`` header)."""
        return self._entries[0].kid

    @property
    def kids(self) -> tuple[str | None, ...]:
        """The kids of all keys, newest first."""
        return tuple(e.kid for e in self._entries)

    def jwks(self) -> dict[str, Any]:
        """The public JWKS ``{"keys": [...]}``: public members only, never a secret.

        HMAC keyrings publish nothing (``{"keys": []}``).
        """
        keys: list[dict[str, Any]] = []
        if self._kind == "asymmetric":
            for entry in self._entries:
                full = entry.verifier.as_dict(private=False)
                jwk = {m: full[m] for m in _PUBLIC_MEMBERS[entry.verifier.key_type] if m in full}
                jwk["use"] = "sig"
                if entry.kid is not None:
                    jwk["kid"] = entry.kid
                keys.append(jwk)
        return {"keys": keys}

    def __repr__(self) -> str:
        return f"Keyring({self._kind}, kids={list(self.kids)!r}, can_sign={self.can_sign})"


def _check_kid(kid: object) -> None:
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise InvalidOptionsError("A kid must be a non-empty string")


def _pem_bytes(pem: object) -> bytes:
    if isinstance(pem, str):
        return pem.encode("utf-8")
    if isinstance(pem, bytes | bytearray):
        return bytes(pem)
    raise InvalidOptionsError("A PEM key must be a str or bytes")


_PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _load_public(pem: object) -> _PublicKey:
    data = _pem_bytes(pem)
    try:
        loaded: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            loaded = x509.load_pem_x509_certificate(data).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise InvalidOptionsError("The auth public key is not a PEM public key") from exc
    if not isinstance(loaded, _PublicKey):
        raise InvalidOptionsError("The auth public key must be an RSA, EC or Ed25519/Ed448 key")
    _check_strength(loaded)
    return loaded


def _load_private(pem: object) -> _PrivateKey:
    data = _pem_bytes(pem)
    try:
        loaded: object = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidOptionsError(
            "The auth private key is not an unencrypted PEM private key"
        ) from exc
    if not isinstance(loaded, _PrivateKey):
        raise InvalidOptionsError("The auth private key must be an RSA, EC or Ed25519/Ed448 key")
    return loaded


def _check_strength(key: _PublicKey) -> None:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise InvalidOptionsError(f"RSA auth keys must have at least {_MIN_RSA_BITS} bits")
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(
        key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1
    ):
        raise InvalidOptionsError("EC auth keys must use P-256, P-384 or P-521")


def _spki(key: _PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _wrap_key(key: _PublicKey | _PrivateKey, original: str | bytes) -> _Key:
    """The joserfc key object for a loaded cryptography key."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return RSAKey(key, original)
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return ECKey(key, original)
    return OKPKey(key, original)


# ---------------------------------------------------------------------------------------------
# The engine


def _model(algorithm: str) -> JWSAlgModel:
    # Straight from joserfc's table: its registry's "recommended only" policy and warnings
    # are replaced by our own allow-list, checked before this is called.
    return JWSRegistry.algorithms[algorithm]


class AuthEngine:
    """Signs and verifies SocketCluster auth tokens (compact JWS, ``typ: JWT``).

    ``algorithm`` signs (reference ``authAlgorithm``, default HS256); ``verify_algorithms``
    is the verify allow-list (reference ``authVerifyAlgorithms``), default ``[algorithm]``.
    ``default_expiry_s`` is ``authDefaultExpiry``; ``leeway_s`` is jsonwebtoken's
    ``clockTolerance``; ``max_token_bytes`` bounds accepted tokens. Immutable; thread-safe.

    Raises ``InvalidOptionsError`` for a configuration that cannot work: ``none``, an
    unsupported algorithm, HMAC mixed with asymmetric algorithms, an algorithm no key of the
    keyring fits, a signing algorithm missing from the allow-list, or bad numbers.
    """

    __slots__ = (
        "_algorithm",
        "_default_expiry_s",
        "_header_segment",
        "_keyring",
        "_keys_by_alg",
        "_leeway_s",
        "_max_token_bytes",
        "_signer",
        "_verify_algorithms",
    )

    def __init__(
        self,
        keyring: Keyring,
        *,
        algorithm: str = "HS256",
        verify_algorithms: Sequence[str] | None = None,
        default_expiry_s: float | None = DEFAULT_EXPIRY_S,
        leeway_s: float = 0,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
    ) -> None:
        if not isinstance(keyring, Keyring):
            raise InvalidOptionsError("keyring must be a Keyring")
        if isinstance(verify_algorithms, str | bytes):
            raise InvalidOptionsError("verify_algorithms must be a sequence of names")
        allowed = [algorithm] if verify_algorithms is None else list(verify_algorithms)
        if not allowed:
            raise InvalidOptionsError("verify_algorithms must not be empty")
        for name in [algorithm, *allowed]:
            if not isinstance(name, str) or name.lower() == "none":
                raise InvalidOptionsError(f"The JWT algorithm {name!r} is not allowed")
            if name not in _SUPPORTED_ALGORITHMS:
                raise InvalidOptionsError(f"Unsupported JWT algorithm {name!r}")
        families = {name in _HMAC_ALGORITHMS for name in allowed}
        if len(families) > 1:
            raise InvalidOptionsError(
                "verify_algorithms must not mix HMAC (HS*) with asymmetric algorithms"
            )
        if algorithm not in allowed:
            raise InvalidOptionsError(
                f"The signing algorithm {algorithm!r} must be one of verify_algorithms"
            )
        keys_by_alg: dict[str, tuple[_KeyEntry, ...]] = {}
        for name in dict.fromkeys(allowed):
            fitting = tuple(e for e in keyring._entries if e.fits(name))
            if not fitting:
                raise InvalidOptionsError(f"No key of the keyring can be used with {name}")
            keys_by_alg[name] = fitting
        if not keyring._entries[0].fits(algorithm):
            raise InvalidOptionsError(f"The signing key cannot be used with {algorithm}")
        if default_expiry_s is not None and not _is_finite_number(default_expiry_s):
            raise InvalidOptionsError("default_expiry_s must be a finite number or None")
        if not _is_finite_number(leeway_s) or leeway_s < 0:
            raise InvalidOptionsError("leeway_s must be a finite number >= 0")
        if isinstance(max_token_bytes, bool) or not isinstance(max_token_bytes, int):
            raise InvalidOptionsError("max_token_bytes must be an int")
        if max_token_bytes < 16:
            raise InvalidOptionsError("max_token_bytes must be at least 16")

        header: dict[str, str] = {"alg": algorithm, "typ": "JWT"}
        if keyring.signing_kid is not None:
            header["kid"] = keyring.signing_kid
        self._keyring = keyring
        self._algorithm = algorithm
        self._verify_algorithms = tuple(dict.fromkeys(allowed))
        self._keys_by_alg = keys_by_alg
        self._signer = keyring._entries[0].signer
        self._header_segment = _b64encode(_dumps(header))
        self._default_expiry_s = default_expiry_s
        self._leeway_s = leeway_s
        self._max_token_bytes = max_token_bytes

    @property
    def algorithm(self) -> str:
        """The signing algorithm."""
        return self._algorithm

    @property
    def verify_algorithms(self) -> tuple[str, ...]:
        """The verify allow-list."""
        return self._verify_algorithms

    @property
    def keyring(self) -> Keyring:
        """The keyring this engine signs and verifies with."""
        return self._keyring

    @property
    def default_expiry_s(self) -> float | None:
        """Lifetime of tokens signed without ``exp`` and without ``expires_in_s``."""
        return self._default_expiry_s

    @property
    def leeway_s(self) -> float:
        """Clock tolerance applied to ``exp`` and ``nbf``."""
        return self._leeway_s

    @property
    def max_token_bytes(self) -> int:
        """Longest token ``verify`` will look at."""
        return self._max_token_bytes

    def jwks(self) -> dict[str, Any]:
        """The keyring's public JWKS (empty for HMAC)."""
        return self._keyring.jwks()

    # -- signing ------------------------------------------------------------------------------

    def sign(
        self,
        payload: Mapping[str, Any],
        *,
        now: float,
        expires_in_s: float | None = None,
        jti: str | None = None,
        issued_at_us: int | None = None,
    ) -> str:
        """The signed token for ``payload`` (which is not modified).

        ``jti`` (a unique token id, e.g. ``secrets.token_urlsafe(16)``) and ``issued_at_us``
        (the issue instant in integer microseconds, claim ``iat_us``, see ``revocation``)
        replace any ``jti``/``iat_us`` of the payload when given, so a token signed from the
        claims of another (a renewal) is a new token.

        ``iat`` is ``floor(now)`` (``issued_at_us // 10**6`` if given) unless the payload
        has one. A payload ``exp`` wins over
        ``expires_in_s`` (as in the reference's ``setAuthToken``); otherwise
        ``exp = iat + (expires_in_s if given else default_expiry_s)``. Raises ``AuthError``
        if there is no expiry at all, if the payload is not a JSON object (string keys,
        finite numbers), if a claim is not a number, if there is no private key, or if the
        token would exceed ``max_token_bytes``.
        """
        if self._signer is None:
            raise AuthError("Cannot sign auth tokens: the keyring has no private key")
        if not isinstance(payload, Mapping):
            raise AuthError("The auth token payload must be an object")
        try:
            claims = _json_copy(payload, 0)
        except (TypeError, ValueError, RecursionError) as exc:
            raise AuthError(f"The auth token payload is not JSON: {exc}") from exc
        assert isinstance(claims, dict)
        if jti is not None:
            if not isinstance(jti, str) or not jti:
                raise AuthError("jti must be a non-empty string")
            claims["jti"] = jti
        if issued_at_us is not None:
            if isinstance(issued_at_us, bool) or not isinstance(issued_at_us, int):
                raise AuthError("issued_at_us must be an int")
            claims[ISSUED_AT_US_CLAIM] = issued_at_us
            claims.setdefault("iat", issued_at_us // 1_000_000)
        for claim in ("iat", "exp", "nbf"):
            if claim in claims and not _is_finite_number(claims[claim]):
                raise AuthError(f'"{claim}" should be a number of seconds')
        if "iat" not in claims:
            if not _is_finite_number(now):
                raise AuthError("now must be a finite number")
            claims["iat"] = math.floor(now)
        if "exp" not in claims:
            lifetime = expires_in_s if expires_in_s is not None else self._default_expiry_s
            if lifetime is None:
                raise AuthError(
                    '"expiresIn" should be a number of seconds or string representing a timespan'
                )
            if not _is_finite_number(lifetime):
                raise AuthError("expires_in_s must be a finite number")
            claims["exp"] = _js_number(claims["iat"] + lifetime)
        try:
            body = _dumps(claims)
        except (TypeError, ValueError) as exc:  # pragma: no cover - _json_copy checked it
            raise AuthError(f"The auth token payload is not JSON: {exc}") from exc
        signing_input = self._header_segment + b"." + _b64encode(body)
        try:
            signature = _model(self._algorithm).sign(signing_input, self._signer)
        except Exception as exc:
            raise AuthError(f"Failed to sign the auth token: {exc}") from exc
        token = (signing_input + b"." + _b64encode(signature)).decode("ascii")
        if len(token) > self._max_token_bytes:
            raise AuthError(
                f"The signed auth token ({len(token)} bytes) exceeds max_token_bytes "
                f"({self._max_token_bytes})"
            )
        return token

    # -- verification -------------------------------------------------------------------------

    def verify(self, token: object, *, now: float) -> dict[str, Any]:
        """The payload of ``token`` if it is valid at ``now``.

        Raises only ``AuthTokenError`` and its subclasses, for any input whatsoever; see the
        module docstring for the order of checks and the exact messages.
        """
        try:
            return self._verify(token, now)
        except AuthTokenError:
            raise
        except Exception as exc:
            raise AuthTokenError(str(exc) or type(exc).__name__) from exc

    def _verify(self, token: object, now: float) -> dict[str, Any]:
        if token is None or token == "":
            raise AuthTokenInvalidError("jwt must be provided")
        if not isinstance(token, str):
            raise AuthTokenError("Invalid token format - Token must be a string")
        if len(token) > self._max_token_bytes:
            raise AuthTokenInvalidError("jwt too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthTokenInvalidError("jwt malformed")
        header_b64, payload_b64, signature_b64 = parts
        if not signature_b64.strip():
            raise AuthTokenInvalidError("jwt signature is required")

        header = _decode_json_segment(header_b64)
        if not isinstance(header, dict):
            raise AuthTokenInvalidError("invalid token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._keys_by_alg:
            raise AuthTokenInvalidError("invalid algorithm")
        if "crit" in header:
            raise AuthTokenInvalidError("invalid token")
        candidates = self._keys_by_alg[alg]
        if "kid" in header:
            kid = header["kid"]
            if not isinstance(kid, str):
                raise AuthTokenInvalidError("invalid token")
            candidates = tuple(e for e in candidates if e.kid == kid)

        signature = _b64decode(signature_b64)
        signing_input = (header_b64 + "." + payload_b64).encode("ascii")
        model = _model(alg)
        if signature is None or not any(
            model.verify(signing_input, signature, e.verifier) for e in candidates
        ):
            raise AuthTokenInvalidError("invalid signature")

        try:
            payload = _decode_json_segment(payload_b64)
        except AuthTokenInvalidError:
            payload = None
        if not isinstance(payload, dict):
            raise AuthTokenInvalidError("jwt malformed")
        _check_times(payload, now, self._leeway_s)
        return payload


def _check_times(payload: Mapping[str, Any], now: float, leeway_s: float) -> None:
    if "nbf" in payload:
        nbf = _claim_seconds(payload["nbf"])
        if nbf is None:
            raise AuthTokenInvalidError("invalid nbf value")
        if now < nbf - leeway_s:
            try:
                date = iso_date(nbf)
            except ValueError:
                raise AuthTokenInvalidError("invalid nbf value") from None
            raise AuthTokenNotBeforeError("jwt not active", date=date)
    if "exp" in payload:
        exp = _claim_seconds(payload["exp"])
        if exp is None:
            raise AuthTokenInvalidError("invalid exp value")
        if now >= exp + leeway_s:
            expiry: str | int | float
            try:
                expiry = iso_date(exp)
            except ValueError:
                expiry = payload["exp"]  # outside JS Date's range: report the number itself
            raise AuthTokenExpiredError("jwt expired", expiry=expiry)


# ---------------------------------------------------------------------------------------------
# Helpers shared with the server and the clients


def expiry_of(auth_token: Mapping[str, Any] | None) -> float | None:
    """The numeric ``exp`` claim of a (decoded) token, or ``None`` if absent or not a number."""
    if not isinstance(auth_token, Mapping):
        return None
    exp = auth_token.get("exp")
    return exp if _is_number(exp) else None


def is_expired(auth_token: Mapping[str, Any] | None, now: float, leeway_s: float = 0) -> bool:
    """Whether a decoded token has a numeric ``exp`` and ``now >= exp + leeway_s``."""
    exp = expiry_of(auth_token)
    if exp is None:
        return False
    try:
        return bool(now >= exp + leeway_s)
    except OverflowError:  # an int exp beyond float range: never reached
        return exp < 0


def iso_date(seconds: float) -> str:
    """``new Date(seconds * 1000).toISOString()``, e.g. ``"2026-11-27T11:04:48.000Z"``.

    Milliseconds are truncated toward zero like JS's TimeClip; years outside 0..9999 use
    the expanded ``+YYYYYY``/``-YYYYYY`` form. Raises ``ValueError`` where JS would throw
    ``RangeError`` (not finite, or beyond +-8.64e15 ms).
    """
    if not _is_number(seconds):
        raise ValueError("seconds must be a number")
    try:
        ms_float = float(seconds) * 1000
    except OverflowError:
        raise ValueError("time value out of range") from None
    if not math.isfinite(ms_float) or abs(ms_float) > _JS_MAX_TIME_MS:
        raise ValueError("time value out of range")
    ms = int(ms_float)  # truncation toward zero
    days, ms_of_day = divmod(ms, 86_400_000)
    year, month, day = _civil_from_days(days)
    hours, rest = divmod(ms_of_day, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    year_text = f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):06d}"
    return f"{year_text}-{month:02d}-{day:02d}T{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}Z"


def decode_unverified(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS *without checking anything*, or ``None`` if malformed.

    For clients, which decode the token they were given to learn their own claims. Never
    trust the result on a server.
    """
    try:
        if not isinstance(token, str):
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        payload = _decode_json_segment(parts[1])
        return payload if isinstance(payload, dict) else None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# Encoding internals


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    if not _is_number(value):
        return False
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:
        return False


def _claim_seconds(value: object) -> float | None:
    """A time claim as a float, or ``None`` if it is not a number JS could hold."""
    if not _is_number(value):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _js_number(value: float) -> int | float:
    """An integral float as an int, so it serialises as JS would (``86400``, not ``86400.0``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_copy(value: object, depth: int) -> Any:
    """A plain-``dict``/``list`` copy of a JSON value; ``TypeError``/``ValueError`` if not JSON."""
    if depth > 200:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity are not JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"object keys must be strings, not {type(k).__name__}")
            out[k] = _json_copy(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_copy(v, depth + 1) for v in value]
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _dumps(value: object) -> bytes:
    # JSON.stringify's shape: no spaces, raw UTF-8.
    return json.dumps(
        value, separators=_JSON_SEPARATORS, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _decode_json_segment(segment: str) -> Any:
    """The JSON value in a base64url segment; ``AuthTokenInvalidError`` if there is none.

    The message is "invalid token"; callers re-raise with their own message where the
    reference's differs.
    """
    raw = _b64decode(segment)
    if raw is None or not raw:
        raise AuthTokenInvalidError("invalid token")
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_parse_float
        )
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        raise AuthTokenInvalidError("invalid token") from exc


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(segment: str) -> bytes | None:
    """Strict, canonical base64url without padding; ``None`` if ``segment`` is not that."""
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        return None
    encoded = segment.encode("ascii")
    try:
        raw = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the regex rules these out
        return None
    if _b64encode(raw) != encoded:  # stray low bits in the last character
        return None
    return raw
