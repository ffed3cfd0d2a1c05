"""Which sockets of this process are authenticated as whom: the one index that
``transmit_to_user``, ``disconnect_user``, ``deauthenticate_user`` and revocation share.

Sockets are indexed by their token's *user* (the claim ``user_claim`` names, ``username``
by default; only string values count) and by its ``jti``. The socket tells the index of
every token change (``changed``) and of its end (``remove``); lookups cost one dict access
and return the sockets in the order they were indexed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Mapping

S = TypeVar("S")

__all__ = ["TokenIndex"]


class TokenIndex(Generic[S]):
    """Sockets (any hashable handle) by user and by jti of their current token."""

    __slots__ = ("_by_jti", "_by_user", "user_claim")

    def __init__(self, user_claim: str) -> None:
        self.user_claim = user_claim
        self._by_user: dict[str, dict[S, None]] = {}
        self._by_jti: dict[str, dict[S, None]] = {}

    def _keys(self, token: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
        if token is None:
            return None, None
        user, jti = token.get(self.user_claim), token.get("jti")
        return (
            user if isinstance(user, str) else None,
            jti if isinstance(jti, str) else None,
        )

    @staticmethod
    def _drop(table: dict[str, dict[S, None]], key: str | None, socket: S) -> None:
        if key is None:
            return
        entries = table.get(key)
        if entries is not None:
            entries.pop(socket, None)
            if not entries:
                del table[key]

    def changed(
        self, socket: S, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        """``socket``'s token went from ``old`` to ``new`` (either may be ``None``)."""
        old_user, old_jti = self._keys(old)
        new_user, new_jti = self._keys(new)
        if old_user != new_user:
            self._drop(self._by_user, old_user, socket)
        if old_jti != new_jti:
            self._drop(self._by_jti, old_jti, socket)
        if new_user is not None:
            self._by_user.setdefault(new_user, {})[socket] = None
        if new_jti is not None:
            self._by_jti.setdefault(new_jti, {})[socket] = None

    def remove(self, socket: S, token: Mapping[str, Any] | None) -> None:
        """``socket`` (whose token is ``token``) is gone."""
        self.changed(socket, token, None)

    def of_user(self, user: str) -> list[S]:
        """The sockets authenticated as ``user`` now (a copy: safe to act on while iterating)."""
        return list(self._by_user.get(user, ()))

    def of_jti(self, jti: str) -> list[S]:
        """The sockets whose token has this ``jti``."""
        return list(self._by_jti.get(jti, ()))

    def users(self) -> int:
        """How many distinct users have at least one socket."""
        return len(self._by_user)
