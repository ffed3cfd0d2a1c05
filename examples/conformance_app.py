"""The conformance application (see docs and shared/spec/conformance-app.md), on the public API.

Environment: ``PORT`` (0 picks a free port), ``AUTH_KEY`` (the HS256 secret), ``HOST``
(default 127.0.0.1), and ``TRANSPORT`` (``ws``, our wsproto transport, by default; or
``trio-websocket`` to serve through the trio-websocket adapter). With ``OIDC_ISSUER``,
``OIDC_AUDIENCE`` and ``OIDC_JWKS_URL`` all set, the tokens of that identity provider
(RS256/ES256) are accepted too. Prints ``READY <port>`` once it
listens; SIGTERM or SIGINT shut it down gracefully (every socket closed with 1001), exit 0.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import trio

from trio_socketcluster import (
    Allow,
    Block,
    HistoryConfig,
    HistoryPolicy,
    Hook,
    ProviderConfig,
    Reply,
    Server,
    ServerSocket,
    SocketClusterError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trio_socketcluster.middleware import (
        HandshakeWSRequest,
        PublishInRequest,
        PublishOutRequest,
        SubscribeRequest,
    )

USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("alice-pass", ["news", "alice-room"]),
    "bob": ("bob-pass", ["news"]),
}


#: ``news`` and ``alice-room`` keep their last 1,000 publications, each for 300 s.
HISTORY = HistoryConfig(
    channels={name: HistoryPolicy(size=1000, ttl_s=300) for name in ("news", "alice-room")}
)


def provider_from_env(environ: Mapping[str, str]) -> ProviderConfig | None:
    """The identity provider that ``OIDC_ISSUER``, ``OIDC_AUDIENCE`` and ``OIDC_JWKS_URL``
    name (all three, or none: ``None``)."""
    names = ("OIDC_ISSUER", "OIDC_AUDIENCE", "OIDC_JWKS_URL")
    issuer, audience, jwks_url = (environ.get(name) for name in names)
    if not (issuer and audience and jwks_url):
        return None
    return ProviderConfig(
        issuer=issuer, audience=audience, jwks_url=jwks_url, algorithms=("RS256", "ES256")
    )


def build_server(auth_key: str | None, provider: ProviderConfig | None = None) -> Server:
    server = Server(
        auth_key=auth_key,
        auth_algorithm="HS256",
        auth_default_expiry_s=86400,
        history=HISTORY,
        identity_providers=[provider] if provider is not None else [],
        metrics=True,  # GET /metrics; /healthz and /readyz are on by default
    )

    # ---------------------------------------------------------------- procedures

    async def log_in(socket: ServerSocket, credentials: Any, ttl: float | None = None) -> Any:
        if not isinstance(credentials, dict):
            return Reply(error="Login failed")
        user = USERS.get(str(credentials.get("username")))
        if user is None or credentials.get("password") != user[0]:
            return Reply(error="Login failed")  # a plain string on the wire, as in the seed
        await socket.set_auth_token(
            {"username": credentials["username"], "channels": user[1]}, expires_in_s=ttl
        )
        return None

    @server.handler("login")
    async def login(socket: ServerSocket, credentials: Any) -> Any:
        return await log_in(socket, credentials)

    @server.handler("loginShort")
    async def login_short(socket: ServerSocket, credentials: Any) -> Any:
        ttl = credentials.get("ttl") if isinstance(credentials, dict) else None
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
            return Reply(error="Login failed")
        return await log_in(socket, credentials, ttl)

    @server.handler("whoami")
    def whoami(socket: ServerSocket, _data: Any) -> Any:
        return Reply(data=socket.auth_token)  # null (not "no data") when unauthenticated

    @server.handler("echo")
    def echo(_socket: ServerSocket, data: Any) -> Any:
        return Reply(data=data)  # echo null as null

    @server.handler("fail")
    def fail(_socket: ServerSocket, _data: Any) -> Any:
        raise SocketClusterError("it failed", name="CustomError")

    @server.handler("logout")
    def logout(socket: ServerSocket, _data: Any) -> Any:
        socket.deauthenticate()
        return None

    # Tokens the server signs carry a fresh ``jti`` (and ``iat_us``): revocable one by one.
    # Both procedures answer first (a plain handler's reply is queued at once), then revoke
    # on every worker in the server's nursery.

    @server.handler("revokeMe")
    def revoke_me(socket: ServerSocket, _data: Any) -> Any:
        token = socket.auth_token
        jti = token.get("jti") if token else None
        if token is not None and isinstance(jti, str):
            exp = token.get("exp")
            server.start_soon(revoke, jti, exp if isinstance(exp, int | float) else None)
        return None

    async def revoke(jti: str, exp: float | None) -> None:
        await server.revoke_token(jti, exp=exp)

    @server.handler("logoutEverywhere")
    def logout_everywhere(socket: ServerSocket, _data: Any) -> Any:
        user = socket.auth_token.get(server.user_claim) if socket.auth_token else None
        if isinstance(user, str):
            server.start_soon(server.revoke_user_tokens, user)
        return None

    @server.handler("serverPublish")
    def server_publish(_socket: ServerSocket, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
            return Reply(error="serverPublish needs {channel, data}")
        server.publish(data["channel"], data.get("data"))
        return None

    @server.handler("kick")
    def kick(socket: ServerSocket, data: Any) -> Any:
        channel = data.get("channel") if isinstance(data, dict) else None
        if isinstance(channel, str):
            socket.kick_out(channel, "kicked")
        return None

    @server.handler("disconnectMe")
    def disconnect_me(socket: ServerSocket, data: Any) -> Any:
        data = data if isinstance(data, dict) else {}
        code, reason = data.get("code", 1000), data.get("reason", "")
        if type(code) is not int or not 1000 <= code <= 4999 or not isinstance(reason, str):
            return Reply(error="disconnectMe needs {code, reason}")
        # A plain-function handler's reply is queued before the disconnect takes effect.
        socket.disconnect(code, reason)
        return None

    @server.handler("emitBack")
    def emit_back(socket: ServerSocket, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("event"), str):
            return Reply(error="emitBack needs {event, data}")
        socket.transmit(data["event"], data.get("data"))
        return None

    # ---------------------------------------------------------------- middleware

    @server.middleware.middleware(Hook.HANDSHAKE_WS)
    def refuse_banned(req: HandshakeWSRequest) -> Block | None:
        params = req.request.query.split("&") if req.request.query else []
        if "ban=1" in params:
            return Block("You are banned", status_code=401)
        return None

    def token_channels(req: PublishInRequest | SubscribeRequest) -> list[str]:
        token = None if req.auth_token_expired else req.auth_token
        channels = token.get("channels") if token else None
        return channels if isinstance(channels, list) else []

    @server.middleware.middleware(Hook.PUBLISH_IN)
    def publish_in(req: PublishInRequest) -> Block | None:
        if req.channel in token_channels(req):
            return None
        return Block(f"You are not authorized to publish to {req.channel}")

    @server.middleware.middleware(Hook.SUBSCRIBE)
    def subscribe(req: SubscribeRequest) -> Block | None:
        if req.channel.startswith("private-") and req.channel not in token_channels(req):
            return Block(f"You are not authorized to subscribe to {req.channel}")
        return None

    @server.middleware.middleware(Hook.PUBLISH_OUT)
    def publish_out(req: PublishOutRequest) -> Block | Allow | None:
        if isinstance(req.data, dict) and req.data.get("secret") is True and not req.auth_token:
            return Block()  # silent: this subscriber gets nothing
        return None

    return server


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    transport = os.environ.get("TRANSPORT", "ws")
    server = build_server(os.environ.get("AUTH_KEY"), provider_from_env(os.environ))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await _serve(server, nursery, host, port, transport)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _serve(
    server: Server, nursery: trio.Nursery, host: str, port: int, transport: str
) -> None:
    """Start listening in ``nursery`` on the chosen transport and announce the port."""
    if transport == "trio-websocket":
        from trio_websocket import serve_websocket

        async def handler(request: Any) -> None:
            await server.handle_trio_websocket_request(request)

        ws_server = await nursery.start(
            lambda task_status: serve_websocket(
                handler, host, port, ssl_context=None, task_status=task_status
            )
        )
        bound = ws_server.port
    elif transport == "ws":
        listeners = await nursery.start(server.serve, host, port)
        bound = listeners[0].socket.getsockname()[1]
    else:
        sys.exit(f"unknown TRANSPORT {transport!r}")
    print(f"READY {bound}", flush=True)


if __name__ == "__main__":
    trio.run(main)
