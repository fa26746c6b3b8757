"""Built-in procedural avatars: presets, style files, and what the renderer draws."""

from __future__ import annotations

import dataclasses
import itertools
from functools import cache

import numpy as np
import pytest

from facecast.avatars import (
    ASPECTS,
    DEFAULT_AVATAR,
    QUALITIES,
    AvatarInfo,
    ProceduralRenderer,
    frame_size,
    list_avatars,
    load_renderer,
    load_style,
)
from facecast.avatars.presets import CHROMA_GREEN
from facecast.avatars.style import parse_style, style_names
from facecast.engine.types import FaceState, MouthParams
from facecast.engine.visemes import TARGETS, VISEME_INDEX, mouth_from_row

NAMES = ("ava", "noah", "mira", "leo")
DARK = 60.0  # the lip-sync benchmark's "mouth interior" threshold


@cache
def renderer(
    name: str, aspect: str = "1:1", quality: str = "medium", background: str = "scene"
) -> ProceduralRenderer:
    return load_renderer(name, aspect=aspect, quality=quality, background=background)


def luma(img: np.ndarray) -> np.ndarray:
    rgb = img[..., :3].astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def dark_fraction(r: ProceduralRenderer, state: FaceState) -> float:
    x0, y0, x1, y1 = r.mouth_box()
    return float((luma(r.render(state)[y0:y1, x0:x1]) < DARK).mean())


def viseme(v: str) -> MouthParams:
    return mouth_from_row(TARGETS[VISEME_INDEX[v]], v)


EXTREME_POSES = [
    {"head_yaw": yaw, "head_pitch": pitch, "head_roll": roll}
    for yaw, pitch, roll in itertools.product((-8.0, 8.0), (-6.0, 6.0), (-5.0, 5.0))
]


