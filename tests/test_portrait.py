"""Portrait avatars built from the test photo (scikit-image's astronaut): the bundle, and what the renderer
draws — checked on the pixels."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from photos import astronaut_rgb, coffee_rgb, with_beard, with_glasses

from facecast.avatars import AvatarLibrary, load_renderer
from facecast.avatars import face_mesh as fm
from facecast.avatars.build import build_avatar
from facecast.avatars.bundle import Bundle, BundleError, read_bundle, write_bundle
from facecast.avatars.faces import FaceAnalysis, NoFaceError, analyze_faces
from facecast.avatars.kinds import open_bundle, renderer_from_bundle
from facecast.avatars.portrait import PortraitRenderer
from facecast.avatars.portrait_build import build_portrait
from facecast.bench.metrics import mouth_open_from_pixels
from facecast.engine.types import FaceState, MouthParams

STAMP = "2026-01-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def analysis() -> FaceAnalysis:
    return analyze_faces(astronaut_rgb(), where="astronaut.png")


@pytest.fixture(scope="module")
def bundle_path(analysis: FaceAnalysis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest, files = build_portrait(
        astronaut_rgb(), analysis, name="astro", display_name="Astronaut", created_at=STAMP
    )
    return write_bundle(tmp_path_factory.mktemp("portrait") / "astro.facecast", manifest, files)


@pytest.fixture(scope="module")
def renderer(bundle_path: Path) -> PortraitRenderer:
    r = renderer_from_bundle(read_bundle(bundle_path), aspect="1:1", quality="high")
    assert isinstance(r, PortraitRenderer)
    return r


def test_build_from_the_test_photo(bundle_path: Path) -> None:
    bundle = read_bundle(bundle_path)
    m = bundle.manifest
    assert (m.kind, m.name, m.display_name) == ("portrait", "astro", "Astronaut")
    assert (m.frame.width, m.frame.height) == (512, 512)  # a small face is framed at the minimum size
    assert {"photo.png", "mask.png", "landmarks.npy", "warp/head.npy", "warp/face.npy"} <= set(m.assets)
    assert m.extra["teeth"] == "photo"  # she smiles with her teeth showing
    photo = bundle.image("photo.png")
    mask = bundle.image("mask.png", gray=True)
    # The face sits in the upper middle of the frame, and the person mask covers it but not the corners.
    lm = bundle.array("landmarks.npy", (478, 3))
    assert 0.4 * 512 < lm[:, 0].mean() < 0.6 * 512 and 0.3 * 512 < lm[:, 1].mean() < 0.5 * 512
    assert mask[int(lm[1, 1]), int(lm[1, 0])] > 200 and mask[5, 5] < 60
    assert photo.shape == (512, 512, 3)


def test_the_same_photo_builds_the_same_bundle(
    analysis: FaceAnalysis, bundle_path: Path, tmp_path: Path
) -> None:
    again = build_portrait(
        astronaut_rgb(), analysis, name="astro", display_name="Astronaut", created_at=STAMP
    )
    assert write_bundle(tmp_path / "again.facecast", *again).read_bytes() == bundle_path.read_bytes()


def test_render_is_deterministic(bundle_path: Path, renderer: PortraitRenderer) -> None:
    state = FaceState(mouth=MouthParams(open=0.6, width=0.3, teeth=0.5), head_yaw=3.0, blink=0.4, smile=0.3)
    first = renderer.render(state)
    assert first.shape == (512, 512, 3) and first.dtype == np.uint8 and first.flags.c_contiguous
    np.testing.assert_array_equal(renderer.render(state), first)
    other = renderer_from_bundle(read_bundle(bundle_path), aspect="1:1", quality="high")
    np.testing.assert_array_equal(other.render(state), first)


@pytest.mark.parametrize(
    ("aspect", "quality", "background", "shape"),
    [
        ("1:1", "low", "scene", (256, 256, 3)),
        ("4:3", "high", "green", (480, 640, 3)),
        ("3:4", "medium", "transparent", (480, 360, 4)),
        ("1:1", "very_high", "scene", (768, 768, 3)),
    ],
)
def test_presets(
    bundle_path: Path, aspect: str, quality: str, background: str, shape: tuple[int, ...]
) -> None:
    r = renderer_from_bundle(read_bundle(bundle_path), aspect=aspect, quality=quality, background=background)
    frame = r.render(FaceState(mouth=MouthParams(open=0.5), head_roll=2.0))
    assert frame.shape == shape
    if background == "transparent":
        assert frame[2, 2, 3] < 60 and frame[shape[0] // 3, shape[1] // 2, 3] > 200  # background / face
    if background == "green":
        assert tuple(frame[2, 2]) == pytest.approx((0, 177, 64), abs=30)


def test_mouth_region_follows_the_jaw(renderer: PortraitRenderer) -> None:
    """The mouth's dark interior grows with the jaw, and only the mouth region and chin change."""
    x0, y0, x1, y1 = renderer.mouth_box()
    frames = [renderer.render(FaceState(mouth=MouthParams(open=v))) for v in (0.0, 0.3, 0.6, 1.0)]
    opening = [mouth_open_from_pixels(f, (x0, y0, x1, y1)) for f in frames]
    assert opening[0] < 0.03  # the photo's open smile is closed at rest: only the lip line is dark
    assert opening[0] < opening[1] < opening[2] < opening[3]
    assert opening[3] > opening[0] + 0.025  # (the box also holds the lips at full spread and any pose)
    rest, wide = frames[0].astype(int), frames[3].astype(int)
    changed = np.abs(wide - rest).max(axis=2) > 12
    assert changed[y0:y1, x0:x1].mean() > 0.15
    # The eyes and the forehead do not move with the jaw; the neck below the anchor does not stretch.
    (_, ly), (_, ry) = renderer.eye_centers()
    top = int(min(ly, ry)) - 5
    assert not changed[:top].any()
    assert not changed[min(renderer.height - 1, y1 + (y1 - y0) * 2) :].any()


