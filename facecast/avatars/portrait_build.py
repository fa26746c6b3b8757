"""Building a `portrait` bundle from one photo and its face landmarks (no I/O; see build.py for that).

Everything the renderer needs per frame is computed here, once:
- the canonical frame: a square crop around the face (2.8 face heights wide), padded by a blurred edge
  where the photo ends, at 512-1024 px;
- warp fields: for each control (jaw, lips, brows, gaze, head yaw/pitch/roll) a field of backward
  displacements — the renderer blends them per frame and applies the sum with one `cv2.remap`;
- where each landmark moves under each control, so the mouth interior and eyelids follow the warp;
- the photo's own teeth when the mouth is open in the photo, and the person mask.

The fields are built analytically from the landmarks rather than by a generic mesh solver, because the
mouth needs a hard seam: the upper lip must not be dragged down with the jaw. The jaw turns about a pivot
near the ear line (the jaw joints, behind the face: the landmarks' depth says how far in front of it each
point is), so the chin swings on an arc and the jaw line moves less toward the ears, instead of the lower
face shifting down as one piece. Head motion falls off to zero at a neck anchor below the chin, and the
jaw's pull fades out before the neck, so neither stretches it.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from facecast import __version__
from facecast.avatars import face_mesh as fm
from facecast.avatars.bundle import FORMAT_VERSION, FrameSize, Manifest, asset_info
from facecast.avatars.faces import FaceAnalysis
from facecast.avatars.photo_checks import face_roll_degrees

ProgressFn = Callable[[str, float], None]

PORTRAIT_VERSION = 1
FACE_SPAN = 2.8  # canonical side ÷ face height (forehead landmark to chin)
FACE_CENTRE_Y = 0.41  # the face centre's height in the canonical frame, as a fraction of its side
MIN_SIDE, MAX_SIDE = 512, 1024
# Output crops per aspect ratio, (x, y, width, height) as fractions of the canonical side.
CROPS: dict[str, tuple[float, float, float, float]] = {
    "1:1": (0.07, 0.04, 0.86, 0.86),
    "4:3": (0.0, 0.04, 1.0, 0.75),
    "3:4": (0.125, 0.0, 0.75, 1.0),
}
MIN_ROLL_CORRECTION = 5.0  # degrees; a smaller head tilt is left as it is in the photo
HEAD_CONTROLS: tuple[str, ...] = ("yaw", "pitch", "roll")
# The head pose each head field is built for (degrees); the renderer scales linearly.
HEAD_FIELD_AT: dict[str, float] = {"yaw": 8.0, "pitch": 6.0, "roll": 5.0}
FACE_CONTROLS: tuple[str, ...] = (
    "jaw", "close", "press", "wide", "round", "smile", "brow", "gaze_x", "gaze_y",
)  # fmt: skip
HEAD_GRID = 64  # head fields are sampled on a (HEAD_GRID + 1)² grid over the canonical frame
JAW_DROP = 0.12  # full jaw drop at the lower lip, in face heights
# Of that drop, the share that is the jaw joint sliding down and forward (all of the jaw moves by it); the
# rest is the rotation about the joints.
JAW_SLIDE = 0.1
# The jaw joints: beside the face-oval points at the ear line (93, 323), this much of a face height
# further back than those points.
JAW_PIVOT_BEHIND = 0.07
MAX_HINGE_TURN = 0.75  # the jaw axis's largest depth component (sine of its turn from the picture plane)
PRESS = 0.18  # m/b/p: the share of each lip's thickness that pressing the lips together takes away
LIP_MARGIN = 0.08  # face heights the jaw's mask reaches past the lower lip's outline
NECK_ANCHOR = 0.32  # face heights below the chin where the jaw's and the head's motion reach zero
# Glasses stay on the nose when the brows go up, but a warp moves a frame that crosses the brows with
# them: with glasses found, the brows move this much of their usual travel, so the frame barely bends.
BROW_GAIN_WITH_GLASSES = 0.3


@dataclass(frozen=True)
class _Geometry:
    """The landmarks in canonical pixels, and the measures the fields are built from."""

    lm: np.ndarray  # (478, 3)
    face_h: float
    mouth_w: float
    axis: np.ndarray  # unit vector along the mouth, viewer's left to right
    normal: np.ndarray  # unit vector perpendicular to it, pointing down the face
    mouth_mid: np.ndarray  # midpoint of the mouth corners
    depth: np.ndarray  # (side, side) float32: the landmarks' depth (z, + away from the camera), smoothed

    def uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.mouth_mid[0], y - self.mouth_mid[1]
        return dx * self.axis[0] + dy * self.axis[1], dx * self.normal[0] + dy * self.normal[1]

    def point(self, index: int) -> np.ndarray:
        return self.lm[index, :2]


def build_portrait(
    image: np.ndarray,
    analysis: FaceAnalysis,
    *,
    name: str,
    display_name: str,
    description: str = "",
    consent: str | None = None,
    license: str | None = None,
    created_at: str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Manifest, dict[str, bytes]]:
    """A portrait bundle (manifest and files, for write_bundle) from an RGB photo and its analysis.

    The largest face is used when the photo has several."""
    report = progress or (lambda what, fraction: None)
    report("framing the portrait", 0.0)
    face = analysis.largest
    photo, lm, mask = _canonical(image, face.landmarks, analysis.person_mask)
    side = photo.shape[0]
    geo = _geometry(lm, side)
    report("computing the warp fields", 0.2)
    head = _head_fields(geo, mask, side)
    report("computing the warp fields", 0.5)
    glasses = _has_glasses(photo, geo)
    hinge = _jaw_hinge(geo)
    origin, step, face_fields, moves = _face_fields(geo, photo, mask, hinge)
    if glasses:
        brow = FACE_CONTROLS.index("brow")
        face_fields[brow] *= BROW_GAIN_WITH_GLASSES
        moves[brow] *= BROW_GAIN_WITH_GLASSES
    head_moves = _sample_head_moves(head, lm[:, :2], side)
    report("capturing the teeth", 0.8)
    teeth = _photo_teeth(photo, geo)
    files: dict[str, bytes] = {
        "photo.png": _png(photo),
        "mask.png": _png(mask),
        "landmarks.npy": _npy(lm.astype(np.float32)),
        "warp/head.npy": _npy(head.astype(np.float16)),
        "warp/face.npy": _npy(face_fields.astype(np.float16)),
        "warp/moves.npy": _npy(np.concatenate([head_moves, moves]).astype(np.float32)),
    }
    if teeth is not None:
        files["teeth.png"] = _png(teeth[0])
        files["teeth_mask.png"] = _png(teeth[1])
    extra = {
        "portrait_version": PORTRAIT_VERSION,
        "face_height": round(geo.face_h, 3),
        "mouth_width": round(geo.mouth_w, 3),
        "crops": {k: list(v) for k, v in CROPS.items()},
        "head_controls": list(HEAD_CONTROLS),
        "head_field_at": HEAD_FIELD_AT,
        "head_grid": HEAD_GRID,
        "face_controls": list(FACE_CONTROLS),
        "face_origin": [int(origin[0]), int(origin[1])],
        "face_step": step,
        "jaw_drop_px": round(JAW_DROP * geo.face_h, 3),
        "jaw_pivot": [round(float(v), 2) for v in hinge.pivot],
        "jaw_turn_deg": round(math.degrees(hinge.angle), 2),
        "mouth_axis": [round(float(v), 6) for v in geo.axis],
        "teeth": "photo" if teeth is not None else "drawn",
        "glasses": glasses,
    }
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        kind="portrait",
        name=name,
        display_name=display_name,
        created_at=created_at or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        facecast_version=__version__,
        frame=FrameSize(side, side),
        assets={n: asset_info(n, d) for n, d in files.items()},
        description=description,
        license=license,
        consent=consent,
        extra=extra,
    )
    report("portrait ready", 1.0)
    return manifest, files


# ---- framing ------------------------------------------------------------------------------------------


def _canonical(
    image: np.ndarray, landmarks: np.ndarray, person_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop (and pad where the photo ends) a square around the face, turned so that the face is upright;
    returns photo, landmarks, mask."""
    top, chin = landmarks[fm.FOREHEAD, :2], landmarks[fm.CHIN, :2]
    face_h = float(np.linalg.norm(chin - top))
    if face_h < 24:
        raise ValueError(
            f"the face is only {face_h:.0f} px tall; use a photo where the face is at least 100 px tall"
        )
    centre = (top + chin) / 2
    span = FACE_SPAN * face_h
    side = int(min(MAX_SIDE, max(MIN_SIDE, round(span))))
    scale = side / span
    # A tilted head is turned upright about the face centre, so the jaw drops straight down the frame.
    roll = face_roll_degrees(landmarks)
    angle = roll if abs(roll) > MIN_ROLL_CORRECTION else 0.0
    affine = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
    affine[:, 2] += np.array([side / 2, FACE_CENTRE_Y * side]) - centre
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    photo = cv2.warpAffine(image, affine, (side, side), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(
        person_mask, affine, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    inside = cv2.warpAffine(
        np.full(image.shape[:2], 255, np.uint8), affine, (side, side), flags=cv2.INTER_LINEAR, borderValue=0
    )
    if inside.min() < 255:
        # Replicated edges streak; fade them into a heavy blur of themselves instead.
        blurred = cv2.GaussianBlur(photo, (0, 0), side / 40)
        alpha = cv2.GaussianBlur(inside, (0, 0), side / 100).astype(np.float32)[..., None] / 255.0
        alpha = np.minimum(alpha, inside[..., None] / 255.0 + 0.0)
        photo = (photo * alpha + blurred * (1 - alpha)).round().astype(np.uint8)
    lm = landmarks.astype(np.float64).copy()
    lm[:, :2] = lm[:, :2] @ affine[:, :2].T + affine[:, 2]
    lm[:, 2] = lm[:, 2] * scale
    return np.ascontiguousarray(photo), lm, np.ascontiguousarray(mask)


def _geometry(lm: np.ndarray, side: int) -> _Geometry:
    left, right = lm[fm.MOUTH_RIGHT, :2], lm[fm.MOUTH_LEFT, :2]
    axis = right - left
    mouth_w = float(np.linalg.norm(axis))
    axis = axis / mouth_w
    normal = np.array([-axis[1], axis[0]])
    face_h = float(np.linalg.norm(lm[fm.CHIN, :2] - lm[fm.FOREHEAD, :2]))
    depth = _depth_map(lm, side, face_h)
    return _Geometry(lm, face_h, mouth_w, axis, normal, (left + right) / 2, depth)


def _depth_map(lm: np.ndarray, side: int, face_h: float) -> np.ndarray:
    """The landmarks' depth spread over the frame: a Gaussian-weighted mean of the nearby landmarks' z
    (normalised convolution), smooth, and extended past the face by a wider mean."""
    total = np.zeros((side, side), np.float32)
    count = np.zeros((side, side), np.float32)
    cols = np.clip(np.round(lm[:, 0]).astype(int), 0, side - 1)
    rows = np.clip(np.round(lm[:, 1]).astype(int), 0, side - 1)
    np.add.at(total, (rows, cols), lm[:, 2].astype(np.float32))
    np.add.at(count, (rows, cols), 1.0)
    near_t, near_c = (cv2.GaussianBlur(a, (0, 0), 0.04 * face_h) for a in (total, count))
    far_t, far_c = (cv2.GaussianBlur(a, (0, 0), 0.25 * face_h) for a in (total, count))
    near = near_t / np.maximum(near_c, 1e-12)
    far = far_t / np.maximum(far_c, 1e-12)
    # Where no landmark is near (under a third of one landmark's peak weight), the wide mean takes over.
    one = 1.0 / (2.0 * math.pi * (0.04 * face_h) ** 2)
    trust = np.clip(near_c / (0.3 * one), 0.0, 1.0)
    return (near * trust + far * (1.0 - trust)).astype(np.float32)


# ---- fields ---------------------------------------------------------------------------------------------


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float | None = None
) -> np.ndarray:
    sy = sx if sy is None else sy
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2) / 2)


