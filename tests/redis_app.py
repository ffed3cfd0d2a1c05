"""The conformance application on a broker chosen by ``$BROKER``, plus cluster handlers.

As a module: ``make_server`` is the factory the command line loads
(``trio-socketcluster serve redis_app:make_server --workers N --broker redis://...``).
As a script: ``PORT``, ``AUTH_KEY``, ``HOST`` and ``BROKER`` from the environment; prints
``READY <port>``; SIGTERM/SIGINT close every socket with 1001 and exit 0.

Extra handlers (test-only; no access control): ``pid``, ``brokerStats``,
``waitSynced`` (answers once this process's Redis subscriptions are live),
``deauthenticateUser``, ``disconnectUser``, ``revokeToken``, ``transmitToUser``,
``kickOutAll``. ``RENEW_BEFORE_S`` turns on token renewal (same claims); ``OIDC_*`` as in
the conformance application.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from conformance_app import (  # type: ignore[import-not-found, unused-ignore]
    build_server,
    provider_from_env,
)

from trio_socketcluster import Reply, Server, ServerSocket


def make_server() -> Server:
    server: Server = build_server(os.environ.get("AUTH_KEY") or None, provider_from_env(os.environ))
    broker = os.environ.get("BROKER")
    if broker:
        server.set_broker(broker)
    renew_before_s = os.environ.get("RENEW_BEFORE_S")
    if renew_before_s:  # renew tokens that long before they expire, with the same claims
        server.config = replace(server.config, renew_before_s=float(renew_before_s))
        server.renewal(lambda _socket, token: token)

    @server.handler("pid")
    def pid(_socket: ServerSocket, _data: Any) -> Any:
        return Reply(data=os.getpid())

    @server.handler("brokerStats")
    def broker_stats(_socket: ServerSocket, _data: Any) -> Any:
        stats = getattr(server.broker, "stats", None)
        return Reply(data=stats.as_dict() if stats is not None else None)

    @server.handler("waitSynced")
    async def wait_synced(_socket: ServerSocket, _data: Any) -> Any:
        with trio.fail_after(10):
            for part in (server.broker, server.revocation):
                wait = getattr(part, "wait_synced", None)
                if wait is not None:
                    await wait()
        return Reply(data=True)

    def arg(data: Any, name: str) -> Any:
        return data.get(name) if isinstance(data, dict) else None

    @server.handler("deauthenticateUser")
    def deauthenticate_user(_socket: ServerSocket, data: Any) -> Any:
        return Reply(data=server.deauthenticate_user(arg(data, "username")))

    @server.handler("disconnectUser")
    def disconnect_user(_socket: ServerSocket, data: Any) -> Any:
        return Reply(
            data=server.disconnect_user(
                arg(data, "username"), arg(data, "code") or 4500, arg(data, "reason") or ""
            )
        )

    @server.handler("revokeToken")
    async def revoke_token(_socket: ServerSocket, data: Any) -> Any:
        revoked = await server.revoke_token(arg(data, "jti"), exp=arg(data, "exp"))
        return Reply(data=revoked.jti)

    @server.handler("transmitToUser")
    def transmit_to_user(_socket: ServerSocket, data: Any) -> Any:
        return Reply(
            data=server.transmit_to_user(
                arg(data, "username"), arg(data, "event"), arg(data, "data")
            )
        )

    @server.handler("kickOutAll")
    def kick_out_all(_socket: ServerSocket, data: Any) -> Any:
        return Reply(data=server.kick_out(arg(data, "channel"), arg(data, "message")))

    return server


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "0"))
    server = make_server()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, host, port)
            print(f"READY {listeners[0].socket.getsockname()[1]}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
