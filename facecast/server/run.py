"""Running the server: bind, print where it is, serve until Ctrl-C, and shut every session down."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from facecast.hosts.native_threads import limit_native_threads
from facecast.server.app import create_app
from facecast.server.config import ServerConfig
from facecast.server.memory import fix_mmap_threshold, freeze_long_lived


def bind(host: str, port: int, *, fallback_to_free_port: bool) -> socket.socket:
    """A listening socket on host:port; when that port is taken and `fallback_to_free_port`, any free
    port (the demo must start on a busy machine rather than fail)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections whose socket
    # says TCP, and without that a response's body waits ~40 ms behind its headers on a kept-alive
    # connection (Nagle holding it for the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not fallback_to_free_port:
            sock.close()
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port"
            ) from None
        sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class FacecastServer(uvicorn.Server):
    """uvicorn's server, ending every session before it closes the connections. uvicorn closes open
    WebSockets (1012) before the app's lifespan shutdown runs, so without this a LITE client would never
    hear `session.stopped` (reason server_shutdown)."""

    def __init__(self, app: FastAPI, **options: Any) -> None:
        super().__init__(uvicorn.Config(app, **options))
        self.facecast_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        manager = getattr(self.facecast_app.state, "manager", None)
        if manager is not None:
            await manager.close()
        await super().shutdown(sockets)


def serve(
    config: ServerConfig,
    *,
    fallback_to_free_port: bool = False,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted. `on_ready` gets the base URL once the socket is bound."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s"
    )
    fix_mmap_threshold()
    limit_native_threads()  # sessions in this process too, when there are no worker processes
    sock = bind(config.host, config.port, fallback_to_free_port=fallback_to_free_port)
    port = sock.getsockname()[1]
    if port != config.port:
        config = dataclasses.replace(config, port=port)
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = config.public_url or f"http://{host}:{port}"
    app = create_app(config)
    server = FacecastServer(app, log_level=log_level, ws_max_size=4 * 1024 * 1024)
    freeze_long_lived()
    if on_ready is not None:
        on_ready(url)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
