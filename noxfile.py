"""nox sessions: tests, lint, typecheck (and bench, docs as they land)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks")
    session.run("ruff", "format", "--check", "src")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "src", "tests", "examples")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The benchmarks side by side with the Node reference (``-- --quick`` for a short run)."""
    session.run(".venv/bin/python", "benchmarks/run.py", *session.posargs, external=True)
