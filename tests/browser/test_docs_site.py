"""The built docs site in headless Chromium, and the chat screenshot the docs show.

* ``mkdocs build --strict`` builds the site (Mermaid is vendored into it by the hook in
  ``docs_tooling/hooks.py``); ``docs_site.js`` loads every page that has Mermaid diagrams from
  a local HTTP server and checks that each diagram became an SVG, with no page error and no
  request leaving the site (no CDN). Screenshots: ``test-artifacts/docs-site/``.
* ``docs/images/chat.png`` (README and the docs' home page) is a screenshot of the chat
  example taken by the browser driver; the test takes it again and writes it there when it
  is missing or when ``DOCS_UPDATE_IMAGES=1``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import test_browser
from procs import npm_ci
from test_browser import ARTIFACTS, CHROMIUM, HERE, REPO, ChatServer, run_driver

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.browser

browser_ready = test_browser.browser_ready  # the chat tests' fixtures, shared
chat_server = test_browser.chat_server

DOCS = REPO / "docs"
SITE_ARTIFACTS = REPO / "test-artifacts" / "docs-site"
CHAT_IMAGE = DOCS / "images" / "chat.png"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site, built with ``mkdocs build --strict`` and served on a free local port."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install chromium (or set CHROMIUM_PATH)")
    npm_ci(HERE, "the docs-site browser test")
    site_dir = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed: pip install -e . --group docs")
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site_dir))

    class Quiet(http.server.ThreadingHTTPServer):
        daemon_threads = True

    httpd = Quiet(("127.0.0.1", 0), handler)
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _mermaid_pages() -> dict[str, int]:
    pages = {}
    for page in sorted(DOCS.glob("*.md")):
        count = page.read_text(encoding="utf-8").count("```mermaid")
        if count:
            pages[page.stem] = count
    return pages


def test_every_mermaid_diagram_renders(site: str) -> None:
    want = _mermaid_pages()
    assert want, "no page has a Mermaid diagram"
    SITE_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["node", str(HERE / "docs_site.js"), site, str(SITE_ARTIFACTS),
         *(f"{name}={n}" for name, n in want.items())],
        cwd=HERE, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-4000:]
    result = json.loads(lines[-1])
    assert result["result"] == "ok", result
    for name, n in want.items():
        got = result["pages"][name]
        assert got["svgs"] == n, f"{name}: {got['svgs']} of {n} diagrams rendered"
        assert got["errors"] == [], f"{name}: {got['errors']}"
        assert got["external"] == [], f"{name} loads from outside the site: {got['external']}"
        assert (SITE_ARTIFACTS / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("chat_server", ["login-chat"], indirect=True)
def test_chat_screenshot_for_the_docs(browser_ready: None, chat_server: ChatServer) -> None:
    run_driver("login-chat", chat_server)
    shots = sorted(ARTIFACTS.glob("login-chat-*-alice-conversation.png"))
    assert shots, "the driver took no screenshot of the conversation"
    assert shots[-1].stat().st_size > 10_000
    if not CHAT_IMAGE.exists() or os.environ.get("DOCS_UPDATE_IMAGES") == "1":
        CHAT_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots[-1], CHAT_IMAGE)
    assert CHAT_IMAGE.stat().st_size > 10_000
