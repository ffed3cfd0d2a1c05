"""Run the RFC 6455 suite (Autobahn|Testsuite ``fuzzingclient``) against ``echo_server.py``.

Sets up a Python 2.7 virtualenv for the suite (``.autobahn/venv27``, from the pins in
``requirements-py27.txt``) unless it exists, starts the echo server on a free port, runs the
cases given (default: sections 1-7 and 9; 12 and 13 are compression, which we do not
negotiate), writes the report to ``test-artifacts/autobahn/`` and exits 1 unless every case
is OK (INFORMATIONAL is accepted: the suite gives it to every server for 7.1.6 and 7.13.x).

    python tests/autobahn/run.py [--python2 PATH] [--cases 1.* 2.* ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VENV = REPO / ".autobahn" / "venv27"
REPORT = REPO / "test-artifacts" / "autobahn"
DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*"]
PYTHON2 = "/root/.pyenv/versions/2.7.18/bin/python"


def _python2(given: str | None) -> str:
    for candidate in (given, os.environ.get("AUTOBAHN_PYTHON2"), PYTHON2):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("autobahn: no Python 2.7 found (pass --python2 or set AUTOBAHN_PYTHON2)")


def _setup(python2: str) -> Path:
    wstest = VENV / "bin" / "wstest"
    if wstest.exists():
        return wstest
    subprocess.run([python2, "-m", "pip", "install", "-q", "virtualenv<20.22"], check=True)
    subprocess.run([python2, "-m", "virtualenv", "-q", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "-r", str(HERE / "requirements-py27.txt")], check=True)
    return wstest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python2")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    args = parser.parse_args()
    wstest = _setup(_python2(args.python2))
    port = _free_port()
    shutil.rmtree(REPORT, ignore_errors=True)
    REPORT.mkdir(parents=True)
    spec = {
        "outdir": str(REPORT),
        "servers": [{"agent": "trio-socketcluster", "url": f"ws://127.0.0.1:{port}"}],
        "cases": args.cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    (REPORT / "fuzzingclient.json").write_text(json.dumps(spec, indent=2))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    server = subprocess.Popen(
        [sys.executable, str(HERE / "echo_server.py"), str(port)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if "listening" not in server.stdout.readline():
            return 1
        start = time.monotonic()
        with open(REPORT / "wstest.log", "w") as log:
            subprocess.run(
                [str(wstest), "-m", "fuzzingclient", "-s", str(REPORT / "fuzzingclient.json")],
                cwd=REPORT, stdout=log, stderr=subprocess.STDOUT, check=True,
            )  # fmt: skip
        elapsed = time.monotonic() - start
    finally:
        server.terminate()
        server.wait(timeout=10)
    results = json.loads((REPORT / "index.json").read_text())["trio-socketcluster"]
    bad = {
        case: (r["behavior"], r["behaviorClose"])
        for case, r in results.items()
        if not {r["behavior"], r["behaviorClose"]} <= {"OK", "INFORMATIONAL"}
    }
    informational = sorted(c for c, r in results.items() if r["behavior"] == "INFORMATIONAL")
    print(
        f"autobahn: {len(results)} cases in {elapsed:.0f} s, {len(bad)} not OK "
        f"(informational: {', '.join(informational) or 'none'}); report in {REPORT}"
    )
    for case, behaviour in sorted(bad.items()):
        print(f"  {case}: {behaviour[0]} (close: {behaviour[1]})")
    return 1 if bad or not results else 0


if __name__ == "__main__":
    sys.exit(main())
