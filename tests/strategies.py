"""Shared Hypothesis strategies: JSON values as a JavaScript peer can send and receive them.

* ``json_text()``: strings without lone surrogates (they cannot be encoded as UTF-8).
* ``json_numbers()``: ints within JS's safe range (``|n| <= 2**53 - 1``) and finite floats.
* ``json_values()``: any JSON value (null, bool, number, string, arrays, objects), nested.
* ``json_objects()``: JSON objects (``dict[str, Any]``), optionally without some keys.

Everything produced survives ``json.loads(json.dumps(v)) == v``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "MAX_SAFE_INTEGER",
    "json_numbers",
    "json_objects",
    "json_scalars",
    "json_text",
    "json_values",
]

#: ``Number.MAX_SAFE_INTEGER``: the largest int a JS peer reads back exactly.
MAX_SAFE_INTEGER = 2**53 - 1


def json_text(*, max_size: int = 20) -> st.SearchStrategy[str]:
    """Unicode text a JSON peer round-trips: every code point except lone surrogates."""
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


def json_numbers() -> st.SearchStrategy[int | float]:
    """Safe-range ints and finite floats."""
    return st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.floats(
        allow_nan=False, allow_infinity=False
    )


def json_scalars() -> st.SearchStrategy[Any]:
    """``None``, booleans, numbers and strings."""
    return st.none() | st.booleans() | json_numbers() | json_text()


def json_values(*, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value, nested arrays and objects included."""
    return st.recursive(
        json_scalars(),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(json_text(max_size=10), children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


def json_objects(
    *, exclude_keys: Collection[str] = (), max_size: int = 6, max_leaves: int = 20
) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose top-level keys avoid ``exclude_keys`` (e.g. ``exp``, ``iat``)."""
    excluded = frozenset(exclude_keys)
    keys = json_text(max_size=10).filter(lambda k: k not in excluded)
    return st.dictionaries(keys, json_values(max_leaves=max_leaves), max_size=max_size)
