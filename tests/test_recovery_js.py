"""The recovery helper for the stock JavaScript clients (``static/recovery.js``): its own
unit tests and the real v14 and v20 clients resubscribing with ``{recover: ...}`` after a
reconnect, run by ``node --test`` (``tests/interop/recovery.test.js``)."""

from __future__ import annotations

import os
import subprocess
from importlib import resources

import pytest
from procs import INTEROP, npm_ci

pytestmark = pytest.mark.interop


def test_recovery_js_ships_in_the_package() -> None:
    helper = resources.files("trio_socketcluster") / "static" / "recovery.js"
    text = helper.read_text(encoding="utf-8")
    assert "SCRecovery" in text
    assert "socket.listener('message')" in text


def test_recovery_js_with_the_real_clients() -> None:
    node = npm_ci(INTEROP, "the recovery.js tests")
    helper = resources.files("trio_socketcluster") / "static" / "recovery.js"
    with resources.as_file(helper) as path:
        proc = subprocess.run(
            [node, "--test", "recovery.test.js"],
            cwd=INTEROP,
            env={**os.environ, "RECOVERY_JS": str(path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# pass 7" in proc.stdout
    assert "# fail 0" in proc.stdout