def _head_fields(geo: _Geometry, mask: np.ndarray, side: int) -> np.ndarray:
    """(3, G+1, G+1, 2) backward displacements for yaw, pitch and roll at HEAD_FIELD_AT degrees."""
    h = geo.face_h
    region = np.zeros((side, side), np.uint8)
    oval = geo.lm[list(fm.FACE_OVAL), :2]
    centre = oval.mean(axis=0)
    cv2.fillConvexPoly(region, np.round(centre + 1.3 * (oval - centre)).astype(np.int32), 255)
    chin_y = geo.point(fm.CHIN)[1]
    hair = (mask > 127) & (np.arange(side)[:, None] < chin_y - 0.1 * h)
    region[hair] = 255
    weight = cv2.GaussianBlur(region.astype(np.float32) / 255.0, (0, 0), 0.12 * h)
    ys = np.arange(side, dtype=np.float64)[:, None]
    weight *= _smoothstep((chin_y + NECK_ANCHOR * h - ys) / (0.4 * h))  # the neck anchor
    step = side / HEAD_GRID
    g = np.arange(HEAD_GRID + 1) * step
    gx, gy = np.meshgrid(g, g)
    w = cv2.resize(weight, (HEAD_GRID + 1, HEAD_GRID + 1), interpolation=cv2.INTER_AREA)
    nose = geo.point(fm.NOSE_TIP)
    depth = _gauss(gx, gy, nose[0], nose[1], 0.35 * h)
    parallax = 0.35 + 0.65 * depth  # the nose turns further than the outline
    fields = np.zeros((3, HEAD_GRID + 1, HEAD_GRID + 1, 2))
    fields[0, ..., 0] = 0.04 * h * w * parallax  # yaw: to the viewer's right
    fields[1, ..., 1] = 0.035 * h * w * parallax  # pitch: chin down
    pivot = geo.point(fm.CHIN) + np.array([0.0, NECK_ANCHOR * h])
    a = math.radians(HEAD_FIELD_AT["roll"])
    px, py = gx - pivot[0], gy - pivot[1]
    fields[2, ..., 0] = ((math.cos(a) - 1) * px - math.sin(a) * py) * w
    fields[2, ..., 1] = (math.sin(a) * px + (math.cos(a) - 1) * py) * w
    return -fields  # forward motion → where each output pixel samples from


