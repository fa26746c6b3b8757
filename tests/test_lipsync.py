"""Lip-sync quality floors against flite's phoneme timings, per tracker mode, offline and streaming.

Floors sit about 0.1 below what was measured when they were set (see docs/benchmarks.md), so they
catch regressions, not noise. The figures are deterministic for a given engine: no timing is checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from facecast.bench.corpus import SENTENCES, Utterance, have_flite, synthesize
from facecast.bench.harness import Score, run_utterance

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not have_flite(),
        reason="flite is not installed (apt-get install flite); it makes the labelled speech",
    ),
]

# Two voices (female slt, male kal16), sentences rich in m/b/p.
SAMPLE = ((0, "slt"), (2, "kal16"), (3, "slt"), (7, "kal16"))

# (tracker, transcript given, streaming) → floors for (viseme accuracy, openness corr, m/b/p recall).
# Measured at the default 100 ms look-ahead: phones 0.854 / 0.936 / 1.0 with the mouth classifier
# (streaming = offline; 0.744 / 0.899 / 0.833 from the recogniser's phones alone),
# alignment offline 0.867 / 0.931 / 1.0, energy 0.285 / 0.625 / 0.267. Streaming with a transcript aligns
# its words to the recognised phones inside the look-ahead (facecast.engine.words): 0.744 / 0.821 / 0.98,
# better classes and closures, a less faithful openness. Energy cannot close the lips on m/b/p:
# its recall counts only frames that happen to be at rest, so it gets no recall floor.
FLOORS: dict[tuple[str, bool, bool], tuple[float, float, float]] = {
    ("phones", False, True): (0.76, 0.84, 0.9),
    ("phones", False, False): (0.76, 0.84, 0.9),
    ("phones", True, True): (0.66, 0.72, 0.88),
    ("phones", True, False): (0.77, 0.83, 0.9),
    ("energy", False, True): (0.20, 0.52, 0.0),
    ("energy", False, False): (0.20, 0.52, 0.0),
}


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list[Utterance]:
    cache: Path = tmp_path_factory.mktemp("flite")
    return [synthesize(SENTENCES[i], voice, cache) for i, voice in SAMPLE]


def _score(utts: list[Utterance], tracker: str, with_text: bool, streaming: bool) -> Score:
    score = Score()
    for u in utts:
        track = run_utterance(u, tracker=tracker, streaming=streaming, text=u.text if with_text else None)
        score.add(u, track)
    return score


@pytest.mark.parametrize(("tracker", "with_text", "streaming"), list(FLOORS), ids=lambda v: str(v).lower())
def test_lipsync_quality_floors(
    utterances: list[Utterance], tracker: str, with_text: bool, streaming: bool
) -> None:
    score = _score(utterances, tracker, with_text, streaming)
    acc_floor, corr_floor, recall_floor = FLOORS[(tracker, with_text, streaming)]
    summary = (
        f"acc {score.accuracy:.3f} corr {score.open_corr:.3f} m/b/p {score.closure_recall:.3f} "
        f"lag {score.lag_ms:+.1f} ms, sources {score.sources}"
    )
    assert score.accuracy >= acc_floor, summary
    assert score.open_corr >= corr_floor, summary
    assert score.closure_recall >= recall_floor, summary
    # Speech frames tile the input exactly once, and the mouth is not systematically early or late.
    assert all(abs(c - 1.0) < 0.01 for c in score.coverage), score.coverage
    assert abs(score.lag_ms) <= 35.0, summary


def test_alignment_is_used_offline_when_the_transcript_is_known(utterances: list[Utterance]) -> None:
    score = _score(utterances[:1], "phones", True, False)
    assert score.sources.get("alignment", 0) >= 0.9 * score.frames, score.sources


def test_mp4_pixels_are_in_sync_with_the_audio(utterances: list[Utterance], tmp_path: Path) -> None:
    """End to end: render an MP4, read the mouth back from its pixels, place the truth where the
    MP4's own audio plays the speech, and cross-correlate."""
    from facecast.avatars import DEFAULT_AVATAR, load_renderer
    from facecast.bench.runs import mp4_sync
    from facecast.hosts.file import RenderOptions, render_file

    utt = utterances[0]
    out = tmp_path / "sync.mp4"
    render_file(
        utt.wav_path, out, RenderOptions(avatar=DEFAULT_AVATAR, fps=30, tracker="phones", progress=False)
    )
    box = load_renderer(DEFAULT_AVATAR, aspect="1:1", quality="high").mouth_box()
    sync = mp4_sync(utt, out, box, 30)
    assert abs(sync.audio_shift_ms) <= 2.0, sync
    assert abs(sync.offset_ms) <= 25.0, sync
    assert sync.pixel_corr >= 0.6, sync