# ---- presets ----------------------------------------------------------------------------------------
def test_frame_size_table() -> None:
    assert [frame_size("1:1", q) for q in QUALITIES] == [(256, 256), (384, 384), (512, 512), (768, 768)]
    assert [frame_size("4:3", q) for q in QUALITIES] == [(320, 240), (480, 360), (640, 480), (960, 720)]
    assert [frame_size("3:4", q) for q in QUALITIES] == [(240, 320), (360, 480), (480, 640), (720, 960)]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"aspect": "16:9"}, ["aspect", "4:3", "3:4", "1:1"]),
        ({"quality": "ultra"}, ["quality", "low", "very_high"]),
        ({"background": "blue"}, ["background", "scene", "green", "transparent"]),
    ],
)
def test_invalid_presets_name_the_choices(kwargs: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        load_renderer("ava", **kwargs)
    for word in words:
        assert word in str(err.value)


# ---- catalogue --------------------------------------------------------------------------------------
def test_list_avatars() -> None:
    avatars = list_avatars()
    assert {a.name for a in avatars} == set(NAMES)
    assert avatars[0].name == DEFAULT_AVATAR == "ava"
    assert all(
        isinstance(a, AvatarInfo) and a.kind == "procedural" and a.display_name and a.description
        for a in avatars
    )


def test_unknown_avatar_lists_available_names() -> None:
    with pytest.raises(ValueError) as err:
        load_renderer("zed")
    assert all(n in str(err.value) for n in NAMES)
    with pytest.raises(ValueError):
        load_style("../ava")


def test_styles_are_distinct_and_valid() -> None:
    styles = [load_style(n) for n in style_names()]
    for key in ("face_shape", "hair_style", "clothes_style", "skin", "background_top"):
        assert len({getattr(s, key) for s in styles}) >= 3, key
    for s in styles:
        assert 0.299 * s.mouth_interior[0] + 0.587 * s.mouth_interior[1] + 0.114 * s.mouth_interior[2] < DARK


def test_style_validation_names_the_key() -> None:
    import tomllib
    from importlib import resources

    text = resources.files("facecast.avatars").joinpath("styles").joinpath("ava.toml").read_text("utf-8")
    data = tomllib.loads(text)
    data["mouth"]["interior"] = "#c0c0c0"
    with pytest.raises(ValueError, match="interior"):
        parse_style(data, "bad")
    data = tomllib.loads(text)
    del data["hair"]["color"]
    with pytest.raises(ValueError, match=r"hair.*color"):
        parse_style(data, "bad")
    data = tomllib.loads(text)
    data["face"]["shape"] = "triangle"
    with pytest.raises(ValueError, match="oval"):
        parse_style(data, "bad")


# ---- frames -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_size_renders(name: str) -> None:
    state = FaceState(mouth=viseme("D"), head_yaw=8, head_roll=-5, blink=0.5, smile=1, breath=1)
    for aspect, quality in itertools.product(ASPECTS, QUALITIES):
        r = load_renderer(name, aspect=aspect, quality=quality)
        frame = r.render(state)
        w, h = frame_size(aspect, quality)
        assert (r.width, r.height, r.channels) == (w, h, 3)
        assert frame.shape == (h, w, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
        x0, y0, x1, y1 = r.mouth_box()
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


@pytest.mark.parametrize("name", NAMES)
def test_transparent_background(name: str) -> None:
    r = renderer(name, background="transparent")
    frame = r.render(FaceState())
    assert r.channels == 4 and frame.shape == (r.height, r.width, 4) and frame.flags.c_contiguous
    alpha = frame[..., 3]
    (lx, ly), (rx, ry) = r.eye_centers()
    assert alpha[0, 0] == 0 and alpha[0, -1] == 0
    assert alpha[round((ly + ry) / 2), round((lx + rx) / 2)] == 255
    assert alpha[r.mouth_box()[1] : r.mouth_box()[3], r.mouth_box()[0] : r.mouth_box()[2]].min() == 255
    assert ((alpha > 0) & (alpha < 255)).any()  # anti-aliased silhouette


def test_green_and_scene_backgrounds() -> None:
    green = renderer("noah", background="green").render(FaceState())
    assert tuple(green[0, 0]) == CHROMA_GREEN
    scene = renderer("noah").render(FaceState())
    assert tuple(scene[0, 0]) != CHROMA_GREEN and scene.shape[2] == 3


def test_deterministic() -> None:
    state = FaceState(mouth=viseme("C"), head_yaw=3.3, head_pitch=-2.1, head_roll=1.7, gaze_x=0.4, blink=0.2)
    a = renderer("mira").render(state)
    b = renderer("mira").render(state)
    c = load_renderer("mira", quality="medium").render(state)
    assert np.array_equal(a, b) and np.array_equal(a, c)


# ---- mouth ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_dark_fraction_grows_with_open(name: str) -> None:
    r = renderer(name)
    fractions = [
        dark_fraction(r, FaceState(mouth=MouthParams(open=o, width=0.2, teeth=0.5, tongue=0.2)))
        for o in np.linspace(0.0, 1.0, 11)
    ]
    assert fractions[0] == 0.0
    assert fractions[8] > 0.04  # open=0.8
    assert all(b >= a for a, b in itertools.pairwise(fractions)), fractions


@pytest.mark.parametrize("name", NAMES)
def test_closed_mouth_has_no_dark_pixels_in_any_pose(name: str) -> None:
    r = renderer(name)
    for pose in EXTREME_POSES:
        for mouth in (MouthParams(open=0.8, closed=1.0), MouthParams()):
            assert dark_fraction(r, FaceState(mouth=mouth, smile=1.0, **pose)) < 0.002, pose


@pytest.mark.parametrize("name", NAMES)
def test_mouth_stays_inside_box_in_extreme_poses(name: str) -> None:
    r = renderer(name, quality="high")
    x0, y0, x1, y1 = r.mouth_box()
    for pose in EXTREME_POSES:
        shut = luma(r.render(FaceState(mouth=MouthParams(closed=1.0, width=1.0), smile=1.0, **pose))) < DARK
        wide = luma(r.render(FaceState(mouth=MouthParams(open=1.0, width=1.0), smile=1.0, **pose))) < DARK
        opened = wide & ~shut
        opened[y0:y1, x0:x1] = False
        assert not opened.any(), pose
        assert dark_fraction(r, FaceState(mouth=MouthParams(open=1.0), **pose)) > 0.04


def test_visemes_look_different() -> None:
    r = renderer("ava", quality="high")
    x0, y0, x1, y1 = r.mouth_box()
    crops = {v: r.render(FaceState(mouth=viseme(v)))[y0:y1, x0:x1].astype(int) for v in "XABCDEFGH"}
    for a, b in itertools.combinations("ABCDEFGH", 2):
        assert np.abs(crops[a] - crops[b]).mean() > 0.5, (a, b)
    assert dark_fraction(r, FaceState(mouth=viseme("A"))) == 0.0
    assert dark_fraction(r, FaceState(mouth=viseme("D"))) > dark_fraction(r, FaceState(mouth=viseme("C")))
    # B shows teeth: near-white pixels appear in the mouth box.
    teeth = np.array(r.style.teeth)
    assert (np.abs(crops["B"] - teeth).sum(axis=2) < 30).sum() > 10
    assert (np.abs(crops["X"] - teeth).sum(axis=2) < 30).sum() == 0
    # H shows the tongue.
    tongue = np.array(r.style.tongue)
    assert (np.abs(crops["H"] - tongue).sum(axis=2) < 30).sum() > (
        np.abs(crops["B"] - tongue).sum(axis=2) < 30
    ).sum()


# ---- eyes, brows, body ------------------------------------------------------------------------------
def _iris_pixels(r: ProceduralRenderer, state: FaceState, radius: float = 0.02) -> np.ndarray:
    """Pixels of the iris colour within `radius` (fraction of the frame height) of the left eye's centre."""
    frame = r.render(state).astype(int)
    (lx, ly), _ = r.eye_centers()
    ys, xs = np.mgrid[0 : r.height, 0 : r.width]
    near = (xs - lx) ** 2 + (ys - ly) ** 2 <= (radius * r.height) ** 2
    match = near & (np.abs(frame - np.array(r.style.iris)).sum(axis=2) < 12)
    yy, xx = np.nonzero(match)
    return np.stack([xx, yy], axis=1)


@pytest.mark.parametrize("name", NAMES)
def test_blink_closes_the_eyes(name: str) -> None:
    r = renderer(name, quality="high")
    assert len(_iris_pixels(r, FaceState())) > 10
    assert len(_iris_pixels(r, FaceState(blink=1.0))) == 0
    half = len(_iris_pixels(r, FaceState(blink=0.5)))
    assert 0 <= half < len(_iris_pixels(r, FaceState()))


def test_gaze_moves_the_iris() -> None:
    r = renderer("leo", quality="high")
    left = _iris_pixels(r, FaceState(gaze_x=-1.0), 0.04)[:, 0].mean()
    centre = _iris_pixels(r, FaceState(), 0.04)[:, 0].mean()
    right = _iris_pixels(r, FaceState(gaze_x=1.0), 0.04)[:, 0].mean()
    assert left + 2 < centre < right - 2
    up = _iris_pixels(r, FaceState(gaze_y=-1.0), 0.04)[:, 1].mean()
    down = _iris_pixels(r, FaceState(gaze_y=1.0), 0.04)[:, 1].mean()
    assert up < down


def test_brow_breath_and_head_pose_change_the_frame() -> None:
    r = renderer("noah")
    rest = r.render(FaceState()).astype(int)
    for change in ({"brow": 1.0}, {"breath": 1.0}, {"head_roll": 4.0}, {"head_yaw": 6.0}, {"smile": 1.0}):
        assert np.abs(r.render(FaceState(**change)).astype(int) - rest).sum() > 0, change
    # Breathing moves only the lower part of the frame (the shoulders), not the backdrop's top.
    diff = np.abs(r.render(FaceState(breath=1.0)).astype(int) - rest).sum(axis=2)
    assert diff[: r.height // 3].sum() == 0 and diff[r.height // 2 :].sum() > 0


def test_out_of_range_state_is_clamped() -> None:
    r = renderer("ava")
    wild = FaceState(
        mouth=MouthParams(open=3.0), head_yaw=90, head_pitch=-90, head_roll=45, gaze_x=5, blink=-1
    )
    tame = FaceState(mouth=MouthParams(open=1.0), head_yaw=8, head_pitch=-6, head_roll=5, gaze_x=1, blink=0)
    assert np.array_equal(r.render(wild), r.render(tame))


def test_still_px_repeats_barely_moving_idle_frames_and_draws_everything_else() -> None:
    r = load_renderer("ava", quality="medium")
    exact = load_renderer("ava", quality="medium")
    assert r.still_px == 0.0  # off unless a live host asks
    r.still_px = 0.25
    rest = FaceState(mouth=MouthParams(), head_yaw=1.0, head_pitch=0.5, head_roll=0.5)
    first = r.render(rest)
    assert not first.flags.writeable  # it may be handed out again
    # A drift far below a pixel repeats the frame (the same array, nothing drawn) ...
    drift = dataclasses.replace(rest, head_yaw=1.01, head_pitch=0.51, head_roll=0.501)
    assert r.render(drift) is first
    # ... and the repeat stays close to what drawing it would give.
    diff = first.astype(np.float64) - exact.render(drift).astype(np.float64)
    assert 10 * np.log10(255.0**2 / max(np.mean(diff**2), 1e-9)) > 40
    # Anything that moves the picture by more, a blink, the mouth, the smile or speech is drawn.
    moved = [
        dataclasses.replace(rest, head_yaw=2.0),
        dataclasses.replace(rest, blink=0.5),
        dataclasses.replace(rest, gaze_x=0.3),
        dataclasses.replace(rest, smile=0.3),
        dataclasses.replace(rest, mouth=MouthParams(open=0.2)),
        dataclasses.replace(rest, speaking=True),
    ]
    for state in moved:
        frame = r.render(state)
        assert frame is not first
        assert np.array_equal(frame, exact.render(state)), state
        r.render(rest)  # back to a drawn rest frame
    # Drift that adds up is drawn once it reaches still_px against the last frame drawn.
    yaws = np.arange(1.0, 3.0, 0.02)
    drawn = {id(r.render(dataclasses.replace(rest, head_yaw=float(y)))) for y in yaws}
    assert 1 < len(drawn) < len(yaws) // 2


def test_a_fork_draws_what_a_new_renderer_draws_and_keeps_its_own_frame_state() -> None:
    from facecast.engine import Engine, EngineConfig

    original = load_renderer("leo", quality="medium")
    original.still_px = 0.25
    fork = original.fork()
    fresh = load_renderer("leo", quality="medium")
    assert fork.still_px == 0.0 and fork.mouth_box() == fresh.mouth_box()
    engine = Engine(None, EngineConfig(fps=30, tracker="energy"))
    t = np.arange(16000) / 16000
    engine.push_audio((0.4 * np.sin(2 * np.pi * 220 * t) * (t < 0.6)).astype(np.float32), 16000)
    engine.end_segment()
    speaking = 0
    for _ in range(45):  # speech, then idle frames with head sway and blinks
        state = engine.next_frame(render=False).meta.state
        speaking += state.speaking
        # Drawn in turn, each from its own pose and queue: the fork is unaffected by the original.
        original.render(state)
        assert np.array_equal(fork.render(state), fresh.render(state))
    assert speaking > 5
    # The backdrops are shared and read-only: drawing on one renderer cannot change the other's.
    assert fork._bgs is original._bgs and not any(bg.flags.writeable for bg in fork._bgs)
