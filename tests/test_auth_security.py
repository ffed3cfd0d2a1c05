"""Attacks on the auth engine: each forged or mangled token is refused with the right error.

Algorithm confusion (``none``, HS* downgrades, a public key as an HMAC secret), ``kid`` and
``crit`` header tricks, embedded keys, non-compact serialisations, non-object payloads,
tampering, splicing, truncation, oversized and non-string tokens.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from trio_socketcluster.auth import AuthEngine, Keyring
from trio_socketcluster.errors import (
    AuthTokenError,
    AuthTokenInvalidError,
    InvalidOptionsError,
)

SECRET = b"testkey"
NOW = 1_000_000.0
PAYLOAD = {"username": "bob", "admin": False, "iat": 999_000, "exp": 2_000_000}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def seg(value: Any) -> str:
    return b64(value if isinstance(value, bytes) else json.dumps(value).encode())


def hmac_sign(header: Any, payload: Any, key: bytes = SECRET, digest: str = "sha256") -> str:
    h, p = seg(header), seg(payload)
    sig = hmac.new(key, f"{h}.{p}".encode(), getattr(hashlib, digest)).digest()
    return f"{h}.{p}.{b64(sig)}"


@functools.cache
def hs_engine() -> AuthEngine:
    return AuthEngine(Keyring.symmetric(SECRET))


@functools.cache
def rsa_material() -> tuple[rsa.RSAPrivateKey, bytes, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, private_pem, public_pem


@functools.cache
def rs_engine() -> AuthEngine:
    _, private_pem, public_pem = rsa_material()
    return AuthEngine(Keyring.asymmetric(private_pem, public_pem, kid="rsa-1"), algorithm="RS256")


@functools.cache
def es_engine() -> AuthEngine:
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return AuthEngine(Keyring.asymmetric(private_pem, public_pem), algorithm="ES256")


def rejected(engine: AuthEngine, token: object, message: str) -> None:
    with pytest.raises(AuthTokenInvalidError) as info:
        engine.verify(token, now=NOW)
    assert info.type is AuthTokenInvalidError
    assert info.value.message == message
    assert info.value.is_bad_token


def test_a_genuine_token_is_accepted() -> None:
    # The baseline every attack below departs from.
    assert hs_engine().verify(hmac_sign({"alg": "HS256", "typ": "JWT"}, PAYLOAD), now=NOW) == (
        PAYLOAD
    )


# ---------------------------------------------------------------------------------------------
# alg: none, downgrades, confusion


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_without_signature(alg: str) -> None:
    token = f"{seg({'alg': alg, 'typ': 'JWT'})}.{seg(PAYLOAD)}."
    rejected(hs_engine(), token, "jwt signature is required")
    rejected(rs_engine(), token, "jwt signature is required")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_with_a_signature(alg: str) -> None:
    genuine = hmac_sign({"alg": "HS256", "typ": "JWT"}, PAYLOAD)
    token = f"{seg({'alg': alg, 'typ': 'JWT'})}.{seg(PAYLOAD)}.{genuine.rsplit('.', 1)[1]}"
    rejected(hs_engine(), token, "invalid algorithm")


def test_none_can_never_be_configured() -> None:
    for kwargs in ({"algorithm": "none"}, {"verify_algorithms": ["HS256", "none"]}):
        with pytest.raises(InvalidOptionsError):
            AuthEngine(Keyring.symmetric(SECRET), **kwargs)


@pytest.mark.parametrize(("alg", "digest"), [("HS384", "sha384"), ("HS512", "sha512")])
def test_other_hmac_algorithms_are_refused_when_hs256_is_configured(alg: str, digest: str) -> None:
    token = hmac_sign({"alg": alg, "typ": "JWT"}, PAYLOAD, digest=digest)  # right secret
    rejected(hs_engine(), token, "invalid algorithm")
    wider = AuthEngine(Keyring.symmetric(SECRET), verify_algorithms=["HS256", alg])
    assert wider.verify(token, now=NOW) == PAYLOAD  # the allow-list decides, nothing else


def test_rs256_header_with_an_hmac_signature() -> None:
    _, _, public_pem = rsa_material()
    token = hmac_sign({"alg": "RS256", "typ": "JWT"}, PAYLOAD, key=public_pem)
    rejected(rs_engine(), token, "invalid signature")
    rejected(hs_engine(), hmac_sign({"alg": "RS256"}, PAYLOAD), "invalid algorithm")


def test_public_key_as_hmac_secret_is_refused() -> None:
    # The classic confusion: the attacker knows the public PEM and signs HS256 with it.
    _, _, public_pem = rsa_material()
    for key in (public_pem, public_pem.strip(), public_pem.replace(b"\n", b"\r\n")):
        token = hmac_sign({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, PAYLOAD, key=key)
        rejected(rs_engine(), token, "invalid algorithm")
    # ... and no configuration makes it possible.
    with pytest.raises(InvalidOptionsError):
        Keyring.symmetric(public_pem)
    with pytest.raises(InvalidOptionsError):
        Keyring.symmetric(public_pem.decode())
    with pytest.raises(InvalidOptionsError):
        AuthEngine(rs_engine().keyring, algorithm="RS256", verify_algorithms=["RS256", "HS256"])
    with pytest.raises(InvalidOptionsError):
        AuthEngine(rs_engine().keyring, algorithm="HS256")


def test_asymmetric_algorithm_outside_the_allow_list() -> None:
    private, _, _ = rsa_material()
    h, p = seg({"alg": "PS256", "typ": "JWT"}), seg(PAYLOAD)
    sig = private.sign(
        f"{h}.{p}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    rejected(rs_engine(), f"{h}.{p}.{b64(sig)}", "invalid algorithm")
    rejected(es_engine(), rs_engine().sign(PAYLOAD, now=NOW), "invalid algorithm")


def test_psychic_ecdsa_signature_is_refused() -> None:
    # CVE-2022-21449: r = s = 0 must never verify.
    h, p = seg({"alg": "ES256", "typ": "JWT"}), seg(PAYLOAD)
    rejected(es_engine(), f"{h}.{p}.{b64(bytes(64))}", "invalid signature")


def test_duplicate_alg_members_take_the_last_like_javascript() -> None:
    header = b'{"alg":"HS256","alg":"none"}'
    token = hmac_sign(header, PAYLOAD)
    rejected(hs_engine(), token, "invalid algorithm")


# ---------------------------------------------------------------------------------------------
# Header tricks: kid, crit, embedded keys


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "/dev/null",
        "file:///etc/passwd",
        "' OR '1'='1",
        "",
        "k" * 4000,
        "rsa-1\x00",
        "RSA-1",
    ],
)
def test_unknown_kid_is_an_invalid_signature(kid: str) -> None:
    # Signed with the right secret, but the kid names no key of ours.
    token = hmac_sign({"alg": "HS256", "typ": "JWT", "kid": kid}, PAYLOAD)
    rejected(AuthEngine(Keyring.symmetric(SECRET, kid="main")), token, "invalid signature")
    rejected(hs_engine(), token, "invalid signature")


@pytest.mark.parametrize("kid", [None, 1, 1.5, True, ["main"], {"kid": "main"}])
def test_non_string_kid_is_an_invalid_token(kid: object) -> None:
    token = hmac_sign({"alg": "HS256", "typ": "JWT", "kid": kid}, PAYLOAD)
    rejected(AuthEngine(Keyring.symmetric(SECRET, kid="main")), token, "invalid token")


def test_very_long_kid_is_bounded_by_the_token_limit() -> None:
    token = hmac_sign({"alg": "HS256", "typ": "JWT", "kid": "k" * 10_000}, PAYLOAD)
    rejected(hs_engine(), token, "jwt too large")


@pytest.mark.parametrize("crit", [["exp"], [], "b64", ["b64"], None, ["x-unknown"]])
def test_crit_header_is_an_invalid_token_even_when_signed(crit: object) -> None:
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT", "crit": crit}
    if crit == ["b64"]:
        header["b64"] = False
    rejected(hs_engine(), hmac_sign(header, PAYLOAD), "invalid token")


def test_embedded_jwk_and_key_urls_are_ignored() -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    numbers = attacker.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
    }
    header = {
        "alg": "ES256",
        "typ": "JWT",
        "jwk": jwk,
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
    }
    h, p = seg(header), seg(PAYLOAD)
    r, s = decode_dss_signature(attacker.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{h}.{p}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    rejected(es_engine(), token, "invalid signature")


# ---------------------------------------------------------------------------------------------
# Shapes that are not a compact JWS of an object


def test_jws_json_serialisations_are_refused() -> None:
    genuine = hmac_sign({"alg": "HS256", "typ": "JWT"}, PAYLOAD)
    h, p, s = genuine.split(".")
    flattened = {"protected": h, "payload": p, "signature": s}
    general = {"payload": p, "signatures": [{"protected": h, "signature": s}]}
    for doc in (flattened, general):
        rejected(hs_engine(), json.dumps(doc), "jwt malformed")
        rejected(hs_engine(), json.dumps(doc, separators=(",", ":")), "jwt malformed")
        with pytest.raises(AuthTokenError) as info:
            hs_engine().verify(doc, now=NOW)
        assert info.value.message == "Invalid token format - Token must be a string"


@pytest.mark.parametrize("payload", [["bob"], "bob", 42, 4.2, True, None])
def test_validly_signed_non_object_payloads_are_malformed(payload: Any) -> None:
    rejected(hs_engine(), hmac_sign({"alg": "HS256", "typ": "JWT"}, payload), "jwt malformed")


def test_detached_or_unencoded_payload_is_refused() -> None:
    genuine = hmac_sign({"alg": "HS256", "typ": "JWT"}, PAYLOAD)
    h, _, s = genuine.split(".")
    rejected(hs_engine(), f"{h}..{s}", "invalid signature")
    raw = json.dumps(PAYLOAD, separators=(",", ":"))
    rejected(hs_engine(), f"{h}.{raw}.{s}", "invalid signature")
    # RFC 7797 "b64": false, correctly signed over the raw payload: still not base64url.
    h77 = seg({"alg": "HS256", "b64": False, "crit": ["b64"]})
    sig = b64(hmac.new(SECRET, f"{h77}.{raw}".encode(), hashlib.sha256).digest())
    rejected(hs_engine(), f"{h77}.{raw}.{sig}", "invalid token")
    h_plain = seg({"alg": "HS256", "b64": False})
    sig = b64(hmac.new(SECRET, f"{h_plain}.{raw}".encode(), hashlib.sha256).digest())
    rejected(hs_engine(), f"{h_plain}.{raw}.{sig}", "jwt malformed")


# ---------------------------------------------------------------------------------------------
# Tampering, splicing, truncation


def test_tampered_payload() -> None:
    genuine = hmac_sign({"alg": "HS256", "typ": "JWT"}, PAYLOAD)
    h, _, s = genuine.split(".")
    for forged in (
        {**PAYLOAD, "username": "alice"},
        {**PAYLOAD, "admin": True},
        {**PAYLOAD, "exp": 9_999_999_999},
        {k: v for k, v in PAYLOAD.items() if k != "exp"},
    ):
        rejected(hs_engine(), f"{h}.{seg(forged)}.{s}", "invalid signature")


def test_swapped_signatures_between_two_tokens() -> None:
    for engine in (hs_engine(), rs_engine(), es_engine()):
        bob = engine.sign({"username": "bob"}, now=NOW)
        alice = engine.sign({"username": "alice", "admin": True}, now=NOW)
        bob_sig = bob.rsplit(".", 1)[1]
        alice_head_body = alice.rsplit(".", 1)[0]
        rejected(engine, f"{alice_head_body}.{bob_sig}", "invalid signature")
        # and a header spliced from another token of a different key
        other = AuthEngine(Keyring.symmetric(b"other")).sign({"username": "alice"}, now=NOW)
        rejected(hs_engine(), other, "invalid signature")


def test_every_truncation_is_refused() -> None:
    token = rs_engine().sign({"username": "bob"}, now=NOW)
    for end in range(len(token)):
        with pytest.raises(AuthTokenInvalidError):
            rs_engine().verify(token[:end], now=NOW)
    head_body, _ = token.rsplit(".", 1)
    rejected(rs_engine(), head_body, "jwt malformed")
    rejected(rs_engine(), head_body + ".", "jwt signature is required")


@pytest.mark.parametrize("junk", [" ", "\n", "\t", "=", "==", ".", "\u200b"])
def test_surrounding_junk_is_refused(junk: str) -> None:
    token = hs_engine().sign({"u": 1}, now=NOW)
    for mangled in (junk + token, token + junk):
        with pytest.raises(AuthTokenInvalidError):
            hs_engine().verify(mangled, now=NOW)


# ---------------------------------------------------------------------------------------------
# Size and type


def test_oversized_tokens_are_refused_before_any_crypto() -> None:
    token = rs_engine().sign({"blob": "x" * 5000}, now=NOW)
    assert rs_engine().verify(token, now=NOW)["blob"] == "x" * 5000
    big = hmac_sign({"alg": "HS256", "typ": "JWT"}, {"blob": "x" * 9000})
    rejected(hs_engine(), big, "jwt too large")
    rejected(hs_engine(), "." * 100_000, "jwt too large")
    rejected(hs_engine(), "a" * 10_000_000, "jwt too large")
    tight = AuthEngine(Keyring.symmetric(SECRET), max_token_bytes=64)
    rejected(tight, hs_engine().sign({"u": 1}, now=NOW), "jwt too large")


@pytest.mark.parametrize(
    "token",
    [
        12345,
        -1,
        1.0,
        True,
        {"token": "a.b.c"},
        ["a", "b", "c"],
        ("a.b.c",),
        b"a.b.c",
        bytearray(b"a.b.c"),
        memoryview(b"a.b.c"),
        object(),
    ],
)
def test_non_string_tokens(token: object) -> None:
    with pytest.raises(AuthTokenError) as info:
        hs_engine().verify(token, now=NOW)
    assert info.type is AuthTokenError
    assert info.value.message == "Invalid token format - Token must be a string"
    assert info.value.is_bad_token


def test_str_subclass_token_is_treated_as_a_string() -> None:
    class Sneaky(str):
        def split(self, *args: Any, **kwargs: Any) -> list[str]:
            raise RuntimeError("not today")

    genuine = hmac_sign({"alg": "HS256", "typ": "JWT"}, PAYLOAD)
    with pytest.raises(AuthTokenError):
        hs_engine().verify(Sneaky(genuine), now=NOW)


def test_error_messages_never_contain_the_secret() -> None:
    engine = AuthEngine(Keyring.symmetric("a very secret key"))
    attempts: list[object] = [None, 1, "x", "a.b.c", hmac_sign({"alg": "HS256"}, PAYLOAD)]
    for token in attempts:
        with pytest.raises(AuthTokenError) as info:
            engine.verify(token, now=NOW)
        assert "secret" not in repr(info.value)
