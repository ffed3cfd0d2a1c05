#!/usr/bin/env python3
"""Benchmarks of trio-socketcluster side by side with the Node reference servers.

One command runs everything (see docs/benchmarks.md for the method)::

    .venv/bin/python benchmarks/run.py                 # full run, 3 repetitions
    .venv/bin/python benchmarks/run.py --quick         # short smoke run (1 repetition)
    .venv/bin/python benchmarks/run.py --repeat 5 --targets py-ws,node14 --workloads rpc1,fanout

Each target server (the conformance application: ``examples/conformance_app.py`` with
``TRANSPORT=ws`` / ``trio-websocket``, ``benchmarks/node/conformance14.js`` / ``19.js``; and the
floors of our two transports, ``benchmarks/bare_ws.py`` / ``bare_tws.py``: bare wsproto and
trio-websocket servers with only the protocol subset the load generator needs) is started
fresh for every workload, pinned to CPU 0; the load generator
(``benchmarks/node/loadgen.js``, Node + ``ws`` speaking the SocketCluster protocol directly) is
pinned to CPU 1. The CPU time of both processes is read from ``/proc/<pid>/stat`` over the
measured window, so a saturated load generator is visible in the results. Every workload checks
what it measures (exactly-once in-order delivery, replies matching requests); a run with errors
is reported as failed and left out of the medians.

Results: ``benchmarks/results/<date>.json`` (every repetition, raw) and, unless ``--quick`` or
``--no-docs``, the results section of ``docs/benchmarks.md``. Uses only the standard library
(plus the project itself for the Python micro-benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
NODE_DIR = BENCH / "node"
INTEROP = ROOT / "tests" / "interop"
DOCS = ROOT / "docs" / "benchmarks.md"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
AUTH_KEY = "bench-secret-for-the-load-generator-0123456789"  # >= 32 bytes: the CLI's minimum
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU, LOADGEN_CPU = "0", "1"

def _workers_target(n: int) -> tuple[list[str], dict[str, str]]:
    """The launcher (``serve --workers n``) on the Redis broker run.py starts (``{broker}``)."""
    argv = [PYTHON, "-m", "trio_socketcluster", "serve", "benchmarks.cluster_app:make_server"]
    argv += ["--workers", str(n), "--broker", "{broker}", "--port", "0", "--log-level", "warning"]
    return argv, {"TRIO_SOCKETCLUSTER_AUTH_KEY": AUTH_KEY}


TARGETS: dict[str, tuple[list[str], dict[str, str]]] = {
    "py-ws": ([PYTHON, str(ROOT / "examples" / "conformance_app.py")], {"TRANSPORT": "ws"}),
    "py-tws": (
        [PYTHON, str(ROOT / "examples" / "conformance_app.py")],
        {"TRANSPORT": "trio-websocket"},
    ),
    "node14": (["node", str(NODE_DIR / "conformance14.js")], {}),
    "node19": (["node", str(NODE_DIR / "conformance19.js")], {}),
    # The floors of our two transports: bare servers with only what loadgen.js needs.
    "bare-ws": ([PYTHON, str(BENCH / "bare_ws.py")], {}),
    "bare-tws": ([PYTHON, str(BENCH / "bare_tws.py")], {}),
    # The launcher (``serve --workers N``) with N worker processes joined by a Redis broker
    # (``{broker}``: a redis-server run.py starts for the run); see MULTI_CORE.
    "py-w1": _workers_target(1),
    "py-w2": _workers_target(2),
}
#: Runs a Python target with ``gc.set_threshold(*thresholds)`` applied first (argv[1]).
GC_WRAPPER = (
    "import gc, runpy, sys; gc.set_threshold(*map(int, sys.argv[1].split(','))); "
    "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
#: py-ws with CPython's collector tuned (see docs/benchmarks.md, *Idle connections*): young
#: collections every 100,000 allocations instead of 700, so that far fewer objects are promoted
#: and the full collections, which walk every object of every connection, almost never run.
GC_TUNED = "100000,20,10"
TARGETS["py-ws-gc"] = (
    [PYTHON, "-c", GC_WRAPPER, GC_TUNED, str(ROOT / "examples" / "conformance_app.py")],
    {"TRANSPORT": "ws"},
)
#: ``BENCH_BASELINE_SRC=<dir>`` adds **py-base**: py-ws importing the package from ``<dir>``
#: (e.g. ``git archive <commit> src | tar -x -C <base>``, then ``<base>/src``), so that a
#: change is measured against its parent in the same run, interleaved.
if os.environ.get("BENCH_BASELINE_SRC"):
    TARGETS["py-base"] = (
        TARGETS["py-ws"][0],
        {"TRANSPORT": "ws", "PYTHONPATH": os.environ["BENCH_BASELINE_SRC"]},
    )
#: Targets using both cores: the server processes (launcher, workers, redis-server) and the
#: load generator all run unpinned on CPUs 0-1, so the load generator shares the cores with
#: the workers; their "server CPU %" is the sum over those processes (200 % = both cores).
MULTI_CORE = ("py-w1", "py-w2")
ALL_CPUS = "0,1"
DEFAULT_TARGETS = "bare-ws,bare-tws,py-ws,py-tws,node14,node19"  # py-w1,py-w2 on request
OURS = ("py-ws", "py-tws", "py-base", "py-ws-gc")
NODES = ("node14", "node19")
#: our target -> its transport's floor; ratios to it are shown for FLOOR_WORKLOADS only (the
#: bare servers skip JWT work and all middleware, so authrpc/handshake would compare unlike work)
FLOORS = {"py-ws": "bare-ws", "py-tws": "bare-tws"}
FLOOR_WORKLOADS = ("rpc1", "rpc16", "fanout")


def ratio_pairs(targets: list[str], workload: str) -> list[tuple[str, str]]:
    """The (ours, reference) pairs whose ratios are reported for ``workload``."""
    pairs = [(o, n) for o in targets if o in OURS for n in targets if n in NODES]
    if workload in FLOOR_WORKLOADS:
        pairs += [(o, FLOORS[o]) for o in targets if o in FLOORS and FLOORS[o] in targets]
    if "py-ws" in targets and "py-base" in targets:
        pairs.append(("py-ws", "py-base"))  # the change against its parent
    return pairs


#: workload name -> (loadgen config, the headline metrics: (key path, label, higher is better))
WORKLOADS: dict[str, dict[str, Any]] = {
    "fanout": {"workload": "fanout", "subscribers": 1000, "in_flight": 64},
    # the same on a channel without history (the conformance app's `news` keeps history):
    # `--workloads fanout,fanout-plain` alternates them, for the cost of history
    "fanout-plain": {
        "workload": "fanout",
        "channel": "plain",
        "subscribers": 1000,
        "in_flight": 64,
    },
    "rpc1": {"workload": "rpc", "connections": 100, "depth": 1},
    "rpc16": {"workload": "rpc", "connections": 100, "depth": 16},
    "authrpc": {"workload": "authrpc", "connections": 100, "depth": 1},
    "handshake": {"workload": "handshake", "count": 10_000, "concurrency": 200},
}
METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "fanout": [
        ("msgs_per_s", "delivered msgs/s", True),
        ("latency.p50_ms", "latency p50 ms", False),
        ("latency.p99_ms", "latency p99 ms", False),
    ],
    "fanout-plain": [
        ("msgs_per_s", "delivered msgs/s", True),
        ("latency.p50_ms", "latency p50 ms", False),
        ("latency.p99_ms", "latency p99 ms", False),
    ],
    "rpc1": [
        ("req_per_s", "req/s", True),
        ("latency.p50_ms", "latency p50 ms", False),
        ("latency.p99_ms", "latency p99 ms", False),
    ],
    "rpc16": [
        ("req_per_s", "req/s", True),
        ("latency.p50_ms", "latency p50 ms", False),
        ("latency.p99_ms", "latency p99 ms", False),
    ],
    "authrpc": [
        ("req_per_s", "req/s", True),
        ("latency.p50_ms", "latency p50 ms", False),
        ("latency.p99_ms", "latency p99 ms", False),
    ],
    "handshake": [
        ("handshakes_per_s", "handshakes/s", True),
        ("latency.p99_ms", "handshake p99 ms", False),
        ("bytes_per_conn", "RSS bytes / idle conn", False),
    ],
}
CPU_METRICS = [
    ("server_cpu_pct", "server CPU %"),
    ("loadgen_cpu_pct", "loadgen CPU %"),
    ("other_cpu_pct", "others' CPU % on cores 0+1"),
]

# A typical packet for the codec micro-benchmark (what a fan-out delivery looks like).
MICRO_PACKET = {
    "event": "#publish",
    "data": {"channel": "news", "data": {"s": 12345, "t": 98765.4321, "p": "x" * 32}},
}
MICRO_TOKEN_PAYLOAD = {"username": "alice", "channels": ["news", "alice-room"]}


# ------------------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a launcher's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


class Server:
    """The processes of one target whose CPU and memory are measured: the server, its
    workers (descendants, found at each reading), and a redis-server when it uses one."""

    def __init__(self, pid: int, extra: tuple[int, ...] = ()) -> None:
        self.pid, self.extra = pid, extra

    def pids(self) -> list[int]:
        return [*process_tree(self.pid), *self.extra]

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):  # exited meanwhile
                total += cpu_seconds(pid)
        return total

    def rss(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += rss_bytes(pid)
        return total


def core_busy() -> dict[str, float]:
    """Busy seconds of the server's and the load generator's cores (all processes)."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name in (f"cpu{SERVER_CPU}", f"cpu{LOADGEN_CPU}"):
                v = [int(x) for x in vals]
                busy[name] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK
    return busy


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Proc:
    """A child process whose stdout lines arrive on a queue."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        stdin: bool = False,
        *,
        append: bool = False,
    ) -> None:
        self.log = log
        self._err = open(log, "ab" if append else "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout}s; see {self.log}") from None

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (earlier lines are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} within {timeout}s; see {self.log}") from None
            if line is None:
                raise RuntimeError(f"exited (status {self.p.wait()}) before {prefix!r}")
            if line.startswith(prefix):
                return line

    def stop(self, timeout: float = 15) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._err.close()
        return self.p.returncode


def start_redis(logdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A throw-away redis-server (no persistence) on a free port, for the py-w* targets."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(logdir / "redis.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def start_server(target: str, logdir: Path, broker_url: str = "") -> tuple[Proc, int]:
    argv, env = TARGETS[target]
    argv = [a.replace("{broker}", broker_url) for a in argv]
    cpus = ALL_CPUS if target in MULTI_CORE else SERVER_CPU
    proc = Proc(
        ["taskset", "-c", cpus, *argv],
        {**env, "PORT": "0", "AUTH_KEY": AUTH_KEY, "HOST": "127.0.0.1"},
        logdir / f"server-{target}.log",
    )
    deadline = time.monotonic() + 30
    while True:
        line = proc.next_line(max(0.1, deadline - time.monotonic()))
        if line is None:
            raise RuntimeError(f"{target} exited before READY; see {proc.log}")
        # "READY <port>" (the scripts), "... (READY <port>)" (the launcher)
        if line.startswith("READY ") or "(READY " in line:
            return proc, int(line.rsplit("READY ", 1)[1].rstrip(")").split()[0])


def run_loadgen(
    cfg: dict[str, Any],
    server: Server,
    logdir: Path,
    timeout: float,
    rss_before: int,
    cpus: str = LOADGEN_CPU,
) -> dict[str, Any]:
    """Run one load generator; returns its RESULT plus CPU (and memory) measurements."""
    lg = Proc(
        ["taskset", "-c", cpus, "node", str(NODE_DIR / "loadgen.js"), json.dumps(cfg)],
        {},
        logdir / "loadgen.log",
        stdin=True,
    )
    marks: dict[str, tuple[float, float, float, dict[str, float]]] = {}
    result: dict[str, Any] = {"ok": False, "fatal": "no RESULT"}
    deadline = time.monotonic() + timeout
    try:
        while True:
            line = lg.next_line(max(0.1, deadline - time.monotonic()))
            if line is None:
                break
            if line in ("START", "END"):
                marks[line] = (
                    time.monotonic(),
                    server.cpu(),
                    cpu_seconds(lg.p.pid),
                    core_busy(),
                )
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
            elif line == "HOLD":
                time.sleep(2.0)  # let the idle connections settle (and a GC cycle run)
                after = server.rss()
                result["rss_before"], result["rss_after"] = rss_before, after
                result["bytes_per_conn"] = (after - rss_before) / cfg["count"]
                assert lg.p.stdin is not None
                lg.p.stdin.write("release\n")
                lg.p.stdin.flush()
    finally:
        lg.stop()
    if "START" in marks and "END" in marks:
        (w0, s0, l0, b0), (w1, s1, l1, b1) = marks["START"], marks["END"]
        wall = w1 - w0
        result["window_s"] = wall
        result["server_cpu_pct"] = 100 * (s1 - s0) / wall
        result["loadgen_cpu_pct"] = 100 * (l1 - l0) / wall
        # What other processes took from the two pinned cores during the window (noise).
        other = sum(b1[k] - b0[k] for k in b0) - (s1 - s0) - (l1 - l0)
        result["other_cpu_pct"] = max(0.0, 100 * other / wall)
    return result


def run_one(target: str, name: str, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    cfg = {
        **WORKLOADS[name],
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "drain_s": 60,
        "auth_key": AUTH_KEY,
        "busy_poll": args.busy_poll,
    }
    if name == "handshake":
        cfg["count"] = args.handshakes
    redis: subprocess.Popen[bytes] | None = None
    broker_url = ""
    if target in MULTI_CORE:
        redis, redis_port = start_redis(logdir)
        broker_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        proc, port = start_server(target, logdir, broker_url)
        server = Server(proc.p.pid, (redis.pid,) if redis is not None else ())
        try:
            cfg["url"] = f"ws://127.0.0.1:{port}/socketcluster/"
            time.sleep(0.5)
            rss_before = server.rss()
            result = run_loadgen(
                cfg, server, logdir, timeout=600, rss_before=rss_before,
                cpus=ALL_CPUS if target in MULTI_CORE else LOADGEN_CPU,
            )  # fmt: skip
            result["server_rss_idle"] = rss_before
        finally:
            code = proc.stop()
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(10)
    if code not in (0, -signal.SIGTERM):
        result["server_exit"] = code
    return result


# ------------------------------------------------------------------------------ micro


PY_MICRO = r"""
import json, sys, time, timeit
from trio_socketcluster.protocol.codec import decode, encode
from trio_socketcluster.auth import AuthEngine, Keyring
import orjson
cfg = json.loads(sys.argv[1])
packet, text = cfg["packet"], json.dumps(cfg["packet"], separators=(",", ":"))
engine = AuthEngine(Keyring.symmetric(cfg["auth_key"]), algorithm="HS256", default_expiry_s=86400)
token = engine.sign(cfg["token_payload"], now=time.time())
now = time.time()
def best(stmt):
    t = timeit.Timer(stmt, globals=globals())
    n, _ = t.autorange()
    return min(t.repeat(5, n)) / n * 1e9
