"""The drawn-face page (/face) in real headless Chromium against a real server: it starts a track-only
session, the mouth-track records arrive and the speech's audio plays, and the face it draws opens its
mouth while the avatar speaks and keeps it closed at rest."""

from __future__ import annotations

import time
from typing import Any

import pytest
from browser_page import CHROMIUM, NO_CHROMIUM, chromium_page
from server_harness import RunningServer

from facecast import protocol as p

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]

SENTENCE = "Hello there, my name is Bob and I build maps for people all over the world."


def sample(page: Any, seconds: float) -> list[tuple[bool, int]]:
    """(the latest record says speaking, drawn mouth-interior pixels), every 50 ms for `seconds`."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        speaking, pixels = page.evaluate(
            "() => [Boolean(facecastFace.last && facecastFace.last.speaking), facecastFace.mouthPixels()]"
        )
        samples.append((speaking, pixels))
        time.sleep(0.05)
    return samples


def test_face_page_draws_the_mouth_track_of_a_track_only_session(server: RunningServer) -> None:
    from playwright.sync_api import expect

    key = server.store.create_key("browser")[1]
    with chromium_page() as (page, errors):
        page.goto(f"{server.url}/")
        page.get_by_test_id("face-link").click()
        page.wait_for_url("**/face")
        page.fill("#api-key", key)
        expect(page.get_by_test_id("track-only")).to_be_checked()
        page.get_by_test_id("start").click()
        expect(page.get_by_test_id("status")).to_have_text("connected", timeout=20_000)
        page.wait_for_function("() => facecastFace.records > 20", timeout=20_000)

        idle = sample(page, 1.0)
        assert idle and all(not speaking for speaking, _ in idle)
        assert page.evaluate("facecastFace.audioPeak") < 0.01, "sound before any speech"
        assert max(pixels for _, pixels in idle) == 0, "the drawn mouth is open at rest"

        page.fill("#text", SENTENCE)
        page.click("#speak")
        page.wait_for_function("() => facecastFace.last && facecastFace.last.speaking", timeout=20_000)
        talking = sample(page, 2.5)
        open_while_speaking = [pixels for speaking, pixels in talking if speaking]
        assert len(open_while_speaking) > 10
        assert max(open_while_speaking) > 200, f"the drawn mouth never opened: {max(open_while_speaking)} px"
        assert sum(px > 0 for px in open_while_speaking) > 0.3 * len(open_while_speaking)
        # The speech's audio plays in the page (a track-only session still sends it): its level meter
        # hears it.
        page.wait_for_function("() => facecastFace.audioPeak > 0.02", timeout=10_000)
        expect(page.get_by_test_id("log")).to_contain_text(p.AGENT_SPEAK_ENDED, timeout=30_000)
        page.wait_for_function("() => facecastFace.last && !facecastFace.last.speaking", timeout=10_000)
        rest = sample(page, 0.6)[4:]  # a few frames for the mouth to close
        assert max(pixels for _, pixels in rest) == 0, "the drawn mouth stayed open after the speech"

        page.click("#stop")
        expect(page.get_by_test_id("status")).to_have_text("idle")
        assert errors == []
    records, total = server.store.list_sessions(None, active=False)
    assert total == 1 and records[0].end_reason == p.END_STOPPED
    assert records[0].settings.video is False and records[0].settings.mouth_track is True
    assert records[0].stats["video_frames_sent"] == 0
