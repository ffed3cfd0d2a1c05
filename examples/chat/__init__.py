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

* Channel history: every channel keeps its last ``HISTORY_SIZE`` messages for a day, so a tab
  that was disconnected gets the messages it missed when it subscribes again (the page uses
  ``recovery.js``, served at ``/recovery.js`` from the package), and the ``history
  {channel}`` procedure answers the recent ones, with the channel's position, to a page that
  has just opened (or that lost its position: a restart of this process loses the history).

The page keeps the user logged in across lost connections (the client stores the token in
``localStorage`` and presents it on reconnect) and across tabs (see ``static/app.js``).
"""

from __future__ import annotations

import hmac
import logging
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trio_socketcluster import (
    Allow,
    Block,
    HistoryBroker,
    HistoryConfig,
    HistoryPolicy,
    Hook,
    Reply,
    Server,
    ServerSocket,
)
from trio_socketcluster.history import Publication, RecoverRequest, Recovery
from trio_socketcluster.server.http import static_files

if TYPE_CHECKING:
    from collections.abc import Mapping

    from trio_socketcluster.middleware import PublishInRequest, SubscribeRequest
    from trio_socketcluster.transport.base import HandshakeRequest, Rejection

__all__ = ["USERS", "app", "build_app"]

log = logging.getLogger("examples.chat")

STATIC = Path(__file__).resolve().parent / "static"
#: The package's own static files: ``recovery.js``, the recovery helper for the JS clients.
PACKAGE_STATIC = Path(str(resources.files("trio_socketcluster") / "static"))
BUNDLE = STATIC / "vendor" / "socketcluster-client.min.js"  # made by ``examples.chat.vendor``

#: The user store: username -> (password, channels). A real application keeps salted hashes
#: in a database; the token design does not care where this comes from.
USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice-pass", ("general", "alice-room")),
    "bob": ("bob-pass", ("general", "random")),
}

MAX_TEXT = 500
HISTORY_SIZE = 200  #: messages kept per channel (each for a day)


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
    every_channel = {name for _password, channels in USERS.values() for name in channels}
    history = HistoryConfig(
        channels={name: HistoryPolicy(size=HISTORY_SIZE, ttl_s=86400) for name in every_channel}
    )
    server = Server(
        auth_default_expiry_s=token_ttl_s,
        renew_before_s=renew_before_s,
        history=history,
        **options,
    )
    page, helper = static_files(STATIC), static_files(PACKAGE_STATIC)

    async def http(request: HandshakeRequest) -> Rejection:
        return await (helper if request.path == "/recovery.js" else page)(request)

    server.http_handler = http

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

    @server.handler("history")
    async def recent(socket: ServerSocket, data: Any) -> Any:
        # The channel's recent messages and its position ({offset, epoch, messages}); the page
        # then subscribes asking to recover after that position: nothing missed in between.
        channel = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(channel, str) or channel not in _token_channels(socket.auth_token):
            return Reply(error=f"You are not authorized to read {channel}")
        broker = server.broker
        assert isinstance(broker, HistoryBroker)  # every broker that keeps history
        pubs, latest = await _recent(broker, channel, HISTORY_SIZE)
        messages = [{"offset": pub.offset, "data": pub.data} for pub in pubs]
        return Reply(data={"offset": latest.offset, "epoch": latest.epoch, "messages": messages})

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


async def _recover(broker: HistoryBroker, channel: str, since: RecoverRequest | None) -> Recovery:
    result = broker.recover(channel, since)
    return result if isinstance(result, Recovery) else await result


async def _recent(
    broker: HistoryBroker, channel: str, count: int
) -> tuple[tuple[Publication, ...], Recovery]:
    """The last ``count`` publications still kept (fewer when older ones expired), and the
    channel's position. A recovery is all or nothing, so halve the span until one succeeds."""
    latest = await _recover(broker, channel, None)
    since = max(latest.offset - count, 0)
    while since < latest.offset:
        rec = await _recover(broker, channel, RecoverRequest(since, latest.epoch))
        if rec.recovered:
            return rec.publications, rec
        since = (since + latest.offset + 1) // 2
    return (), latest


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
