"""Every code block of ``README.md`` and ``docs/*.md`` runs (the kinds: ``docblocks.py``).

How a block is run, as a reader would run it:

* Each page gets its own scratch directory (the blocks of a page run in order, and share it),
  holding an ``auth.key`` (64 hex characters, as the key-generation command in the docs makes)
  before its first block runs. ``.venv/bin`` is first on ``PATH``; the repository root is on
  ``PYTHONPATH`` (``examples.*``), and so is the scratch directory (files written by earlier
  blocks import as modules, and ``trio-socketcluster serve myapp:app`` finds them).
* **The port.** Readers run servers on, and connect clients to, port 8000. The runner replaces
  every ``8000`` in a block by a free port before running it: a *server* (a Python program
  that builds a ``Server``, a shell command running ``trio-socketcluster serve`` or setting
  ``PORT=8000``) then
  listens there (a ``serve`` command without ``--port`` gets ``--port <port>``); a *client*
  (any other block naming port 8000 or ``ws://``) finds there the
  page's application, which the runner started first with ``trio-socketcluster serve <app>
  --port <port>`` from the page's directory: the demo app (``trio_socketcluster.demo:app``)
  unless the page says otherwise in an HTML comment ``<!-- docs-app: MODULE:ATTR -->``.
* **Servers** run until they listen (the port accepts connections, or they print a
  ``ws://host:port/`` address), then the Python client makes a real SocketCluster handshake
  with them, then they get SIGINT and must stop within 10 s. A server that ends by itself must
  exit with status 0.
* **Programs** (Python, Node, shell) must exit with status 0 within 60 s.
* ``test_*.py`` files are run with pytest in the page's directory (which may hold a
  ``pytest.ini`` and a ``conftest.py`` from the same page).
* Fragments (``title="Fragment: ..."``) and shell blocks titled ``Not run ...`` are skipped;
  each shows as one skipped test whose reason starts with that title.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from docblocks import REPO, RUN, SKIPPED, Block, Kind, all_blocks
from procs import INTEROP, Lines, free_port, npm_ci, stop

from trio_socketcluster.client import connect

if TYPE_CHECKING:
    from collections.abc import Iterator

BLOCKS = [block for block in all_blocks() if block.kind in SKIPPED or block.kind in RUN]
PORT_8000 = re.compile(r"(?<!\d)8000(?!\d)")
WS_URL = re.compile(r"ws://[\w.\[\]:-]+?:(\d+)/")
RUN_TIMEOUT_S = 60.0
#: A ``serve`` command line, up to its ``MODULE:ATTR``.
SERVE = re.compile(r"(?:trio-socketcluster|-m trio_socketcluster) serve [\w.]+:\w+")


class Page:
    """One page's scratch directory, and the application its client blocks talk to."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / re.sub(r"\W", "_", name)
        self.dir.mkdir()
        (self.dir / "auth.key").write_text(secrets.token_hex(32) + "\n")
        self.app: tuple[subprocess.Popen[str], int] | None = None

    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        return dict(
            os.environ,
            PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src"), str(self.dir)]),
            PYTHONUNBUFFERED="1",
            HOME=str(self.dir),
        )