def test_closed_lips_close_the_photos_smile(renderer: PortraitRenderer) -> None:
    box = renderer.mouth_box()
    closed = renderer.render(FaceState(mouth=MouthParams(open=0.7, closed=1.0)))
    assert mouth_open_from_pixels(closed, box) < 0.03


def test_blink_keeps_the_iris_intact(renderer: PortraitRenderer) -> None:
    open_eyes = renderer.render(FaceState())
    half = renderer.render(FaceState(blink=0.5))
    shut = renderer.render(FaceState(blink=1.0))
    for (x0, y0, x1, y1), (cx, cy) in zip(renderer.eye_boxes(), renderer.eye_centers(), strict=True):
        eye_h, eye_w = y1 - y0, x1 - x0
        # Half-closed, the lid edge crosses the middle of the eye: every pixel below it is untouched — the
        # iris is covered from the top, never smeared. (Central columns: toward the corners the lid is lower.)
        below = slice(round(y0 + 0.6 * eye_h), y1)
        centre = slice(round(x0 + 0.3 * eye_w), round(x1 - 0.3 * eye_w))
        np.testing.assert_array_equal(half[below, centre], open_eyes[below, centre])
        assert (
            np.abs(
                half[y0 : round(y0 + 0.3 * eye_h), x0:x1].astype(int)
                - open_eyes[y0 : round(y0 + 0.3 * eye_h), x0:x1]
            ).max()
            > 20
        )
        # Shut: the dark iris is gone from the eye's centre.
        iris = open_eyes[round(cy) - 1 : round(cy) + 2, round(cx) - 1 : round(cx) + 2].mean()
        lid = shut[round(cy) - 1 : round(cy) + 2, round(cx) - 1 : round(cx) + 2].mean()
        assert lid > iris + 30


