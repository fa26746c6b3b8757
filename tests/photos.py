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
