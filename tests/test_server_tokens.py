"""Revocation, identity providers and per-user sends, wired into the server (in-process, over
memory streams). The two-worker versions with the npm clients and Redis are in
``test_token_cluster.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from conftest import AUTH_KEY
from jwksserver import JwksServer
from test_identity import (
    ATTACKER_KEY,
    AUDIENCE,
    EC_KEY,
    ISSUER,
    NOW,
    ROTATED_KEY,
    RSA_KEY,
    b64,
    jwks,
    mint,
)

from trio_socketcluster import (
    Block,
    Hook,
    IdentityProvider,
    InvalidActionError,
    JtiRevoked,
    ProviderConfig,
    Server,
)
from trio_socketcluster.auth import decode_unverified

if TYPE_CHECKING:
    from wsclient import ClientFactory, RawClient

    from trio_socketcluster.middleware import AuthenticateRequest


async def serving(server: Server, nursery: trio.Nursery) -> Server:
    await server.start_broker(nursery)
    return server


async def events_until(client: RawClient, event: str) -> list[str]:
    """The events received up to and including ``event``."""
    seen: list[str] = []
    while True:
        packet = await client.recv_json()
        seen.append(packet.get("event") or f"rid {packet.get('rid')}")
        if packet.get("event") == event:
            return seen


async def authed(connect: ClientFactory, server: Server, token: str) -> RawClient:
    client = await connect(server)
    reply = await client.handshake(token)
    assert reply["data"]["isAuthenticated"] is True, reply
    return client


async def refused(connect: ClientFactory, server: Server, token: str) -> dict[str, Any]:
    """Handshake with ``token``: it must be refused as a bad token (the client is told to
    drop it) while the socket stays usable. Returns the authError."""
    client = await connect(server)
    reply = await client.handshake(token)
    data = reply["data"]
    assert data["isAuthenticated"] is False
    assert {"event": "#removeAuthToken", "data": None} in client.before_handshake_reply
    assert (await client.invoke("echo", 1))["data"] == 1  # still usable
    error: dict[str, Any] = data["authError"]
    return error


def conformance_app() -> Any:
    """``examples/conformance_app.py`` as a module (examples/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "conformance_app.py"
    spec = importlib.util.spec_from_file_location("conformance_app", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def echo_server(**options: Any) -> Server:
    server = Server(auth_key=AUTH_KEY, **options)
    server.add_handler("echo", lambda _s, d: d)
    return server


# ------------------------------------------------------------------ revocation


async def test_revoked_token_is_deauthenticated_and_refused_until_it_expires(
    connect: ClientFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await serving(echo_server(), nursery)
    token = server.issue_token({"username": "alice"}, expires_in_s=60)
    other = server.issue_token({"username": "alice"}, expires_in_s=60)
    claims = decode_unverified(token)
    other_claims = decode_unverified(other)
    assert claims is not None
    assert other_claims is not None
    assert claims["jti"] != other_claims["jti"]
    live, untouched = await authed(connect, server, token), await authed(connect, server, other)

    revoked = await server.revoke_token(claims["jti"], exp=claims["exp"])
    assert revoked.forget_at == claims["exp"] + server.auth.leeway_s
    assert await events_until(live, "#removeAuthToken") == ["#removeAuthToken"]
    assert [s.authenticated for s in server.sockets.values()] == [False, True]

    error = await refused(connect, server, token)
    assert error == {"name": "AuthTokenInvalidError", "message": "jwt revoked", "isBadToken": True}
    reply = await untouched.invoke("#authenticate", token, cid=5)  # #authenticate too
    assert reply["error"]["message"] == "jwt revoked"
    assert not server.sockets[next(reversed(list(server.sockets)))].authenticated

    await trio.sleep(61)  # past exp: refused as expired, and the entry is forgotten
    assert (await refused(connect, server, token))["name"] == "AuthTokenExpiredError"
    assert await server.check_revoked({"jti": claims["jti"]}) is None
    assert len(server.revocation.table) == 0  # type: ignore[attr-defined]


async def test_logout_everywhere_refuses_older_tokens_and_not_newer_ones(
    connect: ClientFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await serving(echo_server(), nursery)
    old = [server.issue_token({"username": "alice"}) for _ in range(2)]
    bob = await authed(connect, server, server.issue_token({"username": "bob"}))
    alices = [await authed(connect, server, token) for token in old]
    watermark = await server.revoke_user_tokens("alice")
    assert watermark.forget_at == pytest.approx(server.now() + 86400)  # the default lifetime
    for client in alices:
        assert await events_until(client, "#removeAuthToken") == ["#removeAuthToken"]
    for token in old:
        assert (await refused(connect, server, token))["message"] == "jwt revoked"
    # Issued after the call within the same (mock) instant: accepted.
    fresh = server.issue_token({"username": "alice"})
    assert decode_unverified(fresh)["iat"] == decode_unverified(old[0])["iat"]  # type: ignore[index]
    await authed(connect, server, fresh)
    assert (await bob.invoke("echo", "still here"))["data"] == "still here"
    assert sum(s.authenticated for s in server.sockets.values()) == 2  # bob and the fresh one


async def test_renewal_survives_revoking_another_token_but_not_its_own(
    connect: ClientFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await serving(echo_server(renew_before_s=10), nursery)
    server.renewal(lambda _socket, token: {"username": token["username"]})
    first, second = (server.issue_token({"username": "alice"}, expires_in_s=30) for _ in "ab")
    a, b = await authed(connect, server, first), await authed(connect, server, second)
    jti = decode_unverified(first)["jti"]  # type: ignore[index]
    await server.revoke_token(jti, exp=None)
    assert await events_until(a, "#removeAuthToken") == ["#removeAuthToken"]
    await trio.sleep(21)  # b's renewal time
    [renewed] = [p for p in await events_until(b, "#setAuthToken") if p == "#setAuthToken"]
    assert renewed
    socket = next(s for s in server.sockets.values() if s.authenticated)
    assert socket.auth_token is not None
    assert socket.auth_token["jti"] not in (jti,)
    assert socket.signed_auth_token != second


async def test_renewal_checks_the_store_before_renewing(
    connect: ClientFactory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await serving(echo_server(renew_before_s=10), nursery)
    renewed: list[str] = []

    def renew(_socket: Any, token: dict[str, Any]) -> dict[str, Any]:
        renewed.append(token["jti"])
        return {"username": "alice"}

    server.renewal(renew)
    token = server.issue_token({"username": "alice"}, expires_in_s=30)
    client = await authed(connect, server, token)
    socket = next(iter(server.sockets.values()))
    assert socket.auth_token is not None
    # Written straight into the table, no listener called: as if another worker's message
    # had not arrived yet (or the socket authenticated before a restart).
    server.revocation.table.apply(  # type: ignore[attr-defined]
        JtiRevoked(jti=socket.auth_token["jti"], forget_at=None)
    )
    assert socket.authenticated
    await trio.sleep(21)
    assert await events_until(client, "#removeAuthToken") == ["#removeAuthToken"]
    assert renewed == []
    assert not socket.authenticated


# ------------------------------------------------------------------ users


async def test_transmit_to_user_reaches_every_socket_of_the_user_only(
    connect: ClientFactory, nursery: trio.Nursery
) -> None:
    server = await serving(echo_server(user_claim="sub"), nursery)
    a1 = await authed(connect, server, server.issue_token({"sub": "u1", "username": "bob"}))
    a2 = await authed(connect, server, server.issue_token({"sub": "u1"}))
    other = await authed(connect, server, server.issue_token({"sub": "u2", "username": "u1"}))
    anonymous = await connect(server)
    await anonymous.handshake()
    assert server.transmit_to_user("u1", "note", {"n": 1}) == 2
    for client in (a1, a2):
        assert await client.recv_json() == {"event": "note", "data": {"n": 1}}
    assert server.transmit_to_user("u1", "bare") == 2
    assert await a1.recv_json() == {"event": "bare"}
    # The others got nothing: their next packet is the answer to this echo.
    for client in (other, anonymous):
        assert (await client.invoke("echo", "x", cid=9)) == {"rid": 9, "data": "x"}
        assert client.others == []
    # The index follows token changes: a2 logs out, then a1 closes.
    await a2.invoke("#removeAuthToken", cid=None)  # type: ignore[arg-type]
    await a1.close()
    await trio.testing.wait_all_tasks_blocked()
    assert server.transmit_to_user("u1", "note") == 0
    assert server.deauthenticate_user("u2") == 1
    assert server.disconnect_user("u1") == 0
    with pytest.raises(InvalidActionError):
        server.transmit_to_user("u1", "#publish")


async def test_conformance_procedures_answer_before_they_revoke(
    connect: ClientFactory, nursery: trio.Nursery
) -> None:
    server = await serving(conformance_app().build_server(AUTH_KEY), nursery)
    client = await connect(server)
    await client.handshake()
    await client.invoke("login", {"username": "alice", "password": "alice-pass"}, cid=2)
    token = next(p["data"]["token"] for p in client.others if p["event"] == "#setAuthToken")
    assert isinstance(decode_unverified(token)["jti"], str)  # type: ignore[index]
    second = await authed(connect, server, token)
    reply = await client.invoke("revokeMe", cid=3)
    assert reply == {"rid": 3}
    assert await events_until(client, "#removeAuthToken") == ["#removeAuthToken"]
    assert await events_until(second, "#removeAuthToken") == ["#removeAuthToken"]
    assert (await refused(connect, server, token))["message"] == "jwt revoked"

    await client.invoke("login", {"username": "alice", "password": "alice-pass"}, cid=4)
    await client.invoke("login", {"username": "bob", "password": "bob-pass"}, cid=5)
    await client.invoke("login", {"username": "alice", "password": "alice-pass"}, cid=6)
    client.others.clear()
    assert await client.invoke("logoutEverywhere", cid=7) == {"rid": 7}
    assert await events_until(client, "#removeAuthToken") == ["#removeAuthToken"]
    await client.invoke("login", {"username": "alice", "password": "alice-pass"}, cid=8)
    assert (await client.invoke("whoami", cid=9))["data"]["username"] == "alice"


def test_start_soon_needs_a_running_server() -> None:
    with pytest.raises(InvalidActionError):
        Server().start_soon(trio.sleep, 0)


# ------------------------------------------------------------------ identity providers


@pytest.fixture
def idp() -> Any:
    server = JwksServer()
    server.set("/jwks", jwks(RSA_KEY, EC_KEY))
    server.set("/evil-jwks", jwks(ATTACKER_KEY))
    with server.running():
        yield server


def provider(idp: JwksServer) -> ProviderConfig:
    return ProviderConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=idp.url("/jwks"), trust_env=False,
        refetch_interval_s=1.0,
    )  # fmt: skip


async def test_provider_tokens_authenticate_with_their_issuer(
    connect: ClientFactory, nursery: trio.Nursery, idp: JwksServer
) -> None:
    clock = [NOW]
    server = await serving(
        echo_server(identity_providers=[provider(idp)], now=lambda: clock[0]), nursery
    )
    issuers: list[str | None] = []

    @server.middleware.middleware(Hook.AUTHENTICATE)
    def record(req: AuthenticateRequest) -> Block | None:
        issuers.append(req.issuer)
        return Block("no ec today") if req.auth_token.get("sub") == "blocked" else None

    for token in (mint(RSA_KEY), mint(EC_KEY, "ES256")):
        await authed(connect, server, token)
    own = server.issue_token({"username": "alice"})
    await authed(connect, server, own)
    sockets = list(server.sockets.values())
    assert [s.auth_issuer for s in sockets] == [ISSUER, ISSUER, None]
    assert sockets[0].auth_token is not None
    assert sockets[0].auth_token["sub"] == "u-42"
    assert issuers == [ISSUER, ISSUER, None]

    # Refused, each with the socket usable.
    hs256_with_public_key = _hs256_signed_with_rsa_public_key()
    cases = {
        "wrong aud": mint(RSA_KEY, aud="someone-else"),
        "wrong iss": mint(RSA_KEY, iss="https://other.test"),
        "expired": mint(RSA_KEY, exp=int(NOW) - 60),
        "unknown kid": mint(ATTACKER_KEY),
        "HS256 with the public key": hs256_with_public_key,
        "jku elsewhere": mint(ATTACKER_KEY, header={"jku": idp.url("/evil-jwks")}),
    }
    for what, token in cases.items():
        error = await refused(connect, server, token)
        assert error["name"].startswith("AuthToken"), (what, error)
    assert idp.hits["/evil-jwks"] == 0

    # A key rotated in at the provider: accepted once the refetch interval (1 s here)
    # allows, without a restart.
    idp.set("/jwks", jwks(RSA_KEY, EC_KEY, ROTATED_KEY))
    prov = server.identity_providers[ISSUER]
    with trio.fail_after(5):
        while True:
            client = await connect(server)
            reply = await client.handshake(mint(ROTATED_KEY))
            if reply["data"]["isAuthenticated"]:
                break
            await trio.sleep(0.3)
    assert prov.fetches <= 4

    # Provider tokens can be revoked too (by jti, or by user with user_claim="sub").
    revocable = mint(RSA_KEY, jti="idp-1")
    live = await authed(connect, server, revocable)
    await server.revoke_token("idp-1", exp=NOW + 600)
    assert await events_until(live, "#removeAuthToken") == ["#removeAuthToken"]
    assert (await refused(connect, server, revocable))["message"] == "jwt revoked"


def _hs256_signed_with_rsa_public_key() -> str:
    import hashlib
    import hmac
    import json

    public_pem = RSA_KEY.as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(
        json.dumps(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": int(NOW), "exp": int(NOW) + 60}
        ).encode()
    )
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def test_identity_providers_accept_configs_and_refuse_duplicates() -> None:
    config = ProviderConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://x.test/jwks")
    server = Server(identity_providers=[config])
    assert isinstance(server.identity_providers[ISSUER], IdentityProvider)
    with pytest.raises(Exception, match="two identity providers"):
        Server(identity_providers=[config, IdentityProvider(config)])
