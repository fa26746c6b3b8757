"""`facecast bench browser`: A/V sync as Chromium plays it, over the server's own WebRTC transport.

A real `facecast serve` (one per sender-report mode, side by side in one run) and Debian's Chromium,
headless, driven by Playwright: each session opens the browser client, starts a session without the
greeting and, as soon as it is connected, types three corpus sentences in turn (espeak-ng,
server-side). The page
script browser_sync.js records, on performance.now(), when each video frame is presented with the
mouth's opening in it, and when each block of the remote audio plays with its level. The offset per
window of the session (from its first presented frame) is the lag of best correlation between the
mouth's opening and the audio level (metrics.av_offset_ms; positive: the mouth moves after the sound).
Tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from facecast.bench.corpus import SENTENCES
from facecast.bench.metrics import av_offset_ms
from facecast.bench.report import Log, Table
from facecast.hosts import rtcp

SYNC_JS = Path(__file__).with_name("browser_sync.js")
# (label, start s, end s or None for the rest of the session), from the first presented frame.
WINDOWS: tuple[tuple[str, float, float | None], ...] = (
    ("0-1 s", 0.0, 1.0),
    ("1-3 s", 1.0, 3.0),
    ("3 s+", 3.0, None),
)
# Sender-report modes, as FACECAST_SENDER_REPORTS values for the server.
MODES = {"aiortc": {rtcp.MODE_ENV: "aiortc"}, "media clock": {rtcp.MODE_ENV: "media-clock"}}
GRID_HZ = 100.0
MAX_LAG_MS = 300.0
SPEECH_RMS = 200.0  # an audio block this loud is speech (espeak-ng speaks at ~3000 RMS)
MIN_SPEECH = 0.2  # a window needs this fraction of speech blocks to be measured
# Spoken in turn, the first as soon as the session is connected. The first opens and closes the mouth
# cleanly within its first second (the client's greeting starts with "Hello!", one syllable whose
# correlation at the sender alone reads -120 ms over the first second).
SPOKEN = (SENTENCES[3], SENTENCES[0], SENTENCES[1])
TIMEOUT_S = 60.0
CHROMIUM_ARGS = (
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-background-networking",
    "--allow-loopback-in-peer-connection",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageSamples:
    """What browser_sync.js recorded: [[performance.now() ms, level]], [[ms, mouth opening or None]]."""

    audio: list[list[float]]
    video: list[list[Any]]
    streams: dict[str, list[str]] = field(default_factory=dict)
    sdp: str | None = None
    reports: dict[str, float] = field(default_factory=dict)  # kind -> page ms of its second sender report
    # [page ms, kind, jitterBufferDelay s, jitterBufferTargetDelay s, jitterBufferEmittedCount,
    # jitterBufferMinimumDelay s], cumulative
    buffers: list[list[Any]] = field(default_factory=list)

    @property
    def first_frame_ms(self) -> float:
        return min(t for t, o in self.video if o is not None)

    def speech_onset_s(self) -> float:
        """First loud audio block, in seconds after the first presented frame."""
        loud = [t for t, level in self.audio if level > SPEECH_RMS]
        return (min(loud) - self.first_frame_ms) / 1000 if loud else math.nan

    def offset_ms(self, since_ms: float, until_ms: float) -> float:
        """Lag of best correlation of the mouth's opening against the audio level between two page
        times (positive: video late); NaN if the span holds too little speech."""
        at, level = np.array(self.audio, dtype=np.float64).T
        inside = (at >= since_ms) & (at < until_ms)
        if inside.sum() < 10 or np.mean(level[inside] > SPEECH_RMS) < MIN_SPEECH:
            return math.nan
        shown = np.array([(t, o) for t, o in self.video if o is not None], dtype=np.float64)
        vt, vo = shown.T
        grid = np.arange(since_ms, until_ms, 1000.0 / GRID_HZ)
        idx = np.clip(np.searchsorted(vt, grid, side="right") - 1, 0, len(vo) - 1)  # held between frames
        return av_offset_ms(np.interp(grid, at, level), vo[idx], GRID_HZ, max_lag_ms=MAX_LAG_MS)

    def second_reports_s(self) -> float:
        """When both tracks had two sender reports, in seconds after the first presented frame."""
        if len(self.reports) < 2:
            return math.nan
        return (max(self.reports.values()) - self.first_frame_ms) / 1000

    def buffer_delay_ms(self, kind: str, since_ms: float, until_ms: float) -> float:
        """Mean jitter-buffer delay of the samples / frames a track emitted between two page times."""
        rows = [(t, d, n) for t, k, d, _, n, *_ in self.buffers if k == kind and since_ms <= t <= until_ms]
        if len(rows) < 2 or rows[-1][2] == rows[0][2]:
            return math.nan
        return 1000 * (rows[-1][1] - rows[0][1]) / (rows[-1][2] - rows[0][2])

    def window_buffers_ms(self) -> list[tuple[float, float]]:
        """(audio, video) mean jitter-buffer delay per window."""
        start = self.first_frame_ms
        end = max(t for t, _ in self.audio)
        spans = [(start + a * 1000, end if b is None else start + b * 1000) for _, a, b in WINDOWS]
        return [
            (self.buffer_delay_ms("audio", *span), self.buffer_delay_ms("video", *span)) for span in spans
        ]

    def window_offsets_ms(self) -> list[float]:
        start = self.first_frame_ms
        end = max(t for t, _ in self.audio)
        return [
            self.offset_ms(start + a * 1000, end if b is None else start + b * 1000) for _, a, b in WINDOWS
        ]


def msid_streams(sdp: str) -> dict[str, str]:
    """Media kind → the stream id of its `a=msid:` line, per m-line of an SDP."""
    streams: dict[str, str] = {}
    kind = ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=msid:") and kind:
            streams[kind] = line[len("a=msid:") :].split(" ", 1)[0]
    return streams


async def open_browser(pw: Any) -> Any:
    executable = chromium_path()
    if executable is None:
        raise ImportError("needs Debian's chromium (apt-get install chromium)")
    return await pw.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))


async def _speak_ended(page: Any) -> int:
    """How many utterances the client has logged as ended (events come over the WebSocket and the data
    channel: counted once per event id)."""
    return await page.evaluate(
        "() => new Set(Array.from(document.querySelectorAll('#log li'))"
        ".map((li) => li.textContent).filter((t) => t.includes('agent.speak_ended'))"
        ".map((t) => (t.match(/\\[([0-9a-f]+)\\]/) || [t])[0])).size"
    )


async def run_session(
    browser: Any, url: str, api_key: str, *, quality: str = "medium", sentences: Sequence[str] = SPOKEN
) -> PageSamples:
    """One session in the browser client (no greeting): each of `sentences` typed and spoken in turn,
    the first as soon as the session is connected."""
    from facecast.avatars import load_renderer

    context = await browser.new_context()
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.add_init_script(path=str(SYNC_JS))
        await page.goto(f"{url}/#key={api_key}")
        selected = page.locator("#avatars .avatar[aria-checked=true]")
        await selected.wait_for(timeout=TIMEOUT_S * 1000)
        avatar_id = await selected.get_attribute("data-id")
        await page.select_option("#quality", quality)
        box = load_renderer(avatar_id or "", aspect="1:1", quality=quality).mouth_box()
        await page.evaluate("(box) => { window.facecastSync.box = box; }", list(box))
        await page.uncheck("#greet")
        await page.click("#start")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent === 'connected'", timeout=TIMEOUT_S * 1000
        )
        for n, text in enumerate(sentences, start=1):
            await page.fill("#text", text)
            await page.click("#speak")
            deadline = time.monotonic() + TIMEOUT_S
            while await _speak_ended(page) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"utterance {n} ({text!r}) did not end within {TIMEOUT_S:.0f} s")
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last words' playout
        data = await page.evaluate("window.facecastSync")
        await page.click("#stop")
        errors += data["errors"]
        if errors:
            raise RuntimeError(f"the page failed: {errors}")
        return PageSamples(
            data["audio"], data["video"], data["streams"], data["sdp"], data["reports"], data["buffers"]
        )
    finally:
        await context.close()


# -- the command --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecast bench browser", description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=4, help="sessions per mode (4)")
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated sender-report modes to compare ({', '.join(MODES)})",
    )
    p.add_argument("--quality", default="medium", help="the client's quality setting (medium)")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


async def _run(args: argparse.Namespace, modes: list[str], log: Log) -> list[Table]:
    from contextlib import AsyncExitStack

    from playwright.async_api import async_playwright

    from facecast.bench.server import ServerProcess

    offsets: dict[str, list[list[float]]] = {m: [] for m in modes}
    buffers: dict[str, list[list[float]]] = {m: [] for m in modes}  # audio − video jitter buffer ms
    onsets: dict[str, list[float]] = {m: [] for m in modes}
    reported: dict[str, list[float]] = {m: [] for m in modes}
    async with AsyncExitStack() as stack:
        servers = {m: await stack.enter_async_context(ServerProcess(log, env=MODES[m])) for m in modes}
        pw = await stack.enter_async_context(async_playwright())
        browser = await open_browser(pw)
        stack.push_async_callback(browser.close)
        for i in range(args.sessions):
            for mode in modes:  # interleaved: both modes see the same machine load
                server = servers[mode]
                samples = await run_session(browser, server.url, server.api_key, quality=args.quality)
                row = samples.window_offsets_ms()
                offsets[mode].append(row)
                buffers[mode].append([a - v for a, v in samples.window_buffers_ms()])
                onsets[mode].append(samples.speech_onset_s())
                reported[mode].append(samples.second_reports_s())
                shown = ", ".join(f"{label} {v:+.0f}" for (label, *_), v in zip(WINDOWS, row, strict=True))
                log(
                    f"session {i + 1}/{args.sessions} ({mode}): offset ms {shown}; "
                    f"speech from {onsets[mode][-1]:.2f} s, two sender reports per track by "
                    f"{reported[mode][-1]:.2f} s; jitter buffers audio/video ms "
                    + ", ".join(f"{a:.0f}/{v:.0f}" for a, v in samples.window_buffers_ms())
                )
    table = Table(
        f"A/V offset in Chromium, ms (+: the mouth moves after the sound), median of {args.sessions}",
        ["sender reports", "measure", *(label for label, *_ in WINDOWS)],
    )
    for mode in modes:
        for measure, values in (
            ("correlation", offsets[mode]),
            ("audio − video jitter buffer", buffers[mode]),
        ):
            table.add(mode, measure, *(_median(v) for v in np.array(values, dtype=np.float64).T))
        table.add(mode, "speech starts, s", _median(np.array(onsets[mode]), "{:.2f}"), "", "")
        table.add(mode, "2 SRs per track by, s", _median(np.array(reported[mode]), "{:.2f}"), "", "")
    table.notes += [
        "windows from the session's first presented frame; a window with too little speech is left out (nan)",
        "aiortc: aiortc's own RTCP sender reports (first after 0.5-1.5 s, wall clock at send); media "
        "clock: facecast.hosts.rtcp (from the first packet, the engine's pts; video held one frame)",
        f"correlation: lag of best correlation ({GRID_HZ:.0f} Hz grid, ±{MAX_LAG_MS:.0f} ms) between the "
        "audio level as played (AudioWorklet) and the mouth's opening as shown (requestVideoFrameCallback)",
        "jitter buffer: mean jitterBufferDelay per emitted sample / frame (getStats), audio minus video",
    ]
    return [table]


def _median(values: np.ndarray, form: str = "{:+.1f}") -> str:
    finite = values[np.isfinite(values)]
    return form.format(np.median(finite)) if len(finite) else "nan"


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        _parser().error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    log = Log(enabled=not args.quiet)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        tables = asyncio.run(_run(args, modes, log))
    except ImportError as exc:  # a missing prerequisite (playwright, chromium), not a bug: one line
        print(f"facecast bench browser: {exc}", file=sys.stderr)
        return 2
    print(
        f"facecast bench browser — {date.today().isoformat()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {time.perf_counter() - started:.0f} s, load average "
        f"{load_before:.1f} at start / {os.getloadavg()[0]:.1f} at end"
    )
    for t in tables:
        print()
        print(t.markdown() if args.markdown else t.text())
    return 0
