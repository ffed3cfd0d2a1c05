#!/usr/bin/env python3
"""bare-tws: the floor of the trio-websocket transport, for benchmarks/run.py.

The protocol subset of ``benchmarks/bare_ws.py`` (see there: handshake without JWT, echo,
login/whoami, subscribe, publish, ``#1``/``#2``), served with trio-websocket's public API only:
``serve_websocket``, one handler task per connection reading with ``get_message`` and answering
with ``send_message``. A ``#publish`` is JSON-encoded once and the same string is sent to every
subscriber by the publisher's handler, one ``send_message`` each (trio-websocket frames it per
connection and serialises writes with its per-connection lock); the ack follows.

Environment: ``PORT`` (0: a free port), ``HOST`` (default 127.0.0.1); ``AUTH_KEY`` is ignored.
Prints ``READY <port>``; SIGTERM or SIGINT stop it, exit status 0.
"""

from __future__ import annotations

import itertools
import os
import signal
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

_TOKEN = "bare.token.string"
_ids = itertools.count(1)
_channels: dict[str, dict[WebSocketConnection, None]] = {}


def dumps(packet: dict[str, Any]) -> str:
    return orjson.dumps(packet).decode()


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    user: str | None = None
    subs: set[str] = set()
    try:
        while True:
            text = await ws.get_message()
            if isinstance(text, bytes):
                text = text.decode()
            if text == "#1":
                await ws.send_message("#2")
                continue
            if text == "#2" or text == "":
                continue
            p = orjson.loads(text)
            for packet in p if isinstance(p, list) else (p,):
                if not isinstance(packet, dict):
                    continue
                event, data, cid = packet.get("event"), packet.get("data"), packet.get("cid")
                if event == "echo":
                    await ws.send_message(dumps({"rid": cid, "data": data}))
                elif event == "#publish":
                    channel = data["channel"]
                    targets = _channels.get(channel)
                    if targets:
                        message = dumps(
                            {
                                "event": "#publish",
                                "data": {"channel": channel, "data": data.get("data")},
                            }
                        )
                        for sub in list(targets):
                            try:
                                await sub.send_message(message)
                            except ConnectionClosed:
                                targets.pop(sub, None)
                    if cid is not None:
                        await ws.send_message(dumps({"rid": cid}))
                elif event == "whoami":
                    reply = {"username": user} if user else None
                    await ws.send_message(dumps({"rid": cid, "data": reply}))
                elif event == "#handshake":
                    reply = {
                        "id": f"bare-{next(_ids)}",
                        "pingTimeout": 20000,
                        "isAuthenticated": True,
                    }
                    await ws.send_message(dumps({"rid": cid, "data": reply}))
                elif event == "#subscribe":
                    channel = data["channel"]
                    _channels.setdefault(channel, {})[ws] = None
                    subs.add(channel)
                    await ws.send_message(dumps({"rid": cid}))
                elif event == "#unsubscribe":
                    channel = data if isinstance(data, str) else data.get("channel")
                    _channels.get(channel, {}).pop(ws, None)
                    subs.discard(channel)
                    if cid is not None:
                        await ws.send_message(dumps({"rid": cid}))
                elif event == "login":
                    user = str(data.get("username"))
                    await ws.send_message(
                        dumps({"event": "#setAuthToken", "data": {"token": _TOKEN}})
                    )
                    await ws.send_message(dumps({"rid": cid}))
                elif cid is not None:
                    error = {"name": "BareError", "message": f"no {event}"}
                    await ws.send_message(dumps({"rid": cid, "error": error}))
    except ConnectionClosed:
        pass
    finally:
        for channel in subs:
            _channels.get(channel, {}).pop(ws, None)


async def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    handler, host, port, ssl_context=None, task_status=task_status
                )
            )
            print(f"READY {server.port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
