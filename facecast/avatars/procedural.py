"""The built-in procedural 2D characters: a style file → an OpenCV-drawn, anti-aliased portrait.

Layout: every shape is described once in head-local units (U = face height; origin at the face centre,
y down) and placed per frame by one 2×2 matrix (head roll around the neck) plus a per-depth offset
(yaw/pitch parallax: the nose moves more than the eyes, the eyes more than the outline, the ears the
other way). The backdrop is drawn once; per frame only the character is filled, with sub-pixel
`cv2.fillPoly(..., LINE_AA, shift)` calls, several same-coloured shapes per call.

Mouth-box contract (for the lip-sync benchmark): inside `mouth_box()` only the mouth interior is darker
than luma 60. All skin, lip, teeth and tongue colours are lifted above it, and the neck is wide enough
under the jaw that no backdrop or hair shows inside the box.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import tomllib
from importlib import resources

import cv2
import numpy as np

from facecast import __version__
from facecast.avatars._geometry import (
    SMALL_CIRCLE,
    Pts,
    arc,
    band,
    ellipse,
    lift,
    mix,
    scale,
    smoothstep,
    spline,
    union_outline,
)
from facecast.avatars.bundle import FORMAT_VERSION, Bundle, BundleError, FrameSize, Manifest, asset_info
from facecast.avatars.presets import CHROMA_GREEN, check_background
from facecast.avatars.style import RGB, Style, parse_style, style_names
from facecast.engine.types import FaceState, MouthParams

# Pose ranges the renderer honours (FaceState's documented typical ranges); larger values are clamped so
# that mouth_box() stays valid.
YAW_MAX = 8.0
PITCH_MAX = 6.0
ROLL_MAX = 5.0

# Procedural styles are resolution independent; this is the size they are designed and previewed at.
PROCEDURAL_FRAME = (512, 512)

_BREATH_LEVELS = 9
# How far (U per unit of each FaceState field, upper bounds over every drawn point) the picture moves:
# what ProceduralRenderer.still_px weighs a change against. Roll turns the head about the neck pivot,
# whose farthest point (the top of the hair) is within 1.3 U; a blink moves the lids and lash tips.
_ROLL_REACH = 1.3
_BLINK_REACH = 0.08
_GAZE_REACH = (0.032, 0.012)
_BROW_REACH = 0.03
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = float(1 << _SHIFT)
_WHITE: RGB = (255, 255, 255)

# Head-local layout (units of U).
_PIVOT = np.array([0.0, 0.62])  # roll pivot: the neck, under the chin
_MOUTH_Y = 0.28
_MOUTH_HW = 0.1  # mouth half-width at rest
_MAX_GAP = 0.13  # lip gap at open=1
_EYE_X, _EYE_Y, _EYE_HW = 0.165, 0.0, 0.072
_EYE_UP, _EYE_LO = 0.042, 0.026
_IRIS_R = 0.034
_BROW_Y = -0.088

# Parallax depth per layer: how far a layer moves for a given yaw/pitch.
_D_BACK, _D_EARS, _D_OUTLINE, _D_HAIR = 0.1, -0.35, 0.25, 0.35
_D_CHEEK, _D_FEATURE, _D_NOSE = 0.8, 1.0, 1.35
_YAW_SHIFT, _PITCH_SHIFT = 0.045, 0.03  # feature shift (U) at YAW_MAX / PITCH_MAX

_MX = -np.cos(np.linspace(0.0, np.pi, 25))  # mouth samples in -1..1, denser at the corners
_MX_SQ = _MX**2
_MX_IN = 1 - _MX_SQ
# Cupid's bow: the upper lip is fuller either side of the centre and dips in the middle.
_BOW = 1 + 0.22 * np.exp(-(((np.abs(_MX) - 0.3) / 0.17) ** 2)) - 0.2 * np.exp(-((_MX / 0.12) ** 2))
_LIN15 = np.linspace(-1.0, 1.0, 15)
_LIN15_ROUND = np.sqrt(1 - _LIN15**2)
_EX = -np.cos(np.linspace(0.0, np.pi, 21))  # eye samples


class ProceduralRenderer:
    """Renderer for one procedural character at one frame size (see facecast.engine.types.Renderer)."""

    def __init__(self, style: Style, width: int, height: int, background: str = "scene") -> None:
        check_background(background)
        if width < 64 or height < 64:
            raise ValueError(f"frame size must be at least 64×64, got {width}×{height}")
        self._style = style
        self._w, self._h = int(width), int(height)
        self._background = background
        self._c = 4 if background == "transparent" else 3
        # Face height ~40% of the frame height; the width cap keeps narrow frames from cropping the head.
        self._u = min(0.40 * self._h, 0.56 * self._w)
        self._origin = np.array([self._w / 2.0, 0.43 * self._h])
        self._a = 0.5 * style.face_width  # face half-width
        self._queue: list[tuple[list[Pts], str, float | None]] = []
        self._col = self._palette()
        self._build_shapes()
        # The torso only rises with breath: pre-drawn on the backdrop at a few rise levels (sub-pixel
        # steps at every size), so a frame starts from one copy instead of redrawing the clothes.
        backdrop = self._make_background()
        self._rises = [0.012 * b for b in np.linspace(-1.0, 1.0, _BREATH_LEVELS)]
        self._bgs = []
        for rise in self._rises:
            img = backdrop.copy()
            self._draw_torso(rise)
            self._flush(img)
            img.setflags(write=False)  # shared by forks (each frame starts from a copy)
            self._bgs.append(img)
        self._build_static_parts()
        self._set_pose(0.0, 0.0, 0.0)
        self._box = self._compute_mouth_box()
        # Idle frames whose face would move less than this many pixels (every point, against the last
        # frame drawn) repeat that frame: the idle face drifts by a few hundredths of a pixel per frame.
        # 0 (the default): every frame is drawn. Live hosts set it (facecast.hosts.live.STILL_PX).
        self.still_px = 0.0
        self._still: tuple[FaceState, np.ndarray] | None = None  # the last frame drawn and its state

    def fork(self) -> ProceduralRenderer:
        """A renderer that draws the same pictures, sharing this one's set-up (shapes, palette, the
        pre-drawn read-only backdrops) but with its own per-frame state: what a new live session needs,
        in microseconds rather than the ~100 ms of building one (and ~4 MB less per session at 512²).
        `still_px` starts at 0, as in a new renderer."""
        fork = copy.copy(self)
        fork._queue = []
        fork.still_px = 0.0
        fork._still = None
        fork._set_pose(0.0, 0.0, 0.0)
        return fork

    # ---- Renderer protocol -------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self._w

    @property
    def height(self) -> int:
        return self._h

    @property
    def channels(self) -> int:
        return self._c

    @property
    def style(self) -> Style:
        return self._style

    def render(self, state: FaceState) -> np.ndarray:
        """The frame for `state`; with `still_px` set, an idle state that barely moved from the last
        frame drawn returns that frame again (the same read-only array)."""
        if self.still_px > 0:
            if self._still is not None and self._moved_px(self._still[0], state) < self.still_px:
                return self._still[1]
            img = self._draw(state)
            img.setflags(write=False)  # it may be returned again
            self._still = (state, img)
            return img
        return self._draw(state)

    def _moved_px(self, drawn: FaceState, state: FaceState) -> float:
        """An upper bound of how far any point of the picture moves from `drawn` to `state`, in pixels;
        infinite for a speaking state or a change of the mouth, smile or breathing level (always
        drawn)."""
        if (
            state.speaking
            or state.mouth != drawn.mouth
            or _clamp01(state.smile) != _clamp01(drawn.smile)
            or _breath_level(state) != _breath_level(drawn)
        ):
            return math.inf
        units = (
            abs(_clamp(state.head_yaw, YAW_MAX) - _clamp(drawn.head_yaw, YAW_MAX)) / YAW_MAX * _YAW_SHIFT
            + abs(_clamp(state.head_pitch, PITCH_MAX) - _clamp(drawn.head_pitch, PITCH_MAX))
            / PITCH_MAX
            * _PITCH_SHIFT
        ) * _D_NOSE
        roll = math.radians(abs(_clamp(state.head_roll, ROLL_MAX) - _clamp(drawn.head_roll, ROLL_MAX)))
        units += roll * _ROLL_REACH
        units += abs(_clamp(state.gaze_x, 1.0) - _clamp(drawn.gaze_x, 1.0)) * _GAZE_REACH[0]
        units += abs(_clamp(state.gaze_y, 1.0) - _clamp(drawn.gaze_y, 1.0)) * _GAZE_REACH[1]
        units += abs(_clamp01(state.blink) - _clamp01(drawn.blink)) * _BLINK_REACH
        units += abs(_clamp01(state.brow) - _clamp01(drawn.brow)) * _BROW_REACH
        return units * self._u

    def _draw(self, state: FaceState) -> np.ndarray:
        yaw = _clamp(state.head_yaw, YAW_MAX)
        pitch = _clamp(state.head_pitch, PITCH_MAX)
        roll = _clamp(state.head_roll, ROLL_MAX)
        smile = _clamp01(state.smile)
        m = state.mouth.clamped()
        self._set_pose(yaw, pitch, roll)
        level = _breath_level(state)
        img = self._bgs[level].copy()
        # The chin follows the lower lip.
        jaw = _MAX_GAP * min(1.0, m.open * (1.0 - m.closed) * (1 + 0.5 * m.round)) * 0.72
        self._draw_body(level, jaw)
        self._draw_face(jaw, smile)
        self._draw_eyes(_clamp(state.gaze_x, 1.0), _clamp(state.gaze_y, 1.0), _clamp01(state.blink), smile)
        self._draw_brows(_clamp01(state.brow))
        self._draw_mouth(m, smile)
        for polys, key in self._hair_front:
            self._fill(polys, key, _D_HAIR)
        self._flush(img)
        return img

    def mouth_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive: contains the mouth for every pose within the clamped ranges.

        Inside it only the mouth interior has luma < 60, so the dark-pixel fraction measures the opening."""
        return self._box

    def eye_centers(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Pixel centres of the (viewer's) left and right eye at the rest pose, for tests and benchmarks."""
        self._set_pose(0.0, 0.0, 0.0)
        pts = self._xf(np.array([[-_EYE_X, _EYE_Y], [_EYE_X, _EYE_Y]]), _D_FEATURE)
        return (float(pts[0, 0]), float(pts[0, 1])), (float(pts[1, 0]), float(pts[1, 1]))

    # ---- set-up ------------------------------------------------------------------------------------
    def _palette(self) -> dict[str, tuple[int, ...]]:
        s = self._style
        skin = s.skin
        cols: dict[str, RGB] = {
            "outline": lift(scale(skin, 0.74)),
            "skin_shade": lift(scale(skin, 0.89)),
            "skin_mid": lift(scale(skin, 0.945)),
            "skin": lift(skin),
            "skin_light": mix(skin, _WHITE, 0.16),
            "neck": lift(scale(skin, 0.86)),
            "neck_shadow": lift(scale(skin, 0.72)),
            "ear_inner": lift(scale(skin, 0.78)),
            "blush1": lift(mix(skin, s.blush, 0.3 * s.blush_strength)),
            "blush2": lift(mix(skin, s.blush, 0.6 * s.blush_strength)),
            "lid": lift(mix(scale(skin, 0.9), s.blush, 0.12)),
            "crease": lift(scale(skin, 0.76)),
            "nose_shade": lift(scale(skin, 0.87)),
            "nostril": lift(scale(skin, 0.6)),
            "corner": lift(scale(skin, 0.8)),
            "sclera": (246, 243, 240),
            "sclera_shade": (208, 200, 198),
            "iris_ring": scale(s.iris, 0.55),
            "iris": s.iris,
            "iris_light": mix(s.iris, _WHITE, 0.28),
            "pupil": (20, 15, 15),
            "glint": _WHITE,
            "liner": s.liner,
            "lash_lower": mix(s.liner, skin, 0.55),
            "brow": s.brow_color,
            "upper_lip": lift(s.upper_lip, 80.0),
            "lower_lip": lift(s.lower_lip, 85.0),
            "lip_line": lift(scale(s.upper_lip, 0.72)),
            "lip_light": lift(mix(s.lower_lip, _WHITE, 0.25)),
            "interior": s.mouth_interior,
            "teeth": s.teeth,
            "teeth_shade": lift(scale(s.teeth, 0.8)),
            "tongue": lift(s.tongue, 85.0),
            "tongue_shade": lift(scale(s.tongue, 0.8), 72.0),
            "hair": s.hair_color,
            "hair_shade": scale(s.hair_color, 0.8),
            "hair_light": s.hair_highlight,
            "buzz": mix(s.hair_color, skin, 0.35),
            "buzz_light": mix(s.hair_highlight, skin, 0.3),
            "cloth": s.clothes_color,
            "cloth_shade": scale(s.clothes_color, 0.8),
            "cloth_dark": scale(s.clothes_color, 0.66),
            "accent": s.clothes_accent,
            "accent_shade": scale(s.clothes_accent, 0.86),
        }
        alpha = (255,) if self._c == 4 else ()
        return {k: (*v, *alpha) for k, v in cols.items()}

    def _make_background(self) -> np.ndarray:
        h, w = self._h, self._w
        s = self._style
        if self._background == "green":
            return np.ascontiguousarray(np.broadcast_to(np.array(CHROMA_GREEN, np.uint8), (h, w, 3)))
        if self._background == "transparent":
            # Edge pixels blend towards this colour; a mid-tone of the character keeps halos faint.
            rgb = mix(s.hair_color, s.clothes_color, 0.5)
            return np.ascontiguousarray(np.broadcast_to(np.array((*rgb, 0), np.uint8), (h, w, 4)))
        # Everything on the backdrop is soft, so it is built at ≤256 px and scaled up: fast at any size.
        k = min(1.0, 256.0 / max(h, w))
        sh, sw = max(2, round(h * k)), max(2, round(w * k))
        t = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None, None]
        top = np.array(s.background_top, np.float32)
        bottom = np.array(s.background_bottom, np.float32)
        img = np.broadcast_to(top + (bottom - top) * t, (sh, sw, 3)).copy()

        def soft(polys: list[np.ndarray], sigma: float) -> np.ndarray:
            mask = np.zeros((sh, sw), np.float32)
            cv2.fillPoly(
                mask, [np.rint(p * k * _ONE).astype(np.int32) for p in polys], 1.0, cv2.LINE_AA, _SHIFT
            )
            return cv2.GaussianBlur(mask, (0, 0), max(0.5, sigma * sh)) if sigma > 0 else mask

        for shape in s.background_shapes:
            cx, cy = shape.center[0] * w, shape.center[1] * h
            rx, ry = shape.size[0] * w / 2, shape.size[1] * h / 2
            if shape.kind == "ellipse":
                poly = ellipse(cx, cy, rx, ry)
            else:
                poly = np.array(
                    [[cx - rx, cy - ry], [cx + rx, cy - ry], [cx + rx, cy + ry], [cx - rx, cy + ry]]
                )
            a = (soft([poly], shape.blur) * shape.opacity)[:, :, None]
            img = img * (1 - a) + np.array(shape.color, np.float32) * a
        # Soft shadow of the character on the backdrop, and a gentle vignette: depth without per-frame cost.
        self._set_pose(0.0, 0.0, 0.0)
        head = self._xf(ellipse(0.03, 0.0, self._a + 0.12, 0.62), _D_BACK)
        body = self._torso_xf(self._torso, 0.0) + np.array([0.03 * self._u, 0.0])
        shadow = soft([head], 0.05) + soft([body], 0.05)
        yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
        r2 = ((xx - sw / 2) / (0.75 * sw)) ** 2 + ((yy - sh / 2) / (0.75 * sh)) ** 2
        img *= (1.0 - 0.22 * np.minimum(shadow, 1.0) - 0.18 * np.clip(r2, 0, 1.5))[:, :, None]
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))

    def _build_shapes(self) -> None:
        a = self._a
        shape = self._style.face_shape
        # Face outline: superellipse whose lower half sets the jaw (n) and chin narrowing (taper).
        n_bottom, taper = {"oval": (2.0, 0.3), "round": (2.2, 0.12), "square": (3.0, 0.2)}[shape]
        t = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        n = np.where(s > 0, n_bottom, 2.0)
        x = a * np.sign(c) * np.abs(c) ** (2 / n)
        y = 0.5 * np.sign(s) * np.abs(s) ** (2 / n)
        x *= 1 - taper * np.clip(y / 0.5, 0, 1) ** 2.2
        self._face = np.stack([x, y], axis=1)
        self._jaw_w = smoothstep(0.08, 0.38, y)[:, None] * np.array([0.0, 1.0])
        # Jaw as y(x) for the neck shadow: the lower half sorted by x.
        lower = self._face[self._face[:, 1] > 0.05]
        order = np.argsort(lower[:, 0])
        self._jaw_x, self._jaw_y = lower[order, 0], lower[order, 1]
        self._jaw_xw = smoothstep(0.08, 0.38, self._jaw_y)

        self._ears = [ellipse(sx * (a - 0.005), 0.05, 0.05, 0.085) for sx in (-1, 1)]
        self._ears_inner = [ellipse(sx * (a + 0.008), 0.055, 0.024, 0.05) for sx in (-1, 1)]

        # Neck: wide under the jaw (it reaches up behind the ears), narrowing to the collar.
        self._neck_hw = (np.array([0.05, 0.35, 0.5, 0.62, 0.8]), np.array([0.28, 0.27, 0.24, 0.165, 0.165]))
        self._build_eyes()
        self._build_torso()
        back, front = self._build_hair()
        self._hair_back, self._hair_front = _group(back), _group(front)

    def _build_torso(self) -> None:
        xs = np.linspace(0.16, 0.6, 10)
        slope = np.stack([xs, 0.69 + 0.15 * ((xs - 0.16) / 0.44) ** 1.6], axis=1)
        shoulder = arc(0.6, 1.1, 0.25, 0.26, -np.pi / 2, 0.0, 10)[1:]
        right = np.concatenate([slope, shoulder, [[0.88, 1.9]]])
        left = right[::-1] * (-1, 1)
        self._torso = np.concatenate([left, right])
        self._torso_inner = self._torso * (0.88, 1.0) + (0.0, 0.04)
        style = self._style.clothes_style
        # Neckline: where the neck ends (torso space), and the clothes drawn over the neck's base.
        xn = np.linspace(-0.2, 0.2, 15)
        pre: list[tuple[list[Pts], str]] = []
        post: list[tuple[list[Pts], str]] = []
        if style == "shirt":
            neckline = np.stack([xn, 0.7 + 0.2 * (1 - np.abs(xn) / 0.2) ** 1.3], axis=1)
            pre.append(([np.array([[-0.2, 0.66], [0.2, 0.66], [0.17, 0.74], [-0.17, 0.74]])], "cloth_shade"))
            flap = spline(
                [(-0.2, 0.6), (-0.24, 0.72), (-0.2, 0.86), (-0.02, 0.93), (-0.12, 0.76), (-0.17, 0.62)]
            )
            # Collar flaps: a shaded rim around a lighter inner flap so they read against the shirt.
            inner = (flap - flap.mean(axis=0)) * 0.8 + flap.mean(axis=0)
            post.append(([flap, flap * (-1, 1)], "cloth_dark"))
            post.append(([inner, inner * (-1, 1)], "cloth"))
            post.append(([np.array([[-0.012, 0.93], [0.012, 0.93], [0.012, 1.9], [-0.012, 1.9]])], "accent"))
            post.append(([ellipse(0.0, y, 0.012, 0.012, SMALL_CIRCLE) for y in (1.04, 1.24)], "accent_shade"))
        elif style == "blazer":
            neckline = np.stack([xn, 0.72 + 0.07 * (1 - (xn / 0.2) ** 2)], axis=1)
            blouse = np.array([[-0.24, 0.68], [0.24, 0.68], [0.0, 1.3]])
            pre.append(([blouse], "accent"))
            lapel = np.array(
                [[-0.215, 0.67], [-0.25, 0.84], [-0.31, 0.92], [-0.19, 1.05], [-0.005, 1.32], [-0.16, 0.78]]
            )
            post.append(([lapel, lapel * (-1, 1)], "cloth_shade"))
            collar = np.concatenate([spline([(-0.2, 0.68), (-0.17, 0.78), (-0.08, 0.86)]), [[-0.15, 0.73]]])
            post.append(([collar, collar * (-1, 1)], "accent_shade"))
        elif style == "hoodie":
            neckline = np.stack([xn, 0.71 + 0.07 * (1 - (xn / 0.2) ** 2)], axis=1)
            pre.append(([ellipse(0.0, 0.72, 0.33, 0.11)], "cloth_dark"))
            xr = np.linspace(-0.22, 0.22, 17)
            rim_top = 0.69 + 0.085 * (1 - (xr / 0.22) ** 2)
            post.append(([band(xr, rim_top, rim_top + 0.045)], "cloth_shade"))
            strings = [
                np.array([[sx * 0.075, 0.80], [sx * 0.09, 0.80], [sx * 0.1, 1.12], [sx * 0.085, 1.12]])
                for sx in (-1, 1)
            ]
            post.append((strings, "accent"))
            post.append(
                ([ellipse(sx * 0.093, 1.14, 0.012, 0.025, SMALL_CIRCLE) for sx in (-1, 1)], "accent_shade")
            )
        else:  # sweater: ribbed crew neck
            neckline = np.stack([xn, 0.69 + 0.075 * (1 - (xn / 0.2) ** 2)], axis=1)
            xr = np.linspace(-0.215, 0.215, 17)
            rim_top = 0.675 + 0.08 * (1 - (xr / 0.215) ** 2)
            post.append(([band(xr, rim_top, rim_top + 0.05)], "accent"))
            post.append(([band(xr, rim_top + 0.035, rim_top + 0.05)], "accent_shade"))
        self._neckline = neckline
        self._clothes_pre = pre
        self._clothes_post = post

    def _build_hair(self) -> tuple[list[tuple[Pts, str]], list[tuple[Pts, str]]]:
        a = self._a
        hs = self._style.hair_style
        back: list[tuple[Pts, str]] = []
        front: list[tuple[Pts, str]] = []
        top = 3 * np.pi / 2
        highlight = np.concatenate(
            [
                arc(0.0, -0.03, a * 0.8, 0.5, top - 0.75, top + 0.2, 14),
                arc(0.0, -0.01, a * 0.74, 0.45, top + 0.2, top - 0.75, 14),
            ]
        )
        if hs == "long":
            outer = arc(0.0, -0.02, a + 0.1, 0.6, np.pi, 2 * np.pi, 30)
            right = [(a + 0.12, 0.3), (a + 0.16, 0.6), (a + 0.14, 0.84), (a + 0.02, 0.88), (a - 0.1, 0.8)]
            right_pts = np.array(right)
            back.append(
                (np.concatenate([outer, right_pts, [[0.0, 0.72]], right_pts[::-1] * (-1, 1)]), "hair_shade")
            )
            cap = arc(0.0, -0.03, a + 0.075, 0.56, np.pi - 0.3, 2 * np.pi + 0.3, 32)
            hairline = spline(
                [
                    (a + 0.07, 0.27),
                    (a + 0.04, 0.52),
                    (a - 0.035, 0.3),
                    (a - 0.05, 0.08),
                    (a - 0.07, -0.1),
                    (0.25, -0.29),
                    (0.12, -0.37),
                    (-0.06, -0.31),
                    (-0.22, -0.22),
                    (-a + 0.07, -0.1),
                    (-a + 0.045, 0.08),
                    (-a + 0.035, 0.3),
                    (-a - 0.04, 0.52),
                    (-a - 0.07, 0.27),
                ]
            )
            front.append((np.concatenate([cap, hairline]), "hair"))
            # Strands flowing from the parting to the sides break up the flat hair mass.
            strands = [
                _strand((0.1, -0.4), (-0.2, -0.36), (-a + 0.0, -0.02), 0.008),
                _strand((0.12, -0.42), (0.3, -0.38), (a - 0.01, -0.06), 0.007),
                _strand((0.08, -0.48), (-0.3, -0.46), (-a - 0.04, 0.1), 0.007),
            ]
            front.append((strands[0], "hair_shade"))
            front.append((strands[1], "hair_shade"))
            front.append((strands[2], "hair_shade"))
            front.append((highlight, "hair_light"))
        elif hs in ("short", "bun"):
            back.append((arc(0.0, -0.05, a + 0.015, 0.52, np.pi - 0.05, 2 * np.pi + 0.05, 30), "hair_shade"))
            t = np.linspace(np.pi - 0.1, 2 * np.pi + 0.1, 34)
            if hs == "short":  # a quiff: extra volume on top, swept to the viewer's right
                r = 1 + 0.07 * np.exp(-(((t - top - 0.3) / 0.5) ** 2))
                side = a + 0.012 + 0.04 * np.clip(-np.sin(t), 0, 1)  # close-cropped sides, volume on top
                cap = np.stack([side * r * np.cos(t), -0.05 + 0.53 * r * np.sin(t)], axis=1)
                hairline = spline(
                    [
                        (a + 0.005, -0.02),
                        (a - 0.03, -0.03),
                        (a - 0.045, -0.14),
                        (a - 0.09, -0.25),
                        (0.2, -0.31),
                        (0.07, -0.35),
                        (-0.1, -0.33),
                        (-0.24, -0.3),
                        (-a + 0.09, -0.25),
                        (-a + 0.045, -0.14),
                        (-a + 0.03, -0.03),
                        (-a - 0.005, -0.02),
                    ]
                )
            else:
                back.append((ellipse(0.02, -0.6, 0.14, 0.13), "hair"))
                cap = np.stack([(a + 0.03) * np.cos(t), -0.04 + 0.52 * np.sin(t)], axis=1)
                hairline = spline(
                    [
                        (a - 0.005, 0.02),
                        (a - 0.04, -0.02),
                        (a - 0.07, -0.16),
                        (0.2, -0.32),
                        (0.0, -0.36),
                        (-0.2, -0.32),
                        (-a + 0.07, -0.16),
                        (-a + 0.04, -0.02),
                        (-a + 0.005, 0.02),
                    ]
                )
                front.append((ellipse(0.05, -0.64, 0.06, 0.035), "hair_light"))
            front.insert(0, (np.concatenate([cap, hairline]), "hair"))
            if hs == "short":  # strands swept up and back from the hairline
                for x0, x1 in ((-0.22, -0.3), (-0.05, -0.1), (0.12, 0.1)):
                    strand = _strand((x0, -0.33), (x0 + 0.05, -0.43), (x1 + 0.1, -0.5), 0.007)
                    front.append((strand, "hair_shade"))
            front.append((highlight * (0.9, 1.0) + (0.0, 0.03 if hs == "bun" else -0.0), "hair_light"))
        elif hs == "curly":
            circles = [(0.0, -0.07, 0.0)]
            for i, th in enumerate(np.linspace(np.pi - 0.75, 2 * np.pi + 0.75, 19)):
                r = 0.095 + 0.02 * math.sin(i * 2.3)
                circles.append(((a + 0.1) * math.cos(th), -0.07 + 0.58 * math.sin(th), r))
            base = ellipse(0.0, -0.07, a + 0.1, 0.58)
            back.append((union_outline(circles, [base], []), "hair_shade"))
            xh = np.linspace(-a + 0.02, a - 0.02, 9)
            yh = -0.29 + 0.2 * (xh / a) ** 2
            below = np.concatenate(
                [
                    np.stack([xh, yh], axis=1),
                    [[a + 0.2, -0.05], [a + 0.2, 1.0], [-a - 0.2, 1.0], [-a - 0.2, -0.05]],
                ]
            )
            curls = [
                (float(x), float(y), 0.042 + 0.008 * math.cos(i * 1.7))
                for i, (x, y) in enumerate(zip(xh, yh, strict=True))
            ]
            cap = union_outline(curls, [ellipse(0.0, -0.07, a + 0.08, 0.56)], [below])
            front.append((cap, "hair"))
            for th in np.linspace(top - 0.8, top + 0.5, 4):
                cx, cy = (a * 0.78) * math.cos(th), -0.07 + 0.48 * math.sin(th)
                curl = np.concatenate(
                    [
                        arc(cx, cy, 0.04, 0.03, np.pi + 0.4, 2 * np.pi - 0.4, 7),
                        arc(cx, cy + 0.012, 0.034, 0.022, 2 * np.pi - 0.4, np.pi + 0.4, 7),
                    ]
                )
                front.append((curl, "hair_light"))
        else:  # buzz: a thin cap, skin showing through
            cap = arc(0.0, 0.0, a + 0.012, 0.512, np.pi + 0.2, 2 * np.pi - 0.2, 30)
            hairline = spline(
                [
                    (a - 0.025, -0.1),
                    (a - 0.05, -0.2),
                    (0.2, -0.33),
                    (0.0, -0.355),
                    (-0.2, -0.33),
                    (-a + 0.05, -0.2),
                    (-a + 0.025, -0.1),
                ]
            )
            front.append((np.concatenate([cap, hairline]), "buzz"))
            front.append((highlight * (0.85, 1.0) + (0.0, 0.01), "buzz_light"))
        return back, front

    def _compute_mouth_box(self) -> tuple[int, int, int, int]:
        pts = []
        mouths = [
            MouthParams(open=1.0, width=1.0, teeth=1.0, tongue=1.0),
            MouthParams(open=1.0, round=1.0),
            MouthParams(width=1.0, closed=1.0),
            MouthParams(open=0.3, width=1.0, bite=1.0, teeth=1.0),
        ]
        lips = []
        for m in mouths:
            for smile in (0.0, 1.0):
                parts = self._mouth_parts(m, smile)
                lips += [parts["upper_lip"], parts["lower_lip"]]
        local = np.concatenate(lips)
        for yaw in (-YAW_MAX, 0.0, YAW_MAX):
            for pitch in (-PITCH_MAX, 0.0, PITCH_MAX):
                for roll in (-ROLL_MAX, 0.0, ROLL_MAX):
                    self._set_pose(yaw, pitch, roll)
                    pts.append(self._xf(local, _D_FEATURE))
        self._set_pose(0.0, 0.0, 0.0)
        allp = np.concatenate(pts)
        margin = 0.015 * self._u
        x0, y0 = np.floor(allp.min(axis=0) - margin)
        x1, y1 = np.ceil(allp.max(axis=0) + margin)
        return (max(0, int(x0)), max(0, int(y0)), min(self._w, int(x1) + 1), min(self._h, int(y1) + 1))

    # ---- per-frame placement ----------------------------------------------------------------------
    def _set_pose(self, yaw: float, pitch: float, roll: float) -> None:
        r = math.radians(roll)
        c, s = math.cos(r), math.sin(r)
        # Row vectors: p @ m rotates clockwise on screen for positive roll (y points down).
        self._m = np.array([[c, s], [-s, c]]) * self._u
        pivot_px = self._origin + _PIVOT * self._u
        self._base = pivot_px - _PIVOT @ self._m
        self._shift = np.array([yaw / YAW_MAX * _YAW_SHIFT, pitch / PITCH_MAX * _PITCH_SHIFT]) @ self._m

    def _xf(self, p: Pts, depth: float) -> np.ndarray:
        return p @ self._m + (self._base + depth * self._shift)

    def _torso_xf(self, p: Pts, rise: float) -> np.ndarray:
        return p * self._u + (self._origin[0], self._origin[1] - rise * self._u)

    def _fill(self, polys: list[Pts], key: str, depth: float) -> None:
        """Queue head-space polygons; _flush places all of a frame's points in one matmul."""
        self._queue.append((polys, key, depth))

    def _fill_px(self, polys: list[np.ndarray], key: str) -> None:
        """Queue polygons already in pixel coordinates."""
        self._queue.append((polys, key, None))

    def _flush(self, img: np.ndarray) -> None:
        queue, self._queue = self._queue, []
        head = [(p, d) for polys, _, d in queue if d is not None for p in polys]
        if head:
            n = sum(len(p) for p, _ in head)
            xyd = np.empty((n, 3))
            xyd[:, :2] = np.concatenate([p for p, _ in head])
            xyd[:, 2] = np.repeat(np.array([d for _, d in head]), [len(p) for p, _ in head])
            # One affine map for every point of the frame: (x, y, depth) → fixed-point pixels for cv2's
            # `shift`; +0.5 rounds (visible coordinates are positive). cv2.transform is ~20× faster than
            # numpy's matmul for this shape.
            m = np.empty((2, 4))
            m[:, :2] = self._m.T * _ONE
            m[:, 2] = self._shift * _ONE
            m[:, 3] = self._base * _ONE + 0.5
            fixed = cv2.transform(xyd.reshape(n, 1, 3), m).reshape(n, 2).astype(np.int32)
        start = 0
        for polys, key, d in queue:
            if d is None:
                arrays = [(p * _ONE + 0.5).astype(np.int32) for p in polys]
            else:
                arrays = []
                for p in polys:
                    arrays.append(fixed[start : start + len(p)])
                    start += len(p)
            cv2.fillPoly(img, arrays, self._col[key], cv2.LINE_AA, _SHIFT)

    # ---- drawing -----------------------------------------------------------------------------------
    def _draw_torso(self, rise: float) -> None:
        self._fill_px([self._torso_xf(self._torso, rise)], "cloth_shade")
        self._fill_px([self._torso_xf(self._torso_inner, rise)], "cloth")
        for polys, key in self._clothes_pre:
            self._fill_px([self._torso_xf(p, rise) for p in polys], key)

    def _build_static_parts(self) -> None:
        """Shapes whose geometry is fixed, or only offset per frame: built once."""
        a = self._a
        # Face layers: outline, then lighter nested layers offset towards the key light (upper left),
        # each as (points at rest, how far each point follows the jaw).
        self._face_layers = []
        for key, (sx, sy), (ox, oy) in (
            ("outline", ((a + 0.006) / a, 1.012), (0.0, 0.0)),
            ("skin_shade", (1.0, 1.0), (0.0, 0.0)),
            ("skin_mid", (0.95, 0.965), (-0.006, -0.012)),
            ("skin", (0.88, 0.9), (-0.014, -0.03)),
        ):
            self._face_layers.append((key, self._face * (sx, sy) + (ox, oy), self._jaw_w * (sx, sy)))
        self._cheeks = [
            (key, [ellipse(sx * 0.2, 0.17, rx, ry) for sx in (-1, 1)])
            for key, rx, ry in (("blush1", 0.085, 0.055), ("blush2", 0.055, 0.033))
        ]
        bridge = np.concatenate(
            [arc(-0.14, 0.06, 0.11, 0.1, -0.5, 0.75, 8), arc(-0.13, 0.06, 0.09, 0.1, 0.75, -0.5, 8)]
        )
        self._nose = [
            ([bridge, ellipse(0.0, 0.162, 0.036, 0.02)], "nose_shade"),
            ([ellipse(sx * 0.019, 0.168, 0.01, 0.0055, SMALL_CIRCLE) for sx in (-1, 1)], "nostril"),
            ([ellipse(0.004, 0.142, 0.014, 0.01, SMALL_CIRCLE)], "skin_light"),
        ]
        # Neck sides (head space) and, per breathing level, the neckline and clothes over it (pixels).
        ys, hw = self._neck_hw
        right = np.stack([hw[:4], ys[:4]], axis=1)
        self._neck_left, self._neck_right = right * (-1, 1), right[::-1]
        self._necklines = [self._torso_xf(self._neckline, rise) for rise in self._rises]
        self._clothes_px = [
            [([self._torso_xf(p, rise) for p in polys], key) for polys, key in self._clothes_post]
            for rise in self._rises
        ]
        # Shadow under the jaw: sampled where the neck is, follows the jaw drop.
        self._shadow_x = np.linspace(-0.3, 0.3, 15)
        self._shadow_y = np.interp(self._shadow_x, self._jaw_x, self._jaw_y)
        self._shadow_w = np.interp(self._shadow_x, self._jaw_x, self._jaw_xw)
        self._shadow_drop = 0.05 * (1 - (self._shadow_x / 0.3) ** 2) + 0.012

    def _draw_body(self, level: int, jaw: float) -> None:
        for polys, key in self._hair_back:
            self._fill(polys, key, _D_BACK)
        # Neck: top in head space (follows roll), bottom on the neckline in torso space (follows breath).
        neck = np.concatenate(
            [self._xf(self._neck_left, _D_BACK), self._necklines[level], self._xf(self._neck_right, _D_BACK)]
        )
        self._fill_px([neck], "neck")
        # Shadow under the jaw, kept inside the neck's width.
        jy = self._shadow_y + jaw * self._shadow_w
        shadow = band(self._shadow_x, jy - 0.06, jy + self._shadow_drop)
        ys, hw = self._neck_hw
        limit = np.interp(shadow[:, 1], ys, hw)
        shadow[:, 0] = np.clip(shadow[:, 0], -limit, limit)
        self._fill([shadow], "neck_shadow", _D_BACK)
        for polys, key in self._clothes_px[level]:
            self._fill_px(polys, key)
        self._fill(self._ears, "skin_shade", _D_EARS)
        self._fill(self._ears_inner, "ear_inner", _D_EARS)

    def _draw_face(self, jaw: float, smile: float) -> None:
        for key, pts, follow in self._face_layers:
            self._fill([pts + jaw * follow], key, _D_OUTLINE)
        lift = np.array([0.0, -0.02 * smile])  # smiling lifts the cheeks
        for key, polys in self._cheeks:
            self._fill([p + lift for p in polys], key, _D_CHEEK)
        for polys, key in self._nose:
            self._fill(polys, key, _D_NOSE)

    def _build_eyes(self) -> None:
        """Per-eye curves that do not depend on the state; rows: viewer's left eye, right eye."""
        sx = np.array([[-1.0], [1.0]])
        t = _EX[None, :] * sx  # +1 at each eye's outer corner
        self._eye_sx = sx[:, 0]
        self._eye_x = sx * _EYE_X + _EYE_HW * _EX[None, :]  # ascending x per row
        prof_u = (1 - t**2) ** 0.7
        self._eye_prof_l = (1 - t**2) ** 0.85
        tilt = -0.008 * t  # outer corner slightly higher
        self._eye_up = _EYE_Y - _EYE_UP * prof_u * (1 - 0.12 * t) + tilt
        self._eye_lo = _EYE_Y + _EYE_LO * self._eye_prof_l + tilt
        self._eye_closed = _EYE_Y + 0.45 * _EYE_LO * self._eye_prof_l + tilt
        crease = self._eye_up - 0.022 * (1 - t**2) ** 0.5 - 0.004
        self._lids = list(_bands(self._eye_x, crease, self._eye_lo))
        self._liner_w = 0.005 + 0.007 * np.clip(t, 0, 1) ** 2
        self._lower_w = 0.003 * (1 - t**2)
        corner = np.where(sx[:, 0] > 0, -1, 0)
        self._wing = np.stack(
            [sx[:, 0] * (_EYE_X + _EYE_HW + 0.012), self._eye_up[[0, 1], corner] - 0.014], axis=1
        )
        # Lashes: three strokes on the outer half of each upper lid.
        tt = np.array([0.45, 0.72, 0.95])
        self._lash_i = np.array([[int(np.argmin(np.abs(t[e] - v))) for v in tt] for e in range(2)])
        self._lash_len = 0.012 + 0.01 * tt
        # Iris layers (dark limbal ring, iris, lighter centre, pupil, catch-light): radius and centre
        # offset in iris radii, shaped (layer, 1, 1) to broadcast over (eye, sample).
        self._iris_keys = ("iris_ring", "iris", "iris_light", "pupil", "glint")
        layers = np.array(
            [[1.0, 0.0, 0.0], [0.82, 0.0, 0.0], [0.6, 0.0, 0.2], [0.42, 0.0, 0.0], [0.2, 0.35, -0.4]]
        )
        self._iris_r, self._iris_ox, self._iris_oy = (layers[:, i, None, None] * _IRIS_R for i in range(3))
        self._iris_half = np.sqrt(np.clip(1 - _EX**2, 0, 1))
        tb = np.linspace(0.0, 1.0, 12)
        s = self._style
        self._brow_x = np.stack([e * (_EYE_X - 0.075 + 0.165 * tb) for e in (-1, 1)])
        self._brow_y = _BROW_Y - (0.012 + 0.025 * s.brow_arch) * np.sin(np.pi * tb**0.75)
        self._brow_thick = (0.012 + 0.012 * s.brow_thickness) * (1 - 0.65 * tb**1.5)
        self._brow_raise = 0.03 * (1 - 0.3 * tb)

    def _draw_eyes(self, gx: float, gy: float, blink: float, smile: float) -> None:
        x, up, lo, closed = self._eye_x, self._eye_up, self._eye_lo, self._eye_closed
        up_e = up + blink * (closed - up)
        lo_e = np.maximum(lo + blink * (closed - lo) - smile * 0.3 * _EYE_LO * self._eye_prof_l, up_e)
        self._fill(self._lids, "lid", _D_FEATURE)
        if np.max(lo_e - up_e) * self._u >= 0.6:
            self._fill(list(_bands(x, up_e, lo_e)), "sclera", _D_FEATURE)
            self._fill(list(_bands(x, up_e, np.minimum(up_e + 0.014, lo_e))), "sclera_shade", _D_FEATURE)
            ix = self._eye_sx * _EYE_X + gx * 0.032
            iy = _EYE_Y + 0.004 + gy * 0.012
            # All iris layers of both eyes at once, each clipped to the lid opening: (layer, eye, sample).
            xs = ix[None, :, None] + self._iris_ox + self._iris_r * _EX
            half = self._iris_r * self._iris_half
            cy = iy + self._iris_oy
            up_i = np.empty_like(xs)
            lo_i = np.empty_like(xs)
            for e in range(2):
                up_i[:, e] = np.interp(xs[:, e], x[e], up_e[e])
                lo_i[:, e] = np.interp(xs[:, e], x[e], lo_e[e])
            top = np.maximum(cy - half, up_i)
            bottom = np.maximum(np.minimum(cy + half, lo_i), top)
            n = len(_EX)
            polys = _bands(xs.reshape(-1, n), top.reshape(-1, n), bottom.reshape(-1, n))
            for k, key in enumerate(self._iris_keys):
                self._fill([polys[2 * k], polys[2 * k + 1]], key, _D_FEATURE)
            self._fill(list(_bands(x, lo_e - 0.0015, lo_e + self._lower_w)), "lash_lower", _D_FEATURE)
        # Eyeliner with a small outer wing; it follows the moving lid edge. Polygon per eye: lid line
        # left→right on top, back along the lid, with the wing spliced in at the outer corner.
        n = x.shape[1]
        lw = self._liner_w + 0.002 * (1 - blink)
        liner = np.empty((2, 2 * n + 1, 2))
        liner[:, :n, 0] = x
        liner[:, :n, 1] = up_e - lw
        liner[0, n:-1, 0], liner[0, n:-1, 1] = x[0, ::-1], up_e[0, ::-1] + 0.002
        liner[0, -1] = self._wing[0]
        liner[1, n] = self._wing[1]
        liner[1, n + 1 :, 0], liner[1, n + 1 :, 1] = x[1, ::-1], up_e[1, ::-1] + 0.002
        polys = list(liner)
        if self._style.lashes:
            i = self._lash_i
            bx = np.take_along_axis(x, i, axis=1)
            by = np.take_along_axis(up_e - lw * 0.5, i, axis=1)
            tris = np.empty((2, 3, 3, 2))
            tris[:, :, 0, 0], tris[:, :, 0, 1] = bx - 0.006, by
            tris[:, :, 1, 0], tris[:, :, 1, 1] = bx + 0.006, by
            tris[:, :, 2, 0] = bx + self._eye_sx[:, None] * self._lash_len
            tris[:, :, 2, 1] = by - 0.02 + 0.01 * blink
            polys.extend(tris.reshape(6, 3, 2))
        self._fill(polys, "liner", _D_FEATURE)

    def _draw_brows(self, brow: float) -> None:
        y = self._brow_y - brow * self._brow_raise
        y2 = np.stack([y, y])
        self._fill(
            list(_bands(self._brow_x, y2 - self._brow_thick * 0.6, y2 + self._brow_thick * 0.4)),
            "brow",
            _D_FEATURE,
        )

    def _mouth_parts(self, m: MouthParams, smile: float) -> dict[str, Pts]:
        """All mouth polygons in head-local units; closed lips (m/b/p) override the opening."""
        o = m.open * (1.0 - m.closed)
        gap = _MAX_GAP * min(1.0, o * (1 + 0.5 * m.round))  # rounded lips part into a taller, rounder hole
        hw = _MOUTH_HW * self._style.mouth_width * (1 + 0.25 * m.width + 0.1 * smile - 0.36 * m.round)
        x = _MX * hw
        prof = _MX_IN ** (0.55 - 0.2 * m.width)
        corner_lift = (0.022 * smile + 0.006 * m.width - 0.004 * m.round) * _MX_SQ
        base = _MOUTH_Y - corner_lift
        # Showing teeth retracts the lips a little (unless they are pressed shut).
        show = m.teeth * (1.0 - m.closed)
        ui = base - (gap * 0.28 + m.bite * 0.008 + show * 0.007) * prof
        li = base + (gap * 0.72 + show * 0.004) * prof
        g = _MX_IN ** (0.6 - 0.3 * m.round)
        tu = 0.03 * (1 + 0.45 * m.round - 0.35 * m.closed - 0.12 * m.width)
        tl = 0.042 * (1 + 0.35 * m.round - 0.3 * m.closed - 0.12 * m.width - 0.3 * m.bite)
        uo = ui - tu * g * _BOW
        lo = li + tl * g
        parts: dict[str, Pts] = {
            "upper_lip": band(x, uo, ui),
            "lower_lip": band(x, li, lo),
            "lip_line": band(x, ui - 0.004 * prof**0.3, ui + 0.0015 * prof**0.3),
            "lip_light": band(x[7:-7], (li + tl * g * 0.25)[7:-7], (li + tl * g * 0.5)[7:-7]),
            "corners": np.concatenate(
                [ellipse(sx * (hw + 0.004), base[0] - 0.002, 0.005, 0.009, SMALL_CIRCLE) for sx in (-1, 1)]
            ),
        }
        if gap * self._u < 0.3:
            return parts
        parts["interior"] = band(x, ui, li)
        tw = min(0.8 * hw, 0.075)
        tt = min(0.6 * hw, 0.058)
        # Teeth, lower teeth and tongue samples, interpolated on the lip curves in one call per curve.
        xt = _LIN15 * tw
        xl = xt * 0.8
        xq = _LIN15 * tt
        xs = np.concatenate([xt, xl, xq])
        ui_s, li_s = np.interp(xs, x, ui), np.interp(xs, x, li)
        ui_t, ui_l, ui_q = ui_s[:15], ui_s[15:30], ui_s[30:]
        li_t, li_l, li_q = li_s[:15], li_s[15:30], li_s[30:]
        g_t = np.interp(xt, x, g)

        def teeth_h(xx: np.ndarray) -> np.ndarray:
            inside = np.clip(1 - (xx / tw) ** 2, 0, 1)
            return 0.034 * m.teeth * (0.8 + 0.2 * np.sqrt(inside)) * (inside > 0)

        if m.teeth > 0.01:
            top = ui_t - 0.008
            # With a bite the upper teeth rest on (overlap) the lower lip.
            bottom = np.maximum(np.minimum(ui_t + teeth_h(xt), li_t + m.bite * 0.5 * tl * g_t), top)
            parts["teeth_back"] = band(xt, top, bottom)
            k = np.abs(xt) <= 0.62 * tw
            parts["teeth_front"] = band(xt[k], top[k], bottom[k])
            lt = 0.026 * m.teeth * float(smoothstep(0.35, 0.9, o))
            if lt * self._u > 0.5:
                ltop = np.maximum(li_l - lt * (0.7 + 0.3 * _LIN15_ROUND), ui_l + teeth_h(xl))
                parts["lower_teeth"] = band(xl, np.minimum(ltop, li_l), li_l + 0.006)
        hq = gap * (0.22 + 0.5 * m.tongue) * _LIN15_ROUND
        ttop = np.minimum(np.maximum(li_q - hq, ui_q + teeth_h(xq) * 0.85), li_q)
        parts["tongue_rim"] = band(xq, ttop, li_q + 0.006)
        parts["tongue"] = band(xq[1:-1] * 0.92, ttop[1:-1] + 0.004, li_q[1:-1] + 0.006)
        return parts

    def _draw_mouth(self, m: MouthParams, smile: float) -> None:
        p = self._mouth_parts(m, smile)
        d = _D_FEATURE
        self._fill([p["corners"]], "corner", d)
        for part, key in (
            ("interior", "interior"),
            ("tongue_rim", "tongue_shade"),
            ("tongue", "tongue"),
            ("lower_teeth", "teeth_shade"),
        ):
            if part in p:
                self._fill([p[part]], key, d)
        self._fill([p["lower_lip"]], "lower_lip", d)
        self._fill([p["lip_light"]], "lip_light", d)
        if "teeth_back" in p:
            self._fill([p["teeth_back"]], "teeth_shade", d)
            self._fill([p["teeth_front"]], "teeth", d)
        self._fill([p["upper_lip"]], "upper_lip", d)
        self._fill([p["lip_line"]], "lip_line", d)


