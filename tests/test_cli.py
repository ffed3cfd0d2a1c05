"""The command line never surprises: every failure to load or start is one line
``trio-socketcluster: error: ...`` on stderr and exit status 2; argument errors are argparse's
(exit 2); "serving on" is printed once the port is bound, with the real port; the auth key is
refused under 32 bytes and otherwise reaches the signer.

Load errors run ``main([...])`` in this process (the loading is the same code either way);
binding, serving and signals run the real command in a subprocess.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import trio
from procs import Lines, stop
from wsclient import new_client

from trio_socketcluster import AuthEngine, Keyring
from trio_socketcluster.cli import main
from trio_socketcluster.config import AUTH_KEY_ENV, KEY_RECIPE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PREFIX = "trio-socketcluster: error: "


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory to write application modules in, as the current directory; the modules
    imported from it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # restores sys.path (the CLI adds the cwd)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("cliapp"):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTH_KEY_ENV, raising=False)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``main(args)``: its exit status (argparse's ``SystemExit`` included) and stderr lines."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.splitlines()


def write(app_dir: Path, name: str, source: str) -> Path:
    path = app_dir / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- loading


def test_malformed_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["serve", "nocolon"], capsys)
    assert code == 2
    assert err == [PREFIX + "expected MODULE:ATTR (for example myapp:app), got 'nocolon'"]


def test_missing_module(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["serve", "cliapp_absent:app"], capsys)
    assert code == 2
    assert err == [
        PREFIX + "cannot import module 'cliapp_absent': no module named 'cliapp_absent' "
        "(the current directory is on the import path)"
    ]


def test_syntax_error_names_file_and_line(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(app_dir, "cliapp_syntax", "import os\n\nx = (1,\n")
    try:
        compile(path.read_text(), str(path), "exec")
    except SyntaxError as exc:
        expected = f"{exc.filename}:{exc.lineno}: {exc.msg}"
    code, err = run_main(["serve", "cliapp_syntax:app"], capsys)
    assert code == 2
    assert err == [PREFIX + f"module 'cliapp_syntax' has a syntax error at {expected}"]
    assert f"{path}:3" in expected


def test_module_raising_on_import(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(app_dir, "cliapp_raises", "x = 1\nraise RuntimeError('no database')\n")
    code, err = run_main(["serve", "cliapp_raises:app"], capsys)
    assert code == 2
    assert err == [
        PREFIX + f"importing module 'cliapp_raises' failed: RuntimeError: no database ({path}:2)"
    ]


def test_module_missing_a_dependency(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(app_dir, "cliapp_dep", "import cliapp_no_such_dependency\n")
    code, err = run_main(["serve", "cliapp_dep:app"], capsys)
    assert code == 2
    assert err == [
        PREFIX + "importing module 'cliapp_dep' failed: ModuleNotFoundError: No module named "
        f"'cliapp_no_such_dependency' ({path}:1)"
    ]


def test_missing_attribute(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app_dir, "cliapp_attr", "other = 1\n")
    code, err = run_main(["serve", "cliapp_attr:app"], capsys)
    assert code == 2
    assert err == [PREFIX + "module 'cliapp_attr' has no attribute 'app'"]


def test_attribute_neither_server_nor_factory(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(app_dir, "cliapp_int", "app = 42\n")
    code, err = run_main(["serve", "cliapp_int:app"], capsys)
    assert code == 2
    assert err == [
        PREFIX + "cliapp_int:app is neither a trio_socketcluster.Server nor a factory "
        "returning one (it is a int)"
    ]


FACTORY_RAISES = "def app():\n    return helper()\n\ndef helper():\n    raise KeyError('DB_URL')\n"


def test_factory_raising_is_one_line(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(app_dir, "cliapp_factory", FACTORY_RAISES)
    code, err = run_main(["serve", "cliapp_factory:app"], capsys)
    assert code == 2
    assert err == [PREFIX + f"the factory cliapp_factory:app raised KeyError: 'DB_URL' ({path}:5)"]


def test_factory_traceback_with_debug(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(app_dir, "cliapp_factory_dbg", FACTORY_RAISES)
    code, err = run_main(["serve", "cliapp_factory_dbg:app", "--log-level", "debug"], capsys)
    assert code == 2
    assert err[0] == PREFIX + (
        f"the factory cliapp_factory_dbg:app raised KeyError: 'DB_URL' ({path}:5)"
    )
    assert err[1] == "Traceback (most recent call last):"
    assert err[-1] == "KeyError: 'DB_URL'"
    assert any("in helper" in line for line in err)


def test_factory_returning_something_else(
    app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(app_dir, "cliapp_returns", "def app():\n    return {'not': 'a server'}\n")
    code, err = run_main(["serve", "cliapp_returns:app"], capsys)
    assert code == 2
    assert err == [
        PREFIX + "the factory cliapp_returns:app returned a dict, not a trio_socketcluster.Server"
    ]


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "argument --port: 99999 is not in 0..65535 (0 picks a free port)"),
        (["--port", "-1"], "argument --port: -1 is not in 0..65535 (0 picks a free port)"),
        (["--port", "http"], "argument --port: not a port number: 'http'"),
        (["--workers", "0"], "argument --workers: 0: at least 1 worker"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    ],
)
def test_bad_arguments_are_argparse_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main(["serve", "trio_socketcluster.demo:app", *args], capsys)
    assert code == 2
    assert err[0].startswith("usage: trio-socketcluster serve")
    assert err[-1].startswith(f"trio-socketcluster serve: error: {message}")


# ----------------------------------------------------------------------------- the auth key


def test_short_key_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "auth.key"
    key_file.write_text("abc\n")
    code, err = run_main(
        ["serve", "trio_socketcluster.demo:app", "--auth-key-file", str(key_file)], capsys
    )
    assert code == 2
    assert err == [
        PREFIX + f"the auth key file {key_file} holds a 3-byte key; an HS256 key must be at "
        f"least 32 bytes (RFC 7518 section 3.2); make one with: {KEY_RECIPE}"
    ]


def test_short_key_variable_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(AUTH_KEY_ENV, "short-key")
    code, err = run_main(["serve", "trio_socketcluster.demo:app"], capsys)
    assert code == 2
    assert err == [
        PREFIX + f"${AUTH_KEY_ENV} holds a 9-byte key; an HS256 key must be at least 32 bytes "
        f"(RFC 7518 section 3.2); make one with: {KEY_RECIPE}"
    ]


def test_empty_key_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "auth.key"
    key_file.write_text("  \n")
    code, err = run_main(
        ["serve", "trio_socketcluster.demo:app", "--auth-key-file", str(key_file)], capsys
    )
    assert code == 2
    assert err == [PREFIX + f"the auth key file {key_file} is empty; make a key with: {KEY_RECIPE}"]


def test_missing_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "absent.key"
    code, err = run_main(
        ["serve", "trio_socketcluster.demo:app", "--auth-key-file", str(key_file)], capsys
    )
    assert code == 2
    assert err == [PREFIX + f"cannot read the auth key file {key_file}: No such file or directory"]


# ----------------------------------------------------------------------------- real processes


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k != AUTH_KEY_ENV}
    full_env.update(env or {}, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "trio_socketcluster", "serve", *args],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def login_token(port: int) -> str:
    """Log in to the demo application on ``port`` (connecting once, no retry) and return the
    signed token it sets."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = new_client(stream)
        try:
            await client.connect("/socketcluster/")
            await client.handshake()
            reply = await client.invoke("login", {"username": "ann", "password": "demo"}, cid=5)
            assert "error" not in reply, reply
            packet = next(p for p in client.others if p.get("event") == "#setAuthToken")
            token = packet["data"]["token"]
            assert isinstance(token, str)
            return token
        finally:
            await trio.aclose_forcefully(stream)


