"""Subprocesses for tests: free ports, ``npm ci`` under a lock, processes that announce
themselves with a ``READY`` line (read by a thread, so waits have deadlines), and stopping
them (a signal, then SIGKILL)."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from collections.abc import Mapping

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
INTEROP = TESTS / "interop"

K = TypeVar("K")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _needs_npm_ci(directory: Path) -> bool:
    marker = directory / "node_modules" / ".package-lock.json"
    lock = directory / "package-lock.json"
    return not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime


def npm_ci(directory: Path, purpose: str) -> str:
    """The node executable, once ``directory/node_modules`` matches its lock file (``npm ci``
    under a file lock shared by every pytest process when it does not). Skips the test
    without node and npm (they are needed for ``purpose``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"node and npm are needed for {purpose}")
    if _needs_npm_ci(directory):
        lock_path = Path(tempfile.gettempdir()) / f"sc-{directory.name}-npm-{os.getuid()}.lock"
        with open(lock_path, "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                if _needs_npm_ci(directory):
                    proc = subprocess.run(
                        [npm, "ci", "--no-audit", "--no-fund"],
                        cwd=directory,
                        capture_output=True,
                        text=True,
                        timeout=300,
                        check=False,
                    )
                    if proc.returncode != 0:
                        pytest.fail(f"npm ci failed:\n{proc.stdout}\n{proc.stderr}")
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    return node


class Lines(queue.Queue[str | None]):
    """The lines of a text stream, put here by a daemon thread that reads the stream to its
    end and closes it; ``None`` after the last line."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__()
        assert stream is not None
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.put(line)
        self.put(None)

    def wait_for(self, needle: str, timeout_s: float) -> str | None:
        """The next line containing ``needle``; ``None`` at the end or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                return None
            if line is None or needle in line:
                return line


def run_json_scripts(
    cmds: Mapping[K, list[str]], *, cwd: Path, timeout_s: float
) -> dict[K, dict[str, Any]]:
    """Run every command at once and wait at most ``timeout_s`` in all. Each one's result is
    its last stdout line that starts with ``{``, parsed; or, if it failed, timed out or printed
    no such line, ``{"crash": <exit status or "timeout">, "stdout": ..., "stderr": <tail>}``."""
    procs = {
        key: subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, cmd in cmds.items()
    }
    deadline = time.monotonic() + timeout_s
    out: dict[K, dict[str, Any]] = {}
    for key, proc in procs.items():
        crash: int | str = "timeout"
        try:
            stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            crash = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if crash == 0 and lines:
            out[key] = json.loads(lines[-1])
        else:
            out[key] = {"crash": crash, "stdout": stdout, "stderr": stderr[-4000:]}
    return out


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> int:
    """Send ``sig`` (unless it has exited) and wait ``timeout_s``, then SIGKILL. Returns the
    exit status (``-SIGKILL`` if it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=5)
    return proc.returncode


class Process:
    """A subprocess whose stdout lines arrive in ``lines``; its stderr goes to
    ``stderr_path`` when given, else its lines arrive in ``errors``."""

    def __init__(
        self,
        cmd: list[str],
        *,
        cwd: Path = TESTS,
        env: Mapping[str, str] | None = None,
        stderr_path: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.stderr_path = stderr_path
        self._stderr: list[str] = []
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        if stderr_path is None:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, start_new_session=new_session,
            )  # fmt: skip
            self.errors: Lines | None = Lines(self.proc.stderr)
        else:
            with open(stderr_path, "w") as stderr_file:
                self.proc = subprocess.Popen(
                    cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                    start_new_session=new_session,
                )  # fmt: skip
            self.errors = None
        self.lines = Lines(self.proc.stdout)
        self.port = 0

    def wait_ready(self, timeout_s: float = 20.0, name: str = "the process") -> list[int]:
        """The ports of its ``READY <port>...`` line (the first is also ``port``). Fails the
        test, after stopping the process, if it ends or times out first."""
        line = self.lines.wait_for("READY ", timeout_s)
        if line is None:
            self.stop()
            pytest.fail(
                f"{name} did not print READY <port> within {timeout_s}s "
                f"(exit {self.proc.returncode}):\n{self.stderr_text()[-4000:]}"
            )
        ports = [int(word.rstrip(")")) for word in line.split("READY ", 1)[1].split()]
        self.port = ports[0]
        return ports

    def stderr_text(self) -> str:
        """Its stderr so far (``errors``: the lines nobody has taken from the queue)."""
        if self.stderr_path is not None:
            try:
                return self.stderr_path.read_text(errors="replace")
            except OSError:
                return ""
        assert self.errors is not None
        while True:
            try:
                line = self.errors.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self._stderr.append(line)
        return "".join(self._stderr)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, SIGKILL after ``timeout_s``; the exit status once its output is read."""
        code = stop(self.proc, signal.SIGTERM, timeout_s)
        self.lines.thread.join(timeout=5)  # EOF once the process is gone
        if self.errors is not None:
            self.errors.thread.join(timeout=5)
        return code
