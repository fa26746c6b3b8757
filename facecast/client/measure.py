"""What a receiving client measures from what it got: the lag between two tracks (A/V offset) and
the mouth's opening read from a frame's pixels. Pure numpy; the benchmarks' lip-sync metrics
(facecast.bench.metrics) build on these."""

from __future__ import annotations

import numpy as np

# Pixels darker than this luma (0..255) inside the mouth box count as the open mouth's interior.
DARK_LUMA = 60


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
