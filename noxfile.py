"""nox sessions: tests, lint, typecheck, docs (the default set, which .ci/run runs after the
README's test command), plus bench and autobahn on demand.

Each session installs the project and the dependency groups it needs (``[dependency-groups]``
in pyproject.toml) into its own virtualenv.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def install(session: nox.Session, *groups: str) -> None:
    session.install("-e", ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    install(session, "test", "docs")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session, "test", "lint")
    session.run("mypy", "--strict", "src", "tests", "examples")


@nox.session
def docs(session: nox.Session) -> None:
    install(session, "docs")
    session.run("mkdocs", "build", "--strict")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The benchmarks side by side with the Node reference (``-- --quick`` for a short run)."""
    session.run(".venv/bin/python", "benchmarks/run.py", *session.posargs, external=True)


@nox.session(python=False)
def autobahn(session: nox.Session) -> None:
    """The RFC 6455 suite (Autobahn|Testsuite, on Python 2.7) against an echo server on our
    transport: every case of sections 1-7 and 9 must be OK; report in test-artifacts/autobahn."""
    session.run(".venv/bin/python", "tests/autobahn/run.py", *session.posargs, external=True)


@nox.session(python=False)
def chaos(session: nox.Session) -> None:
    """The chaos tests: SIGTERM under a publish stream (20 runs), Redis kill -9, a worker
    kill -9 and TCP resets under a stream with channel history."""
    session.run(
        ".venv/bin/python", "-m", "pytest", "-q", "tests/test_drain.py",
        "tests/test_history_chaos.py", "tests/test_history_redis.py",
        env={"DRAIN_CHAOS_RUNS": "20"}, external=True,
    )  # fmt: skip
