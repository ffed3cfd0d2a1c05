"""The launcher: ``trio-socketcluster serve redis_app:make_server --workers N --broker redis://``
as a real process tree on a real port, with a real ``redis-server``."""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio
from procs import TESTS, Process
from wsclient import Closed, RawClient, Rejected, new_client

from trio_socketcluster import AuthEngine, Keyring
from trio_socketcluster.config import AUTH_KEY_ENV

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from redisserver import RedisServer

WORKERS = 3


@pytest.fixture
def launcher(redis_server: RedisServer) -> Iterator[Process]:
    app = Process(
        [sys.executable, "-m", "trio_socketcluster.cli", "serve", "redis_app:make_server",
         "--workers", str(WORKERS), "--broker", redis_server.url, "--port", "0"],
        new_session=True,
    )  # fmt: skip
    try:
        app.wait_ready(30)
        yield app
    finally:
        app.stop(20)


_OPEN: list[RawClient] = []


@pytest.fixture
async def close_clients() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await trio.aclose_forcefully(_OPEN.pop().stream)


async def _connect(port: int, token: str | None = None) -> RawClient:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = new_client(stream)
    _OPEN.append(client)
    await client.connect("/socketcluster/")
    reply = await client.handshake(token)
    assert reply["data"]["isAuthenticated"] is (token is not None), reply
    return client


async def _pid(client: RawClient) -> int:
    reply = await client.invoke("pid", cid=50)
    pid = reply["data"]
    assert isinstance(pid, int)
    return pid


async def _by_worker(port: int, n: int) -> dict[int, list[RawClient]]:
    clients: dict[int, list[RawClient]] = {}
    for _ in range(n):
        client = await _connect(port)
        clients.setdefault(await _pid(client), []).append(client)
    return clients


async def _next_event(client: RawClient, event: str) -> Any:
    while True:
        packet = await client.recv_json()
        if packet.get("event") == event:
            return packet.get("data")


async def _stderr_line(app: Process, needle: str, timeout_s: float = 20.0) -> str:
    assert app.errors is not None
    with trio.fail_after(timeout_s):
        while True:
            try:
                line = await trio.to_thread.run_sync(app.errors.get, True, 1.0)
            except queue.Empty:
                continue
            assert line is not None, "the launcher's stderr closed"
            if needle in line:
                return line


@pytest.mark.usefixtures("close_clients")
async def test_workers_share_the_port_the_load_and_the_bus(launcher: Process) -> None:
    with trio.fail_after(30):
        clients = await _by_worker(launcher.port, 24)
        assert len(clients) >= 2  # the kernel spread the connections (3 workers, 24 tries)
        (pid_a, on_a), (pid_b, on_b) = list(clients.items())[:2]
        sub, pub = on_a[0], on_b[0]
        assert "error" not in await sub.invoke("#subscribe", {"channel": "room"}, cid=60)
        assert (await sub.invoke("waitSynced", cid=61))["data"] is True
        for i in range(20):
            await pub.invoke("serverPublish", {"channel": "room", "data": i}, cid=70 + i)
        got = [(await _next_event(sub, "#publish"))["data"] for _ in range(20)]
        assert got == list(range(20))  # published on one worker, delivered on another

        # one auth key for every worker: a token signed by A is valid on B
        login = await sub.invoke("login", {"username": "alice", "password": "alice-pass"}, cid=90)
        assert "error" not in login
        token = next(p for p in sub.others if p.get("event") == "#setAuthToken")["data"]["token"]
        while True:
            other = await _connect(launcher.port, token)
            if await _pid(other) != pid_a:
                break
        # a cluster-wide command from B reaches the socket on A
        assert (await other.invoke("deauthenticateUser", {"username": "alice"}, cid=91))[
            "data"
        ] == 1
        assert await _next_event(sub, "#removeAuthToken") is None
        del pid_b


@pytest.mark.usefixtures("close_clients")
async def test_a_killed_worker_is_replaced_and_the_others_keep_serving(
    launcher: Process,
) -> None:
    with trio.fail_after(60):
        clients = await _by_worker(launcher.port, 24)
        victim, survivors = next(iter(clients)), list(clients)[1:]
        os.kill(victim, signal.SIGKILL)
        assert (await clients[victim][0].expect_close()).code == 1006
        for pid in survivors:  # established connections elsewhere are untouched
            reply = await clients[pid][0].invoke("echo", "still here", cid=7)
            assert reply["data"] == "still here"
        seen = {await _pid(await _connect(launcher.port)) for _ in range(12)}
        assert victim not in seen  # new connections go to live workers only
        new_pid = victim
        while new_pid in clients:  # the supervisor restarted it (skip the first start's lines)
            line = await _stderr_line(launcher, ") ready")
            new_pid = int(line.split("(pid ")[1].split(")")[0])
        while new_pid not in seen:  # and it takes its share of new connections
            seen.add(await _pid(await _connect(launcher.port)))

        # SIGTERM drains every worker: sockets are closed with 1001, then the tree exits
        launcher.signal(signal.SIGTERM)
        for pid in survivors:
            closed = await clients[pid][0].expect_close()
            assert isinstance(closed, Closed)
            assert closed.code == 1001
    assert await trio.to_thread.run_sync(launcher.proc.wait, 20) == 0


