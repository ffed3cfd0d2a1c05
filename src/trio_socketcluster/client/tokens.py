"""Where a client keeps its signed auth token between connections (and between runs).

``TokenStore`` is the tiny interface (``load``, ``save``, ``remove``; all async so a store may
do I/O); ``MemoryTokenStore`` (the default: the token lives as long as the store object) and
``FileTokenStore(path)`` (one file, written atomically with mode 0600) implement it. The
client loads the token before each handshake, saves it on ``#setAuthToken`` and on a
successful ``authenticate()``, and removes it on ``#removeAuthToken`` and ``deauthenticate()``,
as the JS clients do with ``localStorage``. It never checks expiry itself: the server's
``#removeAuthToken`` is what discards a dead token.
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
    """A token kept in one file (created with mode 0600, replaced atomically).

    Cancellation during ``save`` leaves either the old or the new file, never a partial one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = trio.Path(path)

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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token)
            os.replace(tmp, self.path)

        await trio.to_thread.run_sync(write)

    async def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.path.unlink()

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"
