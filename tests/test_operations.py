"""Operating the server: ``/metrics`` read back with the official parser while real clients
(the Python client over real sockets) connect, log in, are refused and leave; health checks;
the metrics port; admission limits (503 + ``Retry-After``) at the upgrade; bodies of plain
HTTP requests; TLS on both transports.
"""

from __future__ import annotations

import logging
import ssl
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio_websocket
import trustme
from conftest import wait_until
from prometheus_client.parser import text_string_to_metric_families

from trio_socketcluster import Block, Hook, Reply, Server, ServerSocket
from trio_socketcluster.client import connect
from trio_socketcluster.server.http import static_files
from trio_socketcluster.transport.base import MAX_BODY_BYTES, HandshakeRequest, Rejection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_socketcluster.middleware import HandshakeWSRequest, PublishInRequest

P = "trio_socketcluster_"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ----------------------------------------------------------------------------- helpers


async def http(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a fresh connection: status, headers (lower-cased), body."""
    stream: trio.abc.Stream
    if ssl_context is not None:
        stream = await trio.open_ssl_over_tcp_stream(
            "localhost", port, ssl_context=ssl_context, https_compatible=True
        )
    else:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    got = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        got[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), got, rest


def upgrade_headers() -> tuple[tuple[str, str], ...]:
    return (
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    )


async def scrape(port: int) -> Samples:
    status, headers, body = await http(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(before: Samples, after: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample that changed (histogram buckets left out)."""
    keys = set(before) | set(after)
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0)
        for k in keys
        if after.get(k, 0.0) != before.get(k, 0.0) and not k[0].endswith("_bucket")
    }


@asynccontextmanager
async def serving(server: Server, **serve: Any) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(lambda task_status: server.serve(
            "127.0.0.1", 0, task_status=task_status, **serve
        ))  # fmt: skip
        ln = listeners[0]
        if isinstance(ln, trio.SSLListener):
            ln = ln.transport_listener
        assert isinstance(ln, trio.SocketListener)
        sock = ln.socket
        yield int(sock.getsockname()[1])
        nursery.cancel_scope.cancel()


def app(**options: Any) -> Server:
    server = Server(auth_key="k" * 32, **options)

    @server.handler("login")
    async def login(socket: ServerSocket, data: Any) -> None:
        await socket.set_auth_token({"username": data})

    @server.handler("echo")
    def echo(_socket: ServerSocket, data: Any) -> Any:
        return Reply(data=data)

    @server.middleware(Hook.PUBLISH_IN)
    def no_forbidden(request: PublishInRequest) -> Any:
        return Block("forbidden") if request.channel == "forbidden" else None

    @server.middleware(Hook.HANDSHAKE_WS)
    def deny(request: HandshakeWSRequest) -> Any:
        return Block("denied", status_code=403) if "deny" in request.request.query else None

    return server


# ----------------------------------------------------------------------------- metrics


async def test_metrics_move_exactly_as_clients_connect_log_in_are_refused_and_leave() -> None:
    server = app(metrics=True)
    async with serving(server) as port:
        url = f"ws://127.0.0.1:{port}/socketcluster/"
        s0 = await scrape(port)
        async with connect(url) as a, connect(url) as b:
            await a.invoke("login", "ada")
            channel = await a.subscribe("news")
            await a.publish("news", 1)
            assert await channel.get(timeout_s=5) == 1
            with pytest.raises(Exception, match="forbidden"):
                await a.publish("forbidden", 2)
            with pytest.raises(Exception, match="jwt malformed"):  # AuthTokenInvalidError
                await b.authenticate("not-a-jwt")
            assert await b.invoke("echo", "hi") == "hi"
            with pytest.raises(Exception):  # noqa: B017, PT011 (the client's connect error)
                async with connect(url + "?deny=1"):
                    pass
            s1 = await scrape(port)
            await a.disconnect(4321, "bye")
            await wait_until(lambda: server.client_count == 1)
            s2 = await scrape(port)
    d1 = delta(s0, s1)
    assert s1[(P + "connections", ())] == 2
    assert s1[(P + "authenticated_connections", ())] == 1
    assert s1[(P + "subscriptions", ())] == 1
    assert s1[(P + "ready", ())] == 1
    expected = {
        (P + "connections", ()): 2,
        (P + "authenticated_connections", ()): 1,
        (P + "subscriptions", ()): 1,
        (P + "handshakes_total", (("result", "ok"),)): 2,
        (P + "handshakes_total", (("result", "rejected"),)): 1,
        (P + "middleware_blocks_total", (("hook", "handshakeWS"),)): 1,
        (P + "middleware_blocks_total", (("hook", "publishIn"),)): 1,
        (P + "auth_failures_total", (("reason", "AuthTokenInvalidError"),)): 1,
        (P + "messages_received_total", (("type", "handshake"),)): 2,
        (P + "messages_received_total", (("type", "invoke"),)): 2,
        (P + "messages_received_total", (("type", "subscribe"),)): 1,
        (P + "messages_received_total", (("type", "publish"),)): 2,
        (P + "messages_received_total", (("type", "authenticate"),)): 1,
        (P + "publications_total", ()): 1,
        (P + "deliveries_total", ()): 1,
        (P + "handshake_duration_seconds_count", ()): 2,
        (P + "invoke_duration_seconds_count", ()): 2,
    }
    # Pongs depend on timing; the sums of the histograms are positive, not exact.
    got = {
        k: v for k, v in d1.items()
        if not k[0].endswith("_sum") and k != (P + "messages_received_total", (("type", "pong"),))
    }  # fmt: skip
    assert got == expected
    d2 = delta(s1, s2)
    assert d2[(P + "connections", ())] == -1
    assert d2[(P + "authenticated_connections", ())] == -1
    assert d2[(P + "subscriptions", ())] == -1
    assert d2[(P + "disconnects_total", (("code", "4321"),))] == 1
    assert all(not k[0].startswith(P + "handshakes") for k in d2)
    labels = {v for (_, ls) in s2 for (_, v) in ls}
    assert not labels & {"news", "forbidden", "ada"}  # never a channel or a user in a label


