"""Face analysis with the real mediapipe tools, in their own virtualenv.

The tools are installed once per machine (about 30 s, from PyPI or the configured index) into
``$FACECAST_FACE_TOOLS_DIR`` when the environment sets it, else the default cache directory, and shared by
every test run after that.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from photos import ASTRONAUT_FACE_BOX, astronaut_rgb, coffee_rgb

from facecast.avatars.faces import (
    ANALYZE_STAGE,
    N_LANDMARKS,
    Face,
    FaceAnalysis,
    NoFaceError,
    analyze_faces,
    ensure_face_tools,
    tools_dir,
)

# mediapipe's eye contours, in order around each eye (the subject's right eye is on the image's left)
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_IRIS_CENTRE, LEFT_IRIS_CENTRE = 468, 473
UPPER_INNER_LIP, RIGHT_UPPER_EYELID, LEFT_UPPER_EYELID, NOSE_TIP = 13, 159, 386, 1


@pytest.fixture(scope="session")
def face_tools() -> Path:
    """The tools' python, installed on the first run on a machine."""
    return ensure_face_tools()


@pytest.fixture(scope="module")
def astronaut(face_tools: Path) -> tuple[FaceAnalysis, list[tuple[str, float]]]:
    calls: list[tuple[str, float]] = []
    analysis = analyze_faces(
        astronaut_rgb(), where="astronaut.png", progress=lambda s, f: calls.append((s, f))
    )
    return analysis, calls


def _inside(contour: list[int], point: int, landmarks: np.ndarray) -> float:
    """Signed distance of a landmark from a closed landmark contour (positive inside)."""
    polygon = landmarks[contour, :2].astype(np.float32).reshape(-1, 1, 2)
    x, y = landmarks[point, :2]
    return cv2.pointPolygonTest(polygon, (float(x), float(y)), True)


def test_astronaut_has_one_face_where_it_is(astronaut: tuple[FaceAnalysis, list[tuple[str, float]]]) -> None:
    analysis, _ = astronaut
    assert len(analysis.faces) == 1
    face = analysis.largest
    assert face is analysis.faces[0]
    assert face.landmarks.shape == (N_LANDMARKS, 3) and face.landmarks.dtype == np.float32
    assert np.isfinite(face.landmarks).all()
    assert face.box == pytest.approx(ASTRONAUT_FACE_BOX, abs=6)
    x0, y0, x1, y1 = face.box
    assert face.area == pytest.approx((x1 - x0) * (y1 - y0))


def test_astronaut_landmarks_are_a_face(astronaut: tuple[FaceAnalysis, list[tuple[str, float]]]) -> None:
    pts = astronaut[0].largest.landmarks
    # the mouth is below both eyes, the nose between them; her right eye is on the image's left
    assert pts[UPPER_INNER_LIP, 1] > pts[RIGHT_UPPER_EYELID, 1] + 20
    assert pts[UPPER_INNER_LIP, 1] > pts[LEFT_UPPER_EYELID, 1] + 20
    assert pts[RIGHT_EYE, 0].mean() < pts[NOSE_TIP, 0] < pts[LEFT_EYE, 0].mean()
    assert pts[RIGHT_UPPER_EYELID, 1] < pts[NOSE_TIP, 1] < pts[UPPER_INNER_LIP, 1]
    # each iris centre lies inside its own eye's contour, not the other's
    assert _inside(RIGHT_EYE, RIGHT_IRIS_CENTRE, pts) > 0
    assert _inside(LEFT_EYE, LEFT_IRIS_CENTRE, pts) > 0
    assert _inside(LEFT_EYE, RIGHT_IRIS_CENTRE, pts) < 0
    assert _inside(RIGHT_EYE, LEFT_IRIS_CENTRE, pts) < 0


def test_astronaut_person_mask(astronaut: tuple[FaceAnalysis, list[tuple[str, float]]]) -> None:
    analysis, _ = astronaut
    mask = analysis.person_mask
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    x0, y0, x1, y1 = (round(v) for v in analysis.largest.box)
    face = mask[y0:y1, x0:x1].mean()
    corners = [mask[:32, :32], mask[:32, -32:], mask[-32:, :32], mask[-32:, -32:]]
    assert face > 200
    assert max(c.mean() for c in corners[:2]) < 30  # the backdrop above her shoulders
    assert face > np.mean([c.mean() for c in corners]) + 50  # the suit and helmet fill the bottom corners


