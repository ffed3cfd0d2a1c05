"""The command line: ``trio-socketcluster serve MODULE:ATTR``.

This module parses the arguments, resolves the auth key once and hands it to the application
(``Server.install_auth_key``), and serves: it prints ``serving ... on ws://...`` only once the
port is bound. Loading ``MODULE:ATTR`` is ``trio_socketcluster.loading``; ``--workers N`` is
``trio_socketcluster.workers``.

The key comes from a file (``--auth-key-file``) or the ``TRIO_SOCKETCLUSTER_AUTH_KEY``
environment variable, never from the command line itself: command lines are visible to every
user of the machine (``ps``) and end up in shell histories. Nothing here writes ``os.environ``.

TLS: ``--certfile``/``--keyfile`` (PEM, as uvicorn and hypercorn spell them) serve ``wss://``.
Operations: ``--metrics`` (``/metrics`` on the WebSocket port), ``--metrics-port`` (a port of
its own for ``/metrics``, ``/healthz``, ``/readyz``), ``--max-connections`` and the handshake
rate limits, ``--log-format json``.

Every failure to load or start is one line ``trio-socketcluster: error: ...`` on stderr and
exit status 2 (with ``--log-level debug``, the application's traceback follows the line).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import traceback
from typing import TYPE_CHECKING

import trio

from .config import AUTH_KEY_ENV, check_hs256_key
from .errors import InvalidOptionsError
from .loading import AppLoadError, load_app
from .logs import LOG_FORMATS, configure
from .workers import WorkerError, WorkerOptions, run_workers

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from .server import Server

__all__ = ["CliError", "main", "read_auth_key"]

log = logging.getLogger("trio_socketcluster.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class CliError(Exception):
    """The command cannot run; the message is the one line shown after ``error:``."""


def read_auth_key(key_file: str | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The HS256 key and where it came from (``--auth-key-file``, else ``$AUTH_KEY_ENV``), or
    ``None`` when neither is given. Surrounding whitespace is stripped. ``CliError`` for an
    unreadable file or a key under 32 bytes."""
    if key_file is not None:
        source = f"the auth key file {key_file}"
        try:
            with open(key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CliError(f"cannot read the auth key file {key_file}: {reason}") from None
    else:
        source = f"${AUTH_KEY_ENV}"
        key = environ.get(AUTH_KEY_ENV, "").strip()
        if not key:
            return None
    try:
        return check_hs256_key(key, source=source), source
    except InvalidOptionsError as exc:
        raise CliError(str(exc)) from None


def _int_arg(what: str, low: int, high: int | None, rule: str) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high`` (no upper bound when ``None``);
    ``rule`` follows the number in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value}{rule}")
        return value

    return parse


_port = _int_arg("a port number", 0, 65535, " is not in 0..65535 (0 picks a free port)")
_workers = _int_arg("a number", 1, None, ": at least 1 worker")
_count = _int_arg("a number", 0, None, ": must be >= 0")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="trio-socketcluster")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a server application")
    serve.add_argument("app", help="MODULE:ATTR naming a Server or a factory returning one")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000, help="0..65535; 0 picks a free port")
    serve.add_argument(
        "--auth-key-file",
        help=f"file holding the HS256 auth key, at least 32 bytes (else ${AUTH_KEY_ENV}, "
        "else a random key)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="run N worker processes on the port (SO_REUSEPORT), restarted when they die; "
        "more than one needs --broker",
    )
    serve.add_argument(
        "--broker",
        help="redis://host:port/db: the Redis broker joining processes (needs the redis extra)",
    )
    serve.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    serve.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="json: one object per line"
    )
    serve.add_argument("--certfile", help="PEM certificate chain: serve wss:// (TLS)")
    serve.add_argument("--keyfile", help="PEM private key of --certfile")
    serve.add_argument(
        "--metrics", action="store_true", help="serve GET /metrics on the WebSocket port"
    )
    serve.add_argument(
        "--metrics-port",
        type=_port,
        help="serve /metrics, /healthz and /readyz on this port (of --metrics-host)",
    )
    serve.add_argument("--metrics-host", default="127.0.0.1")
    serve.add_argument(
        "--max-connections", type=_count, help="refuse upgrades (503) beyond this many"
    )
    serve.add_argument("--handshake-rate", type=_rate, help="accepted upgrades per second, overall")
    serve.add_argument("--handshake-burst", type=_rate, help="the overall bucket's capacity")
    serve.add_argument(
        "--per-address-rate", type=_rate, help="accepted upgrades per second per client address"
    )
    serve.add_argument("--per-address-burst", type=_rate, help="the per-address capacity")
    return parser


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not rate > 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return rate


