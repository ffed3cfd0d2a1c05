"""Operations with the real npm ``socketcluster-client`` v14 (protocol 1) and v20 (protocol 2):
``wss://`` with a throwaway CA (Node trusts it through ``NODE_EXTRA_CA_CERTS``), and a client
refused at the upgrade by the connection limit (HTTP 503) that backs off, comes back and
connects once a slot is free.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
import trio
import trustme
from procs import INTEROP, npm_ci
from test_operations import app, client_context, scrape, server_context, serving

from trio_socketcluster.client import connect

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

SCRIPT = INTEROP / "ops.js"


async def run_node(node: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = await trio.run_process(
        [node, str(SCRIPT), *args],
        cwd=INTEROP,
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    lines = [ln for ln in result.stdout.decode().splitlines() if ln.startswith("{")]
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert lines, result.stderr.decode()[-2000:]
    out: dict[str, object] = json.loads(lines[-1])
    return out


@pytest.fixture(scope="module")
def node() -> str:
    return npm_ci(INTEROP, "the operations interop tests")


@pytest.mark.parametrize("major", ["14", "20"])
async def test_wss_with_the_npm_client(node: str, major: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = app(metrics=True)
    async with serving(server, ssl_context=server_context(ca)) as port:
        out = await run_node(
            node, "wss", major, f"wss://localhost:{port}/socketcluster/",
            env={"NODE_EXTRA_CA_CERTS": str(ca_file)},
        )  # fmt: skip
        assert out["connected"] is True, out
        assert out["echo"] == {"secure": True}
        # and the Python client on the same server
        async with connect(
            f"wss://localhost:{port}/socketcluster/", ssl_context=client_context(ca)
        ) as client:
            assert await client.invoke("echo", major) == major


@pytest.mark.parametrize("major", ["14", "20"])
async def test_a_refused_npm_client_backs_off_and_connects_when_a_slot_frees(
    node: str, major: str
) -> None:
    server = app(metrics=True, max_connections=1)
    async with serving(server) as port:
        url = f"ws://127.0.0.1:{port}/socketcluster/"
        out: dict[str, object] = {}
        async with trio.open_nursery() as nursery:
            holder_done = trio.Event()

            async def hold_the_slot(task_status: trio.TaskStatus[None]) -> None:
                async with connect(url) as holder:
                    await holder.invoke("echo", 0)
                    task_status.started()
                    with trio.fail_after(10):  # until the node client was refused twice
                        while server.metrics.refused_connections.get("connections", 0) < 2:  # noqa: ASYNC110
                            await trio.sleep(0.02)
                holder_done.set()

            await nursery.start(hold_the_slot)

            async def run() -> None:
                out.update(await run_node(node, "refused", major, url))

            nursery.start_soon(run)
        assert holder_done.is_set()
        assert out["connected"] is True, out
        aborts = out["aborts"]
        assert isinstance(aborts, int)
        assert aborts >= 2
        samples = await scrape(port)
    refused = samples[("trio_socketcluster_refused_connections_total", (("cause", "connections"),))]
    assert refused == aborts  # every refusal the client saw was counted, and nothing else
    assert samples[("trio_socketcluster_handshakes_total", (("result", "ok"),))] == 2
