"""The public API (``trio_socketcluster.__all__``) and the layering rules on imports.

The pure layers (``protocol/``, ``auth.py``, ``middleware.py``, ``errors.py``, ``config.py``,
``ratelimit.py``) must not import an event loop, a WebSocket library, sockets, a clock or
randomness; the scan reads their source (AST), so a lazy import inside a function is caught
too. No module of the package may take part in an import circle (lazy and ``TYPE_CHECKING``
imports count: a circle is a design smell even when Python tolerates it).
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
        PACKAGE / "ratelimit.py",
        PACKAGE / "limits.py",
        PACKAGE / "metrics.py",
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
            assert module is not None, name
            assert module.startswith("trio_socketcluster"), name


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


# ------------------------------------------------------------------------------ import circles


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent.joinpath(*name.split(".")) / "__init__.py").exists()


def _is_module(name: str) -> bool:
    return (
        _is_package(name) or PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py").exists()
    )


def _import_targets(path: Path) -> set[str]:
    """The package's modules that ``path`` names in an import (anywhere in the file). The
    parent packages that Python also runs on the way are not counted: a package's
    ``__init__`` importing its own modules is not a circle."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                bases = [".".join([*parts, *([node.module] if node.module else [])])]
            else:
                bases = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            if base != "trio_socketcluster" and not base.startswith("trio_socketcluster."):
                continue
            submodules = [f"{base}.{n}" for n in names if _is_module(f"{base}.{n}")]
            targets.update(submodules or [base])
            if len(submodules) < len(names) and _is_module(base):
                targets.add(base)  # some names come from the module (or package) itself
    targets.discard(name)
    return targets


def _import_graph() -> dict[str, set[str]]:
    return {_module_name(p): _import_targets(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_scan_sees_the_layers() -> None:
    graph = _import_graph()
    assert "trio_socketcluster.protocol.codec" in graph["trio_socketcluster.server.socket"]
    assert "trio_socketcluster.server.socket" in graph["trio_socketcluster.server.server"]
    assert "trio_socketcluster.errors" in graph["trio_socketcluster.protocol.events"]
    assert "trio_socketcluster.server.server" not in graph["trio_socketcluster.server.socket"]


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert _cycles(_import_graph()) == []
