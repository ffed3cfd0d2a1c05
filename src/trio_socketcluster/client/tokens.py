"""Where a client keeps its signed auth token between connections (and between runs).

``TokenStore`` is the tiny interface (``load``, ``save``, ``remove``; all async so a store may
do I/O); ``MemoryTokenStore`` (the default: the token lives as long as the store object) and
``FileTokenStore(path)`` (one file, written atomically with mode 0600) implement it. The
client loads the token before each handshake, saves it on ``#setAuthToken`` and on a
successful ``authenticate()``, and removes it on ``#removeAuthToken`` and ``deauthenticate()``,
as the JS clients do with ``localStorage``. It never checks expiry itself: the server's
``#removeAuthToken`` is what discards a dead token.

A store that raises ends the client: ``connect`` raises that exception (see ``client``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol, runtime_checkable

import trio

__all__ = ["FileTokenStore", "MemoryTokenStore", "TokenStore"]


@runtime_checkable
class TokenStore(Protocol):
    """Storage for one signed token (a JWT string)."""

    async def load(self) -> str | None:
        """The stored token, or ``None``."""
        ...

    async def save(self, token: str) -> None:
        """Store ``token``, replacing any previous one."""
        ...

    async def remove(self) -> None:
        """Forget the stored token (no error if there is none)."""
        ...


class MemoryTokenStore:
    """A token kept in memory. Share one instance between clients to share the token."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    async def load(self) -> str | None:
        await trio.lowlevel.checkpoint()
        return self.token

    async def save(self, token: str) -> None:
        await trio.lowlevel.checkpoint()
        self.token = token

    async def remove(self) -> None:
        await trio.lowlevel.checkpoint()
        self.token = None

    def __repr__(self) -> str:
        return f"MemoryTokenStore(token={'<set>' if self.token else None})"


class FileTokenStore:
    """A token kept in one file.

    ``path`` may start with ``~`` (expanded to the user's home directory, as by
    ``os.path.expanduser``); ``self.path`` is the expanded path. ``save`` writes the token
    (the JWT, no newline) to a temporary file ``.<name>.<pid>.tmp`` next to it, created with
    mode **0600** (owner read/write only: a token is a credential), then renames it over
    ``path`` in one step, so the file keeps mode 0600 and readers never see a partial token;
    missing parent directories are created with mode 0700. ``remove`` deletes the file.
    ``load`` returns ``None`` if the file does not exist or is empty. I/O errors (no
    permission, disk full) are raised as the ``OSError`` they are.

    Cancellation during ``save`` leaves either the old or the new file, never a partial one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = trio.Path(os.path.expanduser(os.fspath(path)))

    async def load(self) -> str | None:
        try:
            text = await self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        token = text.strip()
        return token or None

    async def save(self, token: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

        def write() -> None:
            os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # even if a stale temporary file had another mode
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token)
            os.replace(tmp, self.path)

        await trio.to_thread.run_sync(write)

    async def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.path.unlink()

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"
