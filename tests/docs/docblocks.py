"""The code blocks of ``README.md`` and ``docs/*.md``, found by sybil and sorted into kinds.

Kinds, decided by the fence's language and its Material title (``title="..."``):

* **python** — a complete program, unless its title starts with ``Fragment`` (then skipped).
  A title (or a first line ``# name.py``) that names a file makes it a *file*: written into
  the page's directory under that name; ``test_*.py`` files are then run with pytest, other
  modules are imported once to check them. Files of other languages with a name
  (``pytest.ini``...) are written too.
* **js** — a Node program run with the real npm ``socketcluster-client`` (v14 if its first
  comment says ``v14``, else v20), unless titled ``Fragment``.
* **shell** (``sh``, ``bash``, ``console``) — run with bash, unless titled ``Not run``.
* **json** / **ini** — parsed. **mermaid** — rendered by the browser test of the built site.
* **text** (no language, ``text``) — wire captures and output: nothing to run.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from sybil import Document, Region, Sybil
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_INFO = re.compile(r"(?P<info>[^\n]*)$\n", re.MULTILINE)
_TITLE = re.compile(r'title="([^"]*)"')
_FIRST_LINE_FILE = re.compile(r"^(?:#|//) ?([\w.-]+\.(?:py|ini|toml|js))\s*$")
#: ``<!-- docs-app: MODULE:ATTR -->`` anywhere in a page: the app its client programs talk to.
APP_DIRECTIVE = re.compile(r"<!--\s*docs-app:\s*([\w.]+:\w+)\s*-->")
DEFAULT_APP = "trio_socketcluster.demo:app"


class Kind(enum.Enum):
    PYTHON = "python program"
    FILE = "file"
    JS = "javascript program"
    SHELL = "shell"
    FRAGMENT = "fragment (skipped)"
    NOT_RUN = "shell not run (skipped)"
    JSON = "json"
    INI = "ini"
    MERMAID = "mermaid"
    TEXT = "text"


SKIPPED = frozenset({Kind.FRAGMENT, Kind.NOT_RUN})
RUN = frozenset({Kind.PYTHON, Kind.FILE, Kind.JS, Kind.SHELL, Kind.JSON, Kind.INI})


@dataclass(frozen=True, kw_only=True, slots=True)
class Block:
    page: Path
    line: int
    language: str
    title: str | None
    source: str
    kind: Kind
    filename: str | None
    app: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _kind(language: str, title: str | None, source: str) -> tuple[Kind, str | None]:
    filename = None
    if title and re.fullmatch(r"[\w./-]+\.(py|ini|toml|js|cfg)", title):
        filename = title
    else:
        first = source.split("\n", 1)[0]
        match = _FIRST_LINE_FILE.match(first)
        if match and language in ("python", "py", "ini", "toml"):
            filename = match.group(1)
    if title and title.startswith("Fragment"):
        return Kind.FRAGMENT, None
    if title and title.startswith("Not run"):
        return Kind.NOT_RUN, None
    match language:
        case "python" | "py" | "pycon":
            return (Kind.FILE, filename) if filename else (Kind.PYTHON, None)
        case "js" | "javascript":
            return Kind.JS, None
        case "sh" | "bash" | "console" | "shell":
            return Kind.SHELL, None
        case "json":
            return Kind.JSON, None
        case "ini" | "toml":
            return (Kind.FILE, filename) if filename else (Kind.INI, None)
        case "mermaid":
            return Kind.MERMAID, None
        case _:
            return Kind.TEXT, None


def _parse_blocks(document: Document) -> list[Region]:
    regions = []
    for region in RawFencedCodeBlockLexer(info_pattern=_INFO)(document):
        regions.append(region)
    return regions


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order (sybil's Markdown lexer finds them)."""
    text = page.read_text(encoding="utf-8")
    app_match = APP_DIRECTIVE.search(text)
    app = app_match.group(1) if app_match else DEFAULT_APP
    document = Sybil(parsers=[_parse_blocks]).parse(page)
    out = []
    for example in document.examples():
        info = str(example.region.lexemes["info"]).strip()
        source = str(example.region.lexemes["source"])
        language = info.split(None, 1)[0].lower() if info else ""
        if language.startswith("{"):
            language = language.strip("{}.")
        title_match = _TITLE.search(info)
        title = title_match.group(1) if title_match else None
        kind, filename = _kind(language, title, source)
        out.append(
            Block(
                page=page, line=example.line, language=language, title=title, source=source,
                kind=kind, filename=filename, app=app,
            )
        )  # fmt: skip
    return out


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]
