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

from facecast.engine.types import VISEMES
from facecast.engine.visemes import REST_INDEX

# m/b/p closure: a frame shows closed lips when `closed` reaches this or `open` is at most this.
CLOSED_MIN = 0.5
OPEN_MAX = 0.05
# Pixels darker than this luma (0..255) inside the mouth box count as the open mouth's interior.
DARK_LUMA = 60


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


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (no shape to agree with)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom <= 1e-12:
        return 0.0
    return float((a * b).sum() / denom)


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


def _lag_correlations(reference: np.ndarray, delayed: np.ndarray, max_lag: int) -> np.ndarray:
    """corr(reference[t], delayed[t + L]) for L in -max_lag..max_lag (Pearson on the overlap)."""
    out = np.full(2 * max_lag + 1, -np.inf)
    n = min(len(reference), len(delayed))
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        if lag >= 0:
            a, b = reference[: n - lag], delayed[lag:n]
        else:
            a, b = reference[-lag:n], delayed[: n + lag]
        if len(a) >= 3:
            out[i] = pearson(a, b)
    return out


def av_offset_ms(
    reference: np.ndarray, delayed: np.ndarray, rate_hz: float, max_lag_ms: float = 200.0
) -> float:
    """Lag in ms (within ±max_lag_ms) that best aligns two tracks sampled at the same rate.

    Positive: `delayed` happens later than `reference` (e.g. the mouth moves after the sound).
    The integer-sample peak is refined by a parabola through it and its two neighbours, which gives
    sub-frame resolution for smooth tracks.
    """
    reference = np.asarray(reference, dtype=np.float64)
    delayed = np.asarray(delayed, dtype=np.float64)
    max_lag = int(np.floor(max_lag_ms * rate_hz / 1000.0))
    max_lag = min(max_lag, min(len(reference), len(delayed)) - 3)
    if max_lag < 1:
        raise ValueError("tracks too short to measure an offset")
    corr = _lag_correlations(reference, delayed, max_lag)
    k = int(np.argmax(corr))
    shift = 0.0
    if 0 < k < len(corr) - 1 and np.all(np.isfinite(corr[k - 1 : k + 2])):
        y0, y1, y2 = corr[k - 1], corr[k], corr[k + 1]
        denom = y0 - 2 * y1 + y2
        if denom < 0:  # a true maximum; a flat top keeps the integer peak
            shift = float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5))
    return (k - max_lag + shift) * 1000.0 / rate_hz


def luma(frame: np.ndarray) -> np.ndarray:
    """Rec.601 luma of an RGB(A) frame, or the frame itself when it is already one channel."""
    if frame.ndim == 2:
        return frame.astype(np.float32)
    rgb = frame[..., :3].astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def mouth_open_from_pixels(
    frame: np.ndarray, box: tuple[int, int, int, int], dark_luma: float = DARK_LUMA
) -> float:
    """Mouth opening seen in a frame: fraction of pixels with luma < dark_luma inside box
    (x0, y0, x1, y1), end-exclusive. The open mouth's interior is the darkest thing in that box."""
    x0, y0, x1, y1 = box
    region = frame[max(0, y0) : y1, max(0, x0) : x1]
    if region.size == 0:
        raise ValueError(f"mouth box {box} is outside the {frame.shape[1]}x{frame.shape[0]} frame")
    return float(np.mean(luma(region) < dark_luma))
