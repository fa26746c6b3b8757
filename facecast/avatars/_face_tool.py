"""Face landmarks and a person mask for one photo, with mediapipe; run by the face-tools virtualenv.

This script runs in its own virtualenv (mediapipe 0.10.21 needs numpy<2 and protobuf<5, which the main
environment cannot have), started by :mod:`facecast.avatars.faces`. It imports nothing but the standard
library, numpy, cv2 and mediapipe, and never facecast.

    python _face_tool.py --image in.png --out out.npz [--max-faces 5]

The npz holds ``landmarks`` float32 (n_faces, 478, 3) in pixels (x*w, y*h, z*w), the largest face first,
``person_mask`` uint8 (h, w) 0..255 and ``mediapipe_version``. No face is not an error (n_faces = 0).
On a real failure the exit status is non-zero and the last line on stderr starts with ``face tool:``.
"""

from __future__ import annotations

import argparse
import os
import sys

ERROR_PREFIX = "face tool: "
N_LANDMARKS = 478  # 468 mesh points + 2 x 5 iris points with refine_landmarks=True


def _fail(message: str, status: int = 1) -> None:
    sys.stderr.write(ERROR_PREFIX + " ".join(message.split()) + "\n")
    sys.stderr.flush()
    raise SystemExit(status)


def _analyze(image_path: str, out_path: str, max_faces: int) -> None:
    import cv2
    import mediapipe as mp
    import numpy as np

    bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        _fail(f"cannot read an image from {image_path}")
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    h, w = rgb.shape[:2]

    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True,
        max_num_faces=max_faces,
        refine_landmarks=True,
        min_detection_confidence=0.5,
    ) as mesh:
        result = mesh.process(rgb)
    faces = []
    for face in result.multi_face_landmarks or ():
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
        if pts.shape != (N_LANDMARKS, 3):
            _fail(f"mediapipe returned {pts.shape[0]} landmarks per face, expected {N_LANDMARKS}")
        faces.append(pts)

    def box_area(pts: np.ndarray) -> float:
        span = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
        return float(span[0] * span[1])

    faces.sort(key=box_area, reverse=True)
    landmarks = np.stack(faces) if faces else np.zeros((0, N_LANDMARKS, 3), np.float32)

    # model 0 is the 256x256 "general" model: a cleaner person outline on portraits than the landscape one
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmentation:
        mask = segmentation.process(rgb).segmentation_mask
    if mask is None:
        person_mask = np.zeros((h, w), np.uint8)
    else:
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        person_mask = np.round(np.clip(np.nan_to_num(mask), 0.0, 1.0) * 255.0).astype(np.uint8)

    tmp_out = out_path + ".part.npz"  # np.savez adds .npz to names without it
    np.savez(
        tmp_out,
        landmarks=landmarks.astype(np.float32),
        person_mask=person_mask,
        mediapipe_version=np.array(mp.__version__),
    )
    os.replace(tmp_out, out_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Face landmarks and a person mask for one photo.")
    parser.add_argument("--image", required=True, help="the photo (any format OpenCV reads)")
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--max-faces", type=int, default=5, help="at most this many faces (default 5)")
    args = parser.parse_args(argv)
    if args.max_faces < 1:
        _fail("--max-faces must be at least 1", 2)
    try:
        _analyze(args.image, args.out, args.max_faces)
    except SystemExit:
        raise
    except Exception as exc:  # one line for the caller instead of a traceback
        _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
