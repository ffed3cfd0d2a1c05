#!/usr/bin/env python3
"""Where the memory of an idle authenticated connection goes (tracemalloc).

    python benchmarks/memory.py                  # 2,000 connections
    python benchmarks/memory.py --connections 5000 --top 30

Runs the conformance application (``examples/conformance_app.py``, our wsproto transport) in
this process with ``tracemalloc`` on, lets the Node load generator (``loadgen.js`` workload
``idle``, on real sockets) open N connections with a valid JWT each, waits for them to settle,
and compares a snapshot with the one taken before. Prints, per connection:

* **by site**: bytes allocated and still held, attributed to the innermost line of
  ``trio_socketcluster`` on the allocation's stack (a task is charged to the ``start_soon``
  that spawned it, a dict to the line that filled it), with the library line that allocated;
* **by type**: objects that exist once per connection (``gc.get_objects()`` counted by type,
  before and after) and their shallow size (``sys.getsizeof``);
* **by task**: the trio tasks per connection, by coroutine name;
* the RSS growth per connection next to the traced bytes (the difference is allocator
  overhead, and the interpreter's own bookkeeping outside tracemalloc).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run  # noqa: E402  (benchmarks/run.py)
from conformance_app import build_server  # type: ignore[import-not-found]  # noqa: E402

OURS = os.sep + "trio_socketcluster" + os.sep


def site_of(tb: tracemalloc.Traceback) -> tuple[str, str]:
    """(our innermost line, the library line that allocated) for one allocation stack."""
    frames = list(tb)  # oldest first
    lib = f"{_short(frames[-1].filename)}:{frames[-1].lineno}"
    for frame in reversed(frames):
        if OURS in frame.filename:
            return f"{_short(frame.filename)}:{frame.lineno}", lib
    return "(outside trio_socketcluster)", lib


def _short(filename: str) -> str:
    for marker in (OURS, os.sep + "site-packages" + os.sep, os.sep + "lib" + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _line(filename: str, lineno: int) -> str:
    try:
        return Path(filename).read_text().splitlines()[lineno - 1].strip()[:70]
    except (OSError, IndexError):
        return ""


def count_types() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        counts[type(obj).__qualname__] += 1
    return counts


def sizes_by_type() -> dict[str, int]:
    sizes: dict[str, int] = collections.defaultdict(int)
    for obj in gc.get_objects():
        sizes[type(obj).__qualname__] += sys.getsizeof(obj)
    return sizes


def tasks_by_name() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        counts[task.coro.cr_code.co_qualname if hasattr(task.coro, "cr_code") else task.name] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return counts


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    n = args.connections
    server = build_server(run.AUTH_KEY)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        await trio.sleep(0.2)
        gc.collect()
        types0, tasks0, sizes0 = count_types(), tasks_by_name(), sizes_by_type()
        snap0 = tracemalloc.take_snapshot()
        rss0 = run.rss_bytes(os.getpid())
        cfg = {
            "workload": "idle", "url": f"ws://127.0.0.1:{port}/socketcluster/", "count": n,
            "concurrency": 100, "auth_key": run.AUTH_KEY, "drain_s": 10,
        }  # fmt: skip
        proc = await trio.lowlevel.open_process(
            ["taskset", "-c", run.LOADGEN_CPU, "node", str(run.NODE_DIR / "loadgen.js"),
             json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            buf = b""
            while b"\nOPEN " not in b"\n" + buf:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    raise RuntimeError("load generator exited before OPEN")
                buf += chunk
            opened = json.loads((b"\n" + buf).split(b"\nOPEN ", 1)[1].split(b"\n", 1)[0])
            if opened["open"] != n:
                raise RuntimeError(f"only {opened['open']} of {n} connections opened: {opened}")
            await trio.sleep(2.0)
            gc.collect()
            snap1 = tracemalloc.take_snapshot()
            rss1 = run.rss_bytes(os.getpid())
            types1, tasks1, sizes1 = count_types(), tasks_by_name(), sizes_by_type()
            await proc.stdin.send_all(b"close\n")
            with trio.move_on_after(30):
                await proc.wait()
        finally:
            proc.kill()
            await proc.wait()

        nursery.cancel_scope.cancel()

    by_site: dict[tuple[str, str], int] = collections.defaultdict(int)
    by_ours: dict[str, int] = collections.defaultdict(int)
    where: dict[str, tuple[str, int]] = {}
    for stat in snap1.compare_to(snap0, "traceback"):
        if stat.size_diff == 0:
            continue
        ours, lib = site_of(stat.traceback)
        by_site[(ours, lib)] += stat.size_diff
        by_ours[ours] += stat.size_diff
        for frame in reversed(list(stat.traceback)):
            if OURS in frame.filename:
                where[ours] = (frame.filename, frame.lineno)
                break
    traced = sum(by_ours.values())
    per_type = {
        name: {
            "per_conn": (types1[name] - types0.get(name, 0)) / n,
            "bytes_per_conn": (sizes1.get(name, 0) - sizes0.get(name, 0)) / n,
        }
        for name in types1
        if (types1[name] - types0.get(name, 0)) >= n * 0.5
    }
    return {
        "connections": n,
        "rss_per_conn": (rss1 - rss0) / n,
        "traced_per_conn": traced / n,
        "by_ours": sorted(
            ((k, v / n, _line(*where[k]) if k in where else "") for k, v in by_ours.items()),
            key=lambda x: -x[1],
        ),
        "by_site": sorted(((k[0], k[1], v / n) for k, v in by_site.items()), key=lambda x: -x[2]),
        "by_type": dict(sorted(per_type.items(), key=lambda kv: -kv[1]["bytes_per_conn"])),
        "tasks_per_conn": {
            name: (tasks1[name] - tasks0.get(name, 0)) / n
            for name in tasks1
            if tasks1[name] - tasks0.get(name, 0)
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25, help="lines per table")
    ap.add_argument("--frames", type=int, default=40, help="tracemalloc stack depth")
    ap.add_argument("--json", type=Path, help="also write the full breakdown here")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run.ensure_node_modules()
    tracemalloc.start(args.frames)
    r = trio.run(measure, args)
    tracemalloc.stop()
    n = r["connections"]
    print(f"{n} idle authenticated connections: RSS {r['rss_per_conn']:,.0f} B/conn, "
          f"traced by tracemalloc {r['traced_per_conn']:,.0f} B/conn")  # fmt: skip
    print("\nby site (our innermost line), bytes per connection:")
    for ours, size, text in r["by_ours"][: args.top]:
        print(f"  {size:8,.0f}  {ours:34} {text}")
    print("\nby type (objects per connection, shallow bytes per connection):")
    for name, row in list(r["by_type"].items())[: args.top]:
        print(f"  {row['bytes_per_conn']:8,.0f}  {row['per_conn']:5.2f} x {name}")
    print("\ntrio tasks per connection:")
    for name, count in sorted(r["tasks_per_conn"].items(), key=lambda kv: -kv[1]):
        print(f"  {count:5.2f} x {name}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
