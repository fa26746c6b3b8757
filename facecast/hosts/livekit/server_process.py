"""A local `livekit-server` process on loopback, for the tests and `facecast bench livekit`.

`scripts/livekit-server` builds the pinned release from its Go module into a cache and prints the
binary's path (nothing downloads a prebuilt binary). `find_binary()` looks, in order, at an explicit
path, $FACECAST_LIVEKIT_SERVER, the cache, and `livekit-server` on PATH. `run_livekit_server(binary)`
starts it on free loopback ports with its own API key and stops it on exit:

    with run_livekit_server(find_binary()) as server:
        ...  # server.url, server.api_key, server.api_secret
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

from facecast import settings

LIVEKIT_SERVER_VERSION = "v1.13.5"  # the tag scripts/livekit-server builds
API_KEY = "facecast-test"
API_SECRET = "facecast-test-secret-at-least-32-characters"
START_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
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
    """No livekit-server binary was found; the message says how to build one."""


def cached_binary() -> Path:
    """Where scripts/livekit-server puts the binary it builds."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "facecast" / "livekit-server" / LIVEKIT_SERVER_VERSION / "server"


def find_binary(explicit: str | Path | None = None) -> Path:
    """The livekit-server binary: `explicit`, else $FACECAST_LIVEKIT_SERVER, else the build cache, else
    `livekit-server` on PATH. Raises LiveKitServerMissing saying how to build it."""
    for source, value in (
        ("--livekit-server", explicit),
        (settings.LIVEKIT_SERVER.name, settings.LIVEKIT_SERVER.get()),
    ):
        if value:
            path = Path(value)
            if not path.is_file():
                raise LiveKitServerMissing(f"{source}={value} is not a file; run {BUILD_HINT}")
            return path
    built = cached_binary()
    if built.is_file():
        return built
    on_path = shutil.which("livekit-server")
    if on_path:
        return Path(on_path)
    raise LiveKitServerMissing(f"no livekit-server binary (looked at {built} and PATH); run {BUILD_HINT}")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(
    port: int, tcp_port: int, udp_port: int, api_key: str, api_secret: str, pli_throttle_ms: int | None = None
) -> str:
    throttle = ""
    if pli_throttle_ms is not None:
        throttle = "  pli_throttle:\n" + "".join(
            f"    {q}_quality: {pli_throttle_ms}ms\n" for q in ("low", "mid", "high")
        )
    return f"""\
port: {port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {tcp_port}
  udp_port: {udp_port}
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
{throttle}keys:
  {api_key}: {api_secret}
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_livekit_server(
    binary: Path,
    *,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
    log_path: Path | None = None,
    pli_throttle_ms: int | None = None,
) -> Iterator[LiveKitServer]:
    """Start `binary` on free loopback ports; yields a LiveKitServer; stops it (and waits) on exit.
    Its log goes to `log_path` (default: a temporary file, quoted if it fails to start).
    `pli_throttle_ms` sets the SFU's keyframe-request throttle for every layer (`rtc.pli_throttle`;
    the server's default is 500 ms for the low layer, 1 s for the others)."""
    with tempfile.TemporaryDirectory(prefix="facecast-livekit-") as tmp:
        log_file = log_path or Path(tmp) / "livekit.log"
        # A free port found here can be taken by another process before the server binds it; a server
        # that exits at once is started again on other ports.
        for attempt in range(START_ATTEMPTS):
            port, tcp_port, udp_port = (
                _free_port(socket.SOCK_STREAM),
                _free_port(socket.SOCK_STREAM),
                _free_port(socket.SOCK_DGRAM),
            )
            config = Path(tmp) / "livekit.yaml"
            config.write_text(_config(port, tcp_port, udp_port, api_key, api_secret, pli_throttle_ms))
            with open(log_file, "wb") as log:
                proc = subprocess.Popen(
                    [str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            server = LiveKitServer(f"ws://127.0.0.1:{port}", api_key, api_secret)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _ready(server.http_url) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None and _ready(server.http_url):
                break
            exited = proc.poll() is not None
            _stop(proc)
            if not exited or attempt == START_ATTEMPTS - 1:
                raise RuntimeError(
                    f"livekit-server did not start within {START_TIMEOUT_S:.0f} s (exit {proc.poll()}); "
                    f"its log:\n{log_file.read_text(errors='replace')[-3000:]}"
                )
        try:
            yield server
        finally:
            _stop(proc)
