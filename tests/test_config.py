"""Configuration resolved once: the key rules, the cluster key, the one leeway, a key handed
over explicitly (``Server.install_auth_key``), and no ``os.environ`` writes anywhere in
``src/``."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import pytest

from trio_socketcluster import AuthEngine, Keyring, Server
from trio_socketcluster.config import (
    AUTH_KEY_ENV,
    CLUSTER_KEY_ENV,
    KEY_RECIPE,
    MIN_HS256_KEY_BYTES,
    ServerConfig,
    check_hs256_key,
    resolve_cluster_key,
)
from trio_socketcluster.errors import AuthTokenInvalidError, InvalidOptionsError

SRC = Path(__file__).resolve().parent.parent / "src"
GOOD_KEY = "k" * MIN_HS256_KEY_BYTES

# ----------------------------------------------------------------------------- key rules


def test_a_32_byte_key_passes() -> None:
    assert check_hs256_key(GOOD_KEY, source="the file") == GOOD_KEY


def test_a_short_key_is_refused_with_a_recipe() -> None:
    with pytest.raises(InvalidOptionsError) as info:
        check_hs256_key("abc", source="the auth key file a.key")
    assert str(info.value) == (
        "the auth key file a.key holds a 3-byte key; an HS256 key must be at least 32 bytes "
        f"(RFC 7518 section 3.2); make one with: {KEY_RECIPE}"
    )


def test_bytes_not_characters_are_counted() -> None:
    with pytest.raises(InvalidOptionsError, match="holds a 31-byte key"):
        check_hs256_key("é" * 15 + "x", source="k")  # 16 characters, 31 bytes
    assert check_hs256_key("é" * 16, source="k")  # 16 characters, 32 bytes


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(InvalidOptionsError, match=r"^\$X is empty; make a key with: python"):
        check_hs256_key("", source="$X")


def test_the_recipe_makes_a_key_that_passes() -> None:
    import secrets

    assert "secrets.token_hex(32)" in KEY_RECIPE
    check_hs256_key(secrets.token_hex(32), source="recipe")


def test_the_environment_variable_names() -> None:
    assert AUTH_KEY_ENV == "TRIO_SOCKETCLUSTER_AUTH_KEY"
    assert CLUSTER_KEY_ENV == "TRIO_SOCKETCLUSTER_CLUSTER_KEY"


# ----------------------------------------------------------------------------- cluster key


def test_cluster_key_precedence() -> None:
    assert resolve_cluster_key({CLUSTER_KEY_ENV: "c"}, "a") == "c"
    assert resolve_cluster_key({}, "a") == "a"
    assert resolve_cluster_key({CLUSTER_KEY_ENV: ""}, b"a") == b"a"
    assert resolve_cluster_key({AUTH_KEY_ENV: "ignored"}, None) is None


# ----------------------------------------------------------------------------- one leeway


def _engine(leeway_s: float) -> AuthEngine:
    return AuthEngine(Keyring.symmetric(GOOD_KEY), leeway_s=leeway_s)


def test_the_built_engine_takes_the_configured_leeway() -> None:
    server = Server(auth_key=GOOD_KEY, auth_leeway_s=7)
    assert server.auth.leeway_s == 7 == server.config.auth_leeway_s


def test_a_given_engine_sets_the_leeway_and_the_config_follows() -> None:
    server = Server(auth=_engine(5))
    assert server.config.auth_leeway_s == 5 == server.auth.leeway_s
    server = Server(config=ServerConfig(), auth=_engine(5))
    assert server.config.auth_leeway_s == 5


def test_a_matching_leeway_beside_an_engine_is_accepted() -> None:
    assert Server(auth=_engine(5), auth_leeway_s=5).auth.leeway_s == 5


@pytest.mark.parametrize("given", [0, 3])
def test_a_conflicting_leeway_is_refused(given: float) -> None:
    with pytest.raises(InvalidOptionsError) as info:
        Server(auth=_engine(5), auth_leeway_s=given)
    assert str(info.value) == (
        f"auth_leeway_s={given} disagrees with the leeway_s=5 of the given auth engine: "
        "set it on the AuthEngine only"
    )
    with pytest.raises(InvalidOptionsError, match="disagrees"):
        Server(config=ServerConfig(auth_leeway_s=3), auth=_engine(5))


# ----------------------------------------------------------------------------- install_auth_key


def test_an_installed_key_replaces_the_random_one() -> None:
    server = Server(auth_default_expiry_s=60, auth_leeway_s=2)
    before = server.auth
    assert server.install_auth_key(GOOD_KEY) is True
    assert server.auth is not before
    assert (server.auth.leeway_s, server.auth.default_expiry_s) == (2, 60)
    now = time.time()
    token = server.auth.sign({"username": "a"}, now=now)
    assert _engine(0).verify(token, now=now)["username"] == "a"
    with pytest.raises(AuthTokenInvalidError):
        before.verify(token, now=now)
    assert server.install_auth_key("x" * 40) is False  # installed once: the key stays


@pytest.mark.parametrize(
    "options",
    [{"auth_key": "the app's own key"}, {"auth": AuthEngine(Keyring.symmetric("own"))}],
    ids=["auth_key", "auth"],
)
def test_the_applications_own_key_wins(options: dict[str, Any]) -> None:
    server = Server(**options)
    engine = server.auth
    assert server.install_auth_key(GOOD_KEY) is False
    assert server.auth is engine


def test_the_cluster_key_follows_the_installed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("coredis")
    from trio_socketcluster.brokers.redis import RedisBroker, derive_bus_key

    monkeypatch.delenv(CLUSTER_KEY_ENV, raising=False)
    server = Server()
    with pytest.raises(InvalidOptionsError, match="cluster key"):
        server.set_broker("redis://127.0.0.1:1/0")  # a random key cannot be shared
    server.install_auth_key(GOOD_KEY)
    server.set_broker("redis://127.0.0.1:1/0")
    assert isinstance(server.broker, RedisBroker)
    assert server.broker._key == derive_bus_key(GOOD_KEY)


# ----------------------------------------------------------------------------- no environ writes

_MUTATORS = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _is_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _environ_writes(tree: ast.AST) -> list[int]:
    lines: list[int] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = list(node.targets) if isinstance(node, ast.Assign | ast.Delete) else [
                node.target
            ]  # fmt: skip
        if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
            lines.append(targets[0].lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _MUTATORS and _is_environ(node.func.value):
                lines.append(node.lineno)
            if node.func.attr in {"putenv", "unsetenv"}:
                lines.append(node.lineno)
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in {"environ", "putenv", "unsetenv"} for alias in node.names)
        ):
            lines.append(node.lineno)  # an alias would hide writes from this scan
    return sorted(lines)


def test_the_scan_sees_environ_writes() -> None:
    source = (
        "import os\nos.environ['A'] = '1'\nos.environ.update(B='2')\ndel os.environ['A']\n"
        "os.putenv('C', '3')\nfrom os import environ\nos.environ.get('D')\nx = dict(os.environ)\n"
    )
    assert _environ_writes(ast.parse(source)) == [2, 3, 4, 5, 6]


def test_src_never_writes_os_environ() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    found = {
        str(path.relative_to(SRC)): lines
        for path in files
        if (lines := _environ_writes(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert found == {}
