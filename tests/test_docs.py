"""The docs site: every public name has its entry in the API reference, and every page the
site's nav names exists (``mkdocs build --strict`` itself runs in the nox session ``docs``)."""

from __future__ import annotations

import re
from pathlib import Path

import trio_socketcluster

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def test_reference_lists_every_public_name() -> None:
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: trio_socketcluster\.(\w+)\s*$", reference, re.MULTILINE))
    public = set(trio_socketcluster.__all__) - {"__version__"}
    assert public - documented == set(), "public names missing from docs/reference.md"


def test_nav_pages_exist() -> None:
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w/.-]+\.md)\s*$", config, re.MULTILINE)
    assert "index.md" in pages and "reference.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert missing == [], f"mkdocs.yml names pages that do not exist: {missing}"
