"""The browser test client in real headless Chromium (Debian's package, driven by Playwright): start a
session, the video plays, typed text produces speech events, stop ends the session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from browser_page import CHROMIUM, NO_CHROMIUM, chromium_page
from server_harness import RunningServer

from facecast import protocol as p

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


@contextmanager
def client_page(server: RunningServer, key: str) -> Iterator[tuple[Any, list[str]]]:
    """The browser client open in headless Chromium with `key` filled in, and the page's script errors."""
    with chromium_page() as (page, errors):
        page.goto(f"{server.url}/#key={key}")
        yield page, errors


def wait_video_plays(page: Any) -> None:
    page.wait_for_function(
        "() => { const v = document.getElementById('video');"
        " return v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0.3; }",
        timeout=20_000,
    )


def test_page_starts_a_session_plays_video_and_speaks(server: RunningServer) -> None:
    from playwright.sync_api import expect

    key = server.store.create_key("browser")[1]
    with client_page(server, key) as (page, errors):
        expect(page.locator("#avatars .avatar")).to_have_count(4)
        page.select_option("#quality", "low")
        page.get_by_test_id("start").click()

        expect(page.get_by_test_id("status")).to_have_text("connected", timeout=20_000)
        wait_video_plays(page)
        assert page.evaluate("document.getElementById('video').videoWidth") == 256
        expect(page.get_by_test_id("first-frame")).to_contain_text("ms")

        log = page.get_by_test_id("log")
        # The greeting is sent on connect; then a typed sentence.
        expect(log).to_contain_text("agent.speak_started", timeout=20_000)
        page.fill("#text", "Typed text becomes speech.")
        page.click("#speak")
        expect(log).to_contain_text("agent.speak_text: Typed text becomes speech.")
        page.click("#interrupt")
        expect(log).to_contain_text("agent.speak_interrupted", timeout=20_000)

        page.click("#stop")
        expect(page.get_by_test_id("status")).to_have_text("idle")
        assert errors == []
    records, total = server.store.list_sessions(None, active=False)
    assert total == 1 and records[0].end_reason == p.END_STOPPED
    assert records[0].stats["frames"] > 0


def test_page_makes_an_avatar_from_a_photo_and_talks_with_it(server: RunningServer) -> None:
    """Upload a photo from the page: it builds (with progress), appears among the avatars, is selected,
    and a session with it plays video."""
    from photos import skimage_data_dir
    from playwright.sync_api import expect

    key = server.store.create_key("browser")[1]
    with client_page(server, key) as (page, errors):
        expect(page.locator("#avatars .avatar")).to_have_count(4)
        page.get_by_test_id("photo").set_input_files(str(skimage_data_dir() / "astronaut.png"))
        expect(page.get_by_test_id("build-status")).to_have_text("astronaut is ready", timeout=120_000)
        expect(page.locator("#avatars .avatar")).to_have_count(5)
        selected = page.locator("#avatars .avatar[aria-checked=true]")
        expect(selected).to_have_attribute("title", "astronaut")
        page.wait_for_function(
            "() => { const img = document.querySelector('#avatars .avatar[aria-checked=true] img');"
            " return img && img.complete && img.naturalWidth > 0; }",
            timeout=20_000,
        )
        page.uncheck("#greet")
        page.select_option("#quality", "low")
        page.get_by_test_id("start").click()
        expect(page.get_by_test_id("status")).to_have_text("connected", timeout=20_000)
        wait_video_plays(page)
        page.click("#stop")
        expect(page.get_by_test_id("status")).to_have_text("idle")
        assert errors == []
    records, _ = server.store.list_sessions(None, active=False)
    assert records[0].avatar_id.startswith("av_")


def test_speech_latency_of_a_sentence_queued_behind_the_greeting_leaves_out_the_wait(
    server: RunningServer,
) -> None:
    """Typed while the ~5 s greeting plays, a sentence starts when the greeting ends: its speech latency
    counts from then (it read the whole wait, ~4.8 s, when it counted from sending)."""
    from playwright.sync_api import expect

    key = server.store.create_key("browser")[1]
    with client_page(server, key) as (page, errors):
        page.select_option("#quality", "low")
        page.get_by_test_id("start").click()
        log = page.get_by_test_id("log")
        expect(log).to_contain_text("agent.speak_started", timeout=20_000)
        page.fill("#text", "Queued behind the greeting.")
        page.click("#speak")
        page.wait_for_function(
            "() => new Set(Array.from(document.querySelectorAll('#log li')).map((li) => li.textContent)"
            ".filter((t) => t.includes('agent.speak_started')).map((t) => t.match(/\\[([0-9a-f]+)\\]/)[1]))"
            ".size === 2",
            timeout=30_000,
        )
        latency_ms = int(page.inner_text("#stat-latency").removesuffix(" ms"))
        assert 0 <= latency_ms < 1500, f"speech latency {latency_ms} ms"
        page.click("#stop")
        assert errors == []


def test_error_answers_show_the_servers_message_and_keep_the_built_ins(
    server: RunningServer, tmp_path: Path
) -> None:
    """A wrong API key (issue 15, D11): the built-in avatars stay, and every call the page makes shows the
    server's own message instead of a script error."""
    from playwright.sync_api import expect

    with client_page(server, "fck_wrong") as (page, errors):
        expect(page.locator("#avatars .avatar")).to_have_count(4)  # the built-ins, listed without the key
        error = page.locator("#error")
        expect(error).to_contain_text("invalid or revoked API key")
        expect(error).to_contain_text("built-in avatars only")
        page.get_by_test_id("start").click()
        expect(error).to_contain_text("POST /v1/sessions/token: invalid or revoked API key")
        expect(page.get_by_test_id("status")).to_have_text("idle")
        page.fill("#api-key", server.store.create_key("browser")[1])
        page.dispatch_event("#api-key", "change")
        not_a_photo = tmp_path / "notes.png"
        not_a_photo.write_bytes(b"these are notes, not a photo")
        page.get_by_test_id("photo").set_input_files(str(not_a_photo))
        expect(error).to_contain_text("could not make an avatar from notes.png: POST /v1/avatars: ")
        message = page.inner_text("#error")
        assert "Cannot read properties" not in message and "undefined" not in message
        assert errors == []
    assert server.store.list_sessions(None, active=False)[1] == 0