class Runner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pages: dict[Path, Page] = {}

    def page(self, block: Block) -> Page:
        page = self.pages.get(block.page)
        if page is None:
            page = self.pages[block.page] = Page(self.root, str(block.page.relative_to(REPO)))
        return page

    def app_port(self, page: Page, app: str) -> int:
        """The port of the page's application, started on first use."""
        if page.app is None or page.app[0].poll() is not None:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "trio_socketcluster", "serve", app, "--port", str(port),
                 "--auth-key-file", "auth.key"],
                cwd=page.dir, env=page.env(), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            page.app = (proc, port)
            if not _wait_listening(proc, port, 20.0):
                _, err = proc.communicate(timeout=5) if proc.poll() is not None else ("", "")
                pytest.fail(f"the page's app {app} did not listen on {port}:\n{err}")
        return page.app[1]

    def close(self) -> None:
        for page in self.pages.values():
            if page.app is not None:
                stop(page.app[0], signal.SIGINT)
                if page.app[0].stderr is not None:
                    page.app[0].stderr.close()


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    with tempfile.TemporaryDirectory(prefix="docs-blocks-") as tmp:
        run = Runner(Path(tmp))
        try:
            yield run
        finally:
            run.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_listening(proc: subprocess.Popen[str], port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _listening(port):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _is_server(block: Block) -> bool:
    if block.kind is Kind.PYTHON:
        return "Server(" in block.source
    if block.kind is Kind.SHELL:
        return SERVE.search(block.source) is not None or "PORT=8000 " in block.source
    return False


def _is_client(block: Block) -> bool:
    return PORT_8000.search(block.source) is not None or "ws://" in block.source


def _handshake(port: int) -> None:
    """A real SocketCluster handshake with the server on ``port``."""

    async def main() -> None:
        with trio.fail_after(10):
            async with connect(f"ws://127.0.0.1:{port}/socketcluster/") as client:
                assert client.id

    trio.run(main)


def _command(block: Block, page: Page, source: str) -> list[str]:
    name = f"block_{block.line}"
    match block.kind:
        case Kind.PYTHON:
            (page.dir / f"{name}.py").write_text(source)
            return [sys.executable, f"{name}.py"]
        case Kind.SHELL:
            return ["bash", "-e", "-o", "pipefail", "-c", source]
        case Kind.JS:
            version = "14" if re.search(r"\bv14\b", source.split("\n", 1)[0]) else "20"
            npm_ci(INTEROP, "the JavaScript examples of the docs")
            modules = page.dir / f"node_modules_v{version}"
            if not modules.exists():
                modules.mkdir()
                (modules / "socketcluster-client").symlink_to(
                    INTEROP / "node_modules" / f"sc-client-{version}"
                )
            (page.dir / f"{name}.js").write_text(source)
            return ["node", f"{name}.js"]
    raise AssertionError(block.kind)


def _run_server(block: Block, page: Page, source: str, port: int) -> None:
    env = page.env()
    if block.kind is Kind.JS:
        env["NODE_PATH"] = str(page.dir / "node_modules_v20")
    proc = subprocess.Popen(
        _command(block, page, source), cwd=page.dir, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    lines = Lines(proc.stdout)
    listen_port: int | None = None
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and listen_port is None and proc.poll() is None:
        with contextlib.suppress(queue.Empty):
            line = lines.get(timeout=0.05)
            match = WS_URL.search(line or "")
            if match:
                listen_port = int(match.group(1))
        if listen_port is None and _listening(port):
            listen_port = port
    if listen_port is None:
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        err = _finish(proc, lines)
        assert code == 0, f"the server block exited with {code} before listening:\n{err}"
        return
    try:
        assert _wait_listening(proc, listen_port, max(deadline - time.monotonic(), 1.0))
        _handshake(listen_port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err = _finish(proc, lines)
    assert proc.returncode != -signal.SIGKILL, f"did not stop within 10 s of SIGINT:\n{err}"
    assert proc.returncode in (0, 1, -signal.SIGINT, 128 + signal.SIGINT), err
    if proc.returncode == 1:  # Python's KeyboardInterrupt, and nothing else
        errors = re.findall(r"^[\s|+]*(\w+(?:Error|Exception)\b)", err, re.MULTILINE)
        assert "KeyboardInterrupt" in err, err
        assert errors == [], err


def _finish(proc: subprocess.Popen[str], lines: Lines) -> str:
    """Its stderr, once it has ended; both pipes closed."""
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    lines.thread.join(timeout=5)
    return err


def _run_program(block: Block, page: Page, source: str) -> None:
    env = page.env()
    if block.kind is Kind.JS:
        version = "14" if re.search(r"\bv14\b", source.split("\n", 1)[0]) else "20"
        cmd = _command(block, page, source)
        env["NODE_PATH"] = str(page.dir / f"node_modules_v{version}")
    else:
        cmd = _command(block, page, source)
    try:
        proc = subprocess.run(
            cmd, cwd=page.dir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=RUN_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {RUN_TIMEOUT_S} s:\n{exc.stdout!r}\n{exc.stderr!r}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _run_file(block: Block, page: Page) -> None:
    assert block.filename is not None
    target = page.dir / block.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(block.source)
    name = Path(block.filename).name
    if name.startswith("test_") and name.endswith(".py"):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", block.filename],
            cwd=page.dir, env=page.env(), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=RUN_TIMEOUT_S * 2, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"pytest failed:\n{proc.stdout}\n{proc.stderr}"
        assert re.search(r"\d+ passed", proc.stdout), proc.stdout
    elif name.endswith(".py") and name != "conftest.py":
        module = block.filename[:-3].replace("/", ".")
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"], cwd=page.dir, env=page.env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.id}-{b.language or 'text'}" for b in BLOCKS])
def test_block(block: Block, runner: Runner) -> None:
    if block.kind in SKIPPED:
        pytest.skip(f"{block.title} [{block.kind.value}]")
    page = runner.page(block)
    match block.kind:
        case Kind.JSON:
            import json

            json.loads(block.source)
            return
        case Kind.INI:
            import configparser

            configparser.ConfigParser(strict=True).read_string(block.source)
            return
        case Kind.FILE:
            _run_file(block, page)
            return
    if _is_server(block):
        port = free_port()
        source = PORT_8000.sub(str(port), block.source)
        if block.kind is Kind.SHELL and "--port" not in source:
            source = SERVE.sub(rf"\g<0> --port {port}", source)
        _run_server(block, page, source, port)
    elif _is_client(block):
        port = runner.app_port(page, block.app)
        _run_program(block, page, PORT_8000.sub(str(port), block.source))
    else:
        _run_program(block, page, block.source)