def test_head_motion_moves_the_face_not_the_frame_edges(renderer: PortraitRenderer) -> None:
    rest = renderer.render(FaceState())
    turned = renderer.render(FaceState(head_yaw=8.0, head_roll=5.0))
    diff = np.abs(turned.astype(int) - rest).max(axis=2) > 12
    (_, ly), _ = renderer.eye_centers()
    assert diff[int(ly) - 10 : int(ly) + 10].any()
    assert not diff[-10:].any() and not diff[:, :5].any() and not diff[:, -5:].any()


def test_build_avatar_refuses_a_photo_without_a_face(tmp_path: Path) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(coffee_rgb(), cv2.COLOR_RGB2BGR))
    assert ok
    with pytest.raises(NoFaceError, match=r"no face found"):
        build_avatar(png.tobytes(), name="cup", library=AvatarLibrary(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_several_faces_use_the_largest(tmp_path: Path) -> None:
    photo = astronaut_rgb()
    face = photo[40:220, 140:310]
    canvas = np.full((420, 620, 3), 200, np.uint8)
    canvas[20:200, 20:190] = cv2.resize(face, (170, 180))  # the smaller copy
    big = cv2.resize(face, (255, 270), interpolation=cv2.INTER_CUBIC)
    canvas[120:390, 340:595] = big
    ok, png = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    assert ok
    stages: list[tuple[str, float]] = []
    manifest = build_avatar(
        png.tobytes(),
        name="two",
        library=AvatarLibrary(tmp_path),
        progress=lambda s, f: stages.append((s, f)),
    )
    assert manifest.kind == "portrait"
    # The larger copy is 1.5x: its face height (in the source) decides the framing, so the canonical
    # face height is the same whichever copy is used — the landmarks' source positions tell them apart.
    analysis = analyze_faces(canvas)
    assert len(analysis.faces) == 2
    bx0, _, bx1, _ = analysis.largest.box
    assert bx0 > 340 and bx1 < 595
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert load_renderer("two", library=AvatarLibrary(tmp_path)).render(FaceState()).shape == (512, 512, 3)


# -- malformed portrait bundles ---------------------------------------------------------------------------


def _rewrite(
    src: Path, dst: Path, *, extra: dict | None = None, drop: str | None = None, swap: dict | None = None
) -> Path:
    bundle = read_bundle(src)
    files = dict(bundle.files)
    if drop:
        files.pop(drop)
    files.update(swap or {})
    from facecast.avatars.bundle import asset_info

    manifest = dataclasses.replace(
        bundle.manifest,
        extra={**bundle.manifest.extra, **(extra or {})},
        assets={n: asset_info(n, d) for n, d in files.items()},
    )
    return write_bundle(dst, manifest, files)


def test_malformed_portraits_are_refused_at_load(bundle_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"not a valid portrait"):
        open_bundle(_rewrite(bundle_path, tmp_path / "a.facecast", extra={"crops": {"1:1": "wide"}}))
    with pytest.raises(BundleError, match=r"no asset 'warp/face.npy'"):
        open_bundle(_rewrite(bundle_path, tmp_path / "b.facecast", drop="warp/face.npy"))
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 4, 4, 2), np.float16))
    with pytest.raises(BundleError, match=r"warp/head.npy has shape"):
        open_bundle(_rewrite(bundle_path, tmp_path / "c.facecast", swap={"warp/head.npy": buf.getvalue()}))
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match=r"not a valid .npy"):
        open_bundle(_rewrite(bundle_path, tmp_path / "d.facecast", swap={"landmarks.npy": buf.getvalue()}))
    # A bundle from a newer Facecast says so.
    with zipfile.ZipFile(bundle_path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["format_version"] == 1


def test_bundle_object_reads_images_and_arrays(bundle_path: Path) -> None:
    bundle = read_bundle(bundle_path)
    assert isinstance(bundle, Bundle)
    assert bundle.image("mask.png", gray=True).ndim == 2
    with pytest.raises(BundleError, match=r"has dtype"):
        bundle.array("landmarks.npy", (478, 3), ("<f2",))


def test_a_tilted_photo_still_talks(tmp_path: Path) -> None:
    """A mildly non-frontal pose (head tilted 12°, photo squeezed sideways as by a slight turn) builds
    levelled, and its mouth opens."""
    photo = astronaut_rgb()
    rotation = cv2.getRotationMatrix2D((225.0, 125.0), 12.0, 1.0)
    tilted = cv2.warpAffine(photo, rotation, (512, 512), borderMode=cv2.BORDER_REFLECT)
    tilted = cv2.resize(cv2.resize(tilted, (440, 512)), (512, 512))[:, 20:492]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(tilted), cv2.COLOR_RGB2BGR))
    assert ok
    library = AvatarLibrary(tmp_path)
    manifest = build_avatar(png.tobytes(), name="tilted", library=library)
    ax, ay = manifest.extra["mouth_axis"]
    assert abs(np.degrees(np.arctan2(ay, ax))) < 3  # the build turns the tilted face upright
    r = load_renderer("tilted", library=library)
    x0, y0, x1, y1 = r.mouth_box()  # type: ignore[attr-defined]
    rest = r.render(FaceState())[y0:y1, x0:x1].astype(int)
    speaking = r.render(FaceState(mouth=MouthParams(open=0.9)))[y0:y1, x0:x1].astype(int)
    # The open mouth (cavity, tongue, teeth) replaces the lips and skin over a good part of the mouth box.
    assert (np.abs(speaking - rest).max(axis=2) > 40).mean() > 0.08


