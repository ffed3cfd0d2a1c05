"""The seed's two promises in a real browser: the chat example (``examples/chat``) served by
``trio-socketcluster serve examples.chat:app``, driven by headless Debian chromium through
``playwright-core`` (``tests/browser/run.js``).

Each test starts the server as a subprocess through the CLI, on a free port, with an auth key
file (so that tokens survive a restart), and runs one scenario of the driver. The driver asks
for the server to be stopped and started again (same port, same key) over its stdio.
Screenshots of every step go to ``test-artifacts/browser/``.

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``CHROMIUM_PATH`` overrides) and
node/npm (``npm ci`` installs playwright-core here; ``python -m examples.chat.vendor`` copies
the socketcluster-client v20 browser bundle next to the page).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from procs import Lines, free_port, npm_ci, stop

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUN_JS = HERE / "run.js"
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
SCENARIO_TIMEOUT_S = 90.0

#: Scenario -> environment of the chat server. The default token lasts 120 s, renewed 30 s
#: before expiry; expiry runs with a 3 s token and no renewal, renewal with a 4 s token
#: renewed 2 s before it expires.
SCENARIOS: dict[str, dict[str, str]] = {
    "login-chat": {},
    "reconnect": {},
    "tabs": {},
    "expiry": {"CHAT_TOKEN_TTL": "3", "CHAT_RENEW": "0"},
    "renewal": {"CHAT_TOKEN_TTL": "4", "CHAT_RENEW": "2"},
    "history": {},
}


# --------------------------------------------------------------------------------------------
# Set-up: chromium, playwright-core, the client bundle


@pytest.fixture(scope="session")
def browser_ready() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium (or set CHROMIUM_PATH)")
    npm_ci(HERE, "the browser tests")
    proc = subprocess.run(
        [sys.executable, "-m", "examples.chat.vendor"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"vendoring the socketcluster-client bundle failed:\n{proc.stderr}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------------------------
# The chat server, through the CLI


class ChatServer:
    """``trio-socketcluster serve examples.chat:app`` on one port; stop and start again."""

    def __init__(self, port: int, key_file: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = port
        self.key_file = key_file
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        self.env.pop("TRIO_SOCKETCLUSTER_AUTH_KEY", None)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "trio_socketcluster", "serve", "examples.chat:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--auth-key-file", str(self.key_file),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        # The CLI prints its serving line once the port is bound, but that line goes to the
        # shared log file here: wait until the port accepts instead.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the chat server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                pass
            else:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the chat server did not listen within {READY_TIMEOUT_S}s")
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int | None:
        """Ctrl+C (by default), as a user stops it: a graceful shutdown (every socket closed
        with 1001). Returns the exit status (``None`` if it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = stop(proc, sig, STOP_TIMEOUT_S)
        if code == -signal.SIGKILL:
            pytest.fail(f"the chat server ignored {sig.name} for {STOP_TIMEOUT_S}s")
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture
def chat_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatServer]:
    scenario: str = request.param
    key_file = tmp_path / "auth.key"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    server = ChatServer(free_port(), key_file, SCENARIOS[scenario], tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# The driver


def run_driver(scenario: str, server: ChatServer) -> dict[str, Any]:
    """Run one scenario; serve its control requests; return its result line."""
    proc = subprocess.Popen(
        ["node", str(RUN_JS), scenario, server.url, str(ARTIFACTS)],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    assert proc.stderr is not None
    lines = Lines(proc.stdout)
    steps: list[str] = []
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    try:
        while result is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"{scenario}: no result within {SCENARIO_TIMEOUT_S}s; steps {steps}")
            if line is None:
                break
            message = json.loads(line)
            if "control" in message:
                match message["control"]:
                    case "stop-server":
                        server.stop()
                    case "start-server":
                        server.start()
                    case other:
                        pytest.fail(f"unknown control request {other!r}")
                proc.stdin.write("ok\n")
                proc.stdin.flush()
            elif "step" in message:
                steps.append(message["step"])
            elif "result" in message:
                result = message
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    proc.stderr.close()
    if result is None:
        pytest.fail(f"{scenario}: the driver exited ({proc.returncode}), no result:\n{stderr}")
    if result["result"] != "ok":
        pytest.fail(
            f"{scenario} failed after steps {steps}:\n{result.get('error')}\n"
            f"page errors: {result.get('pageErrors')}\nserver log:\n{server.log()}"
        )
    assert proc.returncode == 0, stderr
    return result


# --------------------------------------------------------------------------------------------
# The scenarios (see run.js for each one's steps)


@pytest.mark.parametrize("chat_server", ["login-chat"], indirect=True)
def test_login_send_and_receive(browser_ready: None, chat_server: ChatServer) -> None:
    """Log in (after a wrong password), channels from the token, alice and bob chat; the
    seed's publish middleware refuses a channel outside the token."""
    run_driver("login-chat", chat_server)


@pytest.mark.parametrize("chat_server", ["reconnect"], indirect=True)
def test_lost_connection_keeps_the_login(browser_ready: None, chat_server: ChatServer) -> None:
    """The server stops and starts on the same port: the page reconnects, is authenticated from
    the stored token and never shows the login form; a reload goes straight to the chat."""
    run_driver("reconnect", chat_server)


@pytest.mark.parametrize("chat_server", ["tabs"], indirect=True)
def test_two_tabs_share_the_login(browser_ready: None, chat_server: ChatServer) -> None:
    """Logging in in one tab authenticates the other without typing; logging out in one logs
    both out (on the server too)."""
    run_driver("tabs", chat_server)


@pytest.mark.parametrize("chat_server", ["expiry"], indirect=True)
def test_token_expiry_logs_out(browser_ready: None, chat_server: ChatServer) -> None:
    """A short-lived token and no renewal: both tabs show the login form at expiry, with no
    user action."""
    run_driver("expiry", chat_server)


@pytest.mark.parametrize("chat_server", ["renewal"], indirect=True)
def test_token_renewal_keeps_the_login(browser_ready: None, chat_server: ChatServer) -> None:
    """The renewal hook replaces the token before it expires; the page stays logged in."""
    run_driver("renewal", chat_server)


@pytest.mark.parametrize("chat_server", ["history"], indirect=True)
def test_missed_messages_and_recent_history(browser_ready: None, chat_server: ChatServer) -> None:
    """A tab that was away gets the messages posted meanwhile (recovered when it subscribes
    again; after a server restart, from the history procedure), a reloaded page shows the
    recent history; every message once, in order, in both tabs."""
    run_driver("history", chat_server)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("chat_server", ["login-chat"], indirect=True)
def test_cli_stops_cleanly(chat_server: ChatServer, sig: signal.Signals) -> None:
    """``trio-socketcluster serve`` stopped with Ctrl+C or SIGTERM exits 0, no traceback."""
    code = chat_server.stop(sig)
    assert code == 0, chat_server.log()
    assert "Traceback" not in chat_server.log()
