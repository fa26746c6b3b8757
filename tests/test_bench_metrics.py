"""The lip-sync benchmark's metrics and ground truth, on synthetic data with known answers."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from facecast.bench import metrics as m
from facecast.bench.corpus import Phone, parse_psdur, truth_track
from facecast.engine.types import VISEMES
from facecast.engine.visemes import OPEN_COLUMN, TARGETS, TRACK_HZ, VISEME_INDEX

FPS = 30


def _frames(n: int, fps: int = FPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts = np.arange(n) / fps
    ends = (np.arange(n) + 1) / fps
    return starts, ends, (starts + ends) / 2


def _smooth_signal(seed: int = 3) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random function of time (sum of sines), so any shift can be sampled exactly."""
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(0.5, 4.0, 8)
    phases = rng.uniform(0, 2 * np.pi, 8)
    amps = rng.uniform(0.3, 1.0, 8)

    def f(t: np.ndarray) -> np.ndarray:
        return (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])).sum(0)

    return f


def test_parse_psdur_builds_contiguous_phones() -> None:
    phones = parse_psdur("pau:0.193 b:0.224 aa:0.435 b:0.486 pau:0.6 \n")
    assert [p.phone for p in phones] == ["pau", "b", "aa", "b", "pau"]
    assert phones[0].start == 0.0
    assert phones[1] == Phone("b", 0.193, 0.224)
    assert all(a.end == b.start for a, b in itertools.pairwise(phones))
    with pytest.raises(ValueError):
        parse_psdur("no timings here")


def test_truth_track_classes_openness_and_closures() -> None:
    phones = (Phone("pau", 0.0, 0.1), Phone("m", 0.1, 0.2), Phone("aa", 0.2, 0.5), Phone("pau", 0.5, 0.6))
    truth = truth_track(phones, 0.6)
    assert len(truth.codes) == 60
    assert truth.codes[5] == VISEME_INDEX["X"]
    assert truth.codes[15] == VISEME_INDEX["A"]
    assert truth.codes[35] == VISEME_INDEX["D"]
    assert truth.closures == ((0.1, 0.2),)
    # Openness peaks inside the AA and is shut at the m's centre.
    assert truth.open[35] == pytest.approx(TARGETS[VISEME_INDEX["D"], OPEN_COLUMN], abs=0.02)
    assert truth.open[15] == 0.0


def test_viseme_accuracy_and_confusion() -> None:
    truth = np.repeat(np.array([VISEME_INDEX["X"], VISEME_INDEX["A"], VISEME_INDEX["D"]]), 100)  # 3 s
    *_, centres = _frames(90)
    perfect = m.sample_track(truth, centres, TRACK_HZ, 0)
    assert m.viseme_accuracy(truth, TRACK_HZ, centres, perfect) == 1.0
    wrong = perfect.copy()
    wrong[:30] = VISEME_INDEX["C"]  # the whole first second
    assert m.viseme_accuracy(truth, TRACK_HZ, centres, wrong) == pytest.approx(2 / 3)
    cm = m.confusion_matrix(truth, TRACK_HZ, centres, wrong)
    assert cm.sum() == 90
    assert cm[VISEME_INDEX["X"], VISEME_INDEX["C"]] == 30
    assert cm[VISEME_INDEX["D"], VISEME_INDEX["D"]] == 30
    # Frames past the end of the truth are judged against rest.
    assert m.viseme_accuracy(truth, TRACK_HZ, np.array([5.0]), np.array([VISEME_INDEX["X"]])) == 1.0


def test_viseme_codes_round_trip() -> None:
    assert list(m.viseme_codes(list(VISEMES))) == list(range(len(VISEMES)))


def test_openness_correlation() -> None:
    t = np.arange(300) / TRACK_HZ
    truth = 0.5 + 0.4 * np.sin(2 * np.pi * 2 * t)
    _, _, centres = _frames(90)
    exact = m.sample_track(truth, centres, TRACK_HZ, 0.0)
    assert m.openness_correlation(truth, TRACK_HZ, centres, exact) == pytest.approx(1.0)
    assert m.openness_correlation(truth, TRACK_HZ, centres, 1 - exact) == pytest.approx(-1.0)
    assert m.openness_correlation(truth, TRACK_HZ, centres, np.full(90, 0.3)) == 0.0


def test_closure_recall_counts_any_overlapping_closed_frame() -> None:
    starts, ends, _ = _frames(30)
    closures = [(0.10, 0.13), (0.50, 0.52), (0.80, 0.90)]
    open_ = np.full(30, 0.4)
    closed = np.zeros(30)
    assert m.closure_hits(closures, starts, ends, closed, open_) == (0, 3)
    # Frame 3 covers [0.1, 0.133): overlaps the first phone only.
    closed[3] = 1.0
    assert m.closure_hits(closures, starts, ends, closed, open_) == (1, 3)
    # A frame touching a phone only at its edge does not count (frame 16 = [0.533, 0.567)).
    open_[16] = 0.0
    assert m.closure_hits(closures, starts, ends, closed, open_) == (1, 3)
    # An almost-shut mouth counts (frame 15 = [0.5, 0.533)).
    open_[15] = 0.05
    assert m.closure_hits(closures, starts, ends, closed, open_) == (2, 3)
    closed[26] = 0.5  # [0.867, 0.9)
    assert m.closure_hits(closures, starts, ends, closed, open_) == (3, 3)


@pytest.mark.parametrize("rate_hz", [TRACK_HZ, FPS])
@pytest.mark.parametrize("offset_ms", [120.0, -80.0, 0.0, 47.0])
def test_av_offset_recovers_injected_offsets(rate_hz: int, offset_ms: float) -> None:
    f = _smooth_signal()
    t = np.arange(int(6.0 * rate_hz)) / rate_hz
    reference = f(t)
    delayed = f(t - offset_ms / 1000.0)  # the same motion, offset_ms later
    got = m.av_offset_ms(reference, delayed, rate_hz)
    # Whole-sample offsets are exact; at 30 fps the parabola gets well inside one frame (33 ms).
    tolerance = 1.0 if (offset_ms * rate_hz / 1000).is_integer() else 6.0
    assert got == pytest.approx(offset_ms, abs=tolerance)


def test_av_offset_stays_within_the_search_window() -> None:
    f = _smooth_signal(seed=7)
    t = np.arange(400) / TRACK_HZ
    got = m.av_offset_ms(f(t), f(t - 0.5), TRACK_HZ, max_lag_ms=200)
    assert -200.0 <= got <= 200.0
    with pytest.raises(ValueError):
        m.av_offset_ms(np.ones(3), np.ones(3), TRACK_HZ)


def test_mouth_open_from_pixels() -> None:
    frame = np.full((100, 100, 3), 200, dtype=np.uint8)
    box = (40, 60, 60, 80)  # 20 x 20 = 400 px
    assert m.mouth_open_from_pixels(frame, box) == 0.0
    frame[65:75, 45:55] = (20, 10, 10)  # 100 dark px inside the box
    frame[0:10, 0:10] = 0  # dark pixels outside the box are ignored
    assert m.mouth_open_from_pixels(frame, box) == pytest.approx(0.25)
    gray = m.luma(frame).astype(np.uint8)
    assert m.mouth_open_from_pixels(gray, box) == pytest.approx(0.25)
    rgba = np.dstack([frame, np.full((100, 100), 255, np.uint8)])
    assert m.mouth_open_from_pixels(rgba, box) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        m.mouth_open_from_pixels(frame, (200, 200, 210, 210))
