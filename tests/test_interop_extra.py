"""Interop beyond the conformance suite, with the real npm ``socketcluster-client`` v14
(protocol 1) and v20 (protocol 2) against ``tests/interop/extra_app.py``:

* token renewal through ``renew_before_s`` + ``@server.renewal``: an idle client gets a new
  token (``#setAuthToken``) before its token's ``exp`` and stays authenticated past it; with a
  hook returning ``None`` it is deauthenticated at ``exp`` without sending anything;
* a ``HANDSHAKE_SC`` middleware block (examples.md §15, protocol.md §4.6, §8.2): with 4501 the
  client reports the error and does not reconnect; with the default 4008 it reconnects with
  back-off; a silent block shows up as ``SilentMiddlewareBlockedError``.

Every (client major, scenario) pair runs concurrently, once per module, in ``extra.js``.
"""

from __future__ import annotations

import json
import secrets
import sys
from typing import TYPE_CHECKING, Any

import pytest
from procs import INTEROP, REPO, Process, npm_ci, run_json_scripts

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.interop

APP = INTEROP / "extra_app.py"
CLIENT_JS = INTEROP / "extra.js"
MAJORS = (14, 20)
SCENARIOS = ("renew", "norenew", "reject-4501", "reject-default", "reject-silent")
READY_TIMEOUT_S = 20.0
BATCH_TIMEOUT_S = 30.0
LIFETIME_S = 3  # extra_app.TOKEN_LIFETIME_S
RENEW_BEFORE_MS = 1500  # extra_app.RENEW_BEFORE_S
LAZY = {"name": "TooLazyHandshakeError", "message": "SC handshake failed"}
LAZY_REASON = "TooLazyHandshakeError: SC handshake failed"
SILENT = {
    "name": "SilentMiddlewareBlockedError",
    "message": "Action was silently blocked by handshakeSC middleware",
}

Results = dict[tuple[int, str], dict[str, Any]]


def _run_all(node: str, url: str) -> Results:
    cmds = {
        (major, name): [node, str(CLIENT_JS), str(major), url, name]
        for major in MAJORS
        for name in SCENARIOS
    }
    return run_json_scripts(cmds, cwd=INTEROP, timeout_s=BATCH_TIMEOUT_S)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    node = npm_ci(INTEROP, "the interop tests")
    env = {"PORT": "0", "AUTH_KEY": secrets.token_hex(16), "HOST": "127.0.0.1"}
    stderr_path: Path = tmp_path_factory.mktemp("interop-extra") / "stderr"
    process = Process([sys.executable, str(APP)], cwd=REPO, env=env, stderr_path=stderr_path)
    try:
        port = process.wait_ready(READY_TIMEOUT_S, "extra_app.py")[0]
        yield _run_all(node, f"ws://127.0.0.1:{port}/socketcluster/")
    finally:
        code = process.stop()
    assert code == 0, f"extra_app.py exit {code}:\n{process.stderr_text()[-4000:]}"


@pytest.fixture(params=MAJORS, ids=[f"c{m}" for m in MAJORS])
def major(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def obs(results: Results, major: int, scenario: str) -> dict[str, Any]:
    result = results[major, scenario]
    context = json.dumps(result, indent=1)[:6000]
    assert "crash" not in result, f"extra.js crashed:\n{context}"
    assert "failure" not in result, f"scenario failed:\n{context}"
    return dict(result["obs"])


def test_renewal_keeps_an_idle_client_logged_in(results: Results, major: int) -> None:
    o = obs(results, major, "renew")
    assert o["login"] == {"ok": True, "data": None}
    first = o["first"]
    assert first["exp"] - first["iat"] == LIFETIME_S
    # Renewed while the client sent nothing: a new signed token each time, `authenticate` again
    assert o["authenticateCount"] >= 3, o["authMsAfterFirstExp"]
    assert o["signedTokens"][0] == o["firstSigned"]
    assert len(set(o["signedTokens"])) == len(o["signedTokens"])
    # the first renewal comes renew_before_s ahead of exp (not at or after it)
    first_renewal_ms = o["authMsAfterFirstExp"][1]
    assert -RENEW_BEFORE_MS - 600 <= first_renewal_ms < 0, o["authMsAfterFirstExp"]
    renewed = o["tokens"][1:]
    assert [t["renewals"] for t in renewed] == list(range(1, len(renewed) + 1))
    assert all(t["username"] == "carol" and t["renew"] is True for t in renewed)
    exps = [t["exp"] for t in o["tokens"]]
    assert exps == sorted(set(exps)), exps
    # still logged in past the first token's exp, on the same connection
    assert o["nowMsAfterFirstExp"] >= 1000
    assert o["deauthMsAfterFirstExp"] == []
    assert o["removeAuthTokenCount"] == 0
    assert o["disconnects"] == 0
    assert o["authState"] == "authenticated"
    assert o["signedNow"] == o["signedTokens"][-1] == o["storedToken"]
    who = o["whoami"]
    assert who["ok"] is True
    assert who["data"]["username"] == "carol"
    assert who["data"]["exp"] > first["exp"]
    assert who["data"]["renewals"] >= renewed[-1]["renewals"]


def test_renewal_hook_none_expires_at_exp(results: Results, major: int) -> None:
    o = obs(results, major, "norenew")
    assert o["login"] == {"ok": True, "data": None}
    assert o["first"]["exp"] - o["first"]["iat"] == LIFETIME_S
    assert o["authenticateCount"] == 1
    assert len(o["deauthMsAfterFirstExp"]) == 1
    # pushed by the server at exp (the client sent nothing)
    assert -500 <= o["deauthMsAfterFirstExp"][0] <= 1000, o["deauthMsAfterFirstExp"]
    assert o["removeAuthTokenCount"] == 1
    assert o["disconnects"] == 0
    assert o["authState"] == "unauthenticated"
    assert o["signedNow"] is None
    assert o["storedToken"] is None
    assert o["whoami"] == {"ok": True, "data": None}


def test_handshake_block_4501_does_not_reconnect(results: Results, major: int) -> None:
    o = obs(results, major, "reject-4501")
    assert o["firstAbort"] == {"code": 4501, "reason": LAZY_REASON}
    assert o["errors"][0] == LAZY
    # observed for 1.5 s with initialDelay 200 ms: no second attempt
    assert o["aborts"] == [o["firstAbort"]]
    assert o["connectingCount"] == 0
    assert o["connectCount"] == 0
    assert o["state"] == "closed"


def test_handshake_block_default_4008_reconnects_with_backoff(results: Results, major: int) -> None:
    o = obs(results, major, "reject-default")
    assert o["aborts"] == [{"code": 4008, "reason": LAZY_REASON}] * 3
    assert o["errors"][0] == LAZY
    assert o["connectCount"] == 0
    # initialDelay 200 ms, multiplier 1.5, randomness 0: 200 then 300 ms
    first, second = o["reconnectDelaysMs"]
    assert 180 <= first <= 1000, o["reconnectDelaysMs"]
    assert 280 <= second <= 1100, o["reconnectDelaysMs"]


def test_handshake_silent_block(results: Results, major: int) -> None:
    o = obs(results, major, "reject-silent")
    assert o["firstAbort"] == {"code": 4008, "reason": f"{SILENT['name']}: {SILENT['message']}"}
    assert o["errors"][0] == SILENT
    assert o["connectCount"] == 0
    assert o["state"] == "closed"
