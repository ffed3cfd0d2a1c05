"""Tests of the pure JWT auth engine (``trio_socketcluster.auth``): behaviour and properties.

Security-specific attacks (algorithm confusion, kid tricks, forged headers) live in
``test_auth_security.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import math
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import assume, example, given
from hypothesis import strategies as st
from strategies import json_objects, json_values

import trio_socketcluster.auth as auth_module
from trio_socketcluster.auth import (
    AuthEngine,
    Keyring,
    decode_unverified,
    expiry_of,
    is_expired,
    iso_date,
)
from trio_socketcluster.errors import (
    AuthError,
    AuthTokenError,
    AuthTokenExpiredError,
    AuthTokenInvalidError,
    AuthTokenNotBeforeError,
    InvalidOptionsError,
)

# examples.md section 2: signed by the reference with authKey 'testkey'.
REFERENCE_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJ1c2VybmFtZSI6ImJvYiIsImV4cCI6MTc5NTc4MTE4OCwiaWF0IjoxNzk1Nzc3NTg4fQ"
    ".36g4pjINKjXZ3_uPL9beJKKqTSAw43MJME4lQsjMkk0"
)
REFERENCE_PAYLOAD = {"username": "bob", "exp": 1795781188, "iat": 1795777588}
# examples.md section 4: the reference's setAuthToken({username: 'bob'}) at iat 1795777746.
REFERENCE_SIGNED = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJ1c2VybmFtZSI6ImJvYiIsImlhdCI6MTc5NTc3Nzc0NiwiZXhwIjoxNzk1ODY0MTQ2fQ"
    ".NtegZQ4sIXh6NQOECgrtUM0xHAH1fgTRdUhDDHPlEBs"
)
NOW = 1_795_777_600.0  # between the reference token's iat and exp
RESERVED = ("iat", "exp", "nbf")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def forge_hs256(header: Any, payload: Any, secret: bytes = b"testkey") -> str:
    """A token with a *valid* HS256 signature over arbitrary header and payload JSON."""
    h = b64(header if isinstance(header, bytes) else json.dumps(header).encode())
    p = b64(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


HS_HEADER = {"alg": "HS256", "typ": "JWT"}


@functools.cache
def engine() -> AuthEngine:
    return AuthEngine(Keyring.symmetric("testkey"))


def raises_invalid(
    eng: AuthEngine, token: object, message: str, now: float = NOW
) -> AuthTokenInvalidError:
    with pytest.raises(AuthTokenInvalidError) as info:
        eng.verify(token, now=now)
    assert info.type is AuthTokenInvalidError
    assert info.value.message == message
    return info.value


# ---------------------------------------------------------------------------------------------
# Keys generated once per run


@functools.cache
def pem_pair(kind: str) -> tuple[bytes, bytes]:
    private: Any
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "p256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif kind == "p384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ed448":
        private = ed448.Ed448PrivateKey.generate()
    else:  # pragma: no cover
        raise AssertionError(kind)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def asym_keyring(kind: str, *, kid: str | None = None, private: bool = True) -> Keyring:
    priv, pub = pem_pair(kind)
    return Keyring.asymmetric(priv if private else None, pub, kid=kid)


# ---------------------------------------------------------------------------------------------
# Purity (the import scan of every pure module is in test_exports.py)


def test_module_docstring_says_what_it_owns() -> None:
    assert auth_module.__doc__ is not None
    assert "pure" in auth_module.__doc__.lower()


# ---------------------------------------------------------------------------------------------
# Compatibility with the reference


def test_verifies_the_reference_token() -> None:
    assert engine().verify(REFERENCE_TOKEN, now=NOW) == REFERENCE_PAYLOAD


def test_reference_token_expires_at_its_exp_with_iso_expiry() -> None:
    assert engine().verify(REFERENCE_TOKEN, now=1795781187.999) == REFERENCE_PAYLOAD
    with pytest.raises(AuthTokenExpiredError) as info:
        engine().verify(REFERENCE_TOKEN, now=1795781188)
    assert info.value.message == "jwt expired"
    assert info.value.expiry == "2026-11-27T12:06:28.000Z"
    assert info.value.to_wire() == {
        "name": "AuthTokenExpiredError",
        "message": "jwt expired",
        "expiry": "2026-11-27T12:06:28.000Z",
        "isBadToken": True,
    }


def test_signing_is_byte_identical_to_the_reference() -> None:
    token = engine().sign({"username": "bob"}, now=1795777746.9)
    assert token == REFERENCE_SIGNED


def test_our_tokens_are_standard_base64url_compact_jws() -> None:
    token = engine().sign({"name": "zoë", "n": [1, 2.5, None]}, now=NOW)
    header, payload, signature = token.split(".")
    for segment in (header, payload, signature):
        assert "=" not in segment
    assert json.loads(b64_decode(header)) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(b64_decode(payload)) == {
        "name": "zoë",
        "n": [1, 2.5, None],
        "iat": int(NOW),
        "exp": int(NOW) + 86400,
    }
    expected = hmac.new(b"testkey", f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert b64_decode(signature) == expected


def test_payload_json_has_no_spaces_and_raw_utf8() -> None:
    token = engine().sign({"a": "é", "b": {"c": 1}}, now=10)
    assert b64_decode(token.split(".")[1]) == '{"a":"é","b":{"c":1},"iat":10,"exp":86410}'.encode()


# ---------------------------------------------------------------------------------------------
# Every verify error, with its exact class and message


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(token: object) -> None:
    error = raises_invalid(engine(), token, "jwt must be provided")
    assert error.to_wire() == {
        "name": "AuthTokenInvalidError",
        "message": "jwt must be provided",
        "isBadToken": True,
    }


@pytest.mark.parametrize("token", [12345, 0, False, b"a.b.c", ["x"], {"t": 1}, 1.5, object()])
def test_non_string_token(token: object) -> None:
    with pytest.raises(AuthTokenError) as info:
        engine().verify(token, now=NOW)
    assert info.type is AuthTokenError
    assert info.value.message == "Invalid token format - Token must be a string"
    assert info.value.to_wire()["name"] == "AuthTokenError"


def test_too_large_token_is_refused_before_parsing() -> None:
    small = AuthEngine(Keyring.symmetric("testkey"), max_token_bytes=len(REFERENCE_TOKEN))
    assert small.verify(REFERENCE_TOKEN, now=NOW) == REFERENCE_PAYLOAD
    raises_invalid(small, REFERENCE_TOKEN + "A", "jwt too large")
    raises_invalid(engine(), "a" * 8193, "jwt too large")
    raises_invalid(engine(), "a" * 8192, "jwt malformed")


@pytest.mark.parametrize(
    "token", ["abc", "a.b", "a.b.c.d", "....", REFERENCE_TOKEN + ".x", REFERENCE_TOKEN[:36]]
)
def test_not_three_parts_is_malformed(token: str) -> None:
    raises_invalid(engine(), token, "jwt malformed")


@pytest.mark.parametrize("signature", ["", " ", "\t"])
def test_empty_signature(signature: str) -> None:
    head, body, _ = REFERENCE_TOKEN.split(".")
    raises_invalid(engine(), f"{head}.{body}.{signature}", "jwt signature is required")


@pytest.mark.parametrize(
    "header",
    [
        "",
        "!!!",
        "eyJ",  # truncated base64 of '{"'
        b64(b"not json"),
        b64(b'{"alg":"HS256"'),
        b64(b'{"alg":NaN}'),
        b64(b"\xff\xfe"),
        b64(b'["HS256"]'),
        b64(b'"HS256"'),
        b64(b"null"),
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9==",  # padded
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9".replace("J9", "J+"),  # standard alphabet
    ],
)
def test_header_that_is_not_a_json_object_is_an_invalid_token(header: str) -> None:
    _, body, sig = REFERENCE_TOKEN.split(".")
    raises_invalid(engine(), f"{header}.{body}.{sig}", "invalid token")


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "none", "None", "hs256", None, 256])
def test_algorithm_outside_the_allow_list(alg: object) -> None:
    token = forge_hs256({"alg": alg, "typ": "JWT"}, REFERENCE_PAYLOAD)
    raises_invalid(engine(), token, "invalid algorithm")


def test_missing_alg_is_an_invalid_algorithm() -> None:
    raises_invalid(engine(), forge_hs256({"typ": "JWT"}, REFERENCE_PAYLOAD), "invalid algorithm")


def test_wrong_secret_is_an_invalid_signature() -> None:
    other = AuthEngine(Keyring.symmetric("other key"))
    raises_invalid(other, REFERENCE_TOKEN, "invalid signature")


@pytest.mark.parametrize(
    "signature", ["AAAA", "!!!!", "a", "36g4pjINKjXZ3_uPL9beJKKqTSAw43MJME4lQ"]
)
def test_bad_signature_bytes(signature: str) -> None:
    head, body, _ = REFERENCE_TOKEN.split(".")
    raises_invalid(engine(), f"{head}.{body}.{signature}", "invalid signature")


def test_non_canonical_signature_encoding_is_refused() -> None:
    # 32 bytes -> 43 characters; the last one carries 2 unused bits. Setting them gives the
    # same bytes through a lenient decoder, but a different string: refused.
    head, body, sig = REFERENCE_TOKEN.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    twin = sig[:-1] + alphabet[last | 1]
    assert twin != sig
    assert b64_decode(twin) == b64_decode(sig)
    raises_invalid(engine(), f"{head}.{body}.{twin}", "invalid signature")


@pytest.mark.parametrize(
    "payload",
    [b"[1,2]", b'"bob"', b"42", b"null", b"true", b"not json", b"", b"\xff", b'{"a":Infinity}'],
)
def test_validly_signed_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    raises_invalid(engine(), forge_hs256(HS_HEADER, payload), "jwt malformed")


@pytest.mark.parametrize("nbf", ["soon", None, True, [1], {"t": 1}])
def test_non_numeric_nbf(nbf: object) -> None:
    raises_invalid(engine(), forge_hs256(HS_HEADER, {"nbf": nbf}), "invalid nbf value")


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"9" * 5000])
def test_numbers_beyond_doubles_are_malformed(number: bytes) -> None:
    payload = b'{"exp":' + number + b"}"
    raises_invalid(engine(), forge_hs256(HS_HEADER, payload), "jwt malformed")


@pytest.mark.parametrize("exp", ["tomorrow", None, False, [1], {"t": 1}])
def test_non_numeric_exp(exp: object) -> None:
    raises_invalid(engine(), forge_hs256(HS_HEADER, {"exp": exp}), "invalid exp value")


def test_not_before() -> None:
    token = forge_hs256(HS_HEADER, {"u": 1, "nbf": 1795781188})
    with pytest.raises(AuthTokenNotBeforeError) as info:
        engine().verify(token, now=1795781187.5)
    assert info.value.message == "jwt not active"
    assert info.value.date == "2026-11-27T12:06:28.000Z"
    assert info.value.to_wire() == {
        "name": "AuthTokenNotBeforeError",
        "message": "jwt not active",
        "date": "2026-11-27T12:06:28.000Z",
        "isBadToken": False,
    }
    assert engine().verify(token, now=1795781188) == {"u": 1, "nbf": 1795781188}


def test_nbf_is_checked_before_exp() -> None:
    token = forge_hs256(HS_HEADER, {"nbf": 200, "exp": 100})
    with pytest.raises(AuthTokenNotBeforeError):
        engine().verify(token, now=150)
    with pytest.raises(AuthTokenExpiredError):
        engine().verify(token, now=250)


def test_token_without_exp_never_expires() -> None:
    token = forge_hs256(HS_HEADER, {"u": "x"})
    assert engine().verify(token, now=1e12) == {"u": "x"}


def test_exp_beyond_js_dates_reports_the_number() -> None:
    token = forge_hs256(HS_HEADER, {"exp": -1e13})
    with pytest.raises(AuthTokenExpiredError) as info:
        engine().verify(token, now=NOW)
    assert info.value.expiry == -1e13


def test_nbf_beyond_js_dates_is_invalid() -> None:
    raises_invalid(engine(), forge_hs256(HS_HEADER, {"nbf": 1e13}), "invalid nbf value")


def test_fractional_claims() -> None:
    token = forge_hs256(HS_HEADER, {"exp": 100.5})
    assert engine().verify(token, now=100.4) == {"exp": 100.5}
    with pytest.raises(AuthTokenExpiredError) as info:
        engine().verify(token, now=100.5)
    assert info.value.expiry == "1970-01-01T00:01:40.500Z"


def test_unexpected_internal_failure_becomes_auth_token_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*args: object, **kwargs: object) -> object:
        raise KeyError("boom")

    monkeypatch.setattr(auth_module, "_check_times", boom)
    with pytest.raises(AuthTokenError) as info:
        engine().verify(REFERENCE_TOKEN, now=NOW)
    assert info.type is AuthTokenError
    assert "boom" in info.value.message


# ---------------------------------------------------------------------------------------------
# Signing: iat, exp, expires_in, default expiry


def claims_of(token: str) -> dict[str, Any]:
    decoded = decode_unverified(token)
    assert decoded is not None
    return decoded


def test_default_expiry_is_one_day() -> None:
    assert claims_of(engine().sign({}, now=1000.7)) == {"iat": 1000, "exp": 87400}


def test_expires_in_overrides_the_default() -> None:
    assert claims_of(engine().sign({}, now=1000, expires_in_s=60)) == {"iat": 1000, "exp": 1060}


def test_payload_exp_wins_over_expires_in() -> None:
    token = engine().sign({"exp": 5000}, now=1000, expires_in_s=60)
    assert claims_of(token) == {"exp": 5000, "iat": 1000}


def test_payload_iat_is_kept_and_used_for_exp() -> None:
    token = engine().sign({"iat": 500}, now=1000, expires_in_s=10)
    assert claims_of(token) == {"iat": 500, "exp": 510}


def test_integral_float_expiry_serialises_as_an_int() -> None:
    eng = AuthEngine(Keyring.symmetric("k"), default_expiry_s=3600.0)
    token = eng.sign({}, now=0)
    assert b'"exp":3600}' in b64_decode(token.split(".")[1])
    assert claims_of(eng.sign({}, now=0, expires_in_s=0.5)) == {"iat": 0, "exp": 0.5}


def test_no_expiry_at_all_fails_to_sign() -> None:
    eng = AuthEngine(Keyring.symmetric("k"), default_expiry_s=None)
    with pytest.raises(AuthError, match="expiresIn"):
        eng.sign({"u": 1}, now=0)
    assert claims_of(eng.sign({"u": 1}, now=0, expires_in_s=5)) == {"u": 1, "iat": 0, "exp": 5}
    assert claims_of(eng.sign({"u": 1, "exp": 9}, now=0)) == {"u": 1, "exp": 9, "iat": 0}


def test_sign_does_not_mutate_the_payload_and_accepts_any_mapping() -> None:
    payload = {"u": {"nested": [1]}}
    token = engine().sign(MappingProxyType(payload), now=0)
    assert payload == {"u": {"nested": [1]}}
    assert claims_of(token)["u"] == {"nested": [1]}


def test_tuples_become_arrays() -> None:
    assert claims_of(engine().sign({"t": (1, 2)}, now=0))["t"] == [1, 2]


@pytest.mark.parametrize(
    "payload",
    [
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": {1, 2}},
        {"x": b"bytes"},
        {"x": object()},
        {1: "int key"},
        {"x": {"y": {(1,): 2}}},
        {"x": "\ud800"},  # lone surrogate: not UTF-8
        {"exp": "tomorrow"},
        {"iat": None},
        {"nbf": True},
        {"exp": float("nan")},
    ],
)
def test_payload_that_is_not_json_fails_with_auth_error(payload: Any) -> None:
    with pytest.raises(AuthError):
        engine().sign(payload, now=0)


@pytest.mark.parametrize("payload", [[1, 2], "bob", 42, None])
def test_payload_that_is_not_a_mapping_fails_with_auth_error(payload: Any) -> None:
    with pytest.raises(AuthError, match="object"):
        engine().sign(payload, now=0)


def test_deeply_nested_payload_fails_with_auth_error() -> None:
    deep: Any = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(AuthError):
        engine().sign({"d": deep}, now=0)


def test_non_finite_now_or_expiry_fails_with_auth_error() -> None:
    with pytest.raises(AuthError):
        engine().sign({}, now=math.nan)
    with pytest.raises(AuthError):
        engine().sign({}, now=0, expires_in_s=math.inf)


def test_token_larger_than_the_limit_is_not_signed() -> None:
    eng = AuthEngine(Keyring.symmetric("k"), max_token_bytes=200)
    eng.sign({"u": "x"}, now=0)
    with pytest.raises(AuthError, match="max_token_bytes"):
        eng.sign({"u": "x" * 200}, now=0)


# ---------------------------------------------------------------------------------------------
# Leeway


def test_leeway_extends_exp_and_advances_nbf() -> None:
    eng = AuthEngine(Keyring.symmetric("testkey"), leeway_s=30)
    assert eng.verify(REFERENCE_TOKEN, now=1795781188 + 29.9) == REFERENCE_PAYLOAD
    with pytest.raises(AuthTokenExpiredError) as info:
        eng.verify(REFERENCE_TOKEN, now=1795781188 + 30)
    assert info.value.expiry == "2026-11-27T12:06:28.000Z"  # the claim, not exp + leeway
    token = forge_hs256(HS_HEADER, {"nbf": 1000})
    assert eng.verify(token, now=970) == {"nbf": 1000}
    with pytest.raises(AuthTokenNotBeforeError):
        eng.verify(token, now=969.9)


# ---------------------------------------------------------------------------------------------
# Key rotation and kid


def test_kid_rotation() -> None:
    old = Keyring.symmetric("old secret", kid="2025")
    old_engine = AuthEngine(old)
    old_token = old_engine.sign({"u": 1}, now=0)
    assert json.loads(b64_decode(old_token.split(".")[0])) == {
        "alg": "HS256",
        "typ": "JWT",
        "kid": "2025",
    }

    ring = old.rotated(Keyring.symmetric("new secret", kid="2026"))
    assert ring.kids == ("2026", "2025")
    assert ring.signing_kid == "2026"
    rotated = AuthEngine(ring)
    new_token = rotated.sign({"u": 2}, now=0)
    assert json.loads(b64_decode(new_token.split(".")[0]))["kid"] == "2026"

    assert rotated.verify(old_token, now=1)["u"] == 1
    assert rotated.verify(new_token, now=1)["u"] == 2
    raises_invalid(old_engine, new_token, "invalid signature", now=1)


def test_rotation_from_an_unnamed_key_keeps_old_tokens_valid() -> None:
    ring = Keyring.symmetric("testkey").rotated(Keyring.symmetric("fresh", kid="v2"))
    eng = AuthEngine(ring)
    assert eng.verify(REFERENCE_TOKEN, now=NOW) == REFERENCE_PAYLOAD
    assert eng.verify(eng.sign({"a": 1}, now=NOW), now=NOW)["a"] == 1


def test_a_kid_only_selects_the_key_with_that_kid() -> None:
    ring = Keyring.symmetric("one", kid="a").rotated(Keyring.symmetric("two", kid="b"))
    token_signed_by_a_but_claiming_b = forge_hs256(
        {"alg": "HS256", "typ": "JWT", "kid": "b"}, {"u": 1}, secret=b"one"
    )
    raises_invalid(AuthEngine(ring), token_signed_by_a_but_claiming_b, "invalid signature")


def test_keyring_repr_leaks_no_secret() -> None:
    text = repr(Keyring.symmetric("super secret value", kid="k1"))
    assert "super secret" not in text
    assert "k1" in text


# ---------------------------------------------------------------------------------------------
# Asymmetric algorithms


ASYMMETRIC_CASES = [
    ("rsa", "RS256"),
    ("rsa", "RS512"),
    ("rsa", "PS256"),
    ("p256", "ES256"),
    ("p384", "ES384"),
    ("ed25519", "EdDSA"),
    ("ed25519", "Ed25519"),
    ("ed448", "Ed448"),
]


@pytest.mark.parametrize(("kind", "alg"), ASYMMETRIC_CASES)
def test_asymmetric_sign_and_verify(kind: str, alg: str) -> None:
    eng = AuthEngine(asym_keyring(kind, kid=f"{kind}-1"), algorithm=alg)
    token = eng.sign({"username": "bob"}, now=NOW)
    header = json.loads(b64_decode(token.split(".")[0]))
    assert header == {"alg": alg, "typ": "JWT", "kid": f"{kind}-1"}
    assert eng.verify(token, now=NOW) == {
        "username": "bob",
        "iat": int(NOW),
        "exp": int(NOW) + 86400,
    }
    verify_only = AuthEngine(asym_keyring(kind, kid=f"{kind}-1", private=False), algorithm=alg)
    assert verify_only.verify(token, now=NOW)["username"] == "bob"
    with pytest.raises(AuthError, match="private key"):
        verify_only.sign({"u": 1}, now=NOW)


def test_asymmetric_token_fails_with_another_key_pair() -> None:
    token = AuthEngine(asym_keyring("p256"), algorithm="ES256").sign({}, now=NOW)
    other_private = ec.generate_private_key(ec.SECP256R1())
    other_pub = other_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other = AuthEngine(Keyring.asymmetric(None, other_pub), algorithm="ES256")
    raises_invalid(other, token, "invalid signature")


def test_asymmetric_rotation_across_key_types() -> None:
    rsa_ring = asym_keyring("rsa", kid="r1")
    old_token = AuthEngine(rsa_ring, algorithm="RS256").sign({"u": 1}, now=NOW)
    ring = rsa_ring.rotated(asym_keyring("ed25519", kid="e1"))
    eng = AuthEngine(ring, algorithm="EdDSA", verify_algorithms=["EdDSA", "RS256"])
    assert eng.verify(old_token, now=NOW)["u"] == 1
    new_token = eng.sign({"u": 2}, now=NOW)
    assert eng.verify(new_token, now=NOW)["u"] == 2
    assert [k["kid"] for k in eng.jwks()["keys"]] == ["e1", "r1"]


def test_str_pems_are_accepted() -> None:
    priv, pub = pem_pair("ed25519")
    eng = AuthEngine(Keyring.asymmetric(priv.decode(), pub.decode()), algorithm="EdDSA")
    assert eng.verify(eng.sign({"a": 1}, now=0), now=0)["a"] == 1


# ---------------------------------------------------------------------------------------------
# JWKS

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384", "ed25519", "ed448"])
def test_jwks_holds_public_members_only(kind: str) -> None:
    jwks = asym_keyring(kind, kid="key-1").jwks()
    (jwk,) = jwks["keys"]
    assert not PRIVATE_MEMBERS & set(jwk)
    assert jwk["kid"] == "key-1"
    assert jwk["use"] == "sig"
    expected = {"rsa": "RSA", "p256": "EC", "p384": "EC", "ed25519": "OKP", "ed448": "OKP"}
    assert jwk["kty"] == expected[kind]
    json.dumps(jwks)  # a JSON document


def test_jwks_public_key_matches_the_pem() -> None:
    priv, pub = pem_pair("rsa")
    (jwk,) = Keyring.asymmetric(priv, pub).jwks()["keys"]
    public = serialization.load_pem_public_key(pub)
    assert isinstance(public, rsa.RSAPublicKey)
    n = int.from_bytes(b64_decode(jwk["n"]), "big")
    assert n == public.public_numbers().n
    assert "kid" not in jwk


def test_symmetric_jwks_is_empty() -> None:
    assert Keyring.symmetric("secret", kid="x").jwks() == {"keys": []}
    assert engine().jwks() == {"keys": []}


# ---------------------------------------------------------------------------------------------
# Configuration errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "none"},
        {"algorithm": "HS256", "verify_algorithms": ["HS256", "none"]},
        {"algorithm": "HS256", "verify_algorithms": ["HS256", "RS256"]},
        {"algorithm": "HS256", "verify_algorithms": []},
        {"algorithm": "HS256", "verify_algorithms": "HS256"},
        {"algorithm": "HS256", "verify_algorithms": ["HS384"]},
        {"algorithm": "XS256"},
        {"algorithm": "RS256"},
        {"default_expiry_s": math.inf},
        {"leeway_s": -1},
        {"leeway_s": math.nan},
        {"max_token_bytes": 0},
        {"max_token_bytes": 10.5},
    ],
)
def test_invalid_engine_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionsError):
        AuthEngine(Keyring.symmetric("k"), **kwargs)


@pytest.mark.parametrize(
    ("kind", "alg"), [("rsa", "HS256"), ("rsa", "ES256"), ("p256", "ES384"), ("ed25519", "RS256")]
)
def test_algorithm_must_fit_the_key(kind: str, alg: str) -> None:
    with pytest.raises(InvalidOptionsError):
        AuthEngine(asym_keyring(kind), algorithm=alg)


def test_asymmetric_verify_list_may_not_contain_hmac() -> None:
    with pytest.raises(InvalidOptionsError):
        AuthEngine(asym_keyring("rsa"), algorithm="RS256", verify_algorithms=["RS256", "HS256"])


def test_invalid_keyrings() -> None:
    _, rsa_pub = pem_pair("rsa")
    ec_priv, ec_pub = pem_pair("p256")
    with pytest.raises(InvalidOptionsError, match="empty"):
        Keyring.symmetric("")
    with pytest.raises(InvalidOptionsError, match="PEM"):
        Keyring.symmetric(rsa_pub)
    with pytest.raises(InvalidOptionsError, match="match"):
        Keyring.asymmetric(ec_priv, rsa_pub)
    with pytest.raises(InvalidOptionsError):
        Keyring.asymmetric(None, b"not a pem")
    with pytest.raises(InvalidOptionsError):
        Keyring.asymmetric(b"not a pem", ec_pub)
    with pytest.raises(InvalidOptionsError):
        Keyring.asymmetric(rsa_pub, rsa_pub)  # a public key is no private key
    with pytest.raises(InvalidOptionsError):
        Keyring.symmetric("k").rotated(Keyring.asymmetric(ec_priv, ec_pub))
    with pytest.raises(InvalidOptionsError, match="unique"):
        Keyring.symmetric("a", kid="x").rotated(Keyring.symmetric("b", kid="x"))
    with pytest.raises(InvalidOptionsError):
        Keyring.symmetric("a", kid="")


def test_short_rsa_keys_are_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pub = weak.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidOptionsError, match="2048"):
        Keyring.asymmetric(None, pub)


def test_bytes_secret_equals_its_str_form() -> None:
    token = AuthEngine(Keyring.symmetric(b"testkey")).sign({"a": 1}, now=0)
    assert engine().verify(token, now=0)["a"] == 1


# ---------------------------------------------------------------------------------------------
# Helpers


def test_is_expired_and_expiry_of() -> None:
    assert expiry_of({"exp": 100}) == 100
    assert expiry_of({"exp": 1.5}) == 1.5
    for no_exp in (None, {}, {"exp": "100"}, {"exp": None}, {"exp": True}):
        assert expiry_of(no_exp) is None
        assert not is_expired(no_exp, 1e12)
    assert not is_expired({"exp": 100}, 99.999)
    assert is_expired({"exp": 100}, 100)
    assert not is_expired({"exp": 100}, 104, leeway_s=5)
    assert is_expired({"exp": 100}, 105, leeway_s=5)
    assert is_expired({"exp": -(10**400)}, 0)
    assert not is_expired({"exp": 10**400}, 0)


@pytest.mark.parametrize(
    ("seconds", "iso"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1795777488, "2026-11-27T11:04:48.000Z"),
        (1795777488.1239, "2026-11-27T11:04:48.123Z"),
        (-0.0015, "1969-12-31T23:59:59.999Z"),  # truncation toward zero: -1.5 ms -> -1 ms
        (-1, "1969-12-31T23:59:59.000Z"),
        (951782400, "2000-02-29T00:00:00.000Z"),
        (253402300799, "9999-12-31T23:59:59.000Z"),
        (253402300800, "+010000-01-01T00:00:00.000Z"),
        (-62167219200, "0000-01-01T00:00:00.000Z"),
        (-62167219201, "-000001-12-31T23:59:59.000Z"),
        (8.64e12, "+275760-09-13T00:00:00.000Z"),
        (-8.64e12, "-271821-04-20T00:00:00.000Z"),
    ],
)
def test_iso_date_matches_js_to_iso_string(seconds: float, iso: str) -> None:
    assert iso_date(seconds) == iso


@pytest.mark.parametrize("bad", [8.64e12 + 1, -8.64e12 - 1, math.inf, math.nan, 10**400])
def test_iso_date_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="time value out of range"):
        iso_date(bad)


def test_decode_unverified() -> None:
    assert decode_unverified(REFERENCE_TOKEN) == REFERENCE_PAYLOAD
    assert decode_unverified(REFERENCE_TOKEN.rsplit(".", 1)[0] + ".forged") == REFERENCE_PAYLOAD
    for bad in ("", "a.b", "a.b.c", forge_hs256(HS_HEADER, [1]), 5, None):
        assert decode_unverified(bad) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Properties


@given(payload=json_objects(exclude_keys=RESERVED), now=st.integers(0, 2**40))
def test_sign_verify_round_trip(payload: dict[str, Any], now: int) -> None:
    token = engine().sign(payload, now=now)
    assert engine().verify(token, now=now) == {**payload, "iat": now, "exp": now + 86400}


@given(payload=json_objects(), now=st.floats(0, 2**40))
def test_sign_verify_round_trip_with_arbitrary_claims(payload: dict[str, Any], now: float) -> None:
    # Reserved claims of arbitrary JSON types: either signing refuses (AuthError) or the
    # token round-trips or fails verification with an AuthToken* error only.
    try:
        token = engine().sign(payload, now=now)
    except AuthError:
        assert any(k in payload for k in RESERVED)
        return
    try:
        out = engine().verify(token, now=now)
    except AuthTokenError:
        assert any(k in payload for k in ("exp", "nbf"))
        return
    assert {k: v for k, v in out.items() if k not in RESERVED} == {
        k: v for k, v in payload.items() if k not in RESERVED
    }


@given(
    exp=st.integers(-(2**40), 2**40),
    leeway=st.integers(0, 10**6) | st.floats(0, 1e6),
    offset=st.floats(-1e6, 1e6),
)
@example(exp=1000, leeway=0, offset=0.0)
@example(exp=1000, leeway=5, offset=5.0)
@example(exp=1000, leeway=5, offset=4.999999)
def test_expired_exactly_when_now_reaches_exp_plus_leeway(
    exp: int, leeway: float, offset: float
) -> None:
    eng = AuthEngine(Keyring.symmetric("testkey"), leeway_s=leeway)
    token = eng.sign({"exp": exp, "iat": 0}, now=0)
    now = exp + offset
    expired = now >= exp + leeway
    assert is_expired({"exp": exp}, now, leeway) is expired
    if expired:
        with pytest.raises(AuthTokenExpiredError) as info:
            eng.verify(token, now=now)
        assert info.value.expiry == iso_date(exp)
    else:
        assert eng.verify(token, now=now) == {"exp": exp, "iat": 0}


B64URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def engines_for_tampering() -> list[AuthEngine]:
    return [
        engine(),
        AuthEngine(asym_keyring("p256"), algorithm="ES256"),
        AuthEngine(asym_keyring("ed25519"), algorithm="EdDSA"),
    ]


@given(
    which=st.integers(0, 2),
    payload=json_objects(exclude_keys=RESERVED, max_leaves=5),
    data=st.data(),
)
def test_any_single_character_change_is_rejected(
    which: int, payload: dict[str, Any], data: st.DataObject
) -> None:
    eng = engines_for_tampering()[which]
    token = eng.sign(payload, now=NOW)
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    replacement = data.draw(
        st.sampled_from(B64URL_CHARS + ".=+/ ~") | st.characters(), label="replacement"
    )
    assume(replacement != token[index])
    tampered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(AuthTokenError):
        eng.verify(tampered, now=NOW)


def segments() -> st.SearchStrategy[str]:
    as_json = json_values(max_leaves=5).map(lambda v: b64(json.dumps(v).encode()))
    headers = st.fixed_dictionaries(
        {"alg": st.sampled_from(["HS256", "HS384", "RS256", "none", "ES256"])},
        optional={"typ": st.just("JWT"), "kid": json_values(max_leaves=2), "crit": st.just([])},
    ).map(lambda h: b64(json.dumps(h).encode()))
    return as_json | headers | st.binary(max_size=64).map(b64) | st.text(max_size=20)


@given(
    token=st.text()
    | st.binary().map(lambda b: b.decode("latin-1"))
    | st.tuples(segments(), segments(), segments()).map(".".join)
    | st.builds(lambda h, p, s: f"{h}.{p}.{s}", segments(), segments(), st.just(""))
    | json_values()
    | st.binary()
    | st.integers()
    | st.floats()
    | st.lists(st.text())
)
def test_arbitrary_input_only_ever_raises_auth_token_errors(token: object) -> None:
    with pytest.raises(AuthTokenError):
        engine().verify(token, now=NOW)


@given(seconds=st.floats(-62135596800, 253402300799.998, allow_nan=False))
def test_iso_date_agrees_with_datetime(seconds: float) -> None:
    ms = int(seconds * 1000)
    expected = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    e = expected
    assert iso_date(seconds) == (
        f"{e.year:04d}-{e.month:02d}-{e.day:02d}T{e.hour:02d}:{e.minute:02d}:{e.second:02d}"
        f".{ms % 1000:03d}Z"
    )


@given(payload=json_objects(exclude_keys=RESERVED))
def test_decode_unverified_reads_what_sign_wrote(payload: dict[str, Any]) -> None:
    token = engine().sign(payload, now=1)
    assert decode_unverified(token) == {**payload, "iat": 1, "exp": 86401}
