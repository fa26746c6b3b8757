"""The portrait's eyelids, checked on the pixels: the skin above each eye of the test photo (scikit-image's
astronaut) is painted with vertical stripes, the bundle built with the landmarks of the unpainted photo, so
that what a closed lid shows says where its pixels came from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from photos import astronaut_rgb

from facecast.avatars import face_mesh as fm
from facecast.avatars.bundle import read_bundle, write_bundle
from facecast.avatars.faces import FaceAnalysis, analyze_faces
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.portrait import PortraitRenderer
from facecast.avatars.portrait_build import build_portrait
from facecast.engine.types import FaceState

STAMP = "2026-01-01T00:00:00+00:00"
STRIPES = ((30, 90, 250), (30, 230, 60))  # blue and green: no skin, lash or eye pixel comes near either
STRIPE_W = 4  # photo pixels per stripe


@pytest.fixture(scope="module")
def analysis() -> FaceAnalysis:
    return analyze_faces(astronaut_rgb(), where="astronaut.png")


def _striped_lids(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The photo with the upper-lid skin of both eyes (from the lid line up to one eye height above it,
    where the renderer's lid is taken from) painted in vertical stripes."""
    out = photo.copy()
    for upper, lower in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)):
        lid, under = landmarks[list(upper), :2], landmarks[list(lower), :2]
        height = float(np.max(under[:, 1] - lid[:, 1]))
        region = np.zeros(photo.shape[:2], np.uint8)
        poly = np.concatenate([lid, (lid - [0.0, 0.9 * height])[::-1]])
        cv2.fillPoly(region, [np.round(poly).astype(np.int32)], 255)
        columns = (np.arange(photo.shape[1]) // STRIPE_W) % 2
        paint = np.array(STRIPES, np.uint8)[columns][None, :, :].repeat(photo.shape[0], axis=0)
        out[region > 0] = paint[region > 0]
    return out


def _stripe_index(rgb: np.ndarray) -> np.ndarray:
    """0 or 1 where a pixel is one of the stripes (lit or in the crease's shadow), 2 on the blend between
    two stripes, -1 where it is not paint."""
    px = rgb[..., :3].astype(int)
    painted = px[..., 1:].max(axis=2) - px[..., 0] > 80
    kind = np.where(px[..., 2] - px[..., 1] > 30, 0, np.where(px[..., 1] - px[..., 2] > 30, 1, 2))
    return np.where(painted, kind, -1)


def test_a_closed_lid_is_the_photos_own_lid_skin_drawn_down(analysis: FaceAnalysis, tmp_path: Path) -> None:
    """Shut, the lid over the iris is made of the photo's upper-lid skin, column for column (each column's
    stripe above the eye is the one that comes down over it): not a flat fill, not the eye smeared."""
    photo = _striped_lids(astronaut_rgb(), analysis.largest.landmarks)
    manifest, files = build_portrait(photo, analysis, name="lids", display_name="lids", created_at=STAMP)
    r = renderer_from_bundle(read_bundle(write_bundle(tmp_path / "lids.facecast", manifest, files)))
    assert isinstance(r, PortraitRenderer)
    open_eyes, shut = r.render(FaceState()), r.render(FaceState(blink=1.0))
    for (x0, y0, x1, _), (_, cy) in zip(r.eye_boxes(), r.eye_centers(), strict=True):
        eye_w = x1 - x0
        columns = slice(round(x0 + 0.3 * eye_w), round(x1 - 0.3 * eye_w))
        # Over the iris: between the rest lid line and the middle of the eye.
        over_iris = slice(round(cy) - 1, round(cy) + 2)
        assert (_stripe_index(open_eyes[over_iris, columns]) == -1).all()  # open, the eye shows there
        closed = _stripe_index(shut[over_iris, columns])
        assert (closed >= 0).mean() > 0.9, closed  # shut, the lid skin covers it
        # Column for column, the stripe that covers the iris is the stripe of the lid above it.
        above = _stripe_index(open_eyes[round(y0) - 4 : round(y0) - 1, columns])
        agree = [
            np.bincount(c[(c == 0) | (c == 1)], minlength=2).argmax()
            == np.bincount(a[(a == 0) | (a == 1)], minlength=2).argmax()
            for c, a in zip(closed.T, above.T, strict=True)
            if ((c == 0) | (c == 1)).any() and ((a == 0) | (a == 1)).any()
        ]
        assert len(agree) > 0.8 * closed.shape[1] and np.mean(agree) > 0.8, agree
        # Both stripes show: the lid keeps its texture.
        assert {0, 1} <= set(np.unique(closed).tolist())
        # The crease: the lid skin under the brow is darker shut than open.
        crease = slice(round(y0) - 6, round(y0) - 1)
        luma = np.array([0.299, 0.587, 0.114])
        assert (shut[crease, columns, :3] @ luma).mean() < (open_eyes[crease, columns, :3] @ luma).mean() - 2
