"""The command line: ``trio-socketcluster serve MODULE:ATTR`` (argument parsing only).

``--broker redis://...`` switches the application to the Redis broker; ``--workers N`` runs N
worker processes on one port (``trio_socketcluster.workers``).

``ATTR`` names a ``Server`` or a callable returning one. Keys come from a file
(``--auth-key-file``) or the ``TRIO_SOCKETCLUSTER_AUTH_KEY`` environment variable, never from
the command line itself: command lines are visible to every user of the machine (``ps``) and
end up in shell histories.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from .errors import InvalidOptionsError

__all__ = ["load_app", "main"]

AUTH_KEY_ENV = "TRIO_SOCKETCLUSTER_AUTH_KEY"


class CliError(Exception):
    pass


def load_app(spec: str) -> Any:
    """Import ``MODULE:ATTR`` and return the ``Server`` it names (calling a factory)."""
    from .server import Server

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import module {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Server) and callable(obj):
        obj = obj()
    if not isinstance(obj, Server):
        raise CliError(f"{spec} is not a trio_socketcluster.Server (got {type(obj).__name__})")
    return obj


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="trio-socketcluster")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a server application")
    serve.add_argument("app", help="MODULE:ATTR naming a Server or a factory returning one")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--auth-key-file",
        help=f"file holding the HS256 auth key (else ${AUTH_KEY_ENV}, else a random key)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="run N worker processes on the port (SO_REUSEPORT), restarted when they die; "
        "more than one needs --broker",
    )
    serve.add_argument(
        "--broker",
        help="redis://host:port/db: the Redis broker joining processes (needs the redis extra)",
    )
    serve.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.auth_key_file:
            try:
                with open(args.auth_key_file, encoding="utf-8") as f:
                    key = f.read().strip()
            except OSError as exc:
                raise CliError(f"cannot read the auth key file: {exc}") from None
            if not key:
                raise CliError("the auth key file is empty")
            os.environ[AUTH_KEY_ENV] = key
        if args.workers is not None and not os.environ.get(AUTH_KEY_ENV):
            # One key for the parent's check of the app and for every worker.
            os.environ[AUTH_KEY_ENV] = secrets.token_hex(32)
        server = load_app(args.app)
        if args.workers is not None:
            return _serve_workers(args, server)
        if args.broker:
            try:
                server.set_broker(args.broker)
            except InvalidOptionsError as exc:
                raise CliError(str(exc)) from None
        print(
            f"trio-socketcluster: serving {args.app} on "
            f"ws://{args.host}:{args.port}{server.config.path}",
            flush=True,
        )
        try:
            server.run(args.host, args.port)
        except OSError as exc:
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    except CliError as exc:
        print(f"trio-socketcluster: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve_workers(args: argparse.Namespace, server: Any) -> int:
    """``serve --workers N``: the launcher (the application was loaded once to check it)."""
    from .workers import WorkerError, WorkerOptions, run_workers

    options = WorkerOptions(
        app=args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        broker=args.broker,
        app_has_shared_broker=hasattr(server.broker, "send_command"),
    )
    try:
        return run_workers(options)
    except WorkerError as exc:
        raise CliError(str(exc)) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
