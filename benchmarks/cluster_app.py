"""The conformance application as a factory for ``trio-socketcluster serve --workers N``.

``benchmarks/run.py`` serves it as the ``py-w1`` / ``py-w2`` targets (one or two worker
processes joined by a Redis broker): ``python -m trio_socketcluster serve
benchmarks.cluster_app:make_server --workers 2 --broker redis://...``; the auth key comes from
``$TRIO_SOCKETCLUSTER_AUTH_KEY``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from typing import TYPE_CHECKING

from conformance_app import build_server  # type: ignore[import-not-found]

if TYPE_CHECKING:
    from trio_socketcluster import Server


def make_server() -> Server:
    server: Server = build_server(None)  # with the key the command line installs
    return server
