"""A small demo application, served by ``trio-socketcluster serve trio_socketcluster.demo:app``.

Embedded defaults: in-process broker, a random auth key (unless the command line hands one
over: ``--auth-key-file`` or ``$TRIO_SOCKETCLUSTER_AUTH_KEY``), 127.0.0.1:8000, path
``/socketcluster/``.

* ``login {username, password}``: any username with the password ``demo`` logs in; the token
  carries ``{username, channels: ["chat", "news"]}`` and lasts one hour.
* ``whoami``, ``echo``, ``logout``.
* Anyone may subscribe; only authenticated sockets may publish, and only to the channels
  listed in their token (the seed's publish middleware, built in as ``token_channels``).
"""

from __future__ import annotations

from typing import Any

from .middleware import Hook, token_channels
from .server import Reply, Server, ServerSocket

__all__ = ["app", "build_app"]


def build_app(**options: Any) -> Server:
    """The demo server; ``options`` are ``ServerConfig`` fields."""
    server = Server(**options)
    server.add_middleware(Hook.PUBLISH_IN, token_channels())

    @server.handler("login")
    async def login(socket: ServerSocket, credentials: Any) -> Any:
        if not isinstance(credentials, dict) or credentials.get("password") != "demo":
            return Reply(error="Login failed")
        username = str(credentials.get("username") or "anonymous")[:64]
        await socket.set_auth_token(
            {"username": username, "channels": ["chat", "news"]}, expires_in_s=3600
        )
        return None

    @server.handler("whoami")
    def whoami(socket: ServerSocket, _data: Any) -> Any:
        return Reply(data=socket.auth_token)

    @server.handler("echo")
    def echo(_socket: ServerSocket, data: Any) -> Any:
        return Reply(data=data)

    @server.handler("logout")
    def logout(socket: ServerSocket, _data: Any) -> None:
        socket.deauthenticate()

    return server


app = build_app()
