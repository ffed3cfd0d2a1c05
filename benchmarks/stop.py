"""The stop of a server holding many sockets: SIGTERM, time to exit, how every socket closed.

    .venv/bin/python benchmarks/stop.py [--counts 1000,3000,10000] [--subscribe] [--publish]
                                        [--rounds 1] [--out FILE]

Per count and round: the server (``trio-socketcluster serve trio_socketcluster.demo:app``,
pinned to CPU 0) starts, ``benchmarks/node/stop.js`` (pinned to CPU 1) connects ``count``
clients, each presenting its own HS256 token in ``#handshake`` (and, with ``--subscribe``,
subscribed to ``news``); with ``--publish`` one more client keeps 8 acknowledged publishes in
flight on ``news`` (200 acknowledged before the stop). Then SIGTERM, and measured: the time
until the server process exits and its exit status, every client's close code (1001
expected), the time from the stop to each client's close event (p50/p99/max), and with
``--subscribe --publish`` the acknowledged publications some subscriber did not receive (0
expected). Source addresses cycle over 127.0.0.1-127.0.0.8; the open-files limit is raised
(``resource.setrlimit``), as ``storm.py`` does.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from storm import (
    AUTH_KEY,
    CLIENT_CPU,
    NODE_DIR,
    PYTHON,
    ROOT,
    SERVER_CPU,
    Proc,
    free_port,
    report,
)


def run(count: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    port = free_port()
    cfg = {
        "url": f"ws://127.0.0.1:{port}/socketcluster/",
        "count": count,
        "auth_key": AUTH_KEY,
        "sources": [f"127.0.0.{i}" for i in range(1, 9)],
        "subscribe": args.subscribe,
        "publish": args.publish,
        "inFlight": 8,
        "acksBeforeStop": 200,
        "deadline_s": args.deadline,
        "stall": args.stall,
    }
    argv = [PYTHON, "-m", "trio_socketcluster", "serve", "benchmarks.stop_app:make_server"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {
        "PYTHONPATH": str(args.src),
        "TRIO_SOCKETCLUSTER_AUTH_KEY": AUTH_KEY,
        "STOP_SHUTDOWN_TIMEOUT_S": str(args.shutdown_timeout),
    }
    server = Proc(["taskset", "-c", SERVER_CPU, *argv], env, logdir / "server-stop.log")
    server.wait_for("trio-socketcluster: serving", 60)
    clients = Proc(
        ["taskset", "-c", CLIENT_CPU, "node", str(NODE_DIR / "stop.js"), json.dumps(cfg)],
        {},
        logdir / "stop-clients.log",
        stdin=True,
    )
    try:
        clients.wait_for("READY", 600)
        assert clients.p.stdin is not None
        clients.p.stdin.write("STOP\n")
        clients.p.stdin.flush()
        if args.stall:
            clients.wait_for("STALLED", 60)
        spy = None
        if args.profile:  # py-spy (installed separately) samples the stop
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.p.pid), "--rate", "250",
                 "--format", "raw", "--output", str(args.profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
        t_stop = time.monotonic()
        server.p.send_signal(signal.SIGTERM)
        try:
            status: int | None = server.p.wait(args.deadline)
        except subprocess.TimeoutExpired:
            status = None  # still running: stop() kills it
        t_exit = time.monotonic()
        if spy is not None:
            spy.wait(30)
        if args.stall:
            clients.p.stdin.write("RESUME\n")
            clients.p.stdin.flush()
        line = clients.wait_for("RESULT ", args.deadline + 60)
        result: dict[str, Any] = json.loads(line[len("RESULT ") :])
        result.update(
            exit_s=round(t_exit - t_stop, 3),
            exit_status=status,
            subscribe=args.subscribe,
            publish=args.publish,
            stall=args.stall,
            shutdown_timeout_s=args.shutdown_timeout,
            src=str(args.src),
        )
        codes = result.get("codes", {})
        result["ok"] = (
            status == 0
            and (args.stall or codes == {"1001": count})
            and result.get("lost_deliveries", 0) == 0
            and result.get("publisher_code") in (None, 1001)
        )
        return result
    finally:
        clients.stop()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--counts", default="1000,3000,10000")
    ap.add_argument("--subscribe", action="store_true", help="every client subscribes to news")
    ap.add_argument("--publish", action="store_true", help="a publish stream on news")
    ap.add_argument(
        "--stall", action="store_true",
        help="clients stop reading at the stop (until the server exited): the deadline cuts in",
    )  # fmt: skip
    ap.add_argument("--shutdown-timeout", type=float, default=5.0, help="the server's, in s")
    ap.add_argument(
        "--src", type=Path, default=ROOT / "src",
        help="the trio_socketcluster sources to serve (another checkout's, to compare)",
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=60.0, help="seconds to wait for the exit")
    ap.add_argument("--profile", type=Path, help="py-spy: collapsed stacks of the stop")
    ap.add_argument("--out", type=Path, help="append each result as a JSON line")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    counts = [int(c) for c in args.counts.split(",")]
    if hard < max(counts) + 1000:
        print(f"warning: open-files limit {hard} is low for {max(counts)} clients", file=sys.stderr)
    logdir = ROOT / "benchmarks" / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ok = True
    for _ in range(args.rounds):
        for count in counts:
            result = run(count, args, logdir)
            ok = ok and bool(result["ok"])
            report(result, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
