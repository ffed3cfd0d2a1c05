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
    assert "index.md" in pages
    assert "reference.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert missing == [], f"mkdocs.yml names pages that do not exist: {missing}"


# --------------------------------------------------------------- pages that stand alone

PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_no_path_outside_the_repository() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert re.search(r"(?<![\w.])/(work|home|root|tmp)/", text) is None, page.name
        assert "spec §" not in text, f"{page.name} cites a spec section outside the repository"


def test_the_seed_is_named() -> None:
    for page in PAGES:
        assert re.search(r"\bthe seed\b", page.read_text(encoding="utf-8"), re.I) is None, (
            f"{page.name}: say 'SocketCluster 14's authentication guide' (with its link)"
        )


def test_one_decorator_spelling() -> None:
    for page in PAGES:
        assert "@server.middleware.middleware(" not in page.read_text(encoding="utf-8"), page.name


def test_every_page_is_in_the_nav() -> None:
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert re.search(rf"^\s*-\s*[^:\n]+:\s*{re.escape(page.name)}\s*$", config, re.M), page.name


def test_every_code_block_has_a_known_kind() -> None:
    """The docs runner (tests/docs/) runs every block it knows; fragments say so in a title."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "docs"))
    try:
        from docblocks import RUN, SKIPPED, Kind, all_blocks
    finally:
        sys.path.pop(0)
    blocks = all_blocks()
    counts = {kind: sum(b.kind is kind for b in blocks) for kind in Kind}
    for block in blocks:
        if block.kind is Kind.FRAGMENT:
            assert block.title, block.id
            assert block.title.startswith("Fragment"), block.id
        if block.kind is Kind.TEXT:
            assert block.language in ("", "text"), f"{block.id}: unknown language {block.language}"
    run = sum(counts[kind] for kind in RUN)
    skipped = sum(counts[kind] for kind in SKIPPED)
    assert run > 3 * skipped, counts  # fragments stay the exception
    assert counts[Kind.MERMAID] >= 6, counts
