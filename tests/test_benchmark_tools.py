"""The benchmark tools measure what they claim: ``benchmarks/run.py`` (the fan-out fast path
verifies every delivery; the multi-process targets), ``benchmarks/idle.py`` (every connection
answers both invoke rounds) and ``benchmarks/memory.py`` (the per-connection breakdown names
the connection's tasks). Small sizes and short windows: these check the tools, not the speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from procs import INTEROP, REPO, npm_ci

if TYPE_CHECKING:
    from pathlib import Path

BENCH = REPO / "benchmarks"


def _tools() -> None:
    npm_ci(BENCH / "node", "the load generator")
    npm_ci(INTEROP, "the load generator's reference servers")
    if shutil.which("taskset") is None:
        pytest.skip("the benchmarks pin processes with taskset")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def _bench(tmp_path: Path, targets: str, workloads: str) -> dict[str, Any]:
    out = tmp_path / "results.json"
    proc = _run(
        [str(BENCH / "run.py"), "--targets", targets, "--workloads", workloads, "--repeat", "1",
         "--duration", "1", "--warmup", "0.5", "--handshakes", "200", "--no-docs",
         "--out", str(out)],
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_fanout_deliveries_are_verified_on_the_fast_path(tmp_path: Path) -> None:
    _tools()
    data = _bench(tmp_path, "py-ws", "fanout")
    result = data["repetitions"][0]["fanout"]["py-ws"]
    assert result["ok"], result
    assert result["measured_publishes"] > 0
    # the first of 1,000 copies of each publish is parsed and checked, the others are compared
    # with it byte for byte (memcmp, no JSON.parse)
    assert result["fast_path_share"] == pytest.approx(0.999)
    assert result["msgs_per_s"] > 0
    assert result["server_cpu_pct"] > 0


def test_fanout_plain_is_the_same_workload_on_a_channel_without_history(tmp_path: Path) -> None:
    """``fanout`` (on ``news``, which keeps history in the conformance app) against
    ``fanout-plain``: the cost of history is measured between these two."""
    _tools()
    data = _bench(tmp_path, "py-ws", "fanout,fanout-plain")
    with_history = data["repetitions"][0]["fanout"]["py-ws"]
    plain = data["repetitions"][0]["fanout-plain"]["py-ws"]
    assert with_history["ok"], (with_history, plain)
    assert plain["ok"], (with_history, plain)
    assert with_history["history"] is True
    assert plain["history"] is False
    assert plain["measured_publishes"] > 0
    assert plain["fast_path_share"] == pytest.approx(0.999)


def test_the_two_worker_target_serves_and_counts_every_process(tmp_path: Path) -> None:
    _tools()
    if shutil.which("redis-server") is None:
        pytest.skip("py-w2 needs redis-server")
    data = _bench(tmp_path, "py-w2", "rpc1,handshake")
    rpc = data["repetitions"][0]["rpc1"]["py-w2"]
    assert rpc["ok"], rpc
    handshake = data["repetitions"][0]["handshake"]["py-w2"]
    assert handshake["ok"], handshake
    # the memory of both workers: 200 idle connections cost something
    assert handshake["bytes_per_conn"] > 1000


def test_idle_crowd_answers_both_rounds(tmp_path: Path) -> None:
    _tools()
    out = tmp_path / "idle.json"
    proc = _run(
        [str(BENCH / "idle.py"), "--connections", "60", "--per-process", "40", "--idle-s", "1",
         "--spread-s", "0.5", "--gc-threshold", "50000,20,10", "--out", str(out)],
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["config"]["gc_threshold"] == "50000,20,10"
    (result,) = data["results"]
    assert result["load_generators"] == 2  # 40 + 20, from 127.0.0.2 and 127.0.0.3
    assert result["open"] == result["still_open"] == 60
    for name in ("burst", "paced"):
        assert result[name]["answered"] == 60
        assert result[name]["errors"] == 0
        assert 0 < result[name]["p50_ms"] <= result[name]["p99_ms"] <= result[name]["max_ms"]
    assert result["bytes_per_conn"] > 0


def test_idle_refuses_more_connections_than_the_hard_limit() -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proc = _run([str(BENCH / "idle.py"), "--connections", str(hard)], timeout=60)
    assert proc.returncode == 2
    assert f"the open-files hard limit is {hard}" in proc.stderr


def test_memory_breakdown_names_the_connection_tasks(tmp_path: Path) -> None:
    _tools()
    out = tmp_path / "memory.json"
    proc = _run([str(BENCH / "memory.py"), "--connections", "50", "--json", str(out)], timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    tasks = result["tasks_per_conn"]
    assert tasks["ServerSocket._expiry_watcher"] == 1.0  # the watcher stays (and heartbeats)
    assert "ServerSocket._handshake_task" not in tasks  # it ended with the handshake
    assert not [name for name in tasks if name.endswith("run_writer")]  # never needed
    assert result["traced_per_conn"] > 1000
    assert result["by_ours"][0][1] > 0
    assert "trio tasks per connection" in proc.stdout
