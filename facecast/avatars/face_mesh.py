"""Indices into MediaPipe Face Mesh's 478 landmarks (468 mesh points + 10 iris points), in one place.

"Right"/"left" are the subject's: the subject's right eye is on the viewer's left in a photo.
"""

from __future__ import annotations

N_LANDMARKS = 478

FOREHEAD = 10  # top of the face oval, on the midline
CHIN = 152  # bottom of the face oval, on the midline
NOSE_TIP = 1
NOSE_BOTTOM = 2  # where the nose meets the upper lip
# Face-oval points beside the ears, at about the height of the jaw joints (subject's right, left).
EAR_LINE_RIGHT = 93
EAR_LINE_LEFT = 323
# Face-oval points at the cheekbones, the face's widest line (subject's right, left).
CHEEK_RIGHT = 234
CHEEK_LEFT = 454

FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip

MOUTH_RIGHT = 61  # the subject's right mouth corner (viewer's left)
MOUTH_LEFT = 291
UPPER_INNER_MID = 13
LOWER_INNER_MID = 14
# Inner lip contours from corner to corner (viewer's left to right).
UPPER_INNER: tuple[int, ...] = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER: tuple[int, ...] = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
UPPER_OUTER: tuple[int, ...] = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER: tuple[int, ...] = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)

# Eyelid contours from the outer to the inner corner.
RIGHT_EYE_UPPER: tuple[int, ...] = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER: tuple[int, ...] = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER: tuple[int, ...] = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER: tuple[int, ...] = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_IRIS: tuple[int, ...] = (468, 469, 470, 471, 472)  # centre first, then the ring
LEFT_IRIS: tuple[int, ...] = (473, 474, 475, 476, 477)

RIGHT_BROW: tuple[int, ...] = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
LEFT_BROW: tuple[int, ...] = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