def bundle_from_style(name: str, *, created_at: str | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """A built-in style packed as a `procedural` bundle (asset `style.toml`); write it with write_bundle."""
    if name not in style_names():
        raise BundleError(f"unknown built-in avatar {name!r}; available: {', '.join(style_names())}")
    data = resources.files("facecast.avatars").joinpath("styles", f"{name}.toml").read_bytes()
    style = parse_style(tomllib.loads(data.decode("utf-8")), name)
    files = {"style.toml": data}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        kind="procedural",
        name=name,
        display_name=style.display_name,
        created_at=created_at or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        facecast_version=__version__,
        frame=FrameSize(*PROCEDURAL_FRAME),
        assets={n: asset_info(n, d) for n, d in files.items()},
        description=style.description,
        license="Apache-2.0 (built-in Facecast character)",
    )
    return manifest, files


def style_from_bundle(bundle: Bundle) -> Style:
    """The style of a procedural bundle, named after the bundle."""
    if bundle.manifest.kind != "procedural":
        raise BundleError(f"{bundle.path}: a {bundle.manifest.kind} bundle has no procedural style")
    try:
        text = bundle.asset("style.toml").decode("utf-8")
        return parse_style(tomllib.loads(text), bundle.manifest.name)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BundleError(f"{bundle.path}: style.toml is not valid TOML ({e})") from None
    except BundleError:
        raise
    except ValueError as e:
        raise BundleError(f"{bundle.path}: style.toml: {e}") from None


