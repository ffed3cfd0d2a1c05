"""pyproject.toml declares exactly what src/ imports: every third-party module imported by the
package belongs to a declared runtime dependency (or to the extra of the only modules that
import it), and every runtime dependency is imported somewhere."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src" / "trio_socketcluster"

#: Modules of an optional extra, and the only files allowed to import them.
EXTRA_ONLY = {
    "coredis": ("redis", "brokers/redis"),
    "anyio": ("redis", "brokers/redis"),
    "pytest": ("testing", "testing/pytest_plugin.py"),
}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
    assert match is not None, requirement
    return match.group(0).lower().replace("_", "-")


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "trio_socketcluster":
                    found.setdefault(top, set()).add(path.relative_to(SRC).as_posix())
    return found


def test_dependencies_are_exactly_what_src_imports() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    dists = {m: {_name(d) for d in ds} for m, ds in packages_distributions().items()}
    imported = _third_party_imports()
    assert imported, "the scan found no imports at all"
    used: set[str] = set()
    for module, files in sorted(imported.items()):
        owners = dists.get(module, {_name(module)})
        if module in EXTRA_ONLY:
            extra, prefix = EXTRA_ONLY[module]
            assert owners & extras[extra], f"{module} is not in the {extra!r} extra"
            assert all(f.startswith(prefix) for f in files), f"{module} imported by {files}"
            continue
        declared = owners & runtime
        assert declared, f"{module} (imported by {sorted(files)}) is not a declared dependency"
        used |= declared
    assert runtime - used == set(), f"declared but never imported: {runtime - used}"