async def test_redis_free_broker_state_is_empty_and_metrics_off_by_default() -> None:
    server = app()
    async with serving(server) as port:
        status, headers, _ = await http(port, "/metrics")
        assert (status, headers.get("upgrade")) == (426, "websocket")
        assert "broker" in server.render_metrics()


# ----------------------------------------------------------------------------- health


async def test_health_readiness_and_draining() -> None:
    server = app()
    async with serving(server) as port:
        assert (await http(port, "/healthz"))[:1] == (200,)
        assert (await http(port, "/readyz"))[::2] == (200, b"ready\n")
        assert (await http(port, "/readyz", method="POST"))[0] == 405
        server.start_draining()
        assert not server.ready
        assert (await http(port, "/readyz"))[::2] == (503, b"draining\n")
        assert (await http(port, "/healthz"))[0] == 200
        status, headers, _ = await http(port, "/socketcluster/", headers=upgrade_headers())
        assert (status, headers["retry-after"]) == (503, "1")
        assert server.metrics.refused_connections == {"draining": 1}


async def test_health_checks_can_be_switched_off() -> None:
    async with serving(app(health_checks=False)) as port:
        assert (await http(port, "/healthz"))[0] == 426


async def test_metrics_port_serves_the_three_and_nothing_else() -> None:
    server = app(metrics_port=0)
    async with serving(server) as port:
        (ops,) = server.metrics_listeners
        ops_port = int(ops.socket.getsockname()[1])
        samples = await scrape(ops_port)
        assert samples[(P + "connections", ())] == 0
        assert (await http(ops_port, "/healthz"))[0] == 200
        assert (await http(ops_port, "/readyz"))[0] == 200
        assert (await http(ops_port, "/other"))[0] == 404
        assert (await http(ops_port, "/metrics", method="DELETE"))[0] == 405
        assert (await http(port, "/metrics"))[0] == 426  # not on the public port


# ----------------------------------------------------------------------------- limits


async def test_connection_limit_refuses_with_503_retry_after_then_admits() -> None:
    server = app(metrics=True, max_connections=1)
    async with serving(server) as port:
        url = f"ws://127.0.0.1:{port}/socketcluster/"
        async with connect(url) as a:
            assert await a.invoke("echo", 1) == 1
            status, headers, body = await http(port, "/socketcluster/", headers=upgrade_headers())
            assert status == 503
            assert headers["retry-after"] == "1"
            assert b"retry later" in body
        await wait_until(lambda: server.client_count == 0)
        async with connect(url) as b:  # the slot is free again
            assert await b.invoke("echo", 2) == 2
        samples = await scrape(port)
    assert samples[(P + "refused_connections_total", (("cause", "connections"),))] == 1
    assert samples[(P + "handshakes_total", (("result", "ok"),))] == 2


