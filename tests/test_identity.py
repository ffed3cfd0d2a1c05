"""External identity providers: the pure rules (``oidc``) and the fetching provider
(``identity``) against a real local JWKS HTTP server; tokens are minted with joserfc."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from jwksserver import JwksServer

from trio_socketcluster.auth import AuthEngine, Keyring
from trio_socketcluster.errors import (
    AuthTokenError,
    AuthTokenExpiredError,
    AuthTokenInvalidError,
    InvalidOptionsError,
)
from trio_socketcluster.identity import IdentityProvider, TokenVerifier
from trio_socketcluster.oidc import ProviderConfig, ProviderKeys, check_claims, verify_with_keys

if TYPE_CHECKING:
    from collections.abc import Iterator

ISSUER = "https://idp.example.test"
AUDIENCE = "chat-app"
NOW = 1_800_000_000.0

RSA_KEY = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC_KEY = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ROTATED_KEY = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
ATTACKER_KEY = RSAKey.generate_key(2048, parameters={"kid": "evil"})


def public_jwk(key: RSAKey | ECKey) -> dict[str, Any]:
    return key.as_dict(private=False)


def jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [public_jwk(k) for k in keys]}


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u-42", "iat": int(NOW), "exp": int(NOW) + 600,
    }  # fmt: skip
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: RSAKey | ECKey, alg: str = "RS256", header: dict[str, Any] | None = None,
         **over: Any) -> str:  # fmt: skip
    head = {"alg": alg, "kid": key.kid, **(header or {})}
    return jwt.encode(head, claims(**over), key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    if secret is None:
        return signing_input + "."
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def config(**over: Any) -> ProviderConfig:
    base: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "trust_env": False}
    base.update(over)
    return ProviderConfig(**base)


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    server = JwksServer()
    server.set("/jwks", jwks(RSA_KEY, EC_KEY))
    server.set("/evil-jwks", jwks(ATTACKER_KEY))
    with server.running():
        yield server


def provider_for(idp: JwksServer, **over: Any) -> IdentityProvider:
    return IdentityProvider(config(jwks_url=idp.url("/jwks"), **over))


# ---------------------------------------------------------------------------------------------
# Pure rules

KEYS = ProviderKeys.from_jwks(jwks(RSA_KEY, EC_KEY), config(jwks_url="https://x.test/jwks"))
CONFIG = config(jwks_url="https://x.test/jwks")


def test_config_refuses_symmetric_and_none_algorithms() -> None:
    for alg in ("HS256", "none", "None", "HS512"):
        with pytest.raises(InvalidOptionsError):
            config(jwks_url="https://x.test/jwks", algorithms=(alg,))
    with pytest.raises(InvalidOptionsError):
        config(jwks_url="file:///etc/passwd")


def test_keys_of_a_jwks_skip_symmetric_private_and_foreign_keys() -> None:
    document = jwks(RSA_KEY, EC_KEY)
    document["keys"] += [
        {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
        {**public_jwk(ROTATED_KEY), "use": "enc"},
        {**public_jwk(ROTATED_KEY), "kid": "rsa-1"},  # duplicate kid
        {**public_jwk(ROTATED_KEY), "kid": "ps", "alg": "PS256"},  # not allowed here
        {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"},  # far too small
        "not a key",
    ]
    keys = ProviderKeys.from_jwks(document, CONFIG)
    assert keys.kids == {"rsa-1", "ec-1"}
    assert keys.skipped == 6
    assert keys.engine is not None
    assert set(keys.engine.verify_algorithms) == {"RS256", "ES256"}


def test_private_members_of_a_jwk_are_never_used() -> None:
    keys = ProviderKeys.from_jwks({"keys": [RSA_KEY.as_dict(private=True)]}, CONFIG)
    assert keys.engine is not None
    assert not keys.engine.keyring.can_sign


@pytest.mark.parametrize(("key", "alg"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")])
def test_provider_tokens_verify(key: RSAKey | ECKey, alg: str) -> None:
    out = verify_with_keys(mint(key, alg), KEYS, CONFIG, now=NOW)
    assert out["sub"] == "u-42"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"aud": "other-app"}, "jwt audience invalid. expected: chat-app"),
        ({"aud": ["other-app", "x"]}, "jwt audience invalid. expected: chat-app"),
        ({"aud": None}, "jwt audience invalid. expected: chat-app"),
        ({"aud": "chat-app-2"}, "jwt audience invalid. expected: chat-app"),
        ({"iss": "https://evil.test"}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"iss": [ISSUER]}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"iss": [ISSUER, "https://evil.test"]}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"iss": ISSUER + "/"}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"iss": ISSUER + ".evil.test"}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"iss": ISSUER.upper()}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"iss": None}, f"jwt issuer invalid. expected: {ISSUER}"),
        ({"exp": None}, "jwt exp required"),
    ],
)
def test_issuer_and_audience_are_compared_exactly(over: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthTokenInvalidError) as info:
        verify_with_keys(mint(RSA_KEY, **over), KEYS, CONFIG, now=NOW)
    assert info.value.message == message
    assert info.value.is_bad_token


def test_audience_may_be_a_list_that_contains_it() -> None:
    token = mint(RSA_KEY, aud=["other", AUDIENCE])
    assert verify_with_keys(token, KEYS, CONFIG, now=NOW)["aud"] == ["other", AUDIENCE]


@given(iss=st.one_of(st.text(), st.lists(st.text()), st.integers(), st.none()))
def test_only_the_exact_issuer_string_passes(iss: Any) -> None:
    payload = claims(iss=iss)
    if iss == ISSUER:
        check_claims(payload, CONFIG)
    else:
        with pytest.raises(AuthTokenInvalidError):
            check_claims(payload, CONFIG)


def test_expired_provider_token() -> None:
    with pytest.raises(AuthTokenExpiredError):
        verify_with_keys(mint(RSA_KEY, exp=int(NOW) - 1), KEYS, CONFIG, now=NOW)


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    for secret in (
        RSA_KEY.as_pem(private=False),
        json.dumps(public_jwk(RSA_KEY)).encode(),
        base64.urlsafe_b64decode(public_jwk(RSA_KEY)["n"] + "=="),
    ):
        token = hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), secret)
        with pytest.raises(AuthTokenInvalidError, match="invalid algorithm"):
            verify_with_keys(token, KEYS, CONFIG, now=NOW)


def test_alg_none_is_refused() -> None:
    for alg in ("none", "None", "NONE"):
        token = hand_made({"alg": alg, "kid": "rsa-1"}, claims(), None)
        with pytest.raises(AuthTokenInvalidError):
            verify_with_keys(token, KEYS, CONFIG, now=NOW)


def test_an_embedded_jwk_is_not_trusted() -> None:
    token = mint(ATTACKER_KEY, header={"kid": "rsa-1", "jwk": public_jwk(ATTACKER_KEY)})
    with pytest.raises(AuthTokenInvalidError, match="invalid signature"):
        verify_with_keys(token, KEYS, CONFIG, now=NOW)


# ---------------------------------------------------------------------------------------------
# The provider over HTTP


async def test_provider_fetches_once_and_verifies_rs256_and_es256(idp: JwksServer) -> None:
    provider = provider_for(idp)
    assert (await provider.verify(mint(RSA_KEY), now=NOW))["sub"] == "u-42"
    assert (await provider.verify(mint(EC_KEY, "ES256"), now=NOW))["sub"] == "u-42"
    assert idp.hits["/jwks"] == 1
    assert provider.fetches == 1


async def test_unknown_kid_refetches_at_most_every_10_s(
    idp: JwksServer, mock_clock: trio.testing.MockClock
) -> None:
    provider = provider_for(idp)
    await provider.verify(mint(RSA_KEY), now=NOW)
    unknown = mint(ROTATED_KEY)  # rsa-2: not published yet
    mock_clock.jump(10)
    for _ in range(5):
        with pytest.raises(AuthTokenInvalidError, match="invalid signature"):
            await provider.verify(unknown, now=NOW)
    assert idp.hits["/jwks"] == 2  # the first one of the five refetched, the others not
    mock_clock.jump(9.9)
    with pytest.raises(AuthTokenInvalidError):
        await provider.verify(unknown, now=NOW)
    assert idp.hits["/jwks"] == 2
    # The provider rotates rsa-2 in: accepted after the window, without a new provider.
    idp.set("/jwks", jwks(ROTATED_KEY, RSA_KEY, EC_KEY))
    with pytest.raises(AuthTokenInvalidError):
        await provider.verify(unknown, now=NOW)
    mock_clock.jump(0.1)
    assert (await provider.verify(unknown, now=NOW))["sub"] == "u-42"
    assert idp.hits["/jwks"] == 3
    # Known kids never fetch.
    await provider.verify(mint(RSA_KEY), now=NOW)
    assert idp.hits["/jwks"] == 3


async def test_concurrent_unknown_kids_fetch_once(
    idp: JwksServer, mock_clock: trio.testing.MockClock
) -> None:
    provider = provider_for(idp)
    errors: list[Exception] = []

    async def one(kid: str) -> None:
        try:
            await provider.verify(mint(ATTACKER_KEY, header={"kid": kid}), now=NOW)
        except AuthTokenInvalidError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, f"k{i}")
    assert len(errors) == 20
    assert idp.hits["/jwks"] == 1


async def test_jku_and_x5u_are_never_fetched(idp: JwksServer) -> None:
    provider = provider_for(idp)
    for header in (
        {"jku": idp.url("/evil-jwks")},
        {"x5u": idp.url("/evil-jwks")},
        {"jku": idp.url("/evil-jwks"), "kid": "rsa-1"},
    ):
        with pytest.raises(AuthTokenInvalidError, match="invalid signature"):
            await provider.verify(mint(ATTACKER_KEY, header=header), now=NOW)
    assert idp.hits["/evil-jwks"] == 0
    assert set(idp.hits) == {"/jwks"}


async def test_discovery_finds_the_jwks(idp: JwksServer) -> None:
    issuer = idp.url("/tenant")
    idp.set(
        "/tenant/.well-known/openid-configuration",
        {"issuer": issuer, "jwks_uri": idp.url("/jwks")},
    )
    provider = IdentityProvider(config(issuer=issuer))
    token = jwt.encode({"alg": "ES256", "kid": "ec-1"}, claims(iss=issuer), EC_KEY)
    assert (await provider.verify(token, now=NOW))["iss"] == issuer
    assert idp.hits["/tenant/.well-known/openid-configuration"] == 1
    assert idp.hits["/jwks"] == 1


async def test_discovery_document_for_another_issuer_is_refused(idp: JwksServer) -> None:
    issuer = idp.url("/tenant")
    idp.set(
        "/tenant/.well-known/openid-configuration",
        {"issuer": idp.url("/other"), "jwks_uri": idp.url("/jwks")},
    )
    provider = IdentityProvider(config(issuer=issuer))
    token = jwt.encode({"alg": "ES256", "kid": "ec-1"}, claims(iss=issuer), EC_KEY)
    with pytest.raises(AuthTokenError) as info:
        await provider.verify(token, now=NOW)
    assert not info.value.is_bad_token
    assert idp.hits["/jwks"] == 0


async def test_unreachable_keys_are_not_a_bad_token(
    idp: JwksServer, mock_clock: trio.testing.MockClock
) -> None:
    idp.status["/jwks"] = 500
    provider = provider_for(idp)
    for _ in range(3):
        with pytest.raises(AuthTokenError) as info:
            await provider.verify(mint(RSA_KEY), now=NOW)
        assert not info.value.is_bad_token
    assert idp.hits["/jwks"] == 1  # failures are rate-limited too
    del idp.status["/jwks"]
    mock_clock.jump(10)
    assert (await provider.verify(mint(RSA_KEY), now=NOW))["sub"] == "u-42"


async def test_a_failed_refetch_keeps_the_old_keys(
    idp: JwksServer, mock_clock: trio.testing.MockClock
) -> None:
    provider = provider_for(idp)
    await provider.verify(mint(RSA_KEY), now=NOW)
    idp.status["/jwks"] = 503
    mock_clock.jump(10)
    with pytest.raises(AuthTokenInvalidError):
        await provider.verify(mint(ROTATED_KEY), now=NOW)
    assert (await provider.verify(mint(RSA_KEY), now=NOW))["sub"] == "u-42"


# ---------------------------------------------------------------------------------------------
# Beside the server's own key

OWN = AuthEngine(Keyring.symmetric("test-auth-key"))


async def test_verifier_tells_who_vouched(idp: JwksServer) -> None:
    verifier = TokenVerifier(OWN, [provider_for(idp)])
    own = await verifier.verify(OWN.sign({"username": "alice"}, now=NOW), now=NOW)
    assert own.issuer is None
    assert own.claims["username"] == "alice"
    theirs = await verifier.verify(mint(EC_KEY, "ES256"), now=NOW)
    assert theirs.issuer == ISSUER
    assert theirs.claims["sub"] == "u-42"


async def test_verifier_errors(idp: JwksServer) -> None:
    verifier = TokenVerifier(OWN, [provider_for(idp)])
    with pytest.raises(AuthTokenExpiredError):  # own key, expired: the engine's answer
        await verifier.verify(OWN.sign({"a": 1}, now=NOW - 10, expires_in_s=5), now=NOW)
    with pytest.raises(AuthTokenInvalidError, match="invalid algorithm"):  # unknown issuer
        await verifier.verify(mint(RSA_KEY, iss="https://evil.test"), now=NOW)
    with pytest.raises(AuthTokenInvalidError, match="invalid algorithm"):  # list-valued iss
        await verifier.verify(mint(RSA_KEY, iss=[ISSUER]), now=NOW)
    with pytest.raises(AuthTokenInvalidError, match="audience"):
        await verifier.verify(mint(RSA_KEY, aud="x"), now=NOW)
    # An HS256 token claiming the provider's issuer, signed with the provider's public key:
    # not ours (bad signature), so it goes to the provider, which allows no HS256.
    forged = hand_made({"alg": "HS256"}, claims(), RSA_KEY.as_pem(private=False))
    with pytest.raises(AuthTokenInvalidError, match="invalid algorithm"):
        await verifier.verify(forged, now=NOW)
    assert set(idp.hits) <= {"/jwks"}


def test_two_providers_for_one_issuer_are_refused() -> None:
    a = IdentityProvider(config(jwks_url="https://x.test/a"))
    b = IdentityProvider(config(jwks_url="https://x.test/b"))
    with pytest.raises(InvalidOptionsError):
        TokenVerifier(OWN, [a, b])
