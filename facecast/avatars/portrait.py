"""The portrait renderer: one photo, warped per frame, with a drawn mouth interior and eyelids.

Per frame: blend the bundle's precomputed backward-displacement fields with the face state's weights,
apply the sum to the region around the head with one `cv2.remap`, then draw the mouth interior inside the
moved inner lips and the eyelids over the moved eyes. Warping alone cannot open a closed mouth or close an
eye (the lips would stretch, the iris would smear), which is why those two are layers.

Everything that does not depend on the state (the frame at output scale, the fields resampled to output
pixels, the landmark motions) is prepared once per renderer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from facecast.avatars import face_mesh as fm
from facecast.avatars.bundle import Bundle, BundleError
from facecast.avatars.presets import ASPECTS, CHROMA_GREEN, check_background
from facecast.engine.types import FaceState, MouthParams

_CAVITY_TOP = np.array([92.0, 38.0, 42.0])  # mouth interior just under the teeth, RGB
_CAVITY_DEEP = np.array([34.0, 10.0, 14.0])  # and at the back of the mouth
_TONGUE = np.array([176.0, 86.0, 92.0])
_TEETH = np.array([228.0, 220.0, 200.0])
_TEETH_OVER_SKIN = 1.22  # drawn teeth's brightness ÷ the face's median skin brightness, at most
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SHIFT = 3  # sub-pixel bits for cv2's anti-aliased drawing
_MIN_WEIGHT = 1e-3  # fields with a smaller weight are skipped: no visible effect, saves time


@dataclass(frozen=True)
class PortraitData:
    """A portrait bundle's arrays, validated: the canonical photo and everything precomputed for it."""

    photo: np.ndarray  # (N, N, 3) uint8 RGB
    mask: np.ndarray  # (N, N) uint8 person mask
    landmarks: np.ndarray  # (478, 3) float32, canonical pixels
    head: np.ndarray  # (3, G+1, G+1, 2) backward displacements (canonical px) at head_field_at degrees
    face: np.ndarray  # (K, h, w, 2) backward displacements sampled every face_step px from face_origin
    moves: np.ndarray  # (3 + K, 478, 2) forward motion of each landmark per control
    teeth: np.ndarray | None  # the photo's own teeth, RGB, or None (drawn teeth)
    teeth_mask: np.ndarray | None  # where `teeth` shows teeth (grey); None: all of it (older bundles)
    extra: dict

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> PortraitData:
        m = bundle.manifest
        if m.kind != "portrait":
            raise BundleError(f"{bundle.path}: a {m.kind} bundle is not a portrait")
        x = m.extra
        try:
            side = m.frame.width
            grid = int(x["head_grid"])
            heads, faces = list(x["head_controls"]), list(x["face_controls"])
            if m.frame.height != side or heads != ["yaw", "pitch", "roll"]:
                raise ValueError("unexpected frame or head controls")
            for key in ("face_height", "mouth_width", "jaw_drop_px"):
                float(x[key])
            [int(v) for v in x["face_origin"]]
            int(x["face_step"])
            for aspect in ("1:1", "4:3", "3:4"):
                [float(v) for v in x["crops"][aspect]]
            [float(x["head_field_at"][k]) for k in heads]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(
                f"{bundle.path}: manifest extra is not a valid portrait ({e}); rebuild it"
            ) from None
        photo = bundle.image("photo.png")
        mask = bundle.image("mask.png", gray=True)
        if photo.shape[:2] != (side, side) or mask.shape != (side, side):
            raise BundleError(f"{bundle.path}: photo.png and mask.png must be {side}×{side}")
        f16 = ("<f2", "<f4")
        data = cls(
            photo=photo,
            mask=mask,
            landmarks=bundle.array("landmarks.npy", (fm.N_LANDMARKS, 3)),
            head=bundle.array("warp/head.npy", (3, grid + 1, grid + 1, 2), f16).astype(np.float32),
            face=bundle.array("warp/face.npy", (len(faces), -1, -1, 2), f16).astype(np.float32),
            moves=bundle.array("warp/moves.npy", (3 + len(faces), fm.N_LANDMARKS, 2)),
            teeth=bundle.image("teeth.png") if "teeth.png" in bundle.files else None,
            teeth_mask=bundle.image("teeth_mask.png", gray=True)
            if "teeth_mask.png" in bundle.files
            else None,
            extra=x,
        )
        teeth, shown = data.teeth, data.teeth_mask
        if teeth is not None and shown is not None and shown.shape != teeth.shape[:2]:
            raise BundleError(f"{bundle.path}: teeth_mask.png must be the size of teeth.png; rebuild it")
        limit = float(side)
        for name, arr in (("head", data.head), ("face", data.face), ("moves", data.moves)):
            if np.abs(arr).max(initial=0.0) > limit:
                raise BundleError(f"{bundle.path}: {name} displacements exceed the frame; rebuild it")
        return data