_OPERATIONS = {
    "metrics": "metrics",
    "metrics_port": "metrics_port",
    "metrics_host": "metrics_host",
    "max_connections": "max_connections",
    "handshake_rate": "handshake_rate_per_s",
    "handshake_burst": "handshake_burst",
    "per_address_rate": "per_address_rate_per_s",
    "per_address_burst": "per_address_burst",
}


def _operations(args: argparse.Namespace) -> dict[str, object]:
    """The operational options given on the command line, as ``ServerConfig`` fields."""
    given: dict[str, object] = {}
    for arg, field in _OPERATIONS.items():
        value = getattr(args, arg)
        if (
            value is not None
            and value is not False
            and not (arg == "metrics_host" and value == "127.0.0.1")
        ):
            given[field] = value
    return given


def ssl_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """A server TLS context for ``--certfile``/``--keyfile`` (``None`` without them);
    ``CliError`` saying why the files cannot be used."""
    if certfile is None:
        if keyfile is not None:
            raise CliError("--keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CliError(f"cannot load the TLS certificate {certfile}: {reason}") from None
    return context


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    try:
        resolved = read_auth_key(args.auth_key_file, os.environ)
        context = ssl_context(args.certfile, args.keyfile)
        operations = _operations(args)
        server = load_app(args.app)
        if args.workers is not None:  # the files and options were checked above, once
            return _serve_workers(args, server, resolved[0] if resolved else None, operations)
        if operations:
            try:
                server.configure_operations(**operations)
            except InvalidOptionsError as exc:
                raise CliError(str(exc)) from None
        if resolved is not None and not server.install_auth_key(resolved[0]):
            log.warning(
                "%s configures its own auth key: the key from %s is not used", args.app,
                resolved[1],
            )  # fmt: skip
        if args.broker:
            try:
                server.set_broker(args.broker)
            except InvalidOptionsError as exc:
                raise CliError(str(exc)) from None
        trio.run(_serve, server, args, context)
    except KeyboardInterrupt:
        # A second SIGINT (Ctrl-C again) while the first one's drain runs: stop now.
        print(
            "trio-socketcluster: interrupted again: stopped before the drain finished",
            file=sys.stderr,
            flush=True,
        )
        return 130
    except (CliError, AppLoadError) as exc:
        print(f"trio-socketcluster: error: {exc}", file=sys.stderr, flush=True)
        if args.log_level == "debug" and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        return 2
    return 0


def _url(sockname: tuple[object, ...], path: str, scheme: str = "ws") -> str:
    host, port = str(sockname[0]), int(str(sockname[1]))
    if ":" in host:
        return f"{scheme}://[{host}]:{port}{path}"
    return f"{scheme}://{host}:{port}{path}"


async def _serve(
    server: Server, args: argparse.Namespace, context: ssl.SSLContext | None = None
) -> None:
    """Bind, announce the bound address, serve until SIGINT or SIGTERM (then every socket is
    closed with 1001 within ``shutdown_timeout_s``)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            tcp = await trio.open_tcp_listeners(args.port, host=args.host)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CliError(f"cannot listen on {args.host}:{args.port}: {reason}") from None
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
        if context is not None:
            listeners = [trio.SSLListener(ln, context, https_compatible=True) for ln in tcp]
        scheme = "ws" if context is None else "wss"
        failed: OSError | None = None
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(server.serve_listeners, listeners)
            except OSError as exc:  # the metrics port
                failed = exc
                nursery.cancel_scope.cancel()
            else:
                urls = ", ".join(
                    _url(ln.socket.getsockname(), server.config.path, scheme) for ln in tcp
                )
                print(f"trio-socketcluster: serving {args.app} on {urls}", flush=True)
                for ln in server.metrics_listeners:
                    url = _url(ln.socket.getsockname(), "/metrics", "http")
                    print(f"trio-socketcluster: metrics on {url}", flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
        if failed is not None:
            reason = failed.strerror or str(failed)
            raise CliError(f"cannot listen on the metrics port: {reason}")


def _serve_workers(
    args: argparse.Namespace, server: Server, key: str | None, operations: dict[str, object]
) -> int:
    """``serve --workers N``: the launcher (the application was loaded once to check it, and
    the operational options against its config)."""
    if operations:
        try:
            server.configure_operations(**operations)
        except InvalidOptionsError as exc:
            raise CliError(str(exc)) from None
    options = WorkerOptions(
        app=args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        broker=args.broker,
        app_has_shared_broker=hasattr(server.broker, "send_command"),
        auth_key=key,
        log_level=args.log_level,
        log_format=args.log_format,
        operations=operations,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    try:
        return run_workers(options)
    except WorkerError as exc:
        raise CliError(str(exc)) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