def test_several_workers_need_a_shared_broker() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_socketcluster.cli", "serve", "redis_app:make_server",
         "--workers", "2", "--port", "0"],
        cwd=TESTS, capture_output=True, text=True, timeout=30, check=False,
        env={k: v for k, v in os.environ.items() if k != "BROKER"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--workers 2 needs a shared broker: pass --broker redis://" in proc.stderr


@pytest.mark.usefixtures("close_clients")
@pytest.mark.parametrize("source", ["file", "variable"])
async def test_the_key_reaches_the_workers_on_a_pipe_not_the_environment(
    tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key given to the launcher signs the workers' tokens, yet no worker has it (nor the
    variable) in its environment: it travelled on a pipe."""
    key = secrets.token_hex(32)
    args = [sys.executable, "-m", "trio_socketcluster.cli", "serve", "redis_app:make_server",
            "--workers", "1", "--port", "0"]  # fmt: skip
    for name in ("AUTH_KEY", "BROKER", AUTH_KEY_ENV):  # Process adds os.environ
        monkeypatch.delenv(name, raising=False)
    env: dict[str, str] = {}
    if source == "file":
        (tmp_path / "auth.key").write_text(key)
        args += ["--auth-key-file", str(tmp_path / "auth.key")]
    else:
        env[AUTH_KEY_ENV] = key
    app = Process(args, env=env, new_session=True)
    try:
        app.wait_ready(30)
        with trio.fail_after(20):
            client = await _connect(app.port)
            worker_pid = await _pid(client)
            login = await client.invoke("login", {"username": "alice", "password": "alice-pass"})
            assert "error" not in login, login
            token = next(p for p in client.others if p.get("event") == "#setAuthToken")
        payload = AuthEngine(Keyring.symmetric(key)).verify(token["data"]["token"], now=time.time())
        assert payload["username"] == "alice"
        environ = await trio.Path(f"/proc/{worker_pid}/environ").read_bytes()
        assert key.encode() not in environ
        assert AUTH_KEY_ENV.encode() + b"=" not in environ
        assert b"TRIO_SOCKETCLUSTER_WORKER=" in environ  # the right process was read
    finally:
        assert app.stop(20) == 0


def test_the_launcher_refuses_a_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "trio_socketcluster.cli", "serve", "redis_app:make_server",
             "--workers", "1", "--port", str(port)],
            cwd=TESTS, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        f"trio-socketcluster: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def _free_port_pair() -> int:
    """A port P with P and P+1 free (for the metrics ports of two workers)."""
    import socket

    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two consecutive free ports")


@pytest.mark.usefixtures("close_clients")
async def test_workers_take_tls_limits_metrics_ports_and_json_logs(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two workers with ``--certfile/--keyfile``, ``--max-connections 1`` (per worker),
    ``--metrics``, ``--metrics-port P`` (worker i on P+i) and ``--log-format json``: wss://
    works, a third connection is refused with 503, each worker's metrics count its own
    connections, the shared port answers /metrics over TLS, and the log lines are JSON objects
    naming their worker."""
    import json
    import ssl

    import trustme
    from test_operations import http, scrape

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    metrics_port = _free_port_pair()
    app = Process(
        [sys.executable, "-m", "trio_socketcluster.cli", "serve", "redis_app:make_server",
         "--workers", "2", "--broker", redis_server.url, "--port", "0",
         "--certfile", str(tmp_path / "server.pem"), "--max-connections", "1",
         "--metrics", "--metrics-port", str(metrics_port), "--log-format", "json",
         "--log-level", "debug"],
        new_session=True,
    )  # fmt: skip
    try:
        app.wait_ready(30)

        async def wss() -> RawClient | int:
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", app.port, ssl_context=client_context, https_compatible=True
            )
            client = new_client(stream)
            _OPEN.append(client)
            try:
                await client.connect("/socketcluster/")
            except Rejected as rejected:
                assert b"too many connections" in rejected.body  # noqa: PT017 (may be refused)
                return rejected.status
            assert (await client.handshake())["data"]["isAuthenticated"] is False
            return client

        with trio.fail_after(30):
            outcomes = [await wss() for _ in range(3)]
            admitted = [c for c in outcomes if isinstance(c, RawClient)]
            assert 1 <= len(admitted) <= 2
            assert 503 in outcomes
            pids = {await _pid(c) for c in admitted}
            assert len(pids) == len(admitted)  # never two on one worker
            counts = []
            for port in (metrics_port, metrics_port + 1):
                samples = await scrape(port)
                counts.append(samples[("trio_socketcluster_connections", ())])
                assert (await http(port, "/healthz"))[0] == 200
            assert sorted(counts) == sorted([1.0] * len(admitted) + [0.0] * (2 - len(admitted)))
            # --metrics: one worker's numbers on the shared (TLS) port too
            status, _, body = await http(app.port, "/metrics", ssl_context=client_context)
            assert status == 200
            assert b"trio_socketcluster_connections " in body
            refusing: dict[str, Any] | None = None
            opened: dict[str, Any] | None = None
            while refusing is None or opened is None:  # every stderr line is a JSON object
                record = json.loads(await _stderr_line(app, ""))
                if record["msg"].startswith("refusing connections"):
                    refusing = record
                elif record["msg"] == "connection open":
                    opened = record
            assert refusing["level"] == "warning"
            assert refusing["worker"] in (0, 1)
            assert refusing["client_warning"] == "refused:connections"
            assert opened["worker"] in (0, 1)
            assert opened["socket_id"]
    finally:
        assert app.stop(20) == 0


def test_workers_refuse_metrics_port_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_socketcluster.cli", "serve", "redis_app:make_server",
         "--workers", "2", "--broker", "redis://127.0.0.1:1/0", "--port", "0",
         "--metrics-port", "0"],
        cwd=TESTS, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--metrics-port 0 cannot be used with --workers: give a port P" in proc.stderr
