"""The avatar in a real LiveKit room, watched by LiveKit's own JavaScript client in real headless Chromium
(tests/browser/livekit-viewer.html, livekit-client from npm), next to the Python viewer.

It checks what a user of a browser frontend gets: both tracks play, the video runs at the avatar's rate,
the mouth opens with the speech. It prints the A/V offset each viewer measured from what it displayed
and played (`pytest -s`): the figure docs/livekit.md reports."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit_server import LiveRoom
from livekit_speech import AVATAR_QUALITY, frames, mouth_box, to_24k

from facecast.bench.metrics import av_offset_ms
from facecast.client.livekit_viewer import RoomViewer
from facecast.hosts.livekit.tokens import mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar

BROWSER_DIR = Path(__file__).parent / "browser"
CLIENT_JS = BROWSER_DIR / "node_modules" / "livekit-client" / "dist" / "livekit-client.umd.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AVATAR = "facecast-avatar"
HANG_S = 30.0
UTTERANCES = 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="needs Debian's chromium (apt-get install chromium; scripts/test installs it)",
    ),
]


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    if not CLIENT_JS.is_file():
        message = "livekit-client is not installed: npm install --prefix tests/browser (scripts/test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(BROWSER_DIR))
    handler.log_message = lambda *_args: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="browser-files", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/livekit-viewer.html"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--autoplay-policy=no-user-gesture-required",
                "--no-sandbox",
                "--disable-background-networking",
                "--allow-loopback-in-peer-connection",
            ],
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, errors
        finally:
            await browser.close()


def browser_offset_ms(audio: list[list[float]], video: list[list[Any]], since: float, until: float) -> float:
    """RoomViewer.av_offset_ms on the page's samples (performance.now() milliseconds)."""
    grid = np.arange(since, until, 10.0)
    at, level = np.array(audio, dtype=np.float64).T
    shown = [(t, o) for t, o in video if o is not None]
    vt, vo = np.array(shown, dtype=np.float64).T
    idx = np.clip(np.searchsorted(vt, grid, side="right") - 1, 0, len(vo) - 1)
    return av_offset_ms(np.interp(grid, at, level), vo[idx], 100.0, max_lag_ms=300.0)


async def test_a_browser_frontend_plays_the_avatar(
    live_room: LiveRoom, page_url: str, browser_page: Any, speech: tuple[np.ndarray, int, str]
) -> None:
    box = mouth_box()
    viewer = RoomViewer(mouth_box=box)
    await viewer.connect(live_room.url, live_room.token("viewer"))
    agent = rtc.Room()
    await agent.connect(live_room.url, live_room.token("agent", kind="agent"))
    worker_token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity=AVATAR, name="Avatar", agent_identity="agent"
    )
    avatar = RoomAvatar(live_room.url, worker_token, quality=AVATAR_QUALITY)
    try:
        await avatar.start()
        query = {"url": live_room.url, "token": live_room.token("browser"), "box": json.dumps(list(box))}
        await browser_page.goto(page_url + "#" + "&".join(f"{k}={v}" for k, v in query.items()))
        await browser_page.wait_for_function(
            "() => window.viewer.connected && window.viewer.video.length > 10", timeout=HANG_S * 1000
        )
        events = await browser_page.evaluate("window.viewer.events")
        assert {f"subscribed {AVATAR} audio", f"subscribed {AVATAR} video"} <= set(events)
        # The test server's rooms have sync_streams: the avatar's tracks arrive in one media stream.
        streams = await browser_page.evaluate("window.viewer.streams")
        assert streams["audio"] == streams["video"] and streams["audio"].endswith("|facecast-avatar")

        out = DataStreamAudioOutput(
            agent, destination_identity=AVATAR, sample_rate=24000, wait_remote_track=rtc.TrackKind.KIND_VIDEO
        )
        samples, rate, _ = speech
        pcm = to_24k(samples, rate)
        spans: list[tuple[float, float, float, float]] = []  # monotonic and page clock, before and after
        for _ in range(UTTERANCES):
            t0, p0 = time.monotonic(), await browser_page.evaluate("performance.now()")
            for frame in frames(pcm):
                await out.capture_frame(frame)
            out.flush()
            await asyncio.wait_for(out.wait_for_playout(), HANG_S)
            await asyncio.sleep(0.8)
            spans.append((t0, time.monotonic(), p0, await browser_page.evaluate("performance.now()")))
        page = await browser_page.evaluate("window.viewer")
    finally:
        await avatar.aclose()
        await agent.disconnect()
        await viewer.aclose()

    video = [(t, o) for t, o in page["video"] if o is not None]
    first, last = spans[0][2], spans[-1][3]
    shown = [t for t, _ in video if first <= t <= last]
    fps = (len(shown) - 1) / ((shown[-1] - shown[0]) / 1000)
    loud = [t for t, level in page["audio"] if level > 200 and first <= t <= last]
    speaking = [o for t, o in video if any(p0 <= t <= p1 for *_, p0, p1 in spans)]
    idle = [o for t, o in video if t < first]
    assert fps > 15, f"Chromium displayed {fps:.1f} fps"
    assert len(loud) * 512 / 48000 > 0.5 * UTTERANCES * len(pcm) / 24000, "Chromium played the speech"
    # At rest no pixel of the 256² avatar's mouth box is dark; speech opens it (up to ~5 % of the box).
    assert max(speaking) > 0.02 and max(idle) < max(speaking) / 2, "the mouth opens with the speech"
    rust = [viewer.av_offset_ms(t0, t1) for t0, t1, _, _ in spans]
    chromium = [browser_offset_ms(page["audio"], page["video"], p0, p1) for *_, p0, p1 in spans]
    print(
        f"\nA/V offset (video − audio), per utterance: Chromium {[round(x) for x in chromium]} ms, "
        f"Python viewer {[round(x) for x in rust]} ms; Chromium displayed {fps:.1f} fps"
    )
