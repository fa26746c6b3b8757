"""The portrait's jaw, lips and teeth, checked on the pixels: the test photo (scikit-image's astronaut) with
marks painted on it, built with the landmarks of the unpainted photo, so that where a mark lands in a frame
says how that point of the face moved."""

from __future__ import annotations

import dataclasses
import io
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from photos import astronaut_rgb

from facecast.avatars import face_mesh as fm
from facecast.avatars.bundle import asset_info, read_bundle, write_bundle
from facecast.avatars.faces import FaceAnalysis, analyze_faces
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.portrait import PortraitRenderer
from facecast.avatars.portrait_build import build_portrait
from facecast.bench.runs import varied_states
from facecast.engine.types import FaceState, MouthParams

STAMP = "2026-01-01T00:00:00+00:00"
# Marks: three colours that no skin, lip or mouth pixel comes near, taken in turn.
MARKS = ((20, 80, 250), (20, 230, 40), (240, 20, 240))
MIDLINE = (18, 199, 175)  # under the lower lip, halfway down, just above the chin
JAW_LINE = (172, 136, 150, 149, 176, 148)  # from the jaw's corner (subject's right) to beside the chin
PAINT = (20, 80, 250)  # the lips, painted


@pytest.fixture(scope="module")
def analysis() -> FaceAnalysis:
    return analyze_faces(astronaut_rgb(), where="astronaut.png")


def _renderer(photo: np.ndarray, analysis: FaceAnalysis, folder: Path, name: str) -> PortraitRenderer:
    manifest, files = build_portrait(photo, analysis, name=name, display_name=name, created_at=STAMP)
    bundle = read_bundle(write_bundle(folder / f"{name}.facecast", manifest, files))
    r = renderer_from_bundle(bundle, aspect="1:1", quality="very_high")  # 768²: finer than a pixel's error
    assert isinstance(r, PortraitRenderer)
    return r


def _marked(photo: np.ndarray, landmarks: np.ndarray, points: tuple[int, ...]) -> np.ndarray:
    out = photo.copy()
    for k, i in enumerate(points):
        centre = tuple(int(v) for v in np.round(landmarks[i, :2] * 4))
        cv2.circle(out, centre, 6, MARKS[k % len(MARKS)], -1, cv2.LINE_AA, shift=2)
    return out


def _find_marks(frame: np.ndarray, points: tuple[int, ...], near: np.ndarray) -> np.ndarray:
    """(len(points), 2) centroids of each mark's colour, searched in a window below its rest place."""
    f = frame[..., :3].astype(int)
    found = []
    for k, (x, y) in enumerate(near):
        hit = np.abs(f - np.array(MARKS[k % len(MARKS)])).sum(axis=2) < 90
        x0, y0 = int(x) - 15, int(y) - 10
        ys, xs = np.nonzero(hit[y0 : y0 + 60, x0 : x0 + 30])
        assert len(xs) > 3, f"mark at landmark {points[k]} not found"
        found.append((xs.mean() + x0, ys.mean() + y0))
    return np.array(found)


def test_the_jaw_turns_about_a_pivot_near_the_ears(analysis: FaceAnalysis, tmp_path: Path) -> None:
    """Opening the jaw swings the chin on an arc about the jaw joints: along the jaw line the drop grows
    from the jaw's corner toward the chin, and down the midline the chin (lower, and further back) drops
    less than the skin under the lip — a uniform downward shift would move them all alike."""
    lm = analysis.largest.landmarks
    points = MIDLINE + JAW_LINE
    r = _renderer(_marked(astronaut_rgb(), lm, points), analysis, tmp_path, "marks")
    rest = _find_marks(r.render(FaceState()), points, r._points[list(points)])
    for amount in (0.5, 1.0):
        moved = _find_marks(r.render(FaceState(mouth=MouthParams(open=amount))), points, rest) - rest
        drop, sideways = moved[:, 1], moved[:, 0]
        mid, jaw = drop[: len(MIDLINE)], drop[len(MIDLINE) :]
        assert mid[0] > 0.02 * r.height * amount  # the jaw opens
        assert mid[-1] < 0.85 * mid[0] and mid[1] < mid[0], mid  # the chin swings back on its arc
        # Along the jaw line, growing toward the chin from little at the jaw's corner (beside the joints);
        # beside the chin, lower down, the arc's backward swing takes a little of it back.
        assert np.all(np.diff(jaw[:-1]) > 0) and jaw[-1] > 0.9 * jaw.max(), jaw
        assert jaw[0] < 0.55 * jaw.max(), jaw
        assert np.abs(sideways).max() < 0.15 * mid[0]  # a frontal face: the jaw turns about a level axis