def _luma(frame: np.ndarray) -> np.ndarray:
    return frame[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])


def _portrait(photo: np.ndarray, name: str, folder: Path) -> tuple[dict, PortraitRenderer]:
    """Build `photo` into a bundle in `folder`; its manifest's extra and a 512² renderer of it."""
    manifest, files = build_portrait(photo, analyze_faces(photo, where=name), name=name, display_name=name)
    bundle = read_bundle(write_bundle(folder / f"{name}.facecast", manifest, files))
    r = renderer_from_bundle(bundle, aspect="1:1", quality="high")
    assert isinstance(r, PortraitRenderer)
    return bundle.manifest.extra, r


def test_glasses_stay_on_the_face(analysis: FaceAnalysis, bundle_path: Path, tmp_path: Path) -> None:
    """Drawn glasses are found at build time; blinking, talking and raising the brows leave the frame
    where it is (the lids close behind it, the brows move little)."""
    assert read_bundle(bundle_path).manifest.extra["glasses"] is False
    extra, r = _portrait(with_glasses(astronaut_rgb(), analysis.largest.landmarks), "glasses", tmp_path)
    assert extra["glasses"] is True
    rest = _luma(r.render(FaceState()))
    around_eyes = np.zeros(rest.shape, bool)
    for x0, y0, x1, y1 in r.eye_boxes():
        around_eyes[max(0, y0 - 40) : y1 + 40, max(0, x0 - 40) : x1 + 40] = True
    frame = (rest < 50) & around_eyes
    assert frame.sum() > 1000
    for state, moved in (
        (FaceState(blink=1.0), 0.05),
        (FaceState(mouth=MouthParams(open=1.0)), 0.0),
        (FaceState(brow=0.8), 0.1),
    ):
        changed = np.abs(_luma(r.render(state)) - rest) > 30
        assert changed[frame].mean() <= moved, state
    # Shut, the lids cover the eyes inside the frame.
    shut = _luma(r.render(FaceState(blink=1.0)))
    for cx, cy in r.eye_centers():
        assert shut[round(cy), round(cx)] > rest[round(cy), round(cx)] + 30


