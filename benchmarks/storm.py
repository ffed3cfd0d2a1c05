"""Reconnect storm: N authenticated clients reconnect at once after a server restart.

    .venv/bin/python benchmarks/storm.py [--count 10000] [--targets py,py-limited,node14]
                                         [--retry stock|fast] [--out FILE]

What happens, per target: the server starts (pinned to CPU 0) and ``benchmarks/node/storm.js``
(pinned to CPU 1) connects ``--count`` clients, each presenting its own HS256 token in
``#handshake`` and checking ``isAuthenticated: true``. Then the server is restarted (SIGTERM,
wait for the exit, start a new process on the same port, wait until it listens) and every client
reconnects in the same instant with its stored token. A failed attempt (503 from the admission
limits, a refused or reset TCP connection) is retried with the stock socketcluster-client
back-off shape, ``min(maxDelay, (initialDelay + randomness·random()) · multiplier^failures)``:
``--retry stock`` uses the stock delays (10 s, 10 s, 1.5, 60 s), ``--retry fast`` 0.25 s, 0.25 s,
1.5, 5 s. Reported: the time from the restart (the new server listening) until every client is
authenticated again, p50/p99 of that per client, p50/p99 of the successful attempt's handshake
(TCP connect to the ``#handshake`` reply, JWT verification included), attempts and refusals, and
clients not authenticated within ``--deadline`` (failed for good; must be 0), and how many
connection attempts the kernel dropped because the listen queue was full (``ListenOverflows``).

Targets: ``py`` (``trio-socketcluster serve trio_socketcluster.demo:app``, no limit),
``py-limited`` (the same with ``--handshake-rate``/``--handshake-burst``), ``node14``
(socketcluster-server 14, ``benchmarks/node/conformance14.js``; it has no admission limit).
Source addresses cycle over 127.0.0.1-127.0.0.8 so ephemeral ports never run short.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from run import Proc  # benchmarks/run.py: a child process with its stdout lines on a queue

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "benchmarks" / "node"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
AUTH_KEY = "storm-benchmark-key-of-at-least-32-bytes"
SERVER_CPU, CLIENT_CPU = "0", "1"
RETRY = {
    "stock": {"initial_ms": 10_000, "randomness_ms": 10_000, "multiplier": 1.5, "max_ms": 60_000},
    "fast": {"initial_ms": 250, "randomness_ms": 250, "multiplier": 1.5, "max_ms": 5_000},
}


def server_argv(target: str, port: int, rate: float, burst: int) -> tuple[list[str], str]:
    """The server's command line and the stdout prefix it prints once listening."""
    if target == "node14":
        return ["node", str(NODE_DIR / "conformance14.js")], "READY"
    argv = [PYTHON, "-m", "trio_socketcluster", "serve", "trio_socketcluster.demo:app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--metrics"]
    if target == "py-limited":
        argv += ["--handshake-rate", str(rate), "--handshake-burst", str(burst)]
    return argv, "trio-socketcluster: serving"


def start_server(target: str, port: int, args: argparse.Namespace, log: Path) -> Proc:
    argv, ready = server_argv(target, port, args.rate, args.burst)
    env = {
        "PYTHONPATH": str(ROOT / "src"),
        "TRIO_SOCKETCLUSTER_AUTH_KEY": AUTH_KEY,
        "AUTH_KEY": AUTH_KEY,
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }
    proc = Proc(["taskset", "-c", SERVER_CPU, *argv], env, log)
    proc.wait_for(ready, 60)
    return proc


def server_side(port: int) -> dict[str, Any]:
    """From our server's ``/metrics`` after the storm: the handshake duration it measured
    (``#handshake`` received to reply queued, JWT verification included; bucket upper bounds)
    and the upgrades it refused."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    buckets: list[tuple[float, float]] = []
    refused = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "trio_socketcluster_handshake_duration_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "trio_socketcluster_refused_connections_total":
                refused += sample.value
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0

    def quantile(q: float) -> float | None:
        for le, count in buckets:
            if count >= q * total:
                return le * 1000
        return None

    return {
        "handshakes": total,
        "handshake_p50_ms_at_most": quantile(0.5),
        "handshake_p99_ms_at_most": quantile(0.99),
        "refused_total": refused,
    }


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (SYNs then
    wait for TCP's retransmission: 1, 3, 7, 15, 31 s...); for the whole network namespace."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["ListenOverflows"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(target: str, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    port = free_port()
    cfg = {
        "url": f"ws://127.0.0.1:{port}/socketcluster/",
        "count": args.count,
        "auth_key": AUTH_KEY,
        "retry": RETRY[args.retry],
        "sources": [f"127.0.0.{i}" for i in range(1, 9)],
        "deadline_s": args.deadline,
    }
    server = start_server(target, port, args, logdir / f"server-{target}.log")
    clients = Proc(
        ["taskset", "-c", CLIENT_CPU, "node", str(NODE_DIR / "storm.js"), json.dumps(cfg)],
        {},
        logdir / f"storm-{target}.log",
        stdin=True,
    )
    try:
        clients.wait_for("CONNECTED", 600)
        t_stop = time.monotonic()
        code = server.stop(30)
        t_down = time.monotonic()
        server = start_server(target, port, args, logdir / f"server-{target}.log")
        t_up = time.monotonic()
        overflows = listen_overflows()
        assert clients.p.stdin is not None
        clients.p.stdin.write("GO\n")
        clients.p.stdin.flush()
        line = clients.wait_for("RESULT ", args.deadline + 60)
        result: dict[str, Any] = json.loads(line[len("RESULT ") :])
        result["target"] = target
        result["listen_overflows"] = listen_overflows() - overflows
        result["stop_s"] = round(t_down - t_stop, 3)
        result["stop_exit"] = code
        result["start_s"] = round(t_up - t_down, 3)
        if target == "py-limited":
            result["handshake_rate"], result["handshake_burst"] = args.rate, args.burst
        if target.startswith("py"):
            result["server"] = server_side(port)
        return result
    finally:
        clients.stop()
        server.stop()


def report(result: dict[str, Any], out: Path | None) -> None:
    """Print ``result`` as one JSON line; append it to ``out`` too when given."""
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with out.open("a") as f:
            f.write(line + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--targets", default="py,py-limited,node14")
    ap.add_argument("--retry", choices=sorted(RETRY), default="stock")
    ap.add_argument("--rate", type=float, default=1000.0, help="py-limited: handshakes/s")
    ap.add_argument("--burst", type=int, default=200, help="py-limited: the bucket's capacity")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds to authenticate all")
    ap.add_argument("--out", type=Path, help="append each result as a JSON line")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if hard < args.count + 1000:
        print(f"warning: open-files limit {hard} is low for {args.count} clients", file=sys.stderr)
    logdir = ROOT / "benchmarks" / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ok = True
    for target in args.targets.split(","):
        result = run(target, args, logdir)
        ok = ok and bool(result.get("ok"))
        report(result, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
