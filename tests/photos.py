"""Test photos from the scikit-image wheel (in the test extras), read straight from its data directory.

``skimage.data.astronaut()`` and friends may go through a downloader; the files themselves ship inside the
wheel, so read them directly, without importing scikit-image.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

# the astronaut's face landmarks span about x 179..271, y 71..177 of the 512x512 photo
ASTRONAUT_FACE_BOX = (179.0, 71.0, 271.0, 177.0)


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the test photos come from scikit-image: pip install scikit-image (it is in the test extras)"
        )
    return Path(spec.origin).parent / "data"


def read_rgb(name: str) -> np.ndarray:
    """An (h, w, 3) uint8 RGB photo from scikit-image's data directory."""
    path = skimage_data_dir() / name
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def astronaut_rgb() -> np.ndarray:
    """Eileen Collins in a space suit: one face, facing the camera (512x512)."""
    return read_rgb("astronaut.png")


def coffee_rgb() -> np.ndarray:
    """A cup of coffee: no face (400x600)."""
    return read_rgb("coffee.png")


def with_glasses(rgb: np.ndarray, landmarks: np.ndarray, thickness: int = 3) -> np.ndarray:
    """The photo with dark round glasses drawn on, placed by the face's landmarks (478 x 2+)."""
    from facecast.avatars import face_mesh as fm

    out = rgb.copy()
    frame = (25, 25, 30)
    centres = []
    for upper, lower in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)):
        eye = landmarks[list(upper) + list(lower), :2]
        cx, cy = eye.mean(axis=0)
        half_w = 0.85 * float(eye[:, 0].max() - eye[:, 0].min())
        cv2.ellipse(
            out, (round(cx), round(cy)), (round(half_w), round(0.75 * half_w)), 0, 0, 360, frame, thickness,
            cv2.LINE_AA,
        )  # fmt: skip
        centres.append((cx, cy, half_w))
    (rx, ry, rw), (lx, ly, lw) = centres
    cv2.line(out, (round(rx + rw), round(ry)), (round(lx - lw), round(ly)), frame, thickness, cv2.LINE_AA)
    return out


def with_beard(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The photo with a full dark beard painted over the lower face, the lips left bare."""
    from facecast.avatars import face_mesh as fm

    oval = landmarks[list(fm.FACE_OVAL), :2]
    lower = oval[oval[:, 1] > landmarks[fm.NOSE_BOTTOM, 1] + 4]
    lips = landmarks[list(fm.UPPER_OUTER) + list(fm.LOWER_OUTER), :2]
    mask = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(mask, [cv2.convexHull(np.round(lower).astype(np.int32))], 255)
    cv2.fillPoly(mask, [cv2.convexHull(np.round(lips).astype(np.int32))], 0)
    noise = np.random.default_rng(0).integers(0, 60, rgb.shape[:2])
    hair = np.stack([60 + noise // 2, 45 + noise // 3, 35 + noise // 4], axis=-1)
    alpha = cv2.GaussianBlur(mask, (5, 5), 0)[..., None] / 255.0
    return (rgb * (1 - alpha) + hair * alpha).astype(np.uint8)
