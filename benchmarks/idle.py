#!/usr/bin/env python3
"""A crowd of idle authenticated connections on one server process.

    python benchmarks/idle.py                                # 5,000, 10,000, 19,000
    python benchmarks/idle.py --connections 50000 --idle-s 40
    python benchmarks/idle.py --target node14 --connections 10000

For each connection count the server (a target of ``run.py``, started fresh, on CPU 0) gets
that many connections, each with its own HS256 JWT in ``#handshake``, from several Node load
generators (``loadgen.js`` workload ``idle``, at most ``--per-process`` connections each, all
on CPU 1, each from its own source address 127.0.0.2, .3, ...: one address has ~28,000
ephemeral ports). Then, in order:

* **memory**: the server's RSS growth per connection, 3 s after the last handshake;
* **idle CPU**: the server's CPU over ``--idle-s`` seconds of nothing but heartbeats (pings
  every 8 s, answered by the load generators) and token-expiry watchers, in % of one core;
  the load generators count the pings they answered;
* **burst round**: every connection invokes ``echo`` at the same moment; the time until the
  last reply, and the latency of each invoke (p50, p99, max);
* **paced round**: every connection invokes ``echo`` once, spread evenly over ``--spread-s``
  seconds; the latency of each invoke.

The open-files limit is raised to the hard limit (``resource.setrlimit``; the server and the
load generators inherit it). A count the hard limit cannot hold in one process is refused with
the limit named (raising the hard limit needs ``CAP_SYS_RESOURCE``: ``ulimit -Hn``).

Results: printed, and written to ``benchmarks/results/idle-<date>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # benchmarks/run.py: servers, processes, CPU readings

#: file descriptors the server needs besides its connections (listener, epoll, pipes, ...)
FD_MARGIN = 200


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * p / 100) - 1)]


def expect(lg: run.Proc, prefix: str, timeout: float) -> dict[str, Any]:
    """The JSON of the next line of ``lg`` starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while True:
        line = lg.next_line(max(0.1, deadline - time.monotonic()))
        if line is None:
            raise RuntimeError(f"load generator exited before {prefix}; see {lg.log}")
        if line.startswith(prefix + " "):
            result: dict[str, Any] = json.loads(line[len(prefix) + 1 :])
            return result
        if line.startswith("RESULT "):
            raise RuntimeError(f"load generator failed: {line[:500]}")


def command(lgs: list[run.Proc], text: str) -> None:
    for lg in lgs:
        assert lg.p.stdin is not None
        lg.p.stdin.write(text + "\n")
        lg.p.stdin.flush()


def invoke_round(
    lgs: list[run.Proc], spread_ms: int, server_pid: int, timeout: float
) -> dict[str, Any]:
    cpu0, t0 = run.cpu_seconds(server_pid), time.monotonic()
    command(lgs, f"round {spread_ms}")
    parts = [expect(lg, "ROUND", timeout) for lg in lgs]
    wall = time.monotonic() - t0
    cpu = run.cpu_seconds(server_pid) - cpu0
    latencies = [x for part in parts for x in part["latencies_ms"]]
    return {
        "invokes": sum(part["n"] for part in parts),
        "answered": sum(part["answered"] for part in parts),
        "round_ms": max(part["elapsed_ms"] for part in parts),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "server_cpu_s": cpu,
        "wall_s": wall,
        "errors": sum(part["errors"] for part in parts),
        "error_samples": [s for part in parts for s in part["error_samples"]][:5],
    }


def target_for(args: argparse.Namespace) -> str:
    """The run.py target to start: ``--target``, or with ``--gc-threshold`` the same Python
    server started through ``run.GC_WRAPPER`` (registered as ``<target>+gc``)."""
    if not args.gc_threshold:
        return args.target
    argv, env = run.TARGETS[args.target]
    if argv[0] != run.PYTHON:
        raise SystemExit("--gc-threshold applies to the Python targets only")
    name = f"{args.target}+gc"
    run.TARGETS[name] = ([run.PYTHON, "-c", run.GC_WRAPPER, args.gc_threshold, *argv[1:]], env)
    return name


