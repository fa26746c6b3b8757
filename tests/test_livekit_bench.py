"""`facecast bench livekit` with tiny counts against the real server fixture: every figure is there
and plausible (no timing thresholds: this checks the bench, not the machine)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from livekit_server import LiveKitServer

from facecast.bench.livekit import Options, main, run, tables
from facecast.bench.report import Log


async def test_bench_livekit_reports_every_figure(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    opts = Options(quality="low", fps=25, starts=1, utterances=1, interrupts=1, cpu_seconds=1.0)
    r = await run(livekit_server, opts, Log(enabled=False), tmp_path)

    assert r.size == "256x256@25"
    assert len(r.start_ms) == len(r.first_frame_ms) == len(r.audio_track_ms) == len(r.video_track_ms) == 1
    assert r.start_ms[0] > 0 and r.first_frame_ms[0] > 0 and r.cold_first_frame_ms > 0
    # speech is heard and the mouth moves after the first audio frame was sent
    assert len(r.audio_ms) == len(r.mouth_ms) == 1 and r.audio_ms[0] > 0 and r.mouth_ms[0] > 0
    assert len(r.av_offset_ms) == 1 and abs(r.av_offset_ms[0]) <= 300  # the correlation's search range
    assert len(r.finished_ms) == 1 and math.isfinite(r.finished_ms[0])
    assert len(r.silence_ms) == len(r.clear_to_finished_ms) == 1
    assert r.silence_ms[0] >= 0 and r.clear_to_finished_ms[0] >= 0
    assert r.cpu_idle > 0 and r.cpu_speaking > 0
    assert min(r.rss_before_mb, r.rss_first_mb, r.rss_warm_mb, r.rss_session_mb) > 0
    # the speech session answered every segment: the utterances of the CPU window too
    assert r.worker_stats["playback_finished_sent"] == r.worker_stats["segments_received"] >= 2
    assert r.worker_stats["interrupts"] == 1

    text = "\n".join(t.text() for t in tables(r, opts))
    for label in ("first video frame at viewer", "mouth moving", "A/V offset", "playback_finished", "RSS"):
        assert label in text


def test_bench_livekit_without_a_server_binary_says_how_to_build_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["--livekit-server", str(tmp_path / "missing")]) == 2
    assert "bash scripts/livekit-server" in capsys.readouterr().err