def test_analysis_reports_progress(astronaut: tuple[FaceAnalysis, list[tuple[str, float]]]) -> None:
    _, calls = astronaut
    analysis_calls = [f for s, f in calls if s == ANALYZE_STAGE]
    assert analysis_calls[0] == 0.0 and analysis_calls[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for _, f in calls)


def test_no_face_in_coffee(face_tools: Path) -> None:
    with pytest.raises(NoFaceError, match=r"no face found in coffee\.png: .*facing the camera"):
        analyze_faces(coffee_rgb(), where="coffee.png")


def _paste(canvas: np.ndarray, image: np.ndarray, scale: float, x: int, y: int) -> tuple[int, int]:
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
    canvas[y : y + scaled.shape[0], x : x + scaled.shape[1]] = scaled
    return x, y


def test_two_faces_largest_first(face_tools: Path) -> None:
    head_x, head_y = 140, 20  # the astronaut's head, with hair and neck
    head = astronaut_rgb()[head_y:230, head_x:310]
    canvas = np.full((240, 320, 3), 128, np.uint8)  # not square, on purpose
    big_x, big_y = _paste(canvas, head, 1.0, 10, 10)
    _paste(canvas, head, 0.5, 320 - 85 - 10, 240 - 105 - 10)

    analysis = analyze_faces(canvas, where="two heads")
    assert len(analysis.faces) == 2
    big, small = analysis.faces
    assert big.area > 3 * small.area
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    dx, dy = big_x - head_x, big_y - head_y
    assert big.box == pytest.approx((x0 + dx, y0 + dy, x1 + dx, y1 + dy), abs=6)
    sx0, sy0, sx1, sy1 = small.box
    assert sx0 > 200 and sy0 > 100 and sx1 < 320 and sy1 < 240  # the small paste, bottom right
    assert (sx1 - sx0) == pytest.approx((x1 - x0) / 2, rel=0.2)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
    ],
    ids=["float32", "grey", "rgba", "empty"],
)
def test_rejects_images_that_are_not_rgb_uint8(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(h, w, 3\) uint8"):
        analyze_faces(image)


def test_rejects_max_faces_below_one() -> None:
    with pytest.raises(ValueError, match="max_faces"):
        analyze_faces(np.zeros((64, 64, 3), np.uint8), max_faces=0)


def test_ensure_face_tools_is_idempotent(face_tools: Path) -> None:
    venv = tools_dir()
    assert face_tools == venv / "bin" / "python" and face_tools.exists()
    marker = venv / ".ready"
    before = (venv.stat().st_ino, marker.stat().st_mtime_ns, face_tools.lstat().st_mtime_ns)
    calls: list[tuple[str, float]] = []
    assert ensure_face_tools(lambda s, f: calls.append((s, f))) == face_tools
    assert ensure_face_tools() == face_tools
    assert (venv.stat().st_ino, marker.stat().st_mtime_ns, face_tools.lstat().st_mtime_ns) == before
    assert calls == []  # nothing to install, nothing to report
    assert not list(venv.parent.glob(f".{venv.name}.tmp-*"))  # no half-built venv left beside it


def test_tools_dir_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACECAST_FACE_TOOLS_DIR", str(tmp_path / "tools"))
    assert tools_dir() == tmp_path / "tools"
    monkeypatch.delenv("FACECAST_FACE_TOOLS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = tools_dir()
    assert found.parent == tmp_path / "cache" / "facecast" / "face-tools"
    assert found.name.startswith("mediapipe-0.10.21-py3.")
    assert int(found.name.rsplit(".", 1)[1]) in (9, 10, 11, 12)


def test_face_and_analysis_values() -> None:
    pts = np.zeros((N_LANDMARKS, 3), np.float32)
    pts[:, 0] = np.linspace(10, 50, N_LANDMARKS)
    pts[:, 1] = np.linspace(20, 100, N_LANDMARKS)
    face = Face(pts)
    assert face.box == (10.0, 20.0, 50.0, 100.0)
    assert face.area == 40.0 * 80.0
    assert not face.landmarks.flags.writeable
    with pytest.raises(ValueError, match="478"):
        Face(np.zeros((468, 3), np.float32))
    with pytest.raises(NoFaceError, match="no face found"):
        _ = FaceAnalysis(faces=(), person_mask=np.zeros((4, 4), np.uint8)).largest
