"""Interop tests: the real npm ``socketcluster-client`` (v14 = protocol 1, v20 = protocol 2)
against the conformance application (its contract: ``docs/conformance.md``).

Which server is tested is chosen with the ``SC_INTEROP_SERVER`` environment variable:

* unset / ``python``: ``examples/conformance_app.py`` (ours), once with ``TRANSPORT=ws`` and once
  with ``TRANSPORT=trio-websocket``; both client majors.
* ``node``: the Node reference apps, ``benchmarks/node/conformance14.js`` for client 14 and
  ``conformance19.js`` for client 20 (the protocol-matched pairs).
* ``node14`` / ``node19``: only that reference app and only its matching client major (the other
  major is skipped: a v20 client against a protocol-1 server is a protocol mismatch).

Set ``SC_INTEROP_DUMP=<dir>`` to write every observation to ``<dir>/<server>-c<major>.json``.

All scenarios for one (server, client major) run concurrently in the first test that needs them
(``tests/interop/scenarios.js`` prints one JSON line each); every test then asserts on its own line.
Where our server intentionally differs from the references (no-handler invokes are answered at once,
token expiry is pushed at ``exp``), the assertion depends on ``IS_REFERENCE``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from procs import Process, npm_ci, run_json_scripts

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCENARIOS_JS = HERE / "scenarios.js"
NODE_APPS = {
    "node14": REPO / "benchmarks" / "node" / "conformance14.js",
    "node19": REPO / "benchmarks" / "node" / "conformance19.js",
}
PYTHON_APP = REPO / "examples" / "conformance_app.py"

SERVER_MODE = os.environ.get("SC_INTEROP_SERVER", "python").strip().lower() or "python"
IS_REFERENCE = SERVER_MODE.startswith("node")

READY_TIMEOUT = 20.0
SCENARIO_TIMEOUT_MS = 25_000  # the script's own guard
BATCH_TIMEOUT = 45.0  # hard limit for the whole concurrent batch

SCENARIOS = [
    "connect",
    "echo",
    "nohandler",
    "pubsub",
    "subscribe-private",
    "emitback",
    "kick",
    "disconnect-me",
    "login-whoami-reconnect",
    "logout",
    "expiry",
    "bad-token",
    "secret-publish-out",
    "banned",
    "reconnect-resubscribe",
]


def _targets() -> list[str]:
    if SERVER_MODE == "python":
        return ["python-ws", "python-trio-websocket"]
    if SERVER_MODE in ("node", "node14", "node19"):
        return [SERVER_MODE]
    raise RuntimeError(f"unknown SC_INTEROP_SERVER={SERVER_MODE!r} (python, node, node14, node19)")


def _server_key(target: str, major: int) -> str:
    """Which server process a (target, client major) pair talks to."""
    if target == "node":
        return "node14" if major == 14 else "node19"
    if target == "node14" and major != 14:
        pytest.skip("node14 reference speaks protocol 1 only; use SC_INTEROP_SERVER=node or node19")
    if target == "node19" and major != 20:
        pytest.skip("node19 reference speaks protocol 2 only; use SC_INTEROP_SERVER=node or node14")
    return target


# --------------------------------------------------------------------------------------------
# npm ci


@pytest.fixture(scope="session")
def node_modules() -> Path:
    npm_ci(HERE, "the interop tests")
    return HERE / "node_modules"


# --------------------------------------------------------------------------------------------
# Servers under test


@dataclass
class RunningServer:
    key: str
    process: Process
    port: int
    auth_key: str

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.process.proc

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socketcluster/"

    def stderr_tail(self) -> str:
        return self.process.stderr_text()[-4000:]


def _start_server(key: str, tmp: Path) -> RunningServer:
    auth_key = secrets.token_hex(16)
    env = {"PORT": "0", "AUTH_KEY": auth_key, "HOST": "127.0.0.1"}
    if key.startswith("python-"):
        if not PYTHON_APP.exists():
            pytest.skip(f"{PYTHON_APP.relative_to(REPO)} does not exist yet")
        env["TRANSPORT"] = key.removeprefix("python-")
        cmd = [sys.executable, str(PYTHON_APP)]
    else:
        cmd = ["node", str(NODE_APPS[key])]
    process = Process(cmd, cwd=REPO, env=env, stderr_path=tmp / f"{key}.stderr")
    port = process.wait_ready(READY_TIMEOUT, f"{key} server")[0]
    return RunningServer(key, process, port, auth_key)


class Servers:
    """Starts each server lazily, once per session; runs the scenario batches."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: dict[str, RunningServer] = {}
        self.batches: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}

    def get(self, key: str) -> RunningServer:
        if key not in self.servers:
            self.servers[key] = _start_server(key, self.tmp)
        server = self.servers[key]
        if server.proc.poll() is not None:
            pytest.fail(
                f"{key} server died (exit {server.proc.returncode}):\n{server.stderr_tail()}"
            )
        return server

    def results(self, key: str, major: int) -> dict[str, dict[str, Any]]:
        if (key, major) not in self.batches:
            self.batches[key, major] = self._run_batch(self.get(key), major)
        return self.batches[key, major]

    def _run_batch(self, server: RunningServer, major: int) -> dict[str, dict[str, Any]]:
        args = json.dumps({"authKey": server.auth_key, "timeout": SCENARIO_TIMEOUT_MS})
        out = run_json_scripts(
            {
                name: ["node", str(SCENARIOS_JS), str(major), server.url, name, args]
                for name in SCENARIOS
            },
            cwd=HERE,
            timeout_s=BATCH_TIMEOUT,
        )
        dump_dir = os.environ.get("SC_INTEROP_DUMP")
        if dump_dir:
            Path(dump_dir).mkdir(parents=True, exist_ok=True)
            dump = Path(dump_dir) / f"{server.key}-c{major}.json"
            dump.write_text(json.dumps(out, indent=1, sort_keys=True))
        return out

    def close(self) -> None:
        for server in self.servers.values():
            server.process.stop()


