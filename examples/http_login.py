"""Log in over HTTP, then connect with the token: the seed's "HTTP-based flow" on Trio.

One process, one Trio nursery, two servers sharing one ``AuthEngine``:

* an HTTP server (Hypercorn's Trio worker, ``hypercorn.trio.serve``) running a small plain ASGI
  app: ``POST /login`` with the JSON body ``{"username": ..., "password": ...}`` answers
  ``200 {"token": "<signed JWT>"}``, or ``401 {"error": "Login failed"}``;
* the SocketCluster server. A client that puts that token in its token storage before
  connecting is authenticated in the handshake (``isAuthenticated: true`` in its ``connect``
  status), because the engine that signed the token is the one that verifies it.

The WebSocket side has a ``whoami`` procedure (``{"username": ...}``, or ``null`` when not
authenticated) and the seed's publish rule: a client may only publish to the channels listed
in its token (the built-in ``token_channels`` middleware).

Environment: ``HTTP_PORT`` and ``WS_PORT`` (``0`` picks a free port; defaults 8080 and 8000),
``AUTH_KEY`` (the HS256 secret; a random one when unset), ``HOST`` (default 127.0.0.1).
Prints ``READY <http_port> <ws_port>`` once both listen. SIGINT/SIGTERM stop it gracefully:
Hypercorn finishes its requests, then every WebSocket is closed with 1001.

Needs Hypercorn (``pip install hypercorn``).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import signal
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_http

from trio_socketcluster import AuthEngine, Hook, Keyring, Reply, Server, ServerSocket
from trio_socketcluster.middleware import token_channels

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

log = logging.getLogger("http_login")

#: username -> (password, channels it may publish to). A real application keeps password
#: *hashes* (argon2, scrypt) in a database; the comparison below is constant-time either way.
USERS: Mapping[str, tuple[str, list[str]]] = {
    "alice": ("alice-pass", ["news", "alice-room"]),
    "bob": ("bob-pass", ["news"]),
}

MAX_BODY_BYTES = 16 * 1024
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),  # a response carrying a credential must not be cached
]


def check_credentials(body: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """The (username, channels) of valid credentials, else ``None``. Unknown users cost the
    same comparison as known ones, so response times do not reveal which names exist."""
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    expected, channels = USERS.get(username, ("", []))
    ok = hmac.compare_digest(password.encode(), (expected or secrets.token_hex(16)).encode())
    return (username, channels) if ok and expected else None


class LoginApp:
    """The ASGI application: ``POST /login`` has the SocketCluster server issue a token.

    ``issue_token`` signs with the server's ``AuthEngine`` on the server's clock, and gives
    the token a fresh ``jti`` (so it can be revoked like any token the server issues).
    """

    def __init__(self, issue_token: Callable[[dict[str, Any]], str]) -> None:
        self.issue_token = issue_token

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # no WebSockets here: they go to the SocketCluster port
        if scope["path"] != "/login":
            await _respond(send, 404, {"error": "Not found"})
            return
        if scope["method"] != "POST":
            await _respond(send, 405, {"error": "Use POST"}, [(b"allow", b"POST")])
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, {"error": "Request body too large"})
            return
        try:
            credentials = json.loads(body)
        except ValueError:  # includes UnicodeDecodeError
            credentials = None
        if not isinstance(credentials, dict):
            await _respond(send, 400, {"error": "Expected a JSON object"})
            return
        user = check_credentials(credentials)
        if user is None:
            await _respond(send, 401, {"error": "Login failed"})
            return
        username, channels = user
        # The same claims the WebSocket flow's socket.set_auth_token() would sign; iat, exp
        # (default_expiry_s, one day) and jti are added by the server.
        token = self.issue_token({"username": username, "channels": channels})
        await _respond(send, 200, {"token": token})


async def _read_body(receive: ASGIReceiveCallable) -> bytes | None:
    """The request body, or ``None`` once it exceeds ``MAX_BODY_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # http.disconnect: the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: ASGISendCallable,
    status: int,
    body: object,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_JSON_HEADERS,
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def build_server(auth: AuthEngine) -> Server:
    """The SocketCluster server, verifying with ``auth`` (the engine the HTTP app signs with)."""
    server = Server(auth=auth)

    @server.handler("whoami")
    def whoami(socket: ServerSocket, _data: Any) -> Any:
        token = socket.auth_token
        return Reply(data={"username": token.get("username")} if token else None)

    # The seed's publish-in rule: publish only to the channels listed in the token.
    server.add_middleware(Hook.PUBLISH_IN, token_channels())
    return server


def make_auth(key: str | None) -> AuthEngine:
    if not key:
        log.warning("AUTH_KEY is not set: using a random key; tokens die with this process")
        key = secrets.token_hex(32)
    return AuthEngine(Keyring.symmetric(key), algorithm="HS256")


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    http_port = int(os.environ.get("HTTP_PORT", "8080"))
    ws_port = int(os.environ.get("WS_PORT", "8000"))
    auth = make_auth(os.environ.get("AUTH_KEY"))
    server = build_server(auth)

    config = Config()
    config.bind = [f"{host}:{http_port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our logging set-up
    stop_http = trio.Event()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve, host, ws_port)
            bound_ws = listeners[0].socket.getsockname()[1]
            http_done = trio.Event()

            async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                try:
                    await serve_http(
                        LoginApp(server.issue_token),
                        config,
                        shutdown_trigger=stop_http.wait,
                        task_status=task_status,
                    )
                finally:
                    http_done.set()

            binds: list[str] = await nursery.start(run_http)
            bound_http = int(binds[0].rsplit(":", 1)[1])
            print(f"READY {bound_http} {bound_ws}", flush=True)

            async for _ in signals:
                break
            stop_http.set()  # Hypercorn: stop accepting, finish requests (graceful_timeout)
            await http_done.wait()
            nursery.cancel_scope.cancel()  # SocketCluster: close every socket with 1001


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trio.run(main)
