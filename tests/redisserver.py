"""Real ``redis-server`` processes for tests: started on a free port without persistence,
ready when it says so, stopped by PID. Also the launcher of our own server subprocesses."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.proc = proc
        lines = _pump(proc.stdout)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            if "Ready to accept connections" in line:
                return

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to the clients)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _pump(stream: IO[str] | None) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def run() -> None:
        assert stream is not None
        with stream:
            for line in stream:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=run, daemon=True).start()
    return lines


class AppProcess:
    """A subprocess printing a line with ``READY <port>`` once it serves."""

    def __init__(self, cmd: list[str], env: dict[str, str], *, cwd: Path = TESTS) -> None:
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.lines = _pump(self.proc.stdout)
        self.errors = _pump(self.proc.stderr)
        self.port = 0

    def wait_ready(self, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise RuntimeError(f"not ready: {self.stderr_text()[-3000:]}")
            if "READY " in line:
                self.port = int(line.split("READY ")[1].split()[0].rstrip(")"))
                return self.port

    def stderr_text(self) -> str:
        out = []
        while True:
            try:
                line = self.errors.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                out.append(line)
        return "".join(out)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout_s: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait()


def redis_app(redis_url: str, auth_key: str, **env: Any) -> AppProcess:
    return AppProcess(
        [sys.executable, str(TESTS / "redis_app.py")],
        {"PORT": "0", "AUTH_KEY": auth_key, "BROKER": redis_url, **env},
    )
