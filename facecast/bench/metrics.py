"""Lip-sync metrics: pure functions over truth tracks and per-frame engine output.

Conventions
- A truth track is sampled at `rate_hz` (TRACK_HZ = 100): sample j describes [j, j+1) / rate_hz s.
- Engine output is one value per video frame, placed on the input audio timeline by the frame's
  span [start, end) in seconds; a frame is judged at its centre.
- Times outside the truth track count as rest (code X, openness 0): the speech is over there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facecast.client.measure import DARK_LUMA as DARK_LUMA
from facecast.client.measure import av_offset_ms as av_offset_ms
from facecast.client.measure import luma as luma
from facecast.client.measure import mouth_open_from_pixels as mouth_open_from_pixels
from facecast.client.measure import pearson
from facecast.engine.types import VISEMES
from facecast.engine.visemes import REST_INDEX

# m/b/p closure: a frame shows closed lips when `closed` reaches this or `open` is at most this.
CLOSED_MIN = 0.5
OPEN_MAX = 0.05


def sample_track(track: np.ndarray, times_s: np.ndarray, rate_hz: float, fill: float) -> np.ndarray:
    """Value of a piecewise-constant track at each time; `fill` outside [0, len/rate)."""
    track = np.asarray(track)
    idx = np.floor(np.asarray(times_s, dtype=np.float64) * rate_hz).astype(np.int64)
    ok = (idx >= 0) & (idx < len(track))
    out = np.full(idx.shape, fill, dtype=np.result_type(track.dtype, np.asarray(fill).dtype))
    out[ok] = track[idx[ok]]
    return out


def viseme_codes(visemes: Sequence[str]) -> np.ndarray:
    """Viseme letters → indices into VISEMES."""
    index = {v: i for i, v in enumerate(VISEMES)}
    return np.array([index[v] for v in visemes], dtype=np.int64)


def viseme_accuracy(
    truth_codes: np.ndarray, rate_hz: float, centres_s: np.ndarray, predicted: np.ndarray
) -> float:
    """Fraction of frames whose predicted class equals the truth class at the frame centre."""
    if len(predicted) == 0:
        return float("nan")
    truth = sample_track(truth_codes, centres_s, rate_hz, REST_INDEX)
    return float(np.mean(truth == np.asarray(predicted)))


def confusion_matrix(
    truth_codes: np.ndarray, rate_hz: float, centres_s: np.ndarray, predicted: np.ndarray
) -> np.ndarray:
    """(9, 9) counts: rows truth class, columns predicted class (order of VISEMES)."""
    truth = sample_track(truth_codes, centres_s, rate_hz, REST_INDEX)
    n = len(VISEMES)
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (truth, np.asarray(predicted, dtype=np.int64)), 1)
    return m


def openness_correlation(
    truth_open: np.ndarray, rate_hz: float, centres_s: np.ndarray, predicted_open: np.ndarray
) -> float:
    """Pearson correlation of engine openness with truth openness at the frame centres."""
    truth = sample_track(truth_open, centres_s, rate_hz, 0.0)
    return pearson(truth, predicted_open)


def closure_hits(
    closures: Sequence[tuple[float, float]],
    frame_starts_s: np.ndarray,
    frame_ends_s: np.ndarray,
    closed: np.ndarray,
    open_: np.ndarray,
    closed_min: float = CLOSED_MIN,
    open_max: float = OPEN_MAX,
) -> tuple[int, int]:
    """m/b/p closure recall as (hits, total).

    A truth m/b/p phone [s, e) is a hit when at least one frame whose span overlaps it by a positive
    amount (frame_start < e and frame_end > s) shows closed lips: closed >= closed_min or
    open <= open_max. Every phone overlaps at least one frame, however short it is, so a tracker
    that never closes the lips scores 0 and one that always does scores 1; pair it with accuracy.
    """
    starts = np.asarray(frame_starts_s, dtype=np.float64)
    ends = np.asarray(frame_ends_s, dtype=np.float64)
    shut = (np.asarray(closed) >= closed_min) | (np.asarray(open_) <= open_max)
    hits = 0
    for s, e in closures:
        overlap = (starts < e) & (ends > s)
        if np.any(shut & overlap):
            hits += 1
    return hits, len(closures)
