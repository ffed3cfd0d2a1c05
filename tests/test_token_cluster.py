"""Revocation, logout everywhere, renewal, per-user sends and identity-provider tokens with the
real npm clients (v14 and v20) on two server processes joined by a real ``redis-server``
(``tests/interop/tokens.js`` drives the clients; ``redis_app.py`` is the server)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio
from jwksserver import JwksServer
from procs import INTEROP, Process, npm_ci
from redisserver import RedisServer, redis_app
from test_identity import AUDIENCE, EC_KEY, ISSUER, RSA_KEY, jwks, mint

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.interop


def _node(scenario: str, args: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    node = npm_ci(INTEROP, "the interop tests")
    proc = subprocess.run(
        [node, str(INTEROP / "tokens.js"), scenario, json.dumps(args)],
        capture_output=True, text=True, timeout=timeout_s, check=False, cwd=INTEROP,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.get("error") is None, result
    return result


class Cluster:
    """Two ``redis_app`` processes on one Redis; ``restart`` stops both and starts two new."""

    def __init__(self, redis_url: str, **env: Any) -> None:
        self.redis_url, self.env = redis_url, env
        self.auth_key = os.urandom(16).hex()
        self.apps: list[Process] = []
        self.urls: list[str] = []

    def start(self) -> None:
        self.apps = [redis_app(self.redis_url, self.auth_key, **self.env) for _ in range(2)]
        self.urls = [f"ws://127.0.0.1:{a.wait_ready(30)[0]}/socketcluster/" for a in self.apps]

    def stop(self) -> None:
        for app in self.apps:
            assert app.stop(20) == 0, app.stderr_text()
        self.apps = []

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def cluster(redis_server: RedisServer) -> Iterator[Cluster]:
    made = Cluster(redis_server.url)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _refused_as_revoked(present: list[dict[str, Any]]) -> bool:
    return all(
        p == {"isAuthenticated": False, "authError": "jwt revoked", "removed": True, "whoami": None}
        for p in present
    )


def _exp(token: str) -> int:
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert isinstance(claims["exp"], int)
    return claims["exp"]


def test_revoked_token_refused_on_the_other_worker_and_after_a_restart(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    result = _node("revoke", {"urls": cluster.urls})
    assert result["otherWorker"] == {"isAuthenticated": True, "authError": None}
    assert result["deauthenticated"] == [True, True]  # on both workers
    assert result["order"] == ["response", "deauthenticate"]  # answered, then revoked
    assert len(result["refused"]) == 4
    assert _refused_as_revoked(result["refused"])
    token = result["token"]

    # Kept in Redis until the token would have expired (exp + leeway 0), not longer.
    async def expiry_s() -> list[float]:
        client = coredis.Redis.from_url(redis_server.url)
        async with client:
            keys = [k async for k in client.scan_iter(match=b"tsc:0:rv:j:*")]
            return [(await client.pexpiretime(k)).timestamp() for k in keys]

    assert trio.run(expiry_s) == [_exp(token)]

    cluster.restart()  # both workers: the revocation lives in Redis
    assert _refused_as_revoked(_node("present", {"urls": cluster.urls, "token": token})["present"])


def test_logout_everywhere_across_workers(cluster: Cluster) -> None:
    result = _node("logout", {"urls": cluster.urls})
    assert result["deauthenticated"] == [True, True]
    assert result["bob"] == "authenticated"
    assert _refused_as_revoked(result["refused"])
    assert result["whoami"]["username"] == "alice"  # a new login works at once
    [fresh_v20, fresh_v14] = result["fresh"]
    assert fresh_v20["isAuthenticated"]
    assert fresh_v14["isAuthenticated"]
    assert fresh_v20["whoami"]["username"] == "alice"


def test_transmit_to_user_reaches_the_user_on_both_workers_only(cluster: Cluster) -> None:
    result = _node("transmit", {"urls": cluster.urls})
    assert result["count"] == 1  # alice's socket on bob's worker (the other is not counted)
    assert result["got"] == [[1], [1], [], []]


def test_renewal_after_revoking_another_token_of_the_user(redis_server: RedisServer) -> None:
    made = Cluster(redis_server.url, RENEW_BEFORE_S="2")
    made.start()
    try:
        result = _node("renew", {"urls": made.urls})
    finally:
        made.stop()
    assert result["revokedDeauthenticated"] is True
    assert result["renewed"] is True
    assert result["state"] == "authenticated"
    assert result["whoami"]["username"] == "alice"


def test_identity_provider_tokens_with_the_npm_clients(redis_server: RedisServer) -> None:
    idp = JwksServer()
    idp.set("/jwks", jwks(RSA_KEY, EC_KEY))
    with idp.running():
        made = Cluster(
            redis_server.url,
            OIDC_ISSUER=ISSUER, OIDC_AUDIENCE=AUDIENCE, OIDC_JWKS_URL=idp.url("/jwks"),
        )  # fmt: skip
        made.start()
        try:
            now = int(time.time())
            for token in (
                mint(RSA_KEY, iat=now, exp=now + 600),
                mint(EC_KEY, "ES256", iat=now, exp=now + 600),
            ):
                present = _node("oidc", {"urls": made.urls, "token": token})["present"]
                assert [p["isAuthenticated"] for p in present] == [True] * 4, present
                assert all(p["whoami"]["sub"] == "u-42" for p in present)
            wrong = mint(RSA_KEY, iat=now, exp=now + 600, aud="someone-else")
            present = _node("oidc", {"urls": made.urls[:1], "token": wrong})["present"]
            assert [p["isAuthenticated"] for p in present] == [False, False]
            assert all(p["whoami"] is None for p in present)  # the sockets stay usable
        finally:
            made.stop()