def _painted_lips(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    out = photo.copy()
    for outer, inner in ((fm.UPPER_OUTER, fm.UPPER_INNER), (fm.LOWER_OUTER, fm.LOWER_INNER)):
        poly = np.concatenate([landmarks[list(outer), :2], landmarks[list(inner[::-1]), :2]])
        cv2.fillPoly(out, [np.round(poly * 4).astype(np.int32)], PAINT, cv2.LINE_AA, shift=2)
    return out


def _lip_columns(r: PortraitRenderer, frame: np.ndarray) -> np.ndarray:
    """The painted lips in the middle fifth of the mouth's width: (rows, columns) bool."""
    rgb = frame[..., :3].astype(int)
    lips = (rgb[..., 2] - rgb[..., 0] > 90) & (rgb[..., 2] - rgb[..., 1] > 60)  # the paint, lit or shaded
    x0, _, x1, _ = r.mouth_box()
    centre, half = (x0 + x1) // 2, max(2, (x1 - x0) // 10)
    return lips[:, centre - half : centre + half + 1]


def _thickness(r: PortraitRenderer, frame: np.ndarray) -> float:
    """Median over the middle columns of how many rows are painted lip: both lips, the gap excluded."""
    return float(np.median(_lip_columns(r, frame).sum(axis=0)))


def test_lips_keep_their_thickness_and_press_on_m_b_p(analysis: FaceAnalysis, tmp_path: Path) -> None:
    """Closed (the photo's open smile closed at rest), the lips are as thick as in the photo, and rounded
    no thinner; pressed together on m/b/p they meet with no gap and are visibly thinner than at rest."""
    r = _renderer(_painted_lips(astronaut_rgb(), analysis.largest.landmarks), analysis, tmp_path, "lips")
    photo = _thickness(r, r._base)
    assert photo > 15  # both lips, at 768²
    rest = _thickness(r, r.render(FaceState()))
    assert abs(rest - photo) <= 0.15 * photo, (rest, photo)
    for rounded in (MouthParams(round=1.0), MouthParams(round=1.0, open=0.4)):
        assert _thickness(r, r.render(FaceState(mouth=rounded))) >= 0.9 * photo, rounded
    for pressed in (MouthParams(closed=1.0), MouthParams(open=0.7, closed=1.0, viseme="A")):
        frame = r.render(FaceState(mouth=pressed))
        assert _thickness(r, frame) <= 0.9 * rest, pressed
        x0, y0, x1, y1 = r.mouth_box()
        mouth = frame[y0:y1, x0:x1].astype(int)
        cavity = ((mouth[..., 0] - mouth[..., 1]) > 40) & (mouth @ np.array([0.299, 0.587, 0.114]) < 90)
        assert not cavity.any()  # no mouth drawn between them
        # The lips meet: in every middle column the painted rows are one run, no gap between the lips.
        columns = _lip_columns(r, frame)
        starts = (np.diff(columns.astype(int), axis=0) == 1).sum(axis=0) + columns[0]
        assert np.all(starts == 1), starts


def test_upper_teeth_are_the_photos_where_it_shows_them_and_drawn_elsewhere(
    analysis: FaceAnalysis, tmp_path: Path
) -> None:
    """Her photo shows her upper teeth in the middle of her smile: the bundle keeps them and says where
    they are; the open mouth shows them there, and drawn teeth toward the corners, under the upper lip."""
    manifest, files = build_portrait(astronaut_rgb(), analysis, name="a", display_name="a", created_at=STAMP)
    teeth = cv2.imdecode(np.frombuffer(files["teeth.png"], np.uint8), cv2.IMREAD_COLOR)
    shown = cv2.imdecode(np.frombuffer(files["teeth_mask.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert manifest.extra["teeth"] == "photo" and shown.shape == teeth.shape[:2]
    w = shown.shape[1]
    assert shown[: shown.shape[0] // 2, w // 3 : 2 * w // 3].mean() > 0.6 * 255  # the middle: teeth
    assert shown[-2:, : w // 8].mean() < 0.2 * 255  # past the gap at the corner: lip, not teeth
    bundle = read_bundle(write_bundle(tmp_path / "a.facecast", manifest, files))
    r = renderer_from_bundle(bundle, aspect="1:1", quality="very_high")
    assert isinstance(r, PortraitRenderer)
    x0, y0, x1, y1 = r.mouth_box()
    frame = r.render(FaceState(mouth=MouthParams(open=1.0, teeth=0.8)))[y0:y1, x0:x1].astype(float)
    rest = r.render(FaceState())[y0:y1, x0:x1].astype(float)
    luma = frame @ np.array([0.299, 0.587, 0.114])
    new_bright = (luma > 165) & (np.abs(frame - rest).max(axis=2) > 30)
    columns = np.flatnonzero(new_bright.any(axis=0))
    opening = np.flatnonzero((luma < 60).any(axis=0))
    # Teeth across most of the opening, not only where the photo showed them.
    assert len(columns) > 0.7 * (opening.max() - opening.min())


def test_the_mouth_layer_stays_in_the_mouth_region(
    analysis: FaceAnalysis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over varied poses and every mouth shape (jaw, spread, rounded, pressed, bitten), whatever the mouth
    layer draws — the frame with it minus the same frame without it — lies inside the mouth box."""
    r = _renderer(astronaut_rgb(), analysis, tmp_path, "astro")
    x0, y0, x1, y1 = r.mouth_box()
    shapes = itertools.cycle(
        [
            MouthParams(open=1.0, teeth=1.0, tongue=0.5),
            MouthParams(open=0.6, round=1.0),
            MouthParams(open=0.5, width=1.0, teeth=1.0),
            MouthParams(open=0.1, bite=1.0),
            MouthParams(open=0.55, tongue=1.0, teeth=0.6),
        ]
    )
    states = [
        dataclasses.replace(s, mouth=m) for s, m in zip(varied_states(20, seed=5), shapes, strict=False)
    ]
    with_layer = [r.render(s) for s in states]
    monkeypatch.setattr(r, "_draw_mouth", lambda *args: None)
    for state, drawn in zip(states, with_layer, strict=True):
        layer = np.abs(drawn.astype(int) - r.render(state)).max(axis=2) > 0
        ys, xs = np.nonzero(layer)
        assert len(ys) > 50, state
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1, state


def test_the_tongue_lies_low_on_open_vowels_and_rises_on_l(
    analysis: FaceAnalysis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wide open on an open vowel, the tongue shows only just above the lower lip (filling the lower half
    of the mouth, it was taken for the lower lip by an independent tracker); on L it rises into the upper
    half. Read in the mouth's middle columns, the tongue drawn in a marker green, the opening being what
    the mouth layer covers there."""
    from facecast.avatars import portrait

    r = _renderer(astronaut_rgb(), analysis, tmp_path, "astro")
    monkeypatch.setattr(portrait, "_TONGUE", np.array([0.0, 255.0, 0.0]))

    def tongue_top_and_opening(mouth: MouthParams) -> tuple[float, int, int]:
        """Where the tongue's top is, as a share of the opening from its bottom; the opening's rows."""
        state = FaceState(mouth=mouth)
        frame = r.render(state).astype(int)
        with monkeypatch.context() as m:
            m.setattr(r, "_draw_mouth", lambda *args: None)
            layer = np.abs(frame - r.render(state)).max(axis=2) > 0
        x0, _, x1, _ = r.mouth_box()
        middle = slice((3 * x0 + 2 * x1) // 5, (2 * x0 + 3 * x1) // 5)
        rows = np.nonzero(layer[:, middle].any(axis=1))[0]
        top, bottom = int(rows.min()), int(rows.max())
        green = (frame[..., 1] - frame[..., 0] > 60)[:, middle].any(axis=1)
        tongue_rows = np.nonzero(green)[0]
        assert len(tongue_rows) > 0, mouth  # it shows
        return (bottom - tongue_rows.min()) / (bottom - top), top, bottom

    vowel, top, bottom = tongue_top_and_opening(MouthParams(open=1.0, teeth=0.8, viseme="D"))
    assert bottom - top > 20
    assert vowel < 0.3
    lifted, _, _ = tongue_top_and_opening(MouthParams(open=0.55, tongue=1.0, teeth=0.6, viseme="H"))
    assert lifted > 0.5


def test_a_bundle_from_before_press_and_the_teeth_mask_still_renders(
    analysis: FaceAnalysis, tmp_path: Path
) -> None:
    """Bundles built by the previous version have no `press` field and no teeth_mask.png: they load and
    talk, the lips closing on m/b/p without the press, and the photo's teeth used whole."""
    manifest, files = build_portrait(astronaut_rgb(), analysis, name="a", display_name="a", created_at=STAMP)
    controls = list(manifest.extra["face_controls"])
    k = controls.index("press")

    def without_press(name: str, offset: int) -> bytes:
        arr = np.load(io.BytesIO(files[name]))
        buf = io.BytesIO()
        np.save(buf, np.delete(arr, offset + k, axis=0))
        return buf.getvalue()

    old_files = {n: d for n, d in files.items() if n != "teeth_mask.png"}
    old_files["warp/face.npy"] = without_press("warp/face.npy", 0)
    old_files["warp/moves.npy"] = without_press("warp/moves.npy", 3)
    extra = {**manifest.extra, "face_controls": [c for c in controls if c != "press"]}
    old = dataclasses.replace(
        manifest, extra=extra, assets={n: asset_info(n, d) for n, d in old_files.items()}
    )
    r = renderer_from_bundle(read_bundle(write_bundle(tmp_path / "old.facecast", old, old_files)))
    new = renderer_from_bundle(read_bundle(write_bundle(tmp_path / "new.facecast", manifest, files)))
    rest = r.render(FaceState())
    np.testing.assert_array_equal(rest, new.render(FaceState()))  # press and the mask act only when used
    pressed = FaceState(mouth=MouthParams(closed=1.0))
    assert np.abs(r.render(pressed).astype(int) - rest).max() <= 60  # closed, only the line darker
    assert not np.array_equal(new.render(pressed), r.render(pressed))  # the new bundle presses
    speaking = r.render(FaceState(mouth=MouthParams(open=0.8, teeth=1.0)))
    assert np.abs(speaking.astype(int) - rest).max(axis=2).mean() > 0.002


def test_the_docs_clip_is_a_looping_animated_webp(analysis: FaceAnalysis, tmp_path: Path) -> None:
    """`python -m facecast.avatars clip`: speech through the whole pipeline, written as an animated WebP
    that loops forever, with frames that differ (the mouth moves)."""
    from facecast.avatars.__main__ import clip

    manifest, files = build_portrait(astronaut_rgb(), analysis, name="a", display_name="a", created_at=STAMP)
    bundle = write_bundle(tmp_path / "a.facecast", manifest, files)
    out = tmp_path / "clip.webp"
    size = clip(out, str(bundle), "Bob may open the window.", size=96, fps=10)
    data = out.read_bytes()
    assert size == len(data) and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    anim = data.index(b"ANIM")
    assert int.from_bytes(data[anim + 12 : anim + 14], "little") == 0  # loop count 0: forever
    frames, pos = [], 12
    while pos + 8 <= len(data):  # RIFF chunks: fourcc, little-endian size, payload padded to even
        fourcc, length = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc == b"ANMF":
            frames.append(data[pos + 8 + 16 : pos + 8 + length])  # past the frame header
        pos += 8 + length + (length & 1)
    assert len(frames) >= 10 and len(set(frames)) > len(frames) // 2
