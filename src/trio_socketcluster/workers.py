"""The multi-process launcher: N worker processes serving one port, joined by a Redis broker.

``run_workers(options)`` (what ``trio-socketcluster serve --workers N`` calls) runs the
**supervisor** in the parent:

* it binds ``host:port`` with ``SO_REUSEPORT`` (without listening: it only reserves the port,
  and picks it when ``port`` is 0) and generates a shared auth key when none is given
  (``WorkerOptions.auth_key``);
* it starts N workers (``python -m trio_socketcluster.workers``), each with its settings in its
  own environment (``TRIO_SOCKETCLUSTER_WORKER``, JSON) and the auth key on a pipe (never in an
  environment, so the application's own subprocesses do not inherit it). Each worker loads the
  application (``trio_socketcluster.loading``), installs the key
  (``Server.install_auth_key``), switches to the Redis broker (``--broker``), opens its own
  ``SO_REUSEPORT`` listener on the same port (the kernel spreads new connections over the
  workers) and serves it with ``Server.serve_listeners``. A worker reports readiness on a
  pipe, and watches a second pipe from the supervisor: if the supervisor dies, its workers
  shut down;
* the operational options apply to every worker (``WorkerOptions.operations``, ``ServerConfig``
  fields): the limits are per worker (``max_connections`` and the handshake rates count that
  worker's connections only); ``metrics=True`` serves ``/metrics`` on the shared port, answered
  by whichever worker the kernel picks; ``metrics_port=P`` gives worker ``i`` the port
  ``P + i`` (one scrape target per worker; ``0`` is refused: nobody would know the ports);
  ``certfile``/``keyfile`` make every worker serve ``wss://`` (each loads the files);
  ``log_format="json"`` writes JSON lines with a ``worker`` field;
* a worker that exits unexpectedly is started again, after a delay that doubles while it keeps
  failing quickly (up to ``restart_max_s``);
* SIGTERM or SIGINT drains: every worker gets SIGTERM and closes its sockets with 1001
  (``shutdown_timeout_s`` each); a worker still running ``drain_timeout_s`` later is killed.

Without a Redis broker, more than one worker is refused (``WorkerError``): each process would
be its own island, publishes would reach a fraction of the subscribers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket as stdlib_socket
import ssl
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from .config import AUTH_KEY_ENV
from .errors import InvalidOptionsError
from .loading import AppLoadError, load_app
from .logs import configure

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .server import Server

__all__ = ["WorkerError", "WorkerOptions", "open_reuseport_listeners", "run_workers"]

log = logging.getLogger("trio_socketcluster.workers")

WORKER_ENV: Final = "TRIO_SOCKETCLUSTER_WORKER"


class WorkerError(Exception):
    """The launcher cannot start (bad options, port in use)."""


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    app: str  #: MODULE:ATTR naming a Server or a factory
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    broker: str | None = None  #: a Redis URL; required when workers > 1 ...
    app_has_shared_broker: bool = False  #: ... unless the application set one up itself
    auth_key: str | None = field(default=None, repr=False)  #: None: one generated for all
    log_level: str = "info"
    log_format: str = "text"  #: ``text`` or ``json``
    #: ``ServerConfig`` fields for every worker (``Server.configure_operations``): the limits,
    #: ``metrics``, ``metrics_port`` (worker ``i`` gets ``metrics_port + i``), ``metrics_host``
    operations: Mapping[str, Any] = field(default_factory=dict)
    certfile: str | None = None  #: serve ``wss://``: every worker loads these PEM files
    keyfile: str | None = None
    backlog: int = 1024
    drain_timeout_s: float = 15.0
    restart_min_s: float = 0.5
    restart_max_s: float = 10.0
    ready_timeout_s: float = 30.0


def _is_redis_url(url: str | None) -> bool:
    return bool(url) and str(url).split(":", 1)[0] in ("redis", "rediss", "unix")


def _family(host: str) -> stdlib_socket.AddressFamily:
    return stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET


def _reuseport_socket(host: str) -> stdlib_socket.socket:
    sock = stdlib_socket.socket(_family(host), stdlib_socket.SOCK_STREAM)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
    return sock


async def open_reuseport_listeners(
    host: str, port: int, *, backlog: int = 1024
) -> list[trio.SocketListener]:
    """One listening ``SO_REUSEPORT`` socket on ``host:port`` (several processes may each open
    one on the same port; the kernel balances new connections between them)."""
    sock = trio.socket.socket(_family(host), trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


# ---------------------------------------------------------------------------------- supervisor


def run_workers(options: WorkerOptions) -> int:
    """Run the supervisor until SIGTERM/SIGINT; returns the exit status. ``WorkerError`` for
    options that cannot work (several workers without Redis, port in use)."""
    if options.workers < 1:
        raise WorkerError("--workers must be at least 1")
    shared = _is_redis_url(options.broker) or options.app_has_shared_broker
    if options.workers > 1 and not shared:
        raise WorkerError(
            f"--workers {options.workers} needs a shared broker: pass --broker "
            "redis://host:port/db (without it each worker would only see its own subscribers)"
        )
    if not hasattr(stdlib_socket, "SO_REUSEPORT"):
        raise WorkerError("SO_REUSEPORT is not available on this platform")
    metrics_port = options.operations.get("metrics_port")
    if metrics_port is not None:
        if metrics_port == 0:
            raise WorkerError(
                "--metrics-port 0 cannot be used with --workers: give a port P, and worker i "
                "serves its metrics on P+i"
            )
        if int(metrics_port) + options.workers - 1 > 65535:
            raise WorkerError(f"--metrics-port {metrics_port} + {options.workers} workers > 65535")
    reservation = _reuseport_socket(options.host)
    try:
        reservation.bind((options.host, options.port))
    except OSError as exc:
        reservation.close()
        raise WorkerError(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        ) from None
    port = int(reservation.getsockname()[1])
    try:
        return trio.run(_supervise, options, port)
    finally:
        reservation.close()


class _Supervisor:
    def __init__(self, options: WorkerOptions, port: int) -> None:
        self.options = options
        self.port = port
        self.draining = False
        self.processes: dict[int, trio.Process] = {}
        if options.auth_key is None:
            log.info("no auth key given: generated one shared by the workers")
        self.key = (options.auth_key or secrets.token_hex(32)).encode("utf-8")
        env = dict(os.environ)
        env.pop(AUTH_KEY_ENV, None)  # the key travels on a pipe only
        self.env = env

    async def run_slot(self, index: int, ready: trio.Event) -> None:
        """Keep worker ``index`` running until draining."""
        delay = self.options.restart_min_s
        while not self.draining:
            started_at = trio.current_time()
            try:
                code = await self._run_once(index, ready)
            except OSError as exc:
                log.error("worker %d could not start: %s", index, exc)
                code = None
            if self.draining:
                return
            log.warning("worker %d exited (status %s); restarting in %.1fs", index, code, delay)
            await trio.sleep(delay)
            lived = trio.current_time() - started_at
            delay = (
                self.options.restart_min_s
                if lived > 30
                else min(self.options.restart_max_s, delay * 2)
            )

    async def _run_once(self, index: int, ready: trio.Event) -> int | None:
        ready_r, ready_w = os.pipe()
        life_r, life_w = os.pipe()
        key_r, key_w = os.pipe()
        config = {
            "app": self.options.app,
            "host": self.options.host,
            "port": self.port,
            "broker": self.options.broker,
            "backlog": self.options.backlog,
            "index": index,
            "ready_fd": ready_w,
            "lifeline_fd": life_r,
            "key_fd": key_r,
            "log_level": self.options.log_level,
            "log_format": self.options.log_format,
            "operations": dict(self.options.operations),
            "certfile": self.options.certfile,
            "keyfile": self.options.keyfile,
        }
        env = dict(self.env, **{WORKER_ENV: json.dumps(config)})
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trio_socketcluster.workers"],
                env=env,
                pass_fds=(ready_w, life_r, key_r),
            )
        except BaseException:
            for fd in (ready_r, ready_w, life_r, life_w, key_r, key_w):
                os.close(fd)
            raise
        os.close(ready_w)
        os.close(life_r)
        os.close(key_r)
        self.processes[index] = process
        try:
            async with trio.lowlevel.FdStream(key_w) as key_stream:
                with contextlib.suppress(trio.BrokenResourceError):  # the worker died: see below
                    await key_stream.send_all(self.key)
            async with trio.lowlevel.FdStream(ready_r) as ready_stream:
                with trio.move_on_after(self.options.ready_timeout_s):
                    if await ready_stream.receive_some(64):
                        ready.set()
                        log.info("worker %d (pid %d) ready", index, process.pid)
            return await process.wait()
        finally:
            self.processes.pop(index, None)
            os.close(life_w)  # the worker sees EOF: the supervisor is gone or done with it
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()

    async def drain(self) -> None:
        self.draining = True
        for process in list(self.processes.values()):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.options.drain_timeout_s):
            for process in list(self.processes.values()):
                await process.wait()


async def _supervise(options: WorkerOptions, port: int) -> int:
    supervisor = _Supervisor(options, port)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            readies = [trio.Event() for _ in range(options.workers)]
            for index, ready in enumerate(readies):
                nursery.start_soon(supervisor.run_slot, index, ready)

            async def announce() -> None:
                for ready in readies:
                    await ready.wait()
                scheme = "wss" if options.certfile else "ws"
                print(
                    f"trio-socketcluster: {options.workers} workers serving {options.app} on "
                    f"{scheme}://{options.host}:{port} (READY {port})",
                    flush=True,
                )
                metrics_port = options.operations.get("metrics_port")
                if metrics_port is not None:
                    host = options.operations.get("metrics_host", "127.0.0.1")
                    last = int(metrics_port) + options.workers - 1
                    print(
                        f"trio-socketcluster: metrics on http://{host}:{metrics_port}/metrics "
                        f"to :{last} (one port per worker)",
                        flush=True,
                    )

            nursery.start_soon(announce)
            async for signum in signals:
                log.info("signal %d: draining the workers", signum)
                break
            await supervisor.drain()
            nursery.cancel_scope.cancel()
    return 0


# ---------------------------------------------------------------------------------- worker


async def _worker(
    config: dict[str, Any], server: Server, context: ssl.SSLContext | None = None
) -> None:
    tcp = await open_reuseport_listeners(
        str(config["host"]), int(config["port"]), backlog=int(config.get("backlog", 1024))
    )
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
    if context is not None:
        listeners = [trio.SSLListener(ln, context, https_compatible=True) for ln in tcp]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_listeners, listeners)
            os.write(int(config["ready_fd"]), b"ready\n")
            os.close(int(config["ready_fd"]))

            async def watch_supervisor() -> None:
                async with trio.lowlevel.FdStream(int(config["lifeline_fd"])) as lifeline:
                    while await lifeline.receive_some(64):
                        pass
                log.warning("the supervisor is gone: shutting down")
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_supervisor)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()  # serve_listeners closes every socket with 1001


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (``python -m trio_socketcluster.workers``)."""
    raw = os.environ.get(WORKER_ENV)
    if not raw:
        print("trio_socketcluster.workers is started by `trio-socketcluster serve --workers`",
              file=sys.stderr)  # fmt: skip
        return 2
    config = json.loads(raw)
    with os.fdopen(int(config["key_fd"]), "rb") as key_pipe:
        key = key_pipe.read().decode("utf-8")
    index = int(config["index"])
    level = str(config.get("log_level", "info"))
    if config.get("log_format") == "json":
        configure(level, "json")
        for handler in logging.getLogger().handlers:
            handler.addFilter(_WorkerField(index))
    else:
        logging.basicConfig(
            level=level.upper(),
            format=f"%(asctime)s %(levelname)s worker{index}[%(process)d] %(name)s: %(message)s",
        )
    operations = dict(config.get("operations") or {})
    if operations.get("metrics_port") is not None:
        operations["metrics_port"] = int(operations["metrics_port"]) + index
    context = None
    try:
        server = load_app(str(config["app"]))
        server.install_auth_key(key)
        if config.get("broker"):
            server.set_broker(str(config["broker"]))
        if operations:
            server.configure_operations(**operations)
        if config.get("certfile"):
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(config["certfile"]), config.get("keyfile"))
    except (AppLoadError, InvalidOptionsError, OSError, ssl.SSLError) as exc:
        print(f"trio-socketcluster: error: worker {index}: {exc}", file=sys.stderr)
        return 2
    trio.run(_worker, config, server, context)
    return 0


class _WorkerField(logging.Filter):
    """Adds ``worker`` (the worker's index) to every record: a field of the JSON lines."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


if __name__ == "__main__":
    sys.exit(worker_main())
