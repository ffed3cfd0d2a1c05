"""A small chat on trio-socketcluster: the seed's two promises, in a browser.

Run it from a checkout, then open http://127.0.0.1:8000/::

    trio-socketcluster serve examples.chat:app --auth-key-file auth.key

The page loads the ``socketcluster-client`` v20 browser bundle from ``static/vendor/``: the
factory copies it there from ``tests/interop/node_modules`` (installed by the interop tests);
``python -m examples.chat.vendor`` runs ``npm ci`` there first when it is missing. The key file
(any secret) keeps logins valid across server restarts.

What the server does, all on the public API:

* ``login {username, password}`` checks a small user store (alice/alice-pass,
  bob/bob-pass) and, as in the seed, calls ``set_auth_token({username, channels})``;
  ``"Login failed"`` otherwise.
* ``logout`` calls ``deauthenticate()``: the client drops its stored token.
* Publish-in middleware, as in the seed: a socket may publish only to the channels in its
  token. A second one stamps each message with the sender's name and the server's time, so
  nobody can post as someone else.
* Subscribe middleware: only the channels in the token. When a socket loses its token (logout,
  expiry), it is kicked out of every channel.
* Tokens are short-lived (``CHAT_TOKEN_TTL`` seconds, default 120) and renewed through the
  renewal hook ``CHAT_RENEW`` seconds before they expire (default 30; ``0`` turns renewal
  off, and the page then returns to its login form when the token expires).

The page keeps the user logged in across lost connections (the client stores the token in
``localStorage`` and presents it on reconnect) and across tabs (see ``static/app.js``).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trio_socketcluster import Allow, Block, Hook, Reply, Server, ServerSocket
from trio_socketcluster.middleware import PublishInRequest, SubscribeRequest
from trio_socketcluster.server.http import static_files

__all__ = ["USERS", "app", "build_app"]

log = logging.getLogger("examples.chat")

STATIC = Path(__file__).resolve().parent / "static"
BUNDLE = STATIC / "vendor" / "socketcluster-client.min.js"  # made by ``examples.chat.vendor``

#: The user store: username -> (password, channels). A real application keeps salted hashes
#: in a database; the token design does not care where this comes from.
USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice-pass", ("general", "alice-room")),
    "bob": ("bob-pass", ("general", "random")),
}

MAX_TEXT = 500


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must not be negative")
    return value


def _claims(username: str) -> dict[str, Any]:
    """The token payload for ``username``, read from the user store each time."""
    return {"username": username, "channels": list(USERS[username][1])}


def _token_channels(token: Mapping[str, Any] | None) -> list[str]:
    channels = token.get("channels") if token else None
    return channels if isinstance(channels, list) else []


def build_app(
    *, token_ttl_s: float = 120, renew_before_s: float | None = 30, **options: Any
) -> Server:
    """The chat server. ``renew_before_s=None`` (or 0) lets tokens expire; ``options`` are
    ``ServerConfig`` fields."""
    if token_ttl_s <= 0:
        raise ValueError("token_ttl_s must be positive")
    if renew_before_s is not None and not 0 < renew_before_s < token_ttl_s:
        renew_before_s = None
    server = Server(auth_default_expiry_s=token_ttl_s, renew_before_s=renew_before_s, **options)
    server.http_handler = static_files(STATIC)

    # ---------------------------------------------------------------- procedures

    @server.handler("login")
    async def login(socket: ServerSocket, credentials: Any) -> Any:
        if not isinstance(credentials, dict):
            return Reply(error="Login failed")
        username, password = credentials.get("username"), credentials.get("password")
        user = USERS.get(username) if isinstance(username, str) else None
        if (
            user is None
            or not isinstance(password, str)
            or not hmac.compare_digest(password.encode(), user[0].encode())
        ):
            return Reply(error="Login failed")  # a plain string on the wire, as in the seed
        assert isinstance(username, str)
        await socket.set_auth_token(_claims(username))
        log.info("%s logged in on socket %s", username, socket.id)
        return None

    @server.handler("logout")
    def logout(socket: ServerSocket, _data: Any) -> None:
        socket.deauthenticate()

    @server.renewal
    def renew(_socket: ServerSocket, token: Mapping[str, Any]) -> dict[str, Any] | None:
        username = token.get("username")
        if not isinstance(username, str) or username not in USERS:
            return None  # the user is gone: let the token expire
        return _claims(username)  # a fresh token, with the user's current channels

    # ---------------------------------------------------------------- middleware

    @server.middleware.middleware(Hook.PUBLISH_IN)
    def only_token_channels(req: PublishInRequest) -> Block | None:
        # The seed's publish middleware.
        token = None if req.auth_token_expired else req.auth_token
        if req.channel in _token_channels(token):
            return None
        return Block(f"You are not authorized to publish to {req.channel}")

    @server.middleware.middleware(Hook.PUBLISH_IN)
    def stamp(req: PublishInRequest) -> Allow | Block:
        text = req.data.get("text") if isinstance(req.data, dict) else None
        if not isinstance(text, str) or not text.strip():
            return Block("A message is {text: a non-empty string}")
        assert req.auth_token is not None  # checked by only_token_channels
        message = {
            "from": req.auth_token.get("username"),
            "text": text.strip()[:MAX_TEXT],
            "at": round(req.now * 1000),
        }
        return Allow(data=message)

    @server.middleware.middleware(Hook.SUBSCRIBE)
    def subscribe_token_channels(req: SubscribeRequest) -> Block | None:
        token = None if req.auth_token_expired else req.auth_token
        if req.channel in _token_channels(token):
            return None
        return Block(f"You are not authorized to subscribe to {req.channel}")

    @server.on("deauthenticate")
    def leave_channels(socket: ServerSocket, old_token: Mapping[str, Any]) -> None:
        if socket.state == "open":
            socket.kick_out(None, "Logged out")
        log.info("%s logged out on socket %s", old_token.get("username"), socket.id)

    return server


def app() -> Server:
    """The ``trio-socketcluster serve examples.chat:app`` factory; reads the environment:
    ``CHAT_TOKEN_TTL`` (seconds, default 120) and ``CHAT_RENEW`` (seconds before expiry to
    renew, default 30; 0 turns renewal off)."""
    ttl = _env_seconds("CHAT_TOKEN_TTL", 120)
    renew = _env_seconds("CHAT_RENEW", 30)
    if ttl <= 0:
        raise SystemExit("CHAT_TOKEN_TTL must be positive")
    if renew and renew >= ttl:
        raise SystemExit("CHAT_RENEW must be shorter than CHAT_TOKEN_TTL (or 0 for no renewal)")
    from .vendor import ensure_bundle  # here: `python -m examples.chat.vendor` imports us

    if not ensure_bundle(install=False):  # copies from tests/interop/node_modules if there
        log.warning(
            "%s is missing: run `python -m examples.chat.vendor` (it needs npm) before "
            "opening the page",
            BUNDLE,
        )
    return build_app(token_ttl_s=ttl, renew_before_s=renew or None)
