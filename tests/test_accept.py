"""The server's own accept loop (``Server._accept_tcp``) when the process runs out of file
descriptors: ``accept`` fails with EMFILE, the server logs it once per retry, keeps its
connections and accepts again as soon as descriptors are free (what trio's own loop does)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import trio
from procs import REPO, stop
from wsclient import new_client

SERVER = r"""
import os, resource, sys, trio
from trio_socketcluster import Server

server = Server(auth_key="accept-test-key-0123456789abcdef0123")

async def main():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        in_use = len(os.listdir("/proc/self/fd"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 6, hard))
        print("READY", listeners[0].socket.getsockname()[1], flush=True)

trio.run(main)
"""


async def handshake_once(port: int) -> dict[str, Any]:
    with trio.fail_after(10):
        client = new_client(await trio.open_tcp_stream("127.0.0.1", port))
        await client.connect()
        reply = await client.handshake()
        await client.close(1000)
    return reply


def test_out_of_descriptors_then_accepting_again() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SERVER],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            line = proc.stdout.readline()
            assert line.startswith("READY"), line
            port = int(line.split()[1])
            # More connections than the server has descriptors left: the kernel completes
            # them all (listen queue), the server accepts a few and then gets EMFILE.
            flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            time.sleep(0.5)
            assert proc.poll() is None  # still running
            for sock in flood:
                sock.close()
            time.sleep(0.5)  # the server sees the closes and frees the descriptors
            assert trio.run(handshake_once, port)["data"]["id"]
        finally:
            stop(proc)
        log = proc.stderr.read()
    assert "accept failed" in log
    assert "Too many open files" in log
    assert "Traceback" not in log