def run_count(n: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    processes = math.ceil(n / args.per_process)
    server, port = run.start_server(target_for(args), logdir)
    lgs: list[run.Proc] = []
    result: dict[str, Any] = {"connections": n, "load_generators": processes}
    try:
        time.sleep(0.5)
        rss_before = run.rss_bytes(server.p.pid)
        cpu_before = run.cpu_seconds(server.p.pid)
        t0 = time.monotonic()
        for k in range(processes):
            share = n // processes + (1 if k < n % processes else 0)
            cfg = {
                "workload": "idle",
                "url": f"ws://127.0.0.1:{port}/socketcluster/",
                "count": share,
                "first_index": k * args.per_process,
                "concurrency": args.concurrency,
                "auth_key": run.AUTH_KEY,
                "local_address": f"127.0.0.{2 + k}",
                "drain_s": args.drain_s,
            }
            lgs.append(
                run.Proc(
                    [
                        "taskset",
                        "-c",
                        run.LOADGEN_CPU,
                        "node",
                        str(run.NODE_DIR / "loadgen.js"),
                        json.dumps(cfg),
                    ],
                    {},
                    logdir / f"idle-loadgen-{k}.log",
                    stdin=True,
                )
            )
        opened = [expect(lg, "OPEN", args.open_timeout_s) for lg in lgs]
        open_s = time.monotonic() - t0
        result["open"] = sum(o["open"] for o in opened)
        result["open_failed"] = sum(o["failed"] for o in opened)
        result["open_s"] = open_s
        result["handshakes_per_s"] = result["open"] / open_s
        result["open_server_cpu_s"] = run.cpu_seconds(server.p.pid) - cpu_before
        result["open_errors"] = [s for o in opened for s in o["error_samples"]][:5]
        time.sleep(3.0)  # let the last handshakes settle (and a GC cycle run)
        rss_after = run.rss_bytes(server.p.pid)
        result["rss_before"], result["rss_after"] = rss_before, rss_after
        result["bytes_per_conn"] = (rss_after - rss_before) / max(1, result["open"])

        command(lgs, "stats")
        pings0 = sum(expect(lg, "STATS", 30)["pings"] for lg in lgs)
        cpu0, w0 = run.cpu_seconds(server.p.pid), time.monotonic()
        time.sleep(args.idle_s)
        cpu1, w1 = run.cpu_seconds(server.p.pid), time.monotonic()
        command(lgs, "stats")
        stats = [expect(lg, "STATS", 30) for lg in lgs]
        result["idle_s"] = w1 - w0
        result["idle_cpu_pct"] = 100 * (cpu1 - cpu0) / (w1 - w0)
        result["idle_pings_answered"] = sum(s["pings"] for s in stats) - pings0
        result["still_open"] = sum(s["open"] for s in stats)

        timeout = args.drain_s + args.spread_s + 30
        result["burst"] = invoke_round(lgs, 0, server.p.pid, timeout)
        result["paced"] = invoke_round(lgs, int(args.spread_s * 1000), server.p.pid, timeout)
        result["ok"] = (
            result["open"] == n
            and result["still_open"] == n
            and all(r["answered"] == n and not r["errors"] for r in (result["burst"],
                                                                     result["paced"]))
        )  # fmt: skip
    finally:
        command([lg for lg in lgs if lg.p.poll() is None], "close")
        for lg in lgs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # stop() kills it
                lg.p.wait(30)
            lg.stop()
        server.stop()
    return result


def show(r: dict[str, Any]) -> str:
    b, p = r["burst"], r["paced"]
    return (
        f"{r['connections']:>6} conns ({r['load_generators']} load generators): "
        f"open {r['open']} in {r['open_s']:.1f} s ({r['handshakes_per_s']:,.0f}/s); "
        f"{r['bytes_per_conn'] / 1024:.1f} KiB/conn; idle CPU {r['idle_cpu_pct']:.1f} % "
        f"({r['idle_pings_answered']} pings in {r['idle_s']:.0f} s); "
        f"burst round {b['round_ms']:,.0f} ms (p50 {b['p50_ms']} p99 {b['p99_ms']} max "
        f"{b['max_ms']} ms); paced over {p['round_ms'] / 1000:.0f} s: p50 {p['p50_ms']} p99 "
        f"{p['p99_ms']} max {p['max_ms']} ms; {'ok' if r['ok'] else 'FAILED'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", default="5000,10000,19000", help="comma-separated counts")
    ap.add_argument("--target", default="py-ws", choices=sorted(run.TARGETS))
    ap.add_argument("--per-process", type=int, default=10_000, help="connections per loadgen")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight each")
    ap.add_argument("--idle-s", type=float, default=24.0, help="idle window (3 ping intervals)")
    ap.add_argument("--spread-s", type=float, default=10.0, help="the paced round's length")
    ap.add_argument("--drain-s", type=float, default=60.0, help="wait for replies at most")
    ap.add_argument("--open-timeout-s", type=float, default=300.0)
    ap.add_argument(
        "--gc-threshold",
        help="start the (Python) server with gc.set_threshold(A, B, C) first, e.g. 100000,20,10",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    counts = [int(x) for x in args.connections.split(",") if x]

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    too_many = [n for n in counts if n + FD_MARGIN > hard]
    if too_many:
        print(
            f"idle.py: the open-files hard limit is {hard}: one process cannot hold "
            f"{', '.join(map(str, too_many))} connections (at most {hard - FD_MARGIN}); "
            "raising the hard limit needs CAP_SYS_RESOURCE",
            file=sys.stderr,
        )
        return 2
    run.ensure_node_modules()
    logdir = run.BENCH / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    results = []
    for n in counts:
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        r = run_count(n, args, logdir)
        r["loadavg_before"] = float(load)
        results.append(r)
        print(show(r), flush=True)
    out = args.out or run.BENCH / "results" / f"idle-{started:%Y-%m-%d}.json"
    out.write_text(json.dumps({
        "started": started.isoformat(), "machine": run.machine(), "target": args.target,
        "config": {k: v for k, v in vars(args).items() if k != "out"}, "results": results,
    }, indent=1, default=str))  # fmt: skip
    print(f"results: {out}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
