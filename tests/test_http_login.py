"""The HTTP login flow end to end: ``examples/http_login.py`` in a subprocess, a real HTTP
request (urllib) for the token, then the real npm ``socketcluster-client`` v14 (protocol 1) and
v20 (protocol 2) connecting with that token in its token storage (``tests/interop/http_login.js``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from procs import INTEROP, REPO, Process, npm_ci

from trio_socketcluster import AuthEngine, Keyring

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.interop

APP = REPO / "examples" / "http_login.py"
CLIENT_JS = INTEROP / "http_login.js"
READY_TIMEOUT_S = 20.0
CLIENT_TIMEOUT_S = 30.0


@dataclass
class App:
    process: Process
    http_port: int
    ws_port: int
    auth_key: str

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/socketcluster/"

    def stderr(self) -> str:
        return self.process.stderr_text()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    pytest.importorskip("hypercorn", reason="examples/http_login.py needs hypercorn")
    auth_key = secrets.token_hex(16)
    env = {"HTTP_PORT": "0", "WS_PORT": "0", "AUTH_KEY": auth_key, "HOST": "127.0.0.1"}
    stderr_path = tmp_path_factory.mktemp("http-login") / "stderr"
    process = Process([sys.executable, str(APP)], cwd=REPO, env=env, stderr_path=stderr_path)
    try:
        http_port, ws_port = process.wait_ready(READY_TIMEOUT_S, "http_login.py")
        running = App(process, http_port, ws_port, auth_key)
        yield running
    finally:
        code = process.stop(10)
    assert code == 0, f"exit {code}:\n{running.stderr()[-4000:]}"
    assert "Traceback" not in running.stderr(), running.stderr()[-4000:]


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the npm clients installed (``npm ci``, as test_interop does)."""
    return npm_ci(INTEROP, "the interop tests")


# ---------------------------------------------------------------------------------------------
# HTTP


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: Any


def http(
    app: App, path: str = "/login", body: bytes | None = None, method: str = "POST"
) -> HttpResponse:
    request = urllib.request.Request(
        f"http://127.0.0.1:{app.http_port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            status, headers, raw = error.code, dict(error.headers), error.read()
    return HttpResponse(status, {k.lower(): v for k, v in headers.items()}, json.loads(raw))


def login(app: App, username: str, password: str) -> HttpResponse:
    return http(app, body=json.dumps({"username": username, "password": password}).encode())


def token_for(app: App, username: str) -> str:
    response = login(app, username, f"{username}-pass")
    assert response.status == 200, response
    token = response.body["token"]
    assert isinstance(token, str)
    return token


def test_login_returns_a_token_signed_with_the_shared_key(app: App) -> None:
    before = time.time()
    response = login(app, "alice", "alice-pass")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert set(response.body) == {"token"}
    engine = AuthEngine(Keyring.symmetric(app.auth_key))
    claims = engine.verify(response.body["token"], now=time.time())
    assert claims["username"] == "alice"
    assert claims["channels"] == ["news", "alice-room"]
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert claims["exp"] - claims["iat"] == 86400  # the default expiry
    assert isinstance(claims["jti"], str)  # revocable like any token the server issues
    assert claims["jti"]


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "alice", "password": "wrong"},
        {"username": "alice", "password": "bob-pass"},
        {"username": "mallory", "password": "alice-pass"},
        {"username": "alice"},
        {"username": "alice", "password": None},
        {},
    ],
)
def test_wrong_credentials_get_401(app: App, credentials: dict[str, Any]) -> None:
    response = http(app, body=json.dumps(credentials).encode())
    assert response.status == 401
    assert response.body == {"error": "Login failed"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/login", None, 405),
        ("POST", "/login", b"not json", 400),
        ("POST", "/login", b'["alice", "alice-pass"]', 400),
        ("POST", "/login", b"\xff\xfe", 400),
        ("POST", "/elsewhere", b"{}", 404),
        ("POST", "/login", b" " * (17 * 1024), 413),
    ],
)
def test_malformed_requests(
    app: App, method: str, path: str, body: bytes | None, status: int
) -> None:
    response = http(app, path, body, method)
    assert response.status == status
    assert isinstance(response.body["error"], str)


# ---------------------------------------------------------------------------------------------
# The npm clients


def run_client(node: str, app: App, major: int, token: str) -> dict[str, Any]:
    proc = subprocess.run(
        [node, str(CLIENT_JS), str(major), app.ws_url, token],
        cwd=INTEROP,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    failure = f"http_login.js failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, failure
    assert lines, failure
    obs: dict[str, Any] = json.loads(lines[-1])
    assert not obs.get("timedOut"), obs
    return obs


@pytest.mark.parametrize("major", [14, 20], ids=["c14", "c20"])
@pytest.mark.parametrize("username", ["alice", "bob"])
def test_client_is_authenticated_in_the_handshake(
    node: str, app: App, major: int, username: str
) -> None:
    obs = run_client(node, app, major, token_for(app, username))
    assert obs["connect"] == {"isAuthenticated": True, "authError": None}
    assert obs["authState"] == "authenticated"
    assert obs["authToken"] == {"username": username}
    assert obs["whoami"] == {"ok": True, "data": {"username": username}}
    # The token's channels drive the publish-in middleware (the seed's example).
    assert obs["publishNews"] == {"ok": True}
    if username == "alice":
        assert obs["publishForbidden"] == {"ok": True}
    else:
        assert obs["publishForbidden"] == {
            "ok": False,
            "error": {
                "name": "Error",
                "message": "You are not authorized to publish to alice-room",
            },
        }
    assert obs["stored"] is True
    assert obs["removed"] is False
    assert obs["events"] == ["authenticate", "connect"]  # auth events fire before connect


@pytest.mark.parametrize("major", [14, 20], ids=["c14", "c20"])
def test_client_without_token_is_not_authenticated(node: str, app: App, major: int) -> None:
    obs = run_client(node, app, major, "")
    assert obs["connect"] == {"isAuthenticated": False, "authError": None}
    assert obs["whoami"] == {"ok": True, "data": None}
    assert obs["publishNews"]["ok"] is False
    assert obs["removed"] is False


@pytest.mark.parametrize("major", [14, 20], ids=["c14", "c20"])
def test_token_signed_with_another_key_is_refused_and_removed(
    node: str, app: App, major: int
) -> None:
    other = AuthEngine(Keyring.symmetric(secrets.token_hex(16)))
    forged = other.sign({"username": "alice", "channels": ["news"]}, now=time.time())
    obs = run_client(node, app, major, forged)
    assert obs["connect"] == {
        "isAuthenticated": False,
        "authError": {"name": "AuthTokenInvalidError", "message": "invalid signature"},
    }
    assert obs["whoami"] == {"ok": True, "data": None}
    assert obs["removed"] is True  # #removeAuthToken: the client drops the bad token
    assert "removeAuthToken" in obs["events"]