async def test_per_address_rate_limit_says_when_to_come_back() -> None:
    server = app(per_address_rate_per_s=0.5, per_address_burst=1)
    async with serving(server) as port:
        url = f"ws://127.0.0.1:{port}/socketcluster/"
        async with connect(url):
            pass
        status, headers, _ = await http(port, "/socketcluster/", headers=upgrade_headers())
        assert status == 503
        assert 1 <= int(headers["retry-after"]) <= 2
        # plain HTTP (health checks, metrics) is not rate limited
        assert (await http(port, "/healthz"))[0] == 200
    assert server.metrics.refused_connections == {"address_rate": 1}


# ----------------------------------------------------------------------------- HTTP bodies


async def test_http_handler_gets_method_and_body_and_large_bodies_get_413() -> None:
    server = app()
    seen: list[HandshakeRequest] = []

    async def handler(request: HandshakeRequest) -> Rejection:
        seen.append(request)
        return Rejection(status=200, body=f"{request.method} {len(request.body)}")

    server.http_handler = handler
    async with serving(server) as port:
        status, _, body = await http(port, "/login", method="POST", body=b'{"u": "ada"}')
        assert (status, body) == (200, b"POST 12")
        assert seen[-1].body == b'{"u": "ada"}'
        big = b"x" * (MAX_BODY_BYTES + 1)
        status, _, body = await http(port, "/login", method="POST", body=big)
        assert status == 413
        assert len(seen) == 1
        exact = b"y" * MAX_BODY_BYTES
        assert (await http(port, "/login", method="POST", body=exact))[2] == b"POST 65536"


async def test_static_files_refuse_post_with_405(tmp_path: Any) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    server = app()
    server.http_handler = static_files(tmp_path)
    async with serving(server) as port:
        assert (await http(port, "/"))[::2] == (200, b"<p>hi</p>")
        status, headers, _ = await http(port, "/", method="POST", body=b"x")
        assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_head_answers_carry_the_get_headers_and_no_body(tmp_path: Any) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    server = app(metrics=True, metrics_port=0)
    server.http_handler = static_files(tmp_path)
    async with serving(server) as port:
        (ops,) = server.metrics_listeners
        ops_port = int(ops.socket.getsockname()[1])
        paths = [(port, "/"), (port, "/healthz"), (port, "/metrics"), (ops_port, "/readyz")]
        for at, path in paths:
            g_status, g_headers, g_body = await http(at, path)
            status, headers, body = await http(at, path, method="HEAD")
            assert (status, body) == (g_status, b""), path
            assert headers["content-type"] == g_headers["content-type"], path
            if path != "/metrics":  # the metrics text changes between two scrapes
                assert headers["content-length"] == g_headers["content-length"], path
            assert int(headers["content-length"]) > 0, path
            assert g_body, path
        assert (await http(port, "/missing.html", method="HEAD"))[::2] == (404, b"")


@pytest.mark.parametrize("path", ["/a%00b", "/" + "x" * 5000, "/%2e%2e/%2e%2e/etc/passwd", "/%ff"])
async def test_static_files_answer_odd_paths_404_without_a_traceback(
    tmp_path: Any, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    server = app()
    server.http_handler = static_files(tmp_path)
    async with serving(server) as port:
        assert (await http(port, path))[0] == 404
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_wss_with_the_python_client_on_our_transport(ca: trustme.CA) -> None:
    server = app(metrics=True)
    async with serving(server, ssl_context=server_context(ca)) as port:
        url = f"wss://localhost:{port}/socketcluster/"
        async with connect(url, ssl_context=client_context(ca)) as client:
            assert await client.invoke("echo", {"tls": True}) == {"tls": True}
            (socket,) = server.sockets.values()
            assert socket.remote_address is not None  # the TCP peer under TLS
            assert socket.remote_address[0] == "127.0.0.1"
        # plain HTTP over TLS too
        status, _, body = await http(port, "/metrics", ssl_context=client_context(ca))
        assert status == 200
        assert b"trio_socketcluster_connections" in body
        # a client that does not trust the CA fails the TLS handshake; the server carries on
        with pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
            await http(port, "/healthz", ssl_context=ssl.create_default_context())
        async with connect(url, ssl_context=client_context(ca)) as again:
            assert await again.invoke("echo", 3) == 3


async def test_wss_through_the_trio_websocket_adapter(ca: trustme.CA) -> None:
    server = app()
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
            server.handle_trio_websocket_request, "127.0.0.1", 0,
            ssl_context=server_context(ca), task_status=task_status,
        ))  # fmt: skip
        port = ws_server.port
        url = f"wss://localhost:{port}/socketcluster/"
        async with connect(url, ssl_context=client_context(ca)) as client:
            assert await client.invoke("echo", "adapter") == "adapter"
        nursery.cancel_scope.cancel()
