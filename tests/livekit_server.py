"""A real LiveKit server for the tests: the `livekit-server` binary, started on loopback with free ports.

`scripts/livekit-server` builds the pinned release from its Go module into a cache and prints the
binary's path; `scripts/test` exports it as FACECAST_LIVEKIT_SERVER. The `livekit_server` fixture
(tests/conftest.py) starts one server for the whole test session. Without the binary the real-server
tests are skipped with the command to run, except in CI (CI=true), where they fail instead: CI must
never pass by skipping them. LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET point the tests at an
external server instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from livekit import api

LIVEKIT_SERVER_VERSION = "v1.13.5"  # the tag scripts/livekit-server builds
API_KEY = "facecast-test"
API_SECRET = "facecast-test-secret-at-least-32-characters"
START_TIMEOUT_S = 30.0
BUILD_HINT = "bash scripts/livekit-server  (builds livekit-server with Go into ~/.cache/facecast)"


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str

    @property
    def http_url(self) -> str:
        return "http" + self.url[2:]


class LiveKitServerMissing(RuntimeError):
    pass


def find_binary() -> Path:
    configured = os.environ.get("FACECAST_LIVEKIT_SERVER")
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise LiveKitServerMissing(
                f"FACECAST_LIVEKIT_SERVER={configured} is not a file; run {BUILD_HINT}"
            )
        return path
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "facecast" / "livekit-server" / LIVEKIT_SERVER_VERSION / "server"
    if built.is_file():
        return built
    on_path = shutil.which("livekit-server")
    if on_path:
        return Path(on_path)
    raise LiveKitServerMissing(f"no livekit-server binary; run {BUILD_HINT}")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(port: int, tcp_port: int, udp_port: int) -> str:
    return f"""\
port: {port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {tcp_port}
  udp_port: {udp_port}
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
keys:
  {API_KEY}: {API_SECRET}
logging:
  level: warn
room:
  empty_timeout: 10
  departure_timeout: 5
  sync_streams: true  # what docs/livekit.md recommends: the avatar's tracks in one stream
"""


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(http_url, timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def run_livekit_server(binary: Path) -> Iterator[LiveKitServer]:
    """Start `binary` on free loopback ports; yields a LiveKitServer; stops it (and waits) on exit."""
    with tempfile.TemporaryDirectory(prefix="facecast-livekit-") as tmp:
        port, tcp_port, udp_port = (
            _free_port(socket.SOCK_STREAM),
            _free_port(socket.SOCK_STREAM),
            _free_port(socket.SOCK_DGRAM),
        )
        config = Path(tmp) / "livekit.yaml"
        config.write_text(_config(port, tcp_port, udp_port))
        log_path = Path(tmp) / "livekit.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        server = LiveKitServer(f"ws://127.0.0.1:{port}", API_KEY, API_SECRET)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _ready(server.http_url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"livekit-server did not start (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}"
                    )
                time.sleep(0.1)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class LiveRoom:
    """A fresh room name on a real server, with tokens for the participants a test brings."""

    server: LiveKitServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def keys(self) -> tuple[str, str]:
        return self.server.api_key, self.server.api_secret

    def token(self, identity: str, *, kind: Literal["standard", "agent"] = "standard") -> str:
        grants = api.VideoGrants(
            room_join=True, room=self.name, can_publish=True, can_subscribe=True, can_publish_data=True
        )
        return (
            api.AccessToken(self.server.api_key, self.server.api_secret)
            .with_identity(identity)
            .with_name(identity)
            .with_kind(kind)
            .with_grants(grants)
            .to_jwt()
        )

    async def delete(self) -> None:
        async with api.LiveKitAPI(self.server.http_url, self.server.api_key, self.server.api_secret) as lk:
            with contextlib.suppress(api.TwirpError):
                await lk.room.delete_room(api.DeleteRoomRequest(room=self.name))
