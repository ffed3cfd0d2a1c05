"""Plain HTTP on the WebSocket port: serving a directory of static files.

``Server.http_handler`` receives every request that is not a WebSocket upgrade on the
server's path (``HandshakeRequest``: method, path, query, headers and a body of at most
``MAX_BODY_BYTES``, 64 KiB; a larger one is answered 413 before the handler runs) and returns
the response as a ``Rejection`` (status, text body, headers). ``static_files(directory)``
builds one for a demo page: GET and HEAD only (else 405; the answer to a HEAD has the
headers of the GET, ``Content-Length`` included, and no body), files under ``directory``
only (no ``..`` escapes, no symlinks out), text types only, 404 otherwise.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote

import trio

from ..transport.base import HandshakeRequest, Rejection

__all__ = ["UPGRADE_REQUIRED", "HttpHandler", "static_files"]

HttpHandler = Callable[[HandshakeRequest], Awaitable[Rejection]]

#: The answer to plain HTTP when nothing else answers.
UPGRADE_REQUIRED = Rejection(
    status=426,
    body="Upgrade Required: this is a WebSocket endpoint",
    headers=(("Upgrade", "websocket"),),
)

_TEXT_TYPES = {"application/javascript", "application/json", "image/svg+xml"}


def static_files(directory: str | Path, *, index: str = "index.html") -> HttpHandler:
    """An ``http_handler`` serving the text files under ``directory``."""
    root = Path(directory).resolve()

    async def handler(request: HandshakeRequest) -> Rejection:
        if request.method not in ("GET", "HEAD"):
            return Rejection(
                status=405, body="Method Not Allowed", headers=(("Allow", "GET, HEAD"),)
            )
        rel = unquote(request.path).lstrip("/") or index
        try:  # a NUL byte (ValueError) or a name too long (OSError) is not a file either
            target = (root / rel).resolve()
            if target.is_dir():
                target = target / index
        except (OSError, ValueError):
            return Rejection(status=404, body="Not Found")
        if root not in target.parents and target != root:
            return Rejection(status=404, body="Not Found")
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if not (ctype.startswith("text/") or ctype in _TEXT_TYPES):
            return Rejection(status=404, body="Not Found")
        try:
            body = await trio.Path(target).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return Rejection(status=404, body="Not Found")
        return Rejection(
            status=200,
            body=body,
            headers=(("Content-Type", f"{ctype}; charset=utf-8"), ("Cache-Control", "no-cache")),
        )

    return handler
