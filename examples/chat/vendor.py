"""Vendor the ``socketcluster-client`` v20 browser bundle into ``static/vendor/``.

``python -m examples.chat.vendor`` installs the npm clients of the interop tests
(``tests/interop``, ``npm ci``) when they are missing, then copies
``sc-client-20/socketcluster-client.min.js`` (socketcluster-client 20.0.2, an ES module) next
to the page. The copy is git-ignored: the pinned npm package is the source of truth, and the
page never loads anything from a CDN.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["BUNDLE", "SOURCE", "ensure_bundle"]

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "static" / "vendor" / "socketcluster-client.min.js"
INTEROP = HERE.parent.parent / "tests" / "interop"
SOURCE = INTEROP / "node_modules" / "sc-client-20" / "socketcluster-client.min.js"


def _npm_ci() -> None:
    """``npm ci`` in tests/interop, under the same lock file as the interop test fixture."""
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed to fetch socketcluster-client (apt-get install npm)")
    lock_path = Path(tempfile.gettempdir()) / f"sc-interop-npm-{os.getuid()}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if not SOURCE.exists():
                subprocess.run(
                    ["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, check=True, timeout=300
                )
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_bundle(*, install: bool) -> bool:
    """Make ``BUNDLE`` a copy of ``SOURCE``; with ``install``, run ``npm ci`` first if needed.

    Returns whether the bundle is in place.
    """
    if not SOURCE.exists() and install:
        _npm_ci()
    if SOURCE.exists() and (not BUNDLE.exists() or BUNDLE.read_bytes() != SOURCE.read_bytes()):
        BUNDLE.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=BUNDLE.parent, suffix=".part")
        os.close(fd)
        shutil.copyfile(SOURCE, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, BUNDLE)  # atomic: a concurrent reader sees the old or the new file
    return BUNDLE.exists()


if __name__ == "__main__":
    if not ensure_bundle(install=True):
        sys.exit(f"could not vendor {SOURCE}")
    print(f"vendored {BUNDLE}")
