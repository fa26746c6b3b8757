"""Checks on a portrait photo before it is built: a turned photo is turned upright, a small face is cropped
out with a margin, and what would look poor up close gives a warning with advice.

All of it works from the face landmarks (see faces.py); the analysis is passed in, so this module is
tested with the real tools and runs no subprocess of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from facecast.avatars import face_mesh as fm
from facecast.avatars.faces import FaceAnalysis, NoFaceError

Analyze = Callable[[np.ndarray], FaceAnalysis]

LOW_RESOLUTION_FACE_PX = 160  # forehead to chin in the photo; below this, close-ups look soft
CLOSED_EYE_RATIO = 0.12  # lid gap ÷ eye width below which an eye counts as closed
SMALL_FACE_WINDOWS = 0.5  # the windows searched for a face too small to be found in the whole photo
CROP_MARGIN = 1.6  # face heights of photo kept around the face on every side when cropping
FLIP_MARGIN = 10.0  # degrees nearer upright the photo turned round must be to be taken instead
MAX_RESIDUAL_ROLL = 45.0  # after turning by a multiple of 90°, the face must be at most this far off upright
# How far the nose tip sits off the middle of the cheek line, in half face widths, above which the face is
# turned to one side: ~0 facing the camera (the test photos: 0.03), ~0.5 at 40° or so, past 1 in profile
# (the nose beyond the cheek); a mouth seen from the side barely opens in the picture.
SIDE_TURN_NOSE_OFFSET = 0.5


@dataclass(frozen=True, eq=False)
class PreparedPhoto:
    """The photo to build from (maybe turned or cropped), its analysis, what was changed and why, and
    warnings a user can act on."""

    image: np.ndarray
    analysis: FaceAnalysis
    changes: tuple[str, ...]
    warnings: tuple[str, ...]


def face_roll_degrees(landmarks: np.ndarray) -> float:
    """How far the face is turned in the image plane: 0 upright, + clockwise (the top of the head to the
    viewer's right), ±180 upside down. From the line mouth centre → eye centre."""
    eyes = (landmarks[fm.RIGHT_IRIS[0], :2] + landmarks[fm.LEFT_IRIS[0], :2]) / 2
    mouth = (landmarks[fm.MOUTH_RIGHT, :2] + landmarks[fm.MOUTH_LEFT, :2]) / 2
    up = eyes - mouth
    return math.degrees(math.atan2(float(up[0]), float(-up[1])))


def prepare_photo(image: np.ndarray, analyze: Analyze, *, where: str = "the photo") -> PreparedPhoto:
    """Find the face (searching windows when it is too small for the whole photo), turn it upright, and
    list warnings. Raises NoFaceError with advice when there is no usable face."""
    changes: list[str] = []
    analysis = _try(analyze, image)
    if analysis is None:
        # Upside down or sideways, the detector may miss a face it finds upright.
        for quarter in (2, 1, 3):
            turned = np.ascontiguousarray(np.rot90(image, quarter))
            analysis = _try(analyze, turned, person=True)
            if analysis is not None:
                image = turned
                changes.append(_turned(quarter))
                break
    elif abs(face_roll_degrees(analysis.largest.landmarks)) <= MAX_RESIDUAL_ROLL:
        # Upside down, the mesh can still land on the face nearly upright but wrong (the mouth on an eye):
        # the photo turned round is checked too, and whichever is nearer upright wins clearly or not at all.
        turned = np.ascontiguousarray(np.rot90(image, 2))
        flipped = _try(analyze, turned, person=True)
        if flipped is not None and abs(face_roll_degrees(flipped.largest.landmarks)) + FLIP_MARGIN < abs(
            face_roll_degrees(analysis.largest.landmarks)
        ):
            image, analysis = turned, flipped
            changes.append(_turned(2))
    if analysis is None:
        image, analysis = _find_small_face(image, analyze, where)
        changes.append("the face was small in the photo: cropped around it with a margin")
    roll = face_roll_degrees(analysis.largest.landmarks)
    quarter = round(roll / 90.0) % 4
    if quarter:
        image = np.ascontiguousarray(np.rot90(image, quarter))
        try:
            analysis = analyze(image)
        except NoFaceError:
            raise NoFaceError(
                f"the face in {where} is turned {roll:.0f}° and was not found once turned upright: "
                "rotate the photo so that the face is upright"
            ) from None
        changes.append(_turned(quarter))
    roll = face_roll_degrees(analysis.largest.landmarks)
    if abs(roll) > MAX_RESIDUAL_ROLL:
        raise NoFaceError(
            f"the face in {where} is tilted {roll:.0f}°, too far to correct: "
            "rotate the photo so that the face is upright"
        )
    return PreparedPhoto(image, analysis, tuple(changes), tuple(photo_warnings(image, analysis)))


def _try(analyze: Analyze, image: np.ndarray, *, person: bool = False) -> FaceAnalysis | None:
    """The analysis, or None without a face. With `person`, a face only counts where the person mask
    covers its nose, the point between its eyes and its chin: the detector, run on a photo turned
    round or on a window of it, now and then takes other things for a face (a cup of coffee on its side)."""
    try:
        found = analyze(image)
    except NoFaceError:
        return None
    if person:
        lm, mask = found.largest.landmarks, found.person_mask
        h, w = mask.shape
        for index in (fm.NOSE_TIP, 168, fm.CHIN):
            x, y = (int(np.clip(v, 0, n - 1)) for v, n in zip(lm[index, :2], (w, h), strict=True))
            if mask[y, x] < 128:
                return None
    return found


def _turned(quarter: int) -> str:
    return f"the photo was turned {90 * quarter}° counter-clockwise to make the face upright"


def _find_small_face(image: np.ndarray, analyze: Analyze, where: str) -> tuple[np.ndarray, FaceAnalysis]:
    """MediaPipe's detector misses faces much smaller than a fifth of the photo: look in overlapping
    windows (scaled up), centre first, then crop the photo around the first face found."""
    h, w = image.shape[:2]
    side = round(SMALL_FACE_WINDOWS * min(h, w))
    if side >= 48:
        offsets = [(y, x) for y in _starts(h, side) for x in _starts(w, side)]
        centre = np.array([h - side, w - side]) / 2
        offsets.sort(key=lambda o: float(np.hypot(o[0] - centre[0], o[1] - centre[1])))
        for y, x in offsets:
            scale = 512 / side
            window = cv2.resize(image[y : y + side, x : x + side], (512, 512), interpolation=cv2.INTER_CUBIC)
            found = _try(analyze, window, person=True)
            if found is None:
                continue
            lm = found.largest.landmarks[:, :2] / scale + np.array([x, y])
            top, chin = lm[fm.FOREHEAD], lm[fm.CHIN]
            face_h = float(np.linalg.norm(chin - top))
            cx, cy = (top + chin) / 2
            half = (0.5 + CROP_MARGIN) * face_h
            x0, y0 = max(0, round(cx - half)), max(0, round(cy - half))
            x1, y1 = min(w, round(cx + half)), min(h, round(cy + half))
            crop = np.ascontiguousarray(image[y0:y1, x0:x1])
            try:
                return crop, analyze(crop)
            except NoFaceError:
                break  # found in a scaled-up window only: too small to build from
    raise NoFaceError(
        f"no face found in {where}: use a photo where one face is clearly visible, facing the camera and "
        "well lit; if the face is small in the photo, crop the photo around it so that the face is at "
        "least a fifth of its height"
    )


def _starts(length: int, side: int) -> list[int]:
    """Window starts every half window, the last flush with the end."""
    starts = list(range(0, max(1, length - side + 1), max(1, side // 2)))
    if starts[-1] != length - side:
        starts.append(max(0, length - side))
    return starts


def photo_warnings(image: np.ndarray, analysis: FaceAnalysis) -> list[str]:
    """What will look poor in the avatar, each with what to do about it."""
    lm = analysis.largest.landmarks
    out = []
    face_h = float(np.linalg.norm(lm[fm.CHIN, :2] - lm[fm.FOREHEAD, :2]))
    if face_h < LOW_RESOLUTION_FACE_PX:
        out.append(
            f"low resolution: the face is {face_h:.0f} px tall in the photo, so it looks soft up close; "
            f"use a photo where the face is at least {2 * LOW_RESOLUTION_FACE_PX} px tall"
        )
    ratios = [_eye_ratio(lm, upper, lower) for upper, lower in _EYES]
    if max(ratios) < CLOSED_EYE_RATIO:
        out.append(
            "the eyes look closed in the photo: blinks and gaze need open eyes; "
            "use a photo with the eyes open"
        )
    if side_turn(lm) > SIDE_TURN_NOSE_OFFSET:
        out.append(
            "the face is turned to one side (seen from the side, the mouth's opening barely shows, so the "
            "speech reads poorly); use a photo where the face looks into the camera"
        )
    if _mouth_hidden(image, lm):
        out.append(
            "the mouth looks covered or hard to see (its colour is not like lips): the avatar draws its "
            "mouth over whatever is there; use a photo where the lips are clearly visible"
        )
    return out


def side_turn(landmarks: np.ndarray) -> float:
    """How far the face is turned to one side: the nose tip's distance from the middle of the cheek line,
    in half face widths (0 facing the camera; over 1 in profile, the nose beyond the cheek)."""
    right, left = landmarks[fm.CHEEK_RIGHT, :2], landmarks[fm.CHEEK_LEFT, :2]
    half_width = max(float(np.linalg.norm(left - right)) / 2, 1e-6)
    axis = (left - right) / (2 * half_width)
    return abs(float(np.dot(landmarks[fm.NOSE_TIP, :2] - (left + right) / 2, axis))) / half_width


_EYES = ((fm.RIGHT_EYE_UPPER, fm.RIGHT_EYE_LOWER), (fm.LEFT_EYE_UPPER, fm.LEFT_EYE_LOWER))


def _eye_ratio(lm: np.ndarray, upper: tuple[int, ...], lower: tuple[int, ...]) -> float:
    width = float(np.linalg.norm(lm[upper[0], :2] - lm[upper[-1], :2]))
    gap = float(np.max(lm[list(lower[2:-2]), 1] - lm[list(upper[2:-2]), 1]))
    return gap / max(width, 1e-6)


def _mouth_hidden(image: np.ndarray, lm: np.ndarray) -> bool:
    """Lips are redder than the skin around them; a hand, a microphone or a mask over the mouth is not.
    Compares the redness (R minus the mean of G and B) of the lips with the cheeks'."""
    h, w = image.shape[:2]
    lips = np.zeros((h, w), np.uint8)
    outer = np.concatenate([lm[list(fm.UPPER_OUTER), :2], lm[list(fm.LOWER_OUTER[::-1]), :2]])
    cv2.fillPoly(lips, [np.round(outer).astype(np.int32)], 255)
    mouth_w = float(np.linalg.norm(lm[fm.MOUTH_LEFT, :2] - lm[fm.MOUTH_RIGHT, :2]))
    cheeks = np.zeros((h, w), np.uint8)
    for index in (205, 425):  # mid-cheek, beside the nose
        cx, cy = lm[index, :2]
        cv2.circle(cheeks, (round(cx), round(cy)), max(2, round(0.15 * mouth_w)), 255, -1)
    if not lips.any() or not cheeks.any():
        return False
    rgb = image.astype(np.float32)
    skin = rgb[cheeks > 0]
    if float(np.abs(skin - skin.mean(axis=1, keepdims=True)).mean()) < 2.0:
        return False  # a black-and-white photo: no colour to tell lips by
    redness = rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2
    return float(np.median(redness[lips > 0]) - np.median(redness[cheeks > 0])) < 4.0
