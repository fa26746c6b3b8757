"""A real Facecast server on a loopback port, run in a background thread for a test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from facecast.avatars.fetch import FetchPolicy
from facecast.server.app import create_app
from facecast.server.config import AvatarSettings, Limits, LiveKitSettings, ServerConfig
from facecast.server.run import FacecastServer, bind
from facecast.server.store import SessionRecord, Store, open_store


@dataclass
class RunningServer:
    url: str
    store: Store
    config: ServerConfig
    app: Any
    loop: asyncio.AbstractEventLoop
    uvicorn: FacecastServer

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 20.0)
        return httpx.Client(base_url=self.url, **kwargs)

    def session(self, session_id: str) -> SessionRecord:
        record = self.store.get_session(session_id)
        assert record is not None
        return record

    def wait_ended(self, session_id: str, timeout: float = 15.0) -> SessionRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.session(session_id)
            if record.end_reason is not None:
                return record
            time.sleep(0.05)
        raise AssertionError(f"session {session_id} did not end within {timeout} s")


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    *,
    limits: Limits | None = None,
    store: Store | None = None,
    server_id: str = "test-server",
    avatars: AvatarSettings | None = None,
    livekit: LiveKitSettings | None = None,
    live_workers: int = 0,
) -> Iterator[RunningServer]:
    store = store or open_store(None, data_dir)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        limits=limits or Limits(),
        server_id=server_id,
        # The defaults, whatever the environment says (FACECAST_FETCH_ALLOW_NETWORKS included).
        avatars=avatars or AvatarSettings(fetch_policy=FetchPolicy()),
        livekit=livekit or LiveKitSettings(),  # none unless given, whatever FACECAST_LIVEKIT_* say
        live_workers=live_workers,  # WebRTC sessions in this process unless a test asks for a pool
    )
    app = create_app(config, store=store)
    sock = bind("127.0.0.1", 0, fallback_to_free_port=False)
    port = sock.getsockname()[1]
    server = FacecastServer(app, log_level="warning", lifespan="on")
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve(sockets=[sock]))
        loop.close()

    thread = threading.Thread(target=run, name="facecast-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", store, config, app, loops[0], server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the test server did not shut down"
