"""Debian's Chromium, headless, driven by Playwright: one page and the script errors it raised."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "needs Debian's chromium (apt-get install chromium; scripts/test installs it)"


@contextmanager
def chromium_page(extra_args: Sequence[str] = ()) -> Iterator[tuple[Any, list[str]]]:
    """A new page (media plays without a gesture) and the list its uncaught script errors go to; the
    browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox", *extra_args],
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()