print(json.dumps({
    "encode_ns": best("encode(packet)"),
    "decode_ns": best("decode(text)"),
    "orjson_dumps_ns": best("orjson.dumps(packet)"),
    "orjson_loads_ns": best("orjson.loads(text)"),
    "jwt_sign_ns": best("engine.sign(cfg['token_payload'], now=now)"),
    "jwt_verify_ns": best("engine.verify(token, now=now)"),
    "packet_bytes": len(text.encode()),
}))
"""


def run_micro() -> dict[str, Any]:
    cfg = {"packet": MICRO_PACKET, "token_payload": MICRO_TOKEN_PAYLOAD, "auth_key": AUTH_KEY}
    py = subprocess.run(
        ["taskset", "-c", SERVER_CPU, PYTHON, "-c", PY_MICRO, json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    node = subprocess.run(
        ["taskset", "-c", SERVER_CPU, "node", str(NODE_DIR / "loadgen.js"),
         json.dumps({**cfg, "workload": "micro"})],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    node_line = next(x for x in node.stdout.splitlines() if x.startswith("RESULT "))
    return {"python": json.loads(py.stdout), "node": json.loads(node_line[len("RESULT ") :])}


# ------------------------------------------------------------------------------ summary


def get(d: dict[str, Any], path: str) -> float | None:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d if isinstance(d, int | float) else None


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(
    reps: list[dict[str, Any]], targets: list[str], workloads: list[str]
) -> dict[str, Any]:
    """Medians per target and metric, and medians of the per-repetition ratios ours / Node
    (and ours / its transport's bare floor, for FLOOR_WORKLOADS)."""
    summary: dict[str, Any] = {}
    for name in workloads:
        if name == "micro":
            continue
        rows = {}
        for key, _label, _hib in METRICS[name] + [(k, lab, False) for k, lab in CPU_METRICS]:
            row: dict[str, Any] = {}
            for t in targets:
                row[t] = median(
                    [get(r[name][t], key) for r in reps if r.get(name, {}).get(t, {}).get("ok")]
                )
            for ours, ref in ratio_pairs(targets, name):
                ratios = []
                for r in reps:
                    a, b = r.get(name, {}).get(ours, {}), r.get(name, {}).get(ref, {})
                    va, vb = get(a, key), get(b, key)
                    if a.get("ok") and b.get("ok") and va is not None and vb:
                        ratios.append(va / vb)
                row[f"{ours}/{ref}"] = median(ratios)
            rows[key] = row
        summary[name] = rows
    micro = [r["micro"] for r in reps if "micro" in r]
    if micro:
        summary["micro"] = {
            side: {k: median([m[side].get(k) for m in micro]) for k in micro[0][side]}
            for side in ("python", "node")
        }
    return summary


def fmt(v: float | None, key: str = "") -> str:
    if v is None:
        return "-"
    if "/" in key:
        return f"{v:.2f}x"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def table(summary: dict[str, Any], targets: list[str], workloads: list[str]) -> str:
    pairs = {p for name in workloads for p in ratio_pairs(targets, name)}
    ratio_cols = [f"{o}/{n}" for o in targets if o in OURS for n in targets if n in NODES]
    ratio_cols += [f"{o}/{FLOORS[o]}" for o in targets if (o, FLOORS.get(o)) in pairs]
    if ("py-ws", "py-base") in pairs:
        ratio_cols.append("py-ws/py-base")
    cols = targets + ratio_cols
    out = ["| workload | metric | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for name in workloads:
        if name not in summary or name == "micro":
            continue
        for key, label in [(k, lab) for k, lab, _ in METRICS[name]] + CPU_METRICS:
            row = summary[name][key]
            cells = [
                "" if "/" in c and (key == "other_cpu_pct" or c not in row) else fmt(row.get(c), c)
                for c in cols
            ]
            out.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    if "micro" in summary:
        m = summary["micro"]
        out += [
            "",
            "| micro (ns/op, one core) | Python | Node | Python/Node |",
            "|---|---:|---:|---:|",
        ]
        for key, nkey, label in [
            ("encode_ns", "encode_ns", "encode packet (Node: sc-formatter)"),
            ("decode_ns", "decode_ns", "decode packet (Node: sc-formatter)"),
            ("jwt_sign_ns", "jwt8_sign_ns", "JWT HS256 sign (Node: jsonwebtoken 8, S14)"),
            ("jwt_verify_ns", "jwt8_verify_ns", "JWT HS256 verify (Node: jsonwebtoken 8, S14)"),
            ("jwt_sign_ns", "jwt_sign_ns", "JWT HS256 sign (Node: jsonwebtoken 9, S19)"),
            ("jwt_verify_ns", "jwt_verify_ns", "JWT HS256 verify (Node: jsonwebtoken 9, S19)"),
        ]:
            p, n = m["python"].get(key), m["node"].get(nkey)
            ratio = fmt(p / n, "/") if p and n else "-"
            out.append(f"| {label} | {fmt(p)} | {fmt(n)} | {ratio} |")
        for key, label in [
            ("orjson_dumps_ns", "orjson.dumps alone"),
            ("orjson_loads_ns", "orjson.loads alone"),
        ]:
            out.append(f"| {label} | {fmt(m['python'].get(key))} | | |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = subprocess.run(
        [PYTHON, "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) "
         "for p in ('trio', 'wsproto', 'trio-websocket', 'orjson', 'joserfc')}))"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    node_pkgs = {}
    for name, base in [("ws", NODE_DIR), ("sc-server-14", INTEROP), ("sc-server-19", INTEROP)]:
        manifest = base / "node_modules" / name / "package.json"
        if manifest.exists():
            node_pkgs[name] = json.loads(manifest.read_text())["version"]
    return {
        "commit": measured_commit(),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": subprocess.run(
            ["node", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "python_packages": json.loads(versions.stdout) if versions.returncode == 0 else {},
        "node_packages": node_pkgs,
    }


def measured_commit() -> str:
    """The commit whose servers are measured: ``$BENCH_COMMIT`` (set it when the package is
    imported from elsewhere, e.g. ``PYTHONPATH`` to an export of a commit), else this
    checkout's HEAD, with ``+dirty`` if ``src/`` or ``examples/`` have uncommitted changes."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src", "examples"], capture_output=True, text=True
    ).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def write_docs(text: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    doc = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in doc:
        doc += f"\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    tail = rest.split(end, 1)[1]
    DOCS.write_text(f"{head}{start}\n{text}\n{end}{tail}")


# ------------------------------------------------------------------------------ main


def ensure_node_modules() -> None:
    if not (NODE_DIR / "node_modules" / "ws").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    if not (INTEROP / "node_modules" / "sc-server-14").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="short run: 1 repetition, 3 s windows, 2,000 handshakes",
    )
    ap.add_argument("--repeat", type=int, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help=f"default {DEFAULT_TARGETS}")
    ap.add_argument("--workloads", default="micro,rpc1,rpc16,authrpc,fanout,handshake")
    ap.add_argument(
        "--duration", type=float, help="measured seconds per run (default 10; 3 with --quick)"
    )
    ap.add_argument(
        "--warmup", type=float, help="seconds before measuring (default 2; 1 with --quick)"
    )
    ap.add_argument(
        "--handshakes", type=int, help="connections in the handshake workload (default 10000)"
    )
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--busy-poll",
        action="store_true",
        help="the load generator never sleeps in epoll_wait (see docs/benchmarks.md)",
    )
    ap.add_argument(
        "--out", type=Path, help="results file (default benchmarks/results/<date>.json)"
    )
    ap.add_argument(
        "--from-json", type=Path, help="only re-render the table (and docs) of a results file"
    )
    args = ap.parse_args()
    if args.from_json:
        return report(json.loads(args.from_json.read_text()), args.from_json, docs=not args.no_docs)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.handshakes = args.handshakes or (2000 if args.quick else 10_000)
    targets = [t for t in args.targets.split(",") if t]
    workloads = [w for w in args.workloads.split(",") if w]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t}")
    for w in workloads:
        if w not in WORKLOADS and w != "micro":
            ap.error(f"unknown workload {w}")
    if not shutil.which("taskset") or not shutil.which("node"):
        ap.error("needs taskset and node on PATH")

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if hard < args.handshakes + 1000:
        print(
            f"warning: open-files limit {hard} is low for {args.handshakes} connections",
            file=sys.stderr,
        )
    ensure_node_modules()

    started = dt.datetime.now(dt.UTC)
    logdir = BENCH / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu_model']}, ", end="")
    print(f"Python {info['python']}, Node {info['node']}")
    reps: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        results: dict[str, Any] = {}
        for name in workloads:
            if name == "micro":
                results["micro"] = run_micro()
                m = results["micro"]
                keys = ("encode_ns", "decode_ns", "jwt_sign_ns", "jwt_verify_ns")
                shown = ", ".join(
                    f"{k} py {m['python'][k]:.0f} / node {m['node'][k]:.0f}" for k in keys
                )
                print(f"[{rep + 1}/{args.repeat}] micro: {shown}")
                continue
            results[name] = {}
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]  # rotate
            for target in order:
                try:
                    r = run_one(target, name, args, logdir)
                except Exception as exc:  # a crashed server is a failed run, not a crashed suite
                    r = {"ok": False, "fatal": repr(exc)}
                results[name][target] = r
                shown = ", ".join(f"{label} {fmt(get(r, key))}" for key, label, _ in METRICS[name])
                cpu = (
                    f"cpu server {fmt(r.get('server_cpu_pct'))}% loadgen "
                    f"{fmt(r.get('loadgen_cpu_pct'))}% others {fmt(r.get('other_cpu_pct'))}%"
                )
                status = (
                    "ok" if r.get("ok") else f"FAILED {r.get('fatal') or r.get('error_samples')}"
                )
                print(
                    f"[{rep + 1}/{args.repeat}] {name:9} {target:8} {shown}; {cpu}; {status}",
                    flush=True,
                )
        reps.append(results)

    summary = summarise(reps, targets, workloads)
    out = args.out or BENCH / "results" / f"{started:%Y-%m-%d}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "from_json")}
    data = {
        "started": started.isoformat(),
        "machine": info,
        "config": config,
        "workloads": WORKLOADS,
        "summary": summary,
        "repetitions": reps,
    }
    out.write_text(json.dumps(data, indent=1))
    return report(data, out, docs=not (args.quick or args.no_docs))


def report(data: dict[str, Any], out: Path, *, docs: bool) -> int:
    """Print the table of a results file (and write it into docs/benchmarks.md)."""
    config, info, reps = data["config"], data["machine"], data["repetitions"]
    targets = [t for t in config["targets"].split(",") if t]
    workloads = [w for w in config["workloads"].split(",") if w]
    summary = summarise(reps, targets, workloads)
    tbl = table(summary, targets, workloads)
    print(tbl)
    print(f"results: {out}")
    failed = sum(
        1
        for r in reps
        for w in r.values()
        if isinstance(w, dict)
        for x in w.values()
        if isinstance(x, dict) and x.get("ok") is False
    )
    if docs:
        started = dt.datetime.fromisoformat(data["started"])
        pkgs = ", ".join(
            f"{k} {v}" for k, v in {**info["python_packages"], **info["node_packages"]}.items()
        )
        write_docs(
            f"Run of {started:%Y-%m-%d %H:%M} UTC, commit {info.get('commit', 'unknown')}, "
            f"on {info['nproc']} CPUs ({info['cpu_model']}), "
            f"Linux {info['kernel']}, Python {info['python']}, Node {info['node']}; {pkgs}. "
            f"{config['repeat']} repetitions of {config['duration']:g} s windows after "
            f"{config['warmup']:g} s warm-up, {config['handshakes']} handshakes; medians, ratios "
            f"are medians of per-repetition ratios (`benchmarks/results/{out.name}`). "
            f"Failed runs: {failed}.\n\n{tbl}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
