"""What revocation and identity providers cost at the handshake.

In-process (memory streams, no sockets): batches of handshakes that present a token, timed
from the upgrade request to the handshake reply, for four servers: the server's own HS256
token with an empty revocation list; the same with 100,000 entries (50,000 revoked jtis and
50,000 per-user watermarks of other users); a provider's RS256 token and a provider's ES256
token (keys fetched once from a local JWKS server, then cached). Rounds alternate between the
servers so that noise hits all alike; we print the median handshakes per second of each.

Run: ``.venv/bin/python benchmarks/auth_cost.py``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from jwksserver import JwksServer  # type: ignore[import-not-found, unused-ignore]
from test_identity import (  # type: ignore[import-not-found, unused-ignore]
    AUDIENCE,
    EC_KEY,
    ISSUER,
    RSA_KEY,
    jwks,
    mint,
)
from wsclient import new_client  # type: ignore[import-not-found, unused-ignore]

from trio_socketcluster import LocalRevocationStore, ProviderConfig, Server

BATCH = 200
ROUNDS = 9
ENTRIES = 100_000


async def handshakes(server: Server, token: str, nursery: trio.Nursery) -> float:
    """Handshakes per second for ``BATCH`` connections presenting ``token``."""
    start = time.perf_counter()
    streams = []
    for _ in range(BATCH):
        a, b = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, b)
        client = new_client(a)
        await client.connect()
        reply = await client.handshake(token)
        assert reply["data"]["isAuthenticated"], reply
        streams.append(a)
    elapsed = time.perf_counter() - start
    for stream in streams:
        await trio.aclose_forcefully(stream)
    return BATCH / elapsed


async def main() -> None:
    idp = JwksServer()
    idp.set("/jwks", jwks(RSA_KEY, EC_KEY))
    provider = ProviderConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=idp.url("/jwks"), trust_env=False
    )
    now = int(time.time())
    with idp.running():
        async with trio.open_nursery() as nursery:
            plain = Server(auth_key="bench-key-0123456789abcdef0123456789")
            full = Server(auth_key="bench-key-0123456789abcdef0123456789")
            store = full.revocation
            assert isinstance(store, LocalRevocationStore)
            for i in range(ENTRIES // 2):
                await store.revoke_jti(f"revoked-{i}", now + 3600)
                await store.revoke_user_before(f"user-{i}", ttl_s=3600)
            assert len(store.table) == ENTRIES
            idp_server = Server(auth_key="bench-key-0123456789abcdef0123456789",
                                identity_providers=[provider])  # fmt: skip
            for server in (plain, full, idp_server):
                await server.start_broker(nursery)
            own = plain.issue_token({"username": "alice"})
            cases = {
                "own HS256 token, empty revocation list": (plain, own),
                f"own HS256 token, {ENTRIES:,} revocation entries": (full, own),
                "provider RS256 token": (
                    idp_server, mint(RSA_KEY, iat=now, exp=now + 3600, jti="x")),
                "provider ES256 token": (
                    idp_server, mint(EC_KEY, "ES256", iat=now, exp=now + 3600, jti="y")),
            }  # fmt: skip
            rates: dict[str, list[float]] = {name: [] for name in cases}
            for server, token in cases.values():  # warm-up (and the first key fetch)
                await handshakes(server, token, nursery)
            for _ in range(ROUNDS):
                for name, (server, token) in cases.items():
                    rates[name].append(await handshakes(server, token, nursery))
            nursery.cancel_scope.cancel()
    result = {name: round(statistics.median(values)) for name, values in rates.items()}
    print(json.dumps({"handshakes_per_s": result, "batch": BATCH, "rounds": ROUNDS}, indent=2))


if __name__ == "__main__":
    trio.run(main)