def test_a_bearded_face_talks_and_its_neck_stays(analysis: FaceAnalysis, tmp_path: Path) -> None:
    extra, r = _portrait(with_beard(astronaut_rgb(), analysis.largest.landmarks), "beard", tmp_path)
    assert extra["glasses"] is False
    x0, y0, x1, y1 = r.mouth_box()
    frames = [r.render(FaceState(mouth=MouthParams(open=v))) for v in (0.0, 0.3, 0.6, 0.9)]
    # The beard is as dark as an open mouth, so the opening is read by colour: the cavity's dark red, or
    # its near-black back (darker than any beard pixel, luma 48 and up).
    mouth = [f[y0:y1, x0:x1].astype(int) for f in frames]
    cavity = [((((m[..., 0] - m[..., 1]) > 40) & (_luma(m) < 90)) | (_luma(m) < 40)).mean() for m in mouth]
    assert cavity[0] < cavity[1] < cavity[2] < cavity[3] and cavity[3] > cavity[0] + 0.03
    rest, talking = frames[0], frames[3]
    changed = np.abs(talking.astype(int) - rest).max(axis=2) > 12
    assert changed[y1:].any()  # the beard goes down with the jaw
    assert not changed[min(r.height - 1, y1 + (y1 - y0) * 2) :].any()  # the neck does not stretch


def test_drawn_teeth_when_the_photo_shows_none(bundle_path: Path, tmp_path: Path) -> None:
    """Without the photo's teeth (a closed-mouth photo), an open mouth shows drawn teeth: a light band
    under the upper lip, inside the dark interior."""
    plain = read_bundle(
        _rewrite(bundle_path, tmp_path / "plain.facecast", drop="teeth.png", extra={"teeth": "drawn"})
    )
    r = renderer_from_bundle(plain)
    assert isinstance(r, PortraitRenderer)
    x0, y0, x1, y1 = r.mouth_box()
    weights = np.array([0.299, 0.587, 0.114])
    rest = r.render(FaceState())[y0:y1, x0:x1].astype(float) @ weights
    luma = r.render(FaceState(mouth=MouthParams(open=0.9, teeth=0.8)))[y0:y1, x0:x1].astype(float) @ weights
    teeth = (luma > 200) & (rest < 190)  # new bright pixels: not the skin's highlights
    assert (luma < 60).mean() > 0.02 and teeth.sum() > 20  # the tongue and lower teeth fill the rest


def test_drawn_teeth_are_in_the_photos_light(bundle_path: Path, tmp_path: Path) -> None:
    """A dim closed-mouth photo gets drawn teeth in its own light: brighter than its skin, as teeth are,
    but not the plain ivory that glares out of a dark face."""
    photo = read_bundle(bundle_path).image("photo.png")
    dim = (photo.astype(np.float32) * 0.55).round().astype(np.uint8)
    ok, png = cv2.imencode(".png", cv2.cvtColor(dim, cv2.COLOR_RGB2BGR))
    assert ok
    swapped = _rewrite(
        bundle_path,
        tmp_path / "dim.facecast",
        drop="teeth.png",
        extra={"teeth": "drawn"},
        swap={"photo.png": png.tobytes()},
    )
    r = renderer_from_bundle(read_bundle(swapped))
    assert isinstance(r, PortraitRenderer)
    weights = np.array([0.299, 0.587, 0.114])
    rest = r.render(FaceState()).astype(float)
    oval = np.zeros(rest.shape[:2], np.uint8)
    cv2.fillPoly(oval, [np.round(r._points[list(fm.FACE_OVAL)]).astype(np.int32)], 255)
    skin = float(np.median(rest[oval > 0] @ weights))
    x0, y0, x1, y1 = r.mouth_box()
    frame = r.render(FaceState(mouth=MouthParams(open=0.9, teeth=1.0))).astype(float)
    drawn = np.abs(frame - rest).max(axis=2)[y0:y1, x0:x1] > 30
    brightest = np.percentile((frame[y0:y1, x0:x1] @ weights)[drawn], 99)
    assert skin < brightest < 1.3 * skin, (brightest, skin)