def _strand(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], width: float) -> Pts:
    """A thin lens along a quadratic Bézier curve: one hair strand."""
    t = np.linspace(0.0, 1.0, 10)[:, None]
    a, b, c = np.array(p0), np.array(p1), np.array(p2)
    curve = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c
    tangent = np.gradient(curve, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    half = width * np.sin(np.pi * t)
    return np.concatenate([curve + normal * half, (curve - normal * half)[::-1]])


def _group(shapes: list[tuple[Pts, str]]) -> list[tuple[list[Pts], str]]:
    """Merge consecutive same-coloured (non-overlapping) shapes so they cost one fillPoly call."""
    out: list[tuple[list[Pts], str]] = []
    for poly, key in shapes:
        if out and out[-1][1] == key:
            out[-1][0].append(poly)
        else:
            out.append(([poly], key))
    return out


def _bands(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Row-wise band(): (k, n) curves → (k, 2n, 2) polygons; x rows ascending (or shared, shape (n,))."""
    k, n = top.shape
    out = np.empty((k, 2 * n, 2))
    out[:, :n, 0] = x
    out[:, :n, 1] = top
    out[:, n:, 0] = x[..., ::-1]
    out[:, n:, 1] = bottom[:, ::-1]
    return out


def _breath_level(state: FaceState) -> int:
    """Which of the pre-drawn torso rises a state shows."""
    return round((_clamp(state.breath, 1.0) + 1) / 2 * (_BREATH_LEVELS - 1))


def _clamp(v: float, limit: float) -> float:
    return max(-limit, min(limit, float(v)))


def _clamp01(v: float) -> float:
    return max(0.0, min(1.0, float(v)))