class PortraitRenderer:
    """Renderer for a portrait bundle at one frame size (see facecast.engine.types.Renderer)."""

    def __init__(
        self, bundle: Bundle, width: int, height: int, *, aspect: str = "1:1", background: str = "scene"
    ) -> None:
        check_background(background)
        if width < 64 or height < 64:
            raise ValueError(f"frame size must be at least 64×64, got {width}×{height}")
        self._w, self._h = int(width), int(height)
        self._c = 4 if background == "transparent" else 3
        if aspect not in ASPECTS:
            raise ValueError(f"unknown aspect {aspect!r}; choose one of: {', '.join(ASPECTS)}")
        d = PortraitData.from_bundle(bundle)
        x = d.extra
        side = d.photo.shape[0]
        fx, fy, fw, fh = (float(v) for v in x["crops"][aspect])
        self._sx, self._sy = self._w / (fw * side), self._h / (fh * side)
        self._ox, self._oy = fx * side * self._sx, fy * side * self._sy
        # The whole canonical frame at output scale; a frame is a window of it.
        src_size = (round(side * self._sx), round(side * self._sy))
        self._src = self._source(d, background, src_size)
        ox, oy = round(self._ox), round(self._oy)
        self._ox, self._oy = float(ox), float(oy)
        self._base = np.ascontiguousarray(self._src[oy : oy + self._h, ox : ox + self._w])
        if self._base.shape[:2] != (self._h, self._w):
            raise ValueError(f"the {aspect} crop does not fit the portrait; rebuild the bundle")
        self._prepare_fields(d, side)
        self._prepare_landmarks(d)
        self._mouth_w = float(x["mouth_width"]) * self._sx
        # The photo's teeth with, as a fourth channel, where they show (the drawn teeth fill the rest).
        self._teeth = None
        if d.teeth is not None:
            shown = d.teeth_mask if d.teeth_mask is not None else np.full(d.teeth.shape[:2], 255, np.uint8)
            self._teeth = np.ascontiguousarray(np.dstack([d.teeth, shown]))
        self._teeth_colour = self._drawn_teeth_colour()
        self._box = self._compute_mouth_box()
        self._lip_colour = self._sample_lip_colour()
        rgb = self._base[..., :3].astype(np.int16)
        self._monochrome = bool(np.abs(rgb - rgb[..., 1:2]).max() <= 4)

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

    def render(self, state: FaceState) -> np.ndarray:
        weights = self._weights(state)
        acc = self._acc
        np.copyto(acc, self._grid)
        for field, w in zip(self._head_fields, weights[:3], strict=True):
            if abs(w) > _MIN_WEIGHT:
                cv2.scaleAdd(field, float(w), acc, dst=acc)
        fy0, fy1, fx0, fx1 = self._face_slice
        face_acc = self._face_acc
        np.copyto(face_acc, acc[fy0:fy1, fx0:fx1])
        for field, w in zip(self._face_fields, weights[3:], strict=True):
            if abs(w) > _MIN_WEIGHT:
                cv2.scaleAdd(field, float(w), face_acc, dst=face_acc)
        acc[fy0:fy1, fx0:fx1] = face_acc
        img = self._base.copy()
        y0, y1, x0, x1 = self._roi
        img[y0:y1, x0:x1] = cv2.remap(self._src, acc, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        pts = self._points + np.tensordot(weights, self._moves, axes=1)
        m = state.mouth.clamped()
        self._draw_mouth(img, pts, m)
        blink = min(1.0, max(0.0, state.blink))
        if blink > 0.02:
            for upper, lower in self._eyes:
                self._draw_lid(img, pts[upper], pts[lower], blink)
        return img

    def mouth_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive: contains the lips for every mouth shape and head pose."""
        return self._box

    def eye_centers(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Pixel centres of the (viewer's) left and right iris at the rest pose."""
        r, left = self._points[self._iris[0]], self._points[self._iris[1]]
        return (float(r[0]), float(r[1])), (float(left[0]), float(left[1]))

    def eye_boxes(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """(x0, y0, x1, y1) of the viewer's left and right eye opening at the rest pose, for tests."""
        boxes = []
        for upper, lower in self._eyes:
            p = np.concatenate([self._points[upper], self._points[lower]])
            x0, y0 = np.floor(p.min(axis=0)).astype(int)
            x1, y1 = np.ceil(p.max(axis=0)).astype(int) + 1
            boxes.append((int(x0), int(y0), int(x1), int(y1)))
        return boxes[0], boxes[1]

    # ---- set-up ------------------------------------------------------------------------------------
    def _source(self, d: PortraitData, background: str, size: tuple[int, int]) -> np.ndarray:
        interp = cv2.INTER_AREA if size[0] < d.photo.shape[1] else cv2.INTER_CUBIC
        photo = cv2.resize(d.photo, size, interpolation=interp)
        if background == "scene":
            return photo
        alpha = cv2.resize(d.mask, size, interpolation=cv2.INTER_LINEAR)
        if background == "transparent":
            return np.ascontiguousarray(np.dstack([photo, alpha]))
        a = alpha.astype(np.float32)[..., None] / 255.0
        green = np.array(CHROMA_GREEN, np.float32)
        return (photo * a + green * (1 - a)).round().astype(np.uint8)

    def _canonical_grid(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonical coordinates of output pixels [y0:y1, x0:x1]."""
        xs = (np.arange(x0, x1, dtype=np.float32) + self._ox) / self._sx
        ys = (np.arange(y0, y1, dtype=np.float32) + self._oy) / self._sy
        return np.meshgrid(xs, ys)

    def _resample(
        self, field: np.ndarray, cx: np.ndarray, cy: np.ndarray, origin: tuple[float, float], step: float
    ) -> np.ndarray:
        """A canonical field sampled at canonical points, converted to output-scale source pixels."""
        mx = ((cx - origin[0]) / step).astype(np.float32)
        my = ((cy - origin[1]) / step).astype(np.float32)
        out = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out[..., 0] *= self._sx
        out[..., 1] *= self._sy
        return out

    def _prepare_fields(self, d: PortraitData, side: int) -> None:
        x = d.extra
        step = side / int(x["head_grid"])
        cx, cy = self._canonical_grid(0, self._h, 0, self._w)
        heads = [self._resample(f, cx, cy, (0.0, 0.0), step) for f in d.head]
        ox, oy = (float(v) for v in x["face_origin"])
        fstep = float(x["face_step"])
        faces = [self._resample(f, cx, cy, (ox, oy), fstep) for f in d.face]
        # Only the region any field moves is remapped; the rest of the frame is the static base.
        fmoving = np.zeros((self._h, self._w), bool)
        for f in faces:
            fmoving |= (np.abs(f[..., 0]) > 0.05) | (np.abs(f[..., 1]) > 0.05)
        moving = fmoving.copy()
        for f in heads:
            moving |= (np.abs(f[..., 0]) > 0.05) | (np.abs(f[..., 1]) > 0.05)
        self._roi = _bbox(moving, self._h, self._w)
        y0, y1, x0, x1 = self._roi
        fy0, fy1, fx0, fx1 = _bbox(fmoving, self._h, self._w)
        self._face_slice = (fy0 - y0, fy1 - y0, fx0 - x0, fx1 - x0)
        self._head_fields = [np.ascontiguousarray(f[y0:y1, x0:x1]) for f in heads]
        self._face_fields = [np.ascontiguousarray(f[fy0:fy1, fx0:fx1]) for f in faces]
        gx, gy = np.meshgrid(
            np.arange(x0, x1, dtype=np.float32) + self._ox, np.arange(y0, y1, dtype=np.float32) + self._oy
        )
        self._grid = np.ascontiguousarray(np.dstack([gx, gy]))
        self._acc = np.empty_like(self._grid)
        self._face_acc = np.empty((fy1 - fy0, fx1 - fx0, 2), np.float32)
        self._head_at = [float(x["head_field_at"][k]) for k in ("yaw", "pitch", "roll")]
        self._controls = list(x["face_controls"])

    def _prepare_landmarks(self, d: PortraitData) -> None:
        scale = np.array([self._sx, self._sy])
        self._points = d.landmarks[:, :2] * scale - np.array([self._ox, self._oy])
        self._moves = d.moves * scale
        self._eyes = [
            (list(fm.RIGHT_EYE_UPPER), list(fm.RIGHT_EYE_LOWER)),
            (list(fm.LEFT_EYE_UPPER), list(fm.LEFT_EYE_LOWER)),
        ]
        self._iris = (fm.RIGHT_IRIS[0], fm.LEFT_IRIS[0])
        self._upper_inner, self._lower_inner = list(fm.UPPER_INNER), list(fm.LOWER_INNER)

    def _compute_mouth_box(self) -> tuple[int, int, int, int]:
        lips = list({*fm.UPPER_OUTER, *fm.LOWER_OUTER})
        extremes = []
        # Every corner of the usual head pose range (the animator's ±8° yaw, ±6° pitch, ±5° roll) with
        # each extreme mouth.
        for yaw, pitch, roll in itertools.product((-1.0, 0.0, 1.0), repeat=3):
            for face in (
                {"jaw": 1.0},
                {"jaw": 1.0, "wide": 1.0},
                {"jaw": 1.0, "round": 1.0},
                {"wide": 1.0, "smile": 1.0},
                {"round": 1.0},
            ):
                w = np.zeros(3 + len(self._controls))
                w[:3] = (yaw, pitch, roll)
                w[3 + self._controls.index("close")] = 1.0
                for k, v in face.items():
                    w[3 + self._controls.index(k)] = v
                extremes.append((self._points + np.tensordot(w, self._moves, axes=1))[lips])
        p = np.concatenate(extremes)
        pad = 0.04 * self._mouth_w
        x0, y0 = np.floor(p.min(axis=0) - pad).astype(int)
        x1, y1 = np.ceil(p.max(axis=0) + pad).astype(int)
        return max(0, int(x0)), max(0, int(y0)), min(self._w, int(x1)), min(self._h, int(y1))

    def _drawn_teeth_colour(self) -> np.ndarray:
        """The photo's own teeth colour where it shows enough of them, else ivory in the photo's light: no
        brighter than teeth usually are beside the skin of the same face (the astronaut's teeth are 1.22
        times her skin's median brightness), so a dim or dark photo does not get glaring white teeth."""
        if self._teeth is not None:
            shown = self._teeth[..., 3] > 200
            if shown.sum() >= 20:
                return np.median(self._teeth[..., :3][shown].astype(np.float32), axis=0)
        oval = np.zeros((self._h, self._w), np.uint8)
        cv2.fillPoly(oval, [np.round(self._points[list(fm.FACE_OVAL)]).astype(np.int32)], 255)
        skin = self._base[..., :3][oval > 0].astype(np.float32)
        if len(skin) < 20:
            return _TEETH
        skin_luma = float(np.median(skin @ _LUMA))
        return _TEETH * min(1.0, _TEETH_OVER_SKIN * skin_luma / float(_TEETH @ _LUMA))

    def _sample_lip_colour(self) -> np.ndarray:
        """The photo's lip colour, a little darker (the inner edge is in the lip's shadow): the median of
        the lips between their outer and inner contours at rest."""
        outer = np.concatenate([self._points[list(fm.UPPER_OUTER)], self._points[list(fm.LOWER_OUTER[::-1])]])
        inner = np.concatenate([self._points[self._upper_inner], self._points[self._lower_inner[::-1]]])
        mask = np.zeros((self._h, self._w), np.uint8)
        cv2.fillPoly(mask, [np.round(outer).astype(np.int32)], 255)
        cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 0)
        lips = self._base[..., :3][mask > 0]
        if len(lips) < 4:
            return np.array([150.0, 80.0, 80.0])
        return np.median(lips.astype(np.float32), axis=0) * 0.7

    # ---- per frame -----------------------------------------------------------------------------------
    def _weights(self, s: FaceState) -> np.ndarray:
        m = s.mouth.clamped()
        yaw, pitch, roll = (
            max(-1.5, min(1.5, v / at))
            for v, at in zip((s.head_yaw, s.head_pitch, s.head_roll), self._head_at, strict=True)
        )
        smile = min(1.0, max(0.0, s.smile))
        face = {
            # Spread lips show less of the gap for the same jaw drop (they thin): the jaw drops that much
            # further, so the visible opening follows `open` alone. Rounded lips do not hide it (their inner
            # edges stay apart; an independent tracker read rounded mouths as more open, not less), so
            # rounding adds no drop.
            "jaw": min(1.0, m.open * (1.0 - m.closed) * (1.0 + 0.4 * m.width)),
            "close": 1.0,
            "press": m.closed,
            "wide": m.width,
            "round": m.round,
            "smile": 0.6 * smile,
            "brow": min(1.0, max(0.0, s.brow)),
            "gaze_x": max(-1.0, min(1.0, s.gaze_x)),
            "gaze_y": max(-1.0, min(1.0, s.gaze_y)),
        }
        # Bundles built before a control existed lack its field; the others still apply.
        return np.array([yaw, pitch, roll, *(face[k] for k in self._controls)])

    def _draw_mouth(self, img: np.ndarray, pts: np.ndarray, m: MouthParams) -> None:
        upper, lower = pts[self._upper_inner], pts[self._lower_inner]
        gap = float(np.max(lower[:, 1] - upper[:, 1]))
        if gap < 0.03 * self._mouth_w:
            self._draw_lip_line(img, (upper + lower) / 2, m.closed)
        if gap < 0.4:
            if m.bite > 0.3:
                self._draw_bite(img, upper, m.bite)
            return
        poly = np.concatenate([upper, lower[::-1]])
        x0, y0 = np.floor(poly.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int) + 3
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(self._w, x1), min(self._h, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        h, w = y1 - y0, x1 - x0
        local = poly - [x0, y0]
        alpha = np.zeros((h, w), np.uint8)
        cv2.fillPoly(alpha, [_fixed(local)], 255, cv2.LINE_AA, _SHIFT)
        # The cavity: lit under the upper teeth and toward the lips, darkest at the back in the middle.
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        centre = local.mean(axis=0)
        half_w, half_h = max(1.0, (local[:, 0].max() - local[:, 0].min()) / 2), max(1.0, gap / 2)
        xs = (np.arange(w, dtype=np.float32)[None, :] - centre[0]) / half_w
        ys = (np.arange(h, dtype=np.float32)[:, None] - centre[1]) / half_h
        depth = np.clip(1.0 - np.sqrt(xs * xs + ys * ys), 0.0, 1.0)[..., None]  # 1 at the back
        inside = (_CAVITY_TOP * (1 - t) + _CAVITY_DEEP * t) * (
            1.0 - 0.45 * depth
        ) + _CAVITY_DEEP * 0.45 * depth
        # The upper teeth: drawn under the upper lip, and the photo's own over them where it shows them.
        teeth_h = min(0.55 * gap, 0.11 * self._mouth_w) * (0.75 + 0.25 * m.teeth)
        self._draw_teeth(inside, upper - [x0, y0], teeth_h, lower=False)
        if self._teeth is not None:
            self._paste_photo_teeth(inside, upper - [x0, y0], teeth_h)
        # The lower teeth come up from behind the lower lip as the jaw drops, more when the viseme shows
        # them; they ride with the lower lip (the jaw).
        lower_teeth = min(0.25 * gap, 0.07 * self._mouth_w) * (0.4 + 0.6 * m.teeth)
        if gap > 0.15 * self._mouth_w:
            self._draw_teeth(inside, lower - [x0, y0], lower_teeth, lower=True)
        # The tongue lies behind the lower teeth, its tip showing over them on open vowels, and rises to the
        # upper teeth on L and TH. Lifted on every viseme, its lip-pink top was read as the lower lip by an
        # independent tracker, which then saw less opening at mid openings than was drawn.
        tongue = max(m.tongue, 0.35 + 0.35 * m.open)
        if gap > 0.08 * self._mouth_w:
            # Placed from the lower lip's lowest point, not its mean height: on a wide opening the lip's
            # curve sags far below its mean, and a tongue up there filled the lower half of the mouth and
            # was read as the lower lip.
            middle = lower[np.argmax(lower[:, 1])] - [x0, y0]
            lift = (0.1 + 0.55 * m.tongue) * gap
            axes = (max(1, round(0.32 * (upper[-1, 0] - upper[0, 0]))), max(1, round(0.35 * gap)))
            tongue_mask = np.zeros((h, w), np.uint8)
            cx, cy = round(middle[0] * 4), round((middle[1] - lift + 0.3 * gap) * 4)
            cv2.ellipse(
                tongue_mask, (cx, cy), (axes[0] * 4, axes[1] * 4), 0, 180, 360, 255, -1, cv2.LINE_AA, 2
            )
            ta = tongue_mask.astype(np.float32)[..., None] / 255.0 * min(1.0, tongue * 1.4)
            shade = np.clip(0.55 + 0.45 * (1 - t) * (1 - 0.5 * depth), 0, 1)  # darker toward the throat
            inside = inside * (1 - ta) + _TONGUE * shade * ta
        # The inner lip edge, in the photo's own lip colour, so the lips end in lip and not in a light rim.
        edge = np.zeros((h, w), np.uint8)
        thickness = max(1, round(0.018 * self._mouth_w))
        for lip in (upper, lower):
            cv2.polylines(edge, [_fixed(lip - [x0, y0])], False, 255, thickness, cv2.LINE_AA, _SHIFT)
        ea = cv2.GaussianBlur(edge, (3, 3), 0).astype(np.float32)[..., None] / 255.0 * 0.75
        inside = inside * (1 - ea) + self._lip_colour * ea
        if self._monochrome:  # a black-and-white photo gets a grey mouth
            inside = np.repeat(inside @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=2)
        a = alpha.astype(np.float32)[..., None] / 255.0
        region = img[y0:y1, x0:x1, :3].astype(np.float32)
        img[y0:y1, x0:x1, :3] = (region * (1 - a) + inside * a).round().astype(np.uint8)

    def _draw_lip_line(self, img: np.ndarray, line: np.ndarray, pressed: float) -> None:
        """Closed lips meet in a thin line of their own shadowed colour, darker when pressed together. It
        also covers where the warp's seam blends the photo's upper and lower lip (a photo with its mouth
        open would show its teeth there)."""
        width = 0.025 * self._mouth_w
        x0, y0 = np.floor(line.min(axis=0) - width).astype(int)
        x1, y1 = np.ceil(line.max(axis=0) + width).astype(int) + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(self._w, x1), min(self._h, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.polylines(mask, [_fixed(line - [x0, y0])], False, 255, max(1, round(width)), cv2.LINE_AA, _SHIFT)
        a = mask.astype(np.float32)[..., None] / 255.0 * 0.85
        region = img[y0:y1, x0:x1, :3].astype(np.float32)
        # It only darkens: where the photo's lips are darker than their median colour it changes nothing.
        line_colour = np.minimum(region, self._lip_colour * (1.0 - 0.2 * pressed))
        img[y0:y1, x0:x1, :3] = (region * (1 - a) + line_colour * a).round().astype(np.uint8)

    def _draw_teeth(self, inside: np.ndarray, lip: np.ndarray, height: float, *, lower: bool) -> None:
        """A row of teeth hanging from the upper lip (or standing on the lower one) down to `height`: in the
        lip's shadow next to it, darker toward the corners, with a thin gap and a rounded tip per tooth."""
        if height < 0.5:
            return
        h, w = inside.shape[:2]
        # Teeth stop short of the corners, where the cheeks hide them.
        core = lip[2:-2] if lower else lip[1:-1]
        order = np.argsort(core[:, 0])
        cx, cy = core[order, 0], core[order, 1]
        xs = np.arange(w, dtype=np.float32)
        span = max(1.0, float(lip[:, 0].max() - lip[:, 0].min()))
        centre = (lip[0, 0] + lip[-1, 0]) / 2
        tooth = max(2.0, span / 9)
        phase = np.abs(((xs - centre) / tooth + 0.5) % 1.0 - 0.5)  # 0 mid-tooth, 0.5 between teeth
        reach = height * (1.0 - 0.18 * (2 * phase) ** 2)  # rounded tips
        # Only the rows the teeth can reach are drawn.
        top = max(0, int(np.floor(cy.min() - (height if lower else 0.0))) - 1)
        bottom = min(h, int(np.ceil(cy.max() + (0.0 if lower else height))) + 2)
        if bottom - top < 1:
            return
        inside = inside[top:bottom]
        rows = np.arange(top, bottom, dtype=np.float32)[:, None]
        from_lip = rows - np.interp(xs, cx, cy)[None, :]
        depth = -from_lip if lower else from_lip  # how far from the lip into the teeth
        a = np.clip(depth + 0.5, 0, 1) * np.clip(reach[None, :] - depth + 0.5, 0, 1)
        a *= np.clip(np.minimum(xs - cx[0], cx[-1] - xs) + 0.5, 0, 1)[None, :]
        shade = 1.0 - 0.35 * np.clip(np.abs(xs - centre) / (span / 2), 0, 1) ** 2
        gaps = 1.0 - 0.18 * np.clip(1.0 - (0.5 - phase) / 0.08, 0, 1)
        shadow = 0.7 + 0.3 * np.clip(depth / (0.4 * height), 0, 1)
        colour = self._teeth_colour * (0.8 if lower else 1.0)  # lower teeth are in shadow
        colour = colour * (shadow * (shade * gaps)[None, :])[..., None]
        a = a[..., None].astype(np.float32)
        inside[:] = inside * (1 - a) + colour * a

    def _paste_photo_teeth(self, inside: np.ndarray, lip: np.ndarray, height: float) -> None:
        """The photo's teeth (rectified at build time), stretched to the current mouth width and hanging
        from the moved upper lip, where the photo shows them, fading into the cavity below."""
        teeth = self._teeth
        assert teeth is not None
        h, w = inside.shape[:2]
        order = np.argsort(lip[:, 0])
        lx, ly = lip[order, 0], lip[order, 1]
        x0, x1 = max(0, int(np.floor(lx[0]))), min(w, int(np.ceil(lx[-1])) + 1)
        span = lx[-1] - lx[0]
        if x1 - x0 < 2 or span < 2 or height < 0.5:
            return
        scale = teeth.shape[1] / span  # photo pixels per output pixel, both ways: the teeth keep their shape
        cols = np.arange(x0, x1, dtype=np.float32)
        top = np.interp(cols, lx, ly).astype(np.float32)
        depth = np.arange(h, dtype=np.float32)[:, None] - top[None, :]
        mx = np.repeat(((cols - lx[0]) * scale)[None, :], h, axis=0).astype(np.float32)
        my = (depth * scale).astype(np.float32)
        piece = cv2.remap(teeth, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        piece = piece.astype(np.float32)
        # Where the photo shows teeth, from the lip down to `height`, then fading into the dark of the mouth.
        fade = np.clip(1.0 - (depth - 0.7 * height) / (0.5 * height + 1e-6), 0, 1) * (depth > -1)
        fade = (fade * piece[..., 3] / 255.0)[..., None]
        target = inside[:, x0:x1]
        target[:] = target * (1 - fade) + piece[..., :3] * fade

    def _draw_bite(self, img: np.ndarray, upper: np.ndarray, bite: float) -> None:
        """F/V: the upper teeth rest on the lower lip."""
        band_h = 0.05 * self._mouth_w * min(1.0, bite)
        core = upper[2:-2]
        poly = np.concatenate([core, (core + np.array([0.0, band_h]))[::-1]])
        cv2.fillPoly(
            img, [_fixed(poly)], (*(int(c) for c in self._teeth_colour), 255)[: self._c], cv2.LINE_AA, _SHIFT
        )

    def _draw_lid(self, img: np.ndarray, upper: np.ndarray, lower: np.ndarray, blink: float) -> None:
        """Slide the upper lid down over the eye; nothing below its edge is touched, so the iris stays whole.

        The lid is the photo's own skin and lashes above the eye, stretched down to the edge like an
        unfolding lid."""
        # Closed, the lids meet just above the lower lid line (which rises a little in a real blink).
        closed = lower + 0.12 * (upper - lower)
        edge = upper + blink * (closed - upper)
        height = float(np.max(lower[:, 1] - upper[:, 1]))
        if height < 1.0:
            return
        x0 = max(0, int(np.floor(upper[:, 0].min())) - 1)
        x1 = min(self._w, int(np.ceil(upper[:, 0].max())) + 2)
        y0 = max(0, int(np.floor(upper[:, 1].min() - 1.1 * height)))
        y1 = min(self._h, int(np.ceil(edge[:, 1].max())) + 2)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        cols = np.arange(x0, x1, dtype=np.float32)
        order = np.argsort(upper[:, 0])
        top = np.interp(cols, upper[order, 0], upper[order, 1]).astype(np.float32)
        order = np.argsort(edge[:, 0])
        bottom = np.interp(cols, edge[order, 0], edge[order, 1]).astype(np.float32)
        # Between the fold above the eye and the moving edge, the strip from the fold down to the lashes is
        # stretched: continuous at the fold, the lashes at the edge, monotonic so nothing is mirrored.
        # The lashes sit a little above the landmarks' lid line, hence `lashes`; zero at the corners.
        travel = bottom - top
        lashes = top - 0.2 * height * travel / max(float(travel.max()), 1e-6)
        fold = top - height
        rows = np.arange(y0, y1, dtype=np.float32)[:, None]
        stretch = (lashes - fold) / np.maximum(bottom - fold, 1e-3)
        my = np.where(rows > fold, fold + (rows - fold) * stretch, rows).astype(np.float32) - y0
        mx = np.repeat((cols - x0)[None, :], y1 - y0, axis=0)
        roi = img[y0:y1, x0:x1]
        lid = cv2.remap(roi, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        a = np.clip(bottom + 0.5 - rows, 0.0, 1.0)[..., None]  # 1 above the edge, anti-aliased, 0 below
        # The crease: where the lid folds under the brow skin, a soft shadow that deepens as the lid
        # closes, fading out toward the corners.
        crease = top - 0.45 * height
        reach = (travel / max(float(travel.max()), 1e-6))[None, :]
        shadow = 0.28 * blink * reach * np.exp(-(((rows - crease) / (0.14 * height)) ** 2))
        lid *= (1.0 - shadow)[..., None]
        roi[:] = (roi * (1 - a) + lid * a).round().astype(np.uint8)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Points as the fixed-point int32 that cv2's anti-aliased drawing takes with shift=_SHIFT."""
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _bbox(mask: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the True pixels, or a 1×1 box when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0, 1, 0, 1
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
