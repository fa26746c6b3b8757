"""examples/pipecat/bot.py end to end, offline: the real Pipecat dev runner serves the example's own page,
headless Chromium opens it with every request off loopback refused, connects over SmallWebRTC, plays the
avatar's video and has it say typed text."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_page import CHROMIUM, NO_CHROMIUM, chromium_page

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "examples" / "pipecat" / "bot.py"
BOT_ARGS = (sys.executable, str(BOT), "--typed", "--quality", "low", "-t", "webrtc")
HANG_S = 90.0  # guards against a hang; never a performance threshold

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bot_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    log = (tmp_path / "bot.log").open("w")
    proc = subprocess.Popen(
        [*BOT_ARGS, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG_S
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the bot did not serve its page: {(tmp_path / 'bot.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_page_is_served_locally_plays_the_avatar_and_says_typed_text(bot_url: str) -> None:
    from playwright.sync_api import Route

    refused: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with chromium_page() as (page, errors):
        page.route("**/*", loopback_only)
        page.goto(bot_url + "/")
        page.click("#connect")
        page.wait_for_function(
            "() => { const v = document.getElementById('avatar');"
            " return v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0.5; }",
            timeout=HANG_S * 1000,
        )
        size = page.evaluate("() => [avatar.videoWidth, avatar.videoHeight]")
        page.wait_for_function("() => !document.getElementById('text').disabled", timeout=HANG_S * 1000)
        # The greeting plays first; the typed text is one more utterance, seen in the RTVI events the
        # bot sends on the data channel as it speaks.
        said = "document.getElementById('log').textContent.split('bot: bot-started-speaking').length - 1"
        done = "document.getElementById('log').textContent.includes('bot: bot-stopped-speaking')"
        page.wait_for_function(f"() => {said} >= 1 && {done}", timeout=HANG_S * 1000)
        before = page.evaluate(f"() => {said}")
        page.fill("#text", "Hello from the test.")
        page.click("#send")
        page.wait_for_function(f"() => {said} > {before}", timeout=HANG_S * 1000)
        log = page.inner_text("#log")
    assert not refused, f"the page asked the internet for {refused}"
    assert not errors, errors
    assert size == [256, 256], size
    assert "receiving audio" in log and "receiving video" in log