def _sample_head_moves(head: np.ndarray, points: np.ndarray, side: int) -> np.ndarray:
    """Forward motion of each landmark under each head field: (3, 478, 2)."""
    step = side / HEAD_GRID
    out = np.zeros((head.shape[0], len(points), 2))
    for k in range(head.shape[0]):
        for c in range(2):
            out[k, :, c] = -_bilinear(head[k, ..., c], points[:, 0] / step, points[:, 1] / step)
    return out


def _bilinear(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, grid.shape[1] - 1.001)
    y = np.clip(y, 0, grid.shape[0] - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (
        grid[y0, x0] * (1 - fx) * (1 - fy)
        + grid[y0, x0 + 1] * fx * (1 - fy)
        + grid[y0 + 1, x0] * (1 - fx) * fy
        + grid[y0 + 1, x0 + 1] * fx * fy
    )


def _lip_curve(geo: _Geometry, indices: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    u, v = geo.uv(geo.lm[list(indices), 0], geo.lm[list(indices), 1])
    order = np.argsort(u)
    return u[order], v[order]


def _fade_to(distance: np.ndarray, reach: np.ndarray | float) -> np.ndarray:
    """1 up to distance 0, falling linearly to 0 at `reach`."""
    return np.clip(1 - distance / np.maximum(reach, 1e-6), 0, 1)


class _FaceFrame:
    """The mouth-aligned coordinates of a set of points, and the per-point quantities fields are made of."""

    def __init__(self, geo: _Geometry, x: np.ndarray, y: np.ndarray, lower: np.ndarray | None = None) -> None:
        self.geo = geo
        self.u, self.v = geo.uv(x, y)
        self.depth = _bilinear(geo.depth, x, y)
        uu, vu = _lip_curve(geo, fm.UPPER_INNER)
        ul, vl = _lip_curve(geo, fm.LOWER_INNER)
        self.v_upper = np.interp(self.u, uu, vu)
        self.v_lower = np.maximum(np.interp(self.u, ul, vl), self.v_upper)
        self.seam = (self.v_upper + self.v_lower) / 2
        self.v_upper_outer = np.minimum(np.interp(self.u, *_lip_curve(geo, fm.UPPER_OUTER)), self.v_upper)
        self.v_lower_outer = np.maximum(np.interp(self.u, *_lip_curve(geo, fm.LOWER_OUTER)), self.v_lower)
        nose_v = geo.uv(*geo.point(fm.NOSE_BOTTOM))[1]
        chin_v = geo.uv(*geo.point(fm.CHIN))[1]
        # 1 on the lips (and between them), fading over the skin to 0 at the nose bottom / the chin.
        self.above_lips = _fade_to(self.v_upper_outer - self.v, self.v_upper_outer - nose_v)
        self.below_lips = _fade_to(self.v - self.v_lower_outer, chin_v - self.v_lower_outer)
        # Fields are sampled where a pixel lands once the lips are closed (each lip moved half the photo's
        # gap onto the seam); landmarks (`lower` given) are where they are in the photo. `into_upper` and
        # `into_lower`: how far a point is into each lip from its inner edge; `above`, `beneath`: the
        # fades over the skin, there.
        closed_by = (self.v_lower - self.v_upper) / 2 if lower is None else np.zeros_like(self.v)
        self.into_upper = self.v_upper + closed_by - self.v
        self.into_lower = self.v - self.v_lower + closed_by
        self.above = _fade_to(self.v_upper_outer + closed_by - self.v, self.v_upper_outer - nose_v)
        self.beneath = _fade_to(self.v - self.v_lower_outer + closed_by, chin_v - self.v_lower_outer)
        half = geo.mouth_w / 2
        if lower is None:
            # Sharp inside the mouth, softening past the corners so the corners stretch instead of tearing.
            tau = 0.75 + np.maximum(0.0, np.abs(self.u) - 0.8 * half) * 0.6
            lower = _smoothstep(0.5 + 0.5 * (self.v - self.seam) / tau)
        self.below = lower  # 1 on the jaw's side of the lips, 0 on the upper lip's


@dataclass(frozen=True)
class _JawHinge:
    """The jaw's rotation: about the axis through both jaw joints, by the angle that drops the lower lip
    (1 - JAW_SLIDE) × JAW_DROP face heights in the picture."""

    pivot: np.ndarray  # (3,) x, y, depth: midway between the joints
    axis: np.ndarray  # (3,) unit, viewer's left to right
    angle: float  # radians

    def motion(self, x: np.ndarray, y: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Forward displacement (..., 2) in the picture of points at (x, y, depth) as the jaw turns."""
        return _rotate(np.stack([x, y, depth], axis=-1) - self.pivot, self.axis, self.angle)[..., :2]


def _rotate(q: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: how far vectors q (..., 3) move when turned by `angle` about the unit `axis`."""
    c, s = math.cos(angle), math.sin(angle)
    along = (q @ axis)[..., None] * axis
    return q * (c - 1.0) + np.cross(axis, q) * s + along * (1.0 - c)


def _jaw_hinge(geo: _Geometry) -> _JawHinge:
    h = geo.face_h
    joints = geo.lm[[fm.EAR_LINE_RIGHT, fm.EAR_LINE_LEFT], :3].copy()
    joints[:, 2] += JAW_PIVOT_BEHIND * h
    axis = joints[1] - joints[0]
    axis /= np.linalg.norm(axis)
    # A turned face's joints are partly guessed (one is hidden); past about 50° the axis's turn is not
    # trusted. Up to there it is: on a face in profile the jaw then turns in the picture as it does in a
    # side view, and an independent tracker reads the opening far better than with the axis held nearer
    # to frontal (30°: a sweep of held openings on the cameraman correlated 0.81 with the jaw, 0.90 now).
    axis[2] = np.clip(axis[2], -MAX_HINGE_TURN, MAX_HINGE_TURN)
    axis[:2] *= math.sqrt(1 - axis[2] ** 2) / np.linalg.norm(axis[:2])
    if axis[:2] @ geo.axis < 0:
        axis = -axis
    pivot = joints.mean(axis=0)
    lip = geo.point(fm.LOWER_INNER_MID)
    q = np.array([*lip, _bilinear(geo.depth, lip[:1], lip[1:])[0]]) - pivot
    target = (1.0 - JAW_SLIDE) * JAW_DROP * h

    def drop(angle: float) -> float:
        return float(_rotate(q, axis, angle)[:2] @ geo.normal)

    # The drop grows with the angle while the lip is in front of the joints; bisect for the target.
    sign = 1.0 if drop(0.01) > 0 else -1.0
    lo, hi = 0.0, 1.2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if drop(sign * mid) < target else (lo, mid)
    return _JawHinge(pivot, axis, sign * (lo + hi) / 2)


def _has_glasses(photo: np.ndarray, geo: _Geometry) -> bool:
    """Whether the face wears framed glasses: under both eyes, across most of the eye's width, a line much
    darker than the skin around it (the lower rim). Rimless and light metal frames are not found."""
    luma = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32)
    for outer, inner, lower in ((33, 133, fm.RIGHT_EYE_LOWER), (263, 362, fm.LEFT_EYE_LOWER)):
        a, b = geo.point(outer), geo.point(inner)
        eye_w = float(np.linalg.norm(a - b))
        xs = np.arange(round(min(a[0], b[0]) + 0.1 * eye_w), round(max(a[0], b[0]) - 0.1 * eye_w))
        lid = geo.lm[list(lower), :2]
        order = np.argsort(lid[:, 0])
        lid_y = np.interp(xs, lid[order, 0], lid[order, 1])
        crossed = 0
        for x, y in zip(xs, lid_y, strict=True):
            column = luma[round(y + 0.15 * eye_w) : round(y + eye_w), min(max(x, 0), luma.shape[1] - 1)]
            crossed += bool(column.size) and float(column.min()) < 0.55 * float(np.median(column))
        if not len(xs) or crossed < 0.6 * len(xs):
            return False
    return True


def _face_fields(
    geo: _Geometry, photo: np.ndarray, person_mask: np.ndarray, hinge: _JawHinge
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Fields for FACE_CONTROLS over a box around the face: (K, h, w, 2) backward displacements sampled
    every `step` canonical pixels from `origin`, and the landmarks' forward motion (K, 478, 2)."""
    side = photo.shape[0]
    h = geo.face_h
    oval = geo.lm[list(fm.FACE_OVAL), :2]
    x0, y0 = np.floor(oval.min(axis=0) - 0.15 * h).astype(int)
    x1, y1 = np.ceil(oval.max(axis=0) + np.array([0.15, NECK_ANCHOR + 0.1]) * h).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(side, x1), min(side, y1)
    step = max(1, round(side / 512))
    xs = np.arange(x0, x1, step, dtype=np.float64)
    ys = np.arange(y0, y1, step, dtype=np.float64)
    gx, gy = np.meshgrid(xs, ys)
    region = _FaceFrame(geo, gx, gy)
    jaw = _jaw_region(geo, person_mask)
    jaw_region = jaw[y0:y1:step, x0:x1:step]
    eyes = _eye_regions(geo, side)
    guard = _eye_guard(eyes, h)
    eye_soft = guard[y0:y1:step, x0:x1:step]
    eye_core = eyes[y0:y1:step, x0:x1:step]
    fields = np.stack(
        [
            -_face_motion(name, region, gx, gy, hinge, jaw_region, eye_soft[..., None], eye_core)
            for name in FACE_CONTROLS
        ]
    )
    # Landmarks: upper-lip points take the upper side of the seam and lower-lip points the lower side,
    # whatever the photo's gap (in a closed mouth they coincide).
    lm = geo.lm[:, :2]
    below = np.zeros(len(lm))
    pts = _FaceFrame(geo, lm[:, 0], lm[:, 1])
    below[pts.v > pts.seam] = 1.0
    below[list(fm.UPPER_INNER)] = 0.0
    below[list(fm.LOWER_INNER)] = 1.0
    below[[fm.MOUTH_RIGHT, fm.MOUTH_LEFT, 78, 308]] = 0.5
    pts = _FaceFrame(geo, lm[:, 0], lm[:, 1], lower=below)
    jaw_pts = _bilinear(jaw, lm[:, 0], lm[:, 1])
    eye_pts = _bilinear(guard, lm[:, 0], lm[:, 1])[:, None]
    eye_core = _bilinear(eyes, lm[:, 0], lm[:, 1])
    moves = np.stack(
        [
            _face_motion(name, pts, lm[:, 0], lm[:, 1], hinge, jaw_pts, eye_pts, eye_core)
            for name in FACE_CONTROLS
        ]
    )
    return np.array([x0, y0]), step, fields, moves


def _jaw_region(geo: _Geometry, person_mask: np.ndarray) -> np.ndarray:
    """Soft mask (float, full frame) of what the jaw carries: the lower face and the lower lip, and the
    skin below the chin down to the neck anchor; within the person."""
    h = geo.face_h
    oval = geo.lm[list(fm.FACE_OVAL), :2]
    _, v = geo.uv(oval[:, 0], oval[:, 1])
    lower = oval[v > -0.05 * h]
    # The lower lip too, with a margin past its outline: on a turned face the lips stand out beyond the
    # face oval, and a lip the mask left behind would barely part at its front.
    lip = geo.lm[list(fm.LOWER_OUTER), :2]
    out = lip - geo.mouth_mid
    lip = lip + out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6) * LIP_MARGIN * h
    lower = np.concatenate([lower, lip])
    hull = np.concatenate([lower, lower + geo.normal * NECK_ANCHOR * h * 0.8])
    mask = np.zeros(person_mask.shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(hull).astype(np.int32)), 255)
    region = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.05 * h)
    # Only the person: the background beside a turned chin stays where it is instead of bending with it.
    # The mask is grown a little first, so that the face's own edge moves fully.
    radius = max(1, round(0.015 * h))
    grown = cv2.dilate(person_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    person = cv2.GaussianBlur(grown.astype(np.float32) / 255.0, (0, 0), 0.01 * h)
    return region * person


def _eye_regions(geo: _Geometry, side: int) -> np.ndarray:
    """Float mask, 1 inside both eye openings (lid contours), full frame."""
    mask = np.zeros((side, side), np.uint8)
    for upper, lower in ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER)):
        poly = np.concatenate([geo.lm[list(upper), :2], geo.lm[list(lower[::-1]), :2]])
        cv2.fillPoly(mask, [np.round(poly * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    return mask.astype(np.float32) / 255.0


def _eye_guard(eyes: np.ndarray, face_h: float) -> np.ndarray:
    """1 over the eyes and their lid lines, fading out just beyond: where brow motion must not reach, so
    raising the brows stretches the skin above the lids and never the iris."""
    radius = max(1, round(0.035 * face_h))
    grown = cv2.dilate(eyes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    return np.clip(cv2.GaussianBlur(grown, (0, 0), 0.5 * radius) * 1.5, 0.0, 1.0)


def _face_motion(
    name: str,
    f: _FaceFrame,
    x: np.ndarray,
    y: np.ndarray,
    hinge: _JawHinge,
    jaw_region: np.ndarray,
    eye_soft: np.ndarray,
    eye_core: np.ndarray,
) -> np.ndarray:
    """Forward displacement (..., 2) of the points described by `f` under control `name` at full strength."""
    geo = f.geo
    h, mw = geo.face_h, geo.mouth_w
    half = mw / 2
    u, v, below = f.u, f.v, f.below
    along = np.zeros((*u.shape, 2))  # (du, dv) in mouth coordinates
    chin_v = geo.uv(*geo.point(fm.CHIN))[1]
    cheeks = 0.5 * float(np.linalg.norm(geo.point(fm.CHEEK_RIGHT) - geo.point(fm.CHEEK_LEFT)))
    if name == "jaw":
        # What the jaw carries turns about the joints and slides down with them; the upper lip rises a
        # little. Toward the ears the rotation itself fades (those points are beside the joints).
        neck = _smoothstep((chin_v + NECK_ANCHOR * h - v) / (NECK_ANCHOR * h))
        carried = (jaw_region * neck * below)[..., None]
        slide = JAW_SLIDE * JAW_DROP * h * np.clip(1 - (u / (1.2 * cheeks)) ** 2, 0, 1)
        turn = hinge.motion(x, y, f.depth) + slide[..., None] * geo.normal
        lift = f.above_lips * np.exp(-((u / (0.7 * mw)) ** 2))
        along[..., 1] = -0.1 * JAW_DROP * h * (1 - below) * lift
        motion_jaw = carried * turn
    elif name == "close":
        # Bring the photo's inner lips together on the seam. Each lip moves whole, so it keeps its
        # thickness; the skin beyond follows, fading toward the nose and the chin.
        gap = (f.v_lower - f.v_upper) / 2
        along[..., 1] = gap * ((1 - below) * f.above_lips - below * f.below_lips)
    elif name == "press":
        # m/b/p: each lip gives up PRESS of its thickness toward the seam (where the lips meet, closed:
        # the inner edge stays, the outer edge comes in); the skin beyond follows the outer edge.
        upper_t = f.v_upper - f.v_upper_outer
        lower_t = f.v_lower_outer - f.v_lower
        up = np.clip(f.into_upper, 0, upper_t) * f.above
        down = np.clip(f.into_lower, 0, lower_t) * f.beneath
        along[..., 1] = PRESS * ((1 - below) * up - below * down)
    elif name in ("wide", "round", "smile"):
        sigma = 0.35 * mw if name != "smile" else 0.45 * mw
        right = _gauss(u, v, half, 0.0, sigma)
        left = _gauss(u, v, -half, 0.0, sigma)
        out = right - left  # + moves the corners apart
        if name == "wide":
            along[..., 0] = 0.12 * mw * out
        elif name == "round":
            along[..., 0] = -0.16 * mw * out
            # The lips thicken outward as they push forward; their inner edges stay, so rounding does not
            # part the lips (the jaw alone decides the opening).
            pout = _gauss(u, v, 0.0, 0.0, 0.55 * mw, 0.35 * mw)
            beyond = np.maximum(0.0, np.where(below > 0.5, f.into_lower, f.into_upper))
            along[..., 1] = 0.015 * h * pout * np.clip(beyond / (0.12 * mw), 0, 1) * (2 * below - 1)
        else:
            along[..., 0] = 0.06 * mw * out
            along[..., 1] = -0.05 * h * (right + left) * (1 - 0.5 * below)
    motion = np.zeros((*u.shape, 2))
    motion += along[..., :1] * geo.axis + along[..., 1:] * geo.normal
    if name == "jaw":
        motion += motion_jaw
    elif name == "smile":
        for cheek in (205, 425):
            c = geo.point(cheek)
            motion[..., 1] -= 0.02 * h * _gauss(x, y, c[0], c[1], 0.15 * h)
    elif name == "brow":
        lift = np.zeros(u.shape)
        for idx in (*fm.RIGHT_BROW, *fm.LEFT_BROW):
            c = geo.point(idx)
            lift = np.maximum(lift, _gauss(x, y, c[0], c[1], 0.1 * h))
        motion[..., 1] -= 0.045 * h * lift * (1 - eye_soft[..., 0])
    elif name in ("gaze_x", "gaze_y"):
        eye_w = float(np.linalg.norm(geo.point(33) - geo.point(133)))
        amount = 0.16 * eye_w if name == "gaze_x" else 0.08 * eye_w
        inner = np.clip(eye_core * 1.6 - 0.6, 0, 1)  # zero at the lids, so the lids stay put
        motion[..., 0 if name == "gaze_x" else 1] += amount * inner
    return motion


# ---- mouth interior and eyelids -------------------------------------------------------------------------


def _photo_teeth(photo: np.ndarray, geo: _Geometry) -> tuple[np.ndarray, np.ndarray] | None:
    """The photo's visible teeth: an RGB crop of the gap between the inner lips, from corner to corner and
    from the upper inner lip down, and where in it the photo shows teeth (a grey mask: inside the gap and
    bright, not lip or the dark of the mouth); None when the mouth is closed or the gap is dark."""
    upper = geo.lm[list(fm.UPPER_INNER), :2]
    lower = geo.lm[list(fm.LOWER_INNER), :2]
    f = _FaceFrame(geo, upper[:, 0], upper[:, 1])
    gap = float(np.max(f.v_lower - f.v_upper))
    if gap < 0.05 * geo.mouth_w:
        return None
    mask = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(np.concatenate([upper, lower[::-1]])).astype(np.int32)], 255)
    inside = photo[mask > 0].astype(np.float32)
    if len(inside) < 20:
        return None
    luma = inside @ np.array([0.299, 0.587, 0.114])
    if np.mean(luma > 130) < 0.35:  # mostly dark: an open mouth without visible teeth
        return None
    # Rectified: column by column, the rows start at the upper inner lip, so the renderer can hang the
    # teeth from the moved lip whatever its curve.
    order = np.argsort(upper[:, 0])
    x0, x1 = int(np.floor(upper[:, 0].min())), int(np.ceil(upper[:, 0].max()))
    cols = np.arange(x0, x1 + 1, dtype=np.float32)
    top = np.interp(cols, upper[order, 0], upper[order, 1]).astype(np.float32)
    bottom = np.interp(cols, *_sorted_xy(lower)).astype(np.float32)
    rows = max(2, round(float(np.max(bottom - top))))
    mx = np.repeat(cols[None, :], rows, axis=0)
    my = (top[None, :] + np.arange(rows, dtype=np.float32)[:, None]).astype(np.float32)
    teeth = cv2.remap(photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Teeth: within the gap (the rows past the lower lip are lip and chin), and near the brightness of the
    # gap's brightest part; toward the corners, where the gap narrows, the drawn teeth show instead.
    within = np.clip(bottom[None, :] - top[None, :] - 0.5 - np.arange(rows)[:, None], 0.0, 1.0)
    teeth_luma = cv2.cvtColor(teeth, cv2.COLOR_RGB2GRAY).astype(np.float32)
    bright = float(np.percentile(luma, 90))
    tooth = np.clip((teeth_luma - 0.55 * bright) / (0.2 * bright + 1e-6), 0.0, 1.0)
    visible = cv2.GaussianBlur(within * tooth, (3, 3), 0)
    return teeth, np.round(visible * 255).astype(np.uint8)


def _sorted_xy(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(points[:, 0])
    return points[order, 0], points[order, 1]


# ---- encoding -----------------------------------------------------------------------------------------


def _png(img: np.ndarray) -> bytes:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError("could not encode a PNG")
    return buf.tobytes()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
