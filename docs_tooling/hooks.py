"""MkDocs hooks of the docs site (``hooks:`` in ``mkdocs.yml``).

Mermaid is vendored, never loaded from a CDN: after the build, ``mermaid.min.js`` from the
npm package pinned in ``docs_tooling/package.json`` (installed with ``npm ci`` on first use)
is copied to ``site/javascripts/``, which ``extra_javascript`` names. Material for MkDocs
then finds ``window.mermaid`` already defined and renders every ``mermaid`` fence with it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MERMAID = HERE / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"


def mermaid_js() -> Path:
    """The vendored ``mermaid.min.js``, after ``npm ci`` if it is missing or stale."""
    marker = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if (
        not MERMAID.is_file()
        or not marker.exists()
        or marker.stat().st_mtime < lock.stat().st_mtime
    ):
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed to vendor mermaid into the docs site")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    return MERMAID


def on_post_build(config: Any, **_: Any) -> None:
    target = Path(config["site_dir"]) / "javascripts" / "mermaid.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mermaid_js(), target)
