"""A small app for ``tests/test_interop_extra.py``: token renewal through ``@server.renewal``
and a blocking ``HANDSHAKE_SC`` middleware, driven by the real npm clients (``extra.js``).

Environment: ``PORT`` (0 picks a free port), ``AUTH_KEY`` (the HS256 secret), ``HOST``
(default 127.0.0.1). Prints ``READY <port>`` once it listens; SIGTERM or SIGINT exit 0.

* ``login`` ``{"username": str, "renew": bool}``: a token living ``TOKEN_LIFETIME_S``; the
  renewal hook (``RENEW_BEFORE_S`` before ``exp``) renews it with a fresh payload
  (``renewals`` counting up) when ``renew`` is true, else returns ``None`` (it expires).
* ``whoami``: the socket's token payload (``null`` when logged out).
* Handshake: the upgrade query ``reject=<code>`` blocks ``#handshake`` with
  ``TooLazyHandshakeError`` and that close code, ``reject=default`` without a code (4008),
  ``reject=silent`` silently.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio
import trio.lowlevel

from trio_socketcluster import Block, Hook, Reply, Server, ServerSocket, SocketClusterError

if TYPE_CHECKING:
    from trio_socketcluster.middleware import HandshakeSCRequest

TOKEN_LIFETIME_S = 3
RENEW_BEFORE_S = 1.5


def build_server(auth_key: str | None) -> Server:
    # Renewed tokens get the default lifetime: short too, so renewals chain.
    server = Server(
        auth_key=auth_key,
        auth_algorithm="HS256",
        auth_default_expiry_s=TOKEN_LIFETIME_S,
        renew_before_s=RENEW_BEFORE_S,
    )

    @server.handler("login")
    async def login(socket: ServerSocket, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("username"), str):
            return Reply(error="login needs {username, renew}")
        payload = {"username": data["username"], "renew": data.get("renew") is True}
        await socket.set_auth_token(payload, expires_in_s=TOKEN_LIFETIME_S)
        return None

    @server.handler("whoami")
    def whoami(socket: ServerSocket, _data: Any) -> Any:
        return Reply(data=socket.auth_token)

    @server.renewal
    async def renew(_socket: ServerSocket, token: dict[str, Any]) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()  # an async hook, as a database lookup would be
        if token.get("renew") is not True:
            return None
        renewals = token.get("renewals", 0)
        return {
            "username": token["username"],
            "renew": True,
            "renewals": renewals + 1 if isinstance(renewals, int) else 1,
        }

    @server.middleware.middleware(Hook.HANDSHAKE_SC)
    def reject_by_query(req: HandshakeSCRequest) -> Block | None:
        values = parse_qs(req.socket.request.query).get("reject")
        if not values:
            return None
        reject = values[0]
        if reject == "silent":
            return Block()
        error = SocketClusterError("SC handshake failed", name="TooLazyHandshakeError")
        if reject == "default":
            return Block(error)
        return Block(error, status_code=int(reject))

    return server


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "0"))
    server = build_server(os.environ.get("AUTH_KEY"))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, host, port)
            print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
