from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from livekit_server import LiveKitServer, LiveKitServerMissing, LiveRoom, find_binary, run_livekit_server

if TYPE_CHECKING:
    from server_harness import RunningServer

SENTENCE = "Hello there, my name is Bob and I build maps for people."


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int, str]:
    """A flite sentence: (int16 mono samples, sample rate, transcript)."""
    import av

    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    path = Path(tmp_path_factory.mktemp("speech")) / "speech.wav"
    subprocess.run(
        ["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(path)], check=True, capture_output=True
    )
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    return np.concatenate(chunks).astype(np.int16), rate, SENTENCE


WordSpan = tuple[str, float, "float | None", bool]  # text, start, duration, pause_after


@pytest.fixture
def word_spans(monkeypatch: pytest.MonkeyPatch) -> list[WordSpan]:
    """Every `Engine.push_words` call of the test, in order, as (text, start, duration, pause_after)."""
    from facecast.engine import Engine

    spans: list[WordSpan] = []
    original = Engine.push_words

    def spy(
        self: Engine,
        text: str,
        start: float = 0.0,
        duration: float | None = None,
        *,
        pause_after: bool = False,
    ) -> int | None:
        spans.append((text, start, duration, pause_after))
        return original(self, text, start, duration, pause_after=pause_after)

    monkeypatch.setattr(Engine, "push_words", spy)
    return spans


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real Facecast server with the default settings on a loopback port, for one test (a test file
    that needs other settings or a longer life defines its own `server`)."""
    from server_harness import running_server  # the server's stack, only for the tests that use one

    with running_server(tmp_path) as running:
        yield running


@pytest.fixture
def key(server: RunningServer) -> str:
    """A new API key of `server` (its secret)."""
    return server.store.create_key("test")[1]


@pytest.fixture(scope="session")
def livekit_server() -> Iterator[LiveKitServer]:
    """A real LiveKit server on loopback for the whole session (see tests/livekit_server.py).

    LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET name an external one instead. Without a binary
    the test is skipped, except under CI=true, where it fails."""
    url, key, secret = (
        os.environ.get(n, "") for n in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
    )
    if url and key and secret:
        yield LiveKitServer(url, key, secret)
        return
    try:
        binary = find_binary()
    except LiveKitServerMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the real-LiveKit tests: {exc}")
        pytest.skip(str(exc))
    with run_livekit_server(binary) as server:
        yield server


@pytest.fixture
async def live_room(livekit_server: LiveKitServer) -> AsyncIterator[LiveRoom]:
    """A new room name on the real server; the room is deleted after the test."""
    room = LiveRoom(livekit_server, f"facecast-test-{uuid.uuid4().hex[:8]}")
    yield room
    await room.delete()