@pytest.fixture(scope="session")
def servers(node_modules: Path) -> Iterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="sc-interop-") as tmp:
        manager = Servers(Path(tmp))
        try:
            yield manager
        finally:
            manager.close()


@pytest.fixture(scope="session", params=_targets())
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[14, 20], ids=["c14", "c20"])
def major(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@dataclass
class Run:
    major: int
    server: RunningServer
    results: dict[str, dict[str, Any]]

    def obs(self, scenario: str) -> dict[str, Any]:
        result = self.results[scenario]
        context = json.dumps(result, indent=1)[:6000]
        assert "crash" not in result, f"scenarios.js crashed:\n{context}"
        assert "failure" not in result, f"scenario failed:\n{context}"
        assert not result.get("timedOut"), f"scenario timed out:\n{context}"
        return dict(result["obs"])


@pytest.fixture
def run(servers: Servers, target: str, major: int) -> Run:
    key = _server_key(target, major)
    return Run(major, servers.get(key), servers.results(key, major))


# --------------------------------------------------------------------------------------------
# Scenarios

ECHO_VALUE = {
    "a": 1,
    "f": 1.5,
    "neg": -7,
    "big": 9007199254740991,
    "s": 'h\u00e9llo \u2713 "q" \\',
    "t": True,
    "n": None,
    "list": [1, "two", {"three": [3, {}]}, [], False],
    "nested": {"deep": {"deeper": {"deepest": "x"}}},
}


def acked(result: dict[str, Any]) -> bool:
    """A successful invoke/publish that carried no data (the client resolves with undefined).

    An explicit ``null`` is tolerated here; ``test_no_data_responses_omit_data`` checks it strictly.
    """
    return result.get("ok") is True and result.get("data") is None and set(result) <= {"ok", "data"}


def error_message(error: Any) -> Any:
    """The message of an error as the client saw it: the references send an object
    ``{"message": ...}`` (the client hydrates an Error); a bare string on the wire shows up as
    ``{"string": ...}`` and fails here."""
    expected = f"expected an error object with a message, got {error!r}"
    assert isinstance(error, dict), expected
    assert "message" in error, expected
    return error["message"]


def test_connect(run: Run) -> None:
    o = run.obs("connect")
    assert o["idPresent"] is True
    assert o["isAuthenticated"] is False
    assert isinstance(o["pingTimeout"], int)
    assert o["pingTimeout"] > 8000
    assert o["hasAuthErrorKey"] is False
    assert o["authState"] == "unauthenticated"
    assert o["state"] == "open"
    assert o["disconnectCode"] == 1000
    assert o["stateAfter"] == "closed"


def test_echo_fail_badlogin(run: Run) -> None:
    o = run.obs("echo")
    assert o["echo"] == {"ok": True, "data": ECHO_VALUE}
    assert o["echoString"] == {"ok": True, "data": "plain"}
    assert o["echoNull"] == {"ok": True, "data": None}
    assert o["fail"] == {"ok": False, "error": {"name": "CustomError", "message": "it failed"}}
    assert o["badLogin"] == {"ok": False, "error": {"string": "Login failed"}}
    assert o["authState"] == "unauthenticated"


def test_no_data_responses_omit_data(run: Run) -> None:
    """Procedures that "respond with no data" must not send ``"data": null``: the references send
    ``{"rid": n}`` and the client resolves with undefined (null would be visible to apps)."""
    login = run.obs("pubsub")["login"]
    emit_back = run.obs("emitback")["reply"]
    assert login == {"ok": True}
    assert emit_back == {"ok": True}


def test_nohandler(run: Run) -> None:
    o = run.obs("nohandler")
    assert o["result"]["ok"] is False
    if IS_REFERENCE:
        # the reference servers never answer: the client times out after its ackTimeout (3 s)
        assert o["result"]["error"]["name"] == "TimeoutError"
        assert 2900 <= o["elapsedMs"] < 5000
    else:
        assert o["result"]["error"]["name"] == "NoHandlerError"
        assert o["elapsedMs"] < 1000
    assert o["echoAfter"] == {"ok": True, "data": "still-alive"}


def test_pubsub(run: Run) -> None:
    o = run.obs("pubsub")
    assert acked(o["login"]), o["login"]
    assert o["acks"] == [True] * 20
    assert o["received"] == list(range(20))
    assert o["forbidden"]["ok"] is False
    forbidden = error_message(o["forbidden"]["error"])
    assert forbidden == "You are not authorized to publish to alice-room"
    assert o["unauthenticated"]["ok"] is False
    anonymous = error_message(o["unauthenticated"]["error"])
    assert anonymous == "You are not authorized to publish to news"


def test_subscribe_private(run: Run) -> None:
    o = run.obs("subscribe-private")
    assert o["privateError"] is not None
    assert error_message(o["privateError"]) == "You are not authorized to subscribe to private-x"
    assert o["privateState"] == "unsubscribed"
    assert o["privateSubscribeEvent"] is False
    assert o["newsSubscribed"] is True
    assert o["newsState"] == "subscribed"


def test_emitback(run: Run) -> None:
    o = run.obs("emitback")
    assert acked(o["reply"]), o["reply"]
    assert o["received"] == {"x": 1}


def test_kick(run: Run) -> None:
    o = run.obs("kick")
    assert o["stateBefore"] == "subscribed"
    assert acked(o["reply"]), o["reply"]
    assert o["kickOut"] == {"channel": "news", "message": "kicked"}
    assert o["stateAfter"] == "unsubscribed"


def test_disconnect_me(run: Run) -> None:
    o = run.obs("disconnect-me")
    assert acked(o["reply"]), o["reply"]
    # C14 reads the reason from the #disconnect packet, C20 from the close frame
    assert o["disconnect"] == {"code": 4567, "reason": "bye"}
    assert o["connectCount"] == 1, "codes >= 4500 must not trigger a reconnect"
    assert o["connectingCount"] == 0
    assert o["state"] == "closed"


def test_login_whoami_reconnect(run: Run) -> None:
    o = run.obs("login-whoami-reconnect")
    alice = {"username": "alice", "channels": ["news", "alice-room"], "ttl": 86400}
    assert o["firstIsAuthenticated"] is False
    assert acked(o["login"]), o["login"]
    assert o["token"] == alice
    assert o["authState"] == "authenticated"
    assert o["storedTokenPresent"] is True
    assert o["whoami"] == alice
    assert o["reconnectIsAuthenticated"] is True
    assert o["reconnectAuthState"] == "authenticated"
    assert o["newsStateAfter"] == "subscribed"
    assert o["whoamiAfter"] == {"username": "alice"}
    assert acked(o["serverPublish"]), o["serverPublish"]
    assert o["received"] == [{"after": "reconnect"}]


def test_logout(run: Run) -> None:
    o = run.obs("logout")
    assert acked(o["login"]), o["login"]
    assert acked(o["logout"]), o["logout"]
    assert o["removeAuthToken"] is True
    assert o["deauthenticate"] is True
    assert o["authState"] == "unauthenticated"
    assert o["authToken"] is None
    assert o["storedToken"] is None
    assert o["whoami"] == {"ok": True, "data": None}


def test_expiry(run: Run) -> None:
    o = run.obs("expiry")
    assert acked(o["login"]), o["login"]
    assert o["ttl"] == 2
    assert o["deauthenticated"] is True
    assert o["removeAuthToken"] is True
    assert o["authState"] == "unauthenticated"
    assert o["storedToken"] is None
    assert o["whoami"] == {"ok": True, "data": None}
    # exp has one-second resolution: the token is expired once now > exp (up to 1 s early vs iat)
    assert o["msAfterExp"] >= -1000
    if IS_REFERENCE:
        # detected only on the next pong: within one pingInterval (8 s) after exp
        assert o["msAfterExp"] <= 8000 + 1500
    else:
        # our server pushes #removeAuthToken at exp
        assert o["msAfterExp"] <= 1500


def test_bad_token(run: Run) -> None:
    o = run.obs("bad-token")
    expected = {
        "garbage": ("AuthTokenInvalidError", {"invalid token", "jwt malformed"}),
        "expired": ("AuthTokenExpiredError", {"jwt expired"}),
        "wrongKey": ("AuthTokenInvalidError", {"invalid signature"}),
    }
    for case, (name, messages) in expected.items():
        c = o[case]
        assert c["isAuthenticated"] is False, case
        assert c["authError"]["name"] == name, case
        assert c["authError"]["message"] in messages, case
        assert c["authState"] == "unauthenticated", case
        assert c["removeAuthToken"] is True, case
        assert c["tokenRemoved"] is True, case
        assert c["storedToken"] is None, case
    valid = o["valid"]
    assert valid["isAuthenticated"] is True
    assert valid["authError"] is None
    assert valid["authState"] == "authenticated"
    assert valid["removeAuthToken"] is False
    assert valid["tokenRemoved"] is False
    assert valid["whoami"] == {"username": "mallory", "channels": ["news"]}


def test_secret_publish_out(run: Run) -> None:
    o = run.obs("secret-publish-out")
    assert acked(o["login"]), o["login"]
    assert acked(o["pub1"]), o["pub1"]
    assert acked(o["pub2"]), o["pub2"]
    assert o["receivedA"] == [{"n": 2}]
    assert o["receivedC"] == [{"secret": True, "n": 1}, {"n": 2}]


def test_banned(run: Run) -> None:
    o = run.obs("banned")
    assert o["firstEvent"] == "connectAbort"
    assert o["code"] == 1006
    assert o["connected"] is False


def test_reconnect_resubscribe(run: Run) -> None:
    o = run.obs("reconnect-resubscribe")
    assert acked(o["reply"]), o["reply"]
    assert o["disconnect"] == {"code": 4321, "reason": "again"}
    assert o["reconnectMs"] < 2000
    assert o["newsState"] == "subscribed"
    assert acked(o["serverPublish"]), o["serverPublish"]
    assert o["received"] == [{"n": "after"}]


def test_server_stops_cleanly(node_modules: Path, target: str) -> None:
    """SIGTERM must make the server exit 0 (checked on dedicated instances)."""
    keys = ["node14", "node19"] if target == "node" else [target]
    with tempfile.TemporaryDirectory(prefix="sc-interop-stop-") as tmp:
        for key in keys:
            server = _start_server(key, Path(tmp))
            assert server.process.stop() == 0, server.stderr_tail()
