"""Phones → visemes → mouth-parameter targets, and the coarticulation that turns targets into motion.

The same tables serve the live tracker and the lip-sync benchmark's ground truth, so that a measured
difference is a tracking difference, never a mapping difference.
"""

from __future__ import annotations

import numpy as np

from facecast.engine.types import VISEMES, MouthParams

# Analysis frames: PocketSphinx and the mouth track both run at 100 frames/s.
TRACK_HZ = 100

# ARPAbet (CMUdict / PocketSphinx upper case, flite lower case) → mouth class.
_PHONE_CLASSES: dict[str, str] = {
    # A: lips closed
    "M": "A",
    "B": "A",
    "P": "A",
    # B: most consonants and EE (teeth nearly together)
    "IY": "B",
    "IH": "B",
    "Y": "B",
    "K": "B",
    "G": "B",
    "NG": "B",
    "N": "B",
    "S": "B",
    "Z": "B",
    "SH": "B",
    "ZH": "B",
    "CH": "B",
    "JH": "B",
    "T": "B",
    "D": "B",
    "TH": "B",
    "DH": "B",
    "HH": "B",
    "DX": "B",
    # C: open mid vowels
    "EH": "C",
    "AE": "C",
    "AH": "C",
    "AX": "C",
    "EY": "C",
    # D: wide open
    "AA": "D",
    "AY": "D",
    "AW": "D",
    # E: slightly rounded
    "AO": "E",
    "ER": "E",
    "R": "E",
    "OY": "E",
    "AXR": "E",
    # F: puckered
    "UW": "F",
    "UH": "F",
    "OW": "F",
    "W": "F",
    # G: F/V
    "F": "G",
    "V": "G",
    # H: L
    "L": "H",
    "EL": "H",
}
_SILENCE = {"SIL", "PAU", "H#", "<SIL>", "</S>", "<S>", "SP"}

VISEME_INDEX: dict[str, int] = {v: i for i, v in enumerate(VISEMES)}
REST_INDEX = VISEME_INDEX["X"]
CLOSED_INDEX = VISEME_INDEX["A"]

# Mouth parameter targets per class, columns = PARAM_NAMES.
PARAM_NAMES: tuple[str, ...] = ("open", "width", "round", "closed", "teeth", "tongue", "bite")
_TARGETS: dict[str, tuple[float, ...]] = {
    #     open  width round closed teeth tongue bite
    "X": (0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),
    "A": (0.00, 0.05, 0.00, 1.00, 0.00, 0.00, 0.00),
    "B": (0.14, 0.40, 0.00, 0.00, 0.85, 0.00, 0.00),
    "C": (0.45, 0.30, 0.00, 0.00, 0.55, 0.10, 0.00),
    "D": (0.85, 0.20, 0.00, 0.00, 0.45, 0.25, 0.00),
    "E": (0.40, 0.00, 0.45, 0.00, 0.25, 0.05, 0.00),
    "F": (0.18, 0.00, 1.00, 0.00, 0.05, 0.00, 0.00),
    "G": (0.08, 0.20, 0.00, 0.00, 0.90, 0.00, 1.00),
    "H": (0.40, 0.15, 0.00, 0.00, 0.55, 1.00, 0.00),
}
TARGETS: np.ndarray = np.array([_TARGETS[v] for v in VISEMES], dtype=np.float32)
OPEN_COLUMN = 0
CLOSED_COLUMN = 3

# Coarticulation: a Gaussian blend of neighbouring targets (sigma in track frames, ~35 ms wide)
# and lips forced shut at the centre of every m/b/p, which is what viewers notice most.
COARTICULATION_SIGMA_FRAMES = 2.0
CLOSURE_HOLD_FRAMES = 2  # frames either side of an m/b/p centre held fully closed


def phone_to_viseme(phone: str) -> str:
    """Mouth class of an ARPAbet phone; unknown phones and noise map to B, silence to X."""
    p = phone.upper().rstrip("012")
    if p in _SILENCE or p.startswith("+") or p.startswith("<"):
        return "X"
    return _PHONE_CLASSES.get(p, "B")


def gaussian_kernel(sigma_frames: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma_frames)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma_frames) ** 2)
    return (k / k.sum()).astype(np.float32)


_KERNEL = gaussian_kernel(COARTICULATION_SIGMA_FRAMES)
COARTICULATION_RADIUS = len(_KERNEL) // 2


def coarticulate(codes: np.ndarray) -> np.ndarray:
    """Viseme indices per track frame (N,) → smoothed mouth parameters (N, len(PARAM_NAMES)).

    Edges are padded with rest, so a segment starts and ends with the mouth closed."""
    n = len(codes)
    if n == 0:
        return np.zeros((0, len(PARAM_NAMES)), dtype=np.float32)
    r = COARTICULATION_RADIUS
    padded = np.concatenate([np.full(r, REST_INDEX), codes, np.full(r, REST_INDEX)])
    targets = TARGETS[padded]
    out = np.empty((n, targets.shape[1]), dtype=np.float32)
    for c in range(targets.shape[1]):
        out[:, c] = np.convolve(targets[:, c], _KERNEL, mode="valid")
    _force_closures(codes, out)
    return out


def _force_closures(codes: np.ndarray, params: np.ndarray) -> None:
    closed = codes == CLOSED_INDEX
    if not closed.any():
        return
    # Runs of m/b/p are held fully shut; short ones at least CLOSURE_HOLD_FRAMES either side of their
    # centre, so every closure is seen at 25 fps too.
    edges = np.diff(np.concatenate([[0], closed.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    for s, e in zip(starts, ends, strict=True):
        centre = (s + e - 1) // 2
        lo = max(0, min(s, centre - CLOSURE_HOLD_FRAMES))
        hi = min(len(codes), max(e, centre + CLOSURE_HOLD_FRAMES + 1))
        params[lo:hi, :] = TARGETS[CLOSED_INDEX]


def mouth_from_row(row: np.ndarray, viseme: str) -> MouthParams:
    v = np.clip(row, 0.0, 1.0)
    return MouthParams(
        open=float(v[0]),
        width=float(v[1]),
        round=float(v[2]),
        closed=float(v[3]),
        teeth=float(v[4]),
        tongue=float(v[5]),
        bite=float(v[6]),
        viseme=viseme,  # type: ignore[arg-type]
    )


def viseme_from_params(row: np.ndarray) -> str:
    """Nearest mouth class to a parameter vector (used where no phone decided the class)."""
    d = np.abs(TARGETS - row[None, :]).sum(axis=1)
    return VISEMES[int(np.argmin(d))]
