"""The demo application with ``shutdown_timeout_s`` from ``$STOP_SHUTDOWN_TIMEOUT_S`` (default
5 s), for ``benchmarks/stop.py``: ``python -m trio_socketcluster serve
benchmarks.stop_app:make_server``; the auth key comes from ``$TRIO_SOCKETCLUSTER_AUTH_KEY``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trio_socketcluster.demo import build_app

if TYPE_CHECKING:
    from trio_socketcluster import Server


def make_server() -> Server:
    return build_app(shutdown_timeout_s=float(os.environ.get("STOP_SHUTDOWN_TIMEOUT_S", "5")))