def serving_port(proc: subprocess.Popen[str], lines: Lines) -> int:
    line = lines.wait_for("serving", 30)
    if line is None:
        assert proc.stderr is not None
        stop(proc)
        pytest.fail(f"no serving line (exit {proc.returncode}):\n{proc.stderr.read()}")
    prefix = "trio-socketcluster: serving trio_socketcluster.demo:app on ws://127.0.0.1:"
    assert line.startswith(prefix), line
    assert line.endswith("/socketcluster/\n"), line
    return int(line[len(prefix) :].split("/")[0])


@pytest.mark.parametrize("source", ["file", "variable"])
def test_serves_on_the_bound_port_with_the_given_key(tmp_path: Path, source: str) -> None:
    """``--port 0``: the line names the picked port, which accepts at once (no retry); the
    key from the file (or the variable) signs the tokens; SIGTERM exits 0."""
    key = secrets.token_hex(32)
    if source == "file":
        key_file = tmp_path / "auth.key"
        key_file.write_text(key + "\n")
        proc = cli("trio_socketcluster.demo:app", "--port", "0", "--auth-key-file", str(key_file))
    else:
        proc = cli("trio_socketcluster.demo:app", "--port", "0", env={AUTH_KEY_ENV: key})
    lines = Lines(proc.stdout)
    try:
        port = serving_port(proc, lines)
        assert port != 0
        token = trio.run(login_token, port)
        payload = AuthEngine(Keyring.symmetric(key)).verify(token, now=time.time())
        assert payload["username"] == "ann"
    finally:
        code = stop(proc, signal.SIGTERM, 15)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == 0, err
    assert "Traceback" not in err
    assert "random key" not in err


def test_a_second_sigint_stops_at_once_in_one_line() -> None:
    """Ctrl-C twice: the first starts the drain, the second stops the process at once with
    one line on stderr and exit code 130, no traceback."""
    proc = cli("trio_socketcluster.demo:app", "--port", "0")
    lines = Lines(proc.stdout)
    try:
        port = serving_port(proc, lines)
        # A client that never answers the close frame keeps the drain busy for seconds.
        with socket.create_connection(("127.0.0.1", port)) as held:
            held.sendall(
                b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert held.recv(4096).startswith(b"HTTP/1.1 101")
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert proc.poll() is None  # draining
            proc.send_signal(signal.SIGINT)
            code = proc.wait(15)
    finally:
        stop(proc)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == 130, err
    assert "Traceback" not in err
    assert "trio-socketcluster: interrupted again: stopped before the drain finished" in err


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("trio_socketcluster.demo:app", "--port", str(port))
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert stderr.splitlines()[0] == (
        PREFIX + f"cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "serving" not in stdout
    assert "Traceback" not in stderr


def test_unknown_host_is_one_line() -> None:
    proc = cli("trio_socketcluster.demo:app", "--host", "no-such-host.invalid", "--port", "0")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    first = stderr.splitlines()[0]
    assert first.startswith(PREFIX + "cannot listen on no-such-host.invalid:0: "), stderr
    assert "serving" not in stdout


def test_python_dash_m_runs_the_same_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_socketcluster", "serve", "nocolon"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        PREFIX + "expected MODULE:ATTR (for example myapp:app), got 'nocolon'"
    ]
