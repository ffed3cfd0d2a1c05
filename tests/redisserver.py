"""Real ``redis-server`` processes for tests: started on a free port without persistence,
ready when it says so, stopped by PID. Also the launcher of our own server subprocesses."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest
from procs import TESTS, Lines, Process, free_port, stop


class RedisServer:
    def __init__(self, port: int | None = None, *, extra_args: tuple[str, ...] = ()) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.extra_args = extra_args  # e.g. persistence: later arguments win

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "notice", *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.proc = proc
        if Lines(proc.stdout).wait_for("Ready to accept connections", timeout_s) is None:
            self.kill()
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to the clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, timeout_s=10)


def redis_app(redis_url: str, auth_key: str, **env: Any) -> Process:
    return Process(
        [sys.executable, str(TESTS / "redis_app.py")],
        env={"PORT": "0", "AUTH_KEY": auth_key, "BROKER": redis_url, **env},
        new_session=True,
    )
