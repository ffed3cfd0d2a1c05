"""The public API (``trio_socketcluster.__all__``) and the layering rule on imports.

The pure layers (``protocol/``, ``auth.py``, ``middleware.py``, ``errors.py``, ``config.py``)
must not import an event loop, a WebSocket library, sockets, a clock or randomness; the scan
reads their source (AST), so a lazy import inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trio_socketcluster

PACKAGE = Path(trio_socketcluster.__file__).parent

PURE_MODULES = sorted(
    [
        *(PACKAGE / "protocol").glob("*.py"),
        PACKAGE / "auth.py",
        PACKAGE / "middleware.py",
        PACKAGE / "errors.py",
        PACKAGE / "config.py",
    ]
)

FORBIDDEN = frozenset(
    {"trio", "wsproto", "trio_websocket", "socket", "time", "random", "secrets", "asyncio", "os"}
)


def test_every_exported_name_exists() -> None:
    for name in trio_socketcluster.__all__:
        assert hasattr(trio_socketcluster, name), name


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 "isort-style" order: CONSTANTS, then Classes, then everything else."""
    if len(name) > 1 and name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_unique() -> None:
    names = list(trio_socketcluster.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from trio_socketcluster import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(trio_socketcluster.__all__)


def test_public_classes_claim_the_package() -> None:
    for name in trio_socketcluster.__all__:
        obj = getattr(trio_socketcluster, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type):
            assert module is not None and module.startswith("trio_socketcluster"), name


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_pure_module_list_is_not_empty() -> None:
    assert len(PURE_MODULES) >= 8
    assert all(p.exists() for p in PURE_MODULES)


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_import_no_io_clock_or_randomness(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = _imported_roots(tree)
    if path.name != "__init__.py":  # protocol/__init__.py only re-exports (relative imports)
        assert roots, "the scan found no imports at all"
    assert not (roots & FORBIDDEN)


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_have_a_module_docstring(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert ast.get_docstring(tree)


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_relative_imports_stay_pure(path: Path) -> None:
    """A relative import from a pure module only reaches other pure modules (or the
    transport's pure ``base`` module, which holds shared dataclasses)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    allowed = {p.resolve() for p in PURE_MODULES} | {(PACKAGE / "transport" / "base.py").resolve()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = (node.module or "").split(".") if node.module else []
            target = base.joinpath(*parts)
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            if not node.module:
                candidates = [base / f"{alias.name}.py" for alias in node.names]
            found = [c.resolve() for c in candidates if c.exists()]
            assert found, (path, node.module)
            assert found[0] in allowed | {(PACKAGE / "protocol" / "__init__.py").resolve()}, (
                path,
                node.module,
            )


def test_transport_base_is_pure_too() -> None:
    path = PACKAGE / "transport" / "base.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not (_imported_roots(tree) & FORBIDDEN)
