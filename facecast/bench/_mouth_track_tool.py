"""Face landmarks of every frame of a video, with mediapipe; run by the face-tools virtualenv.

The independent tracker of `facecast bench portrait`: it reads the rendered MP4 itself (OpenCV's FFmpeg)
and knows nothing of the renderer, so what it finds is what a viewer's face tracker would see. Like
``facecast/avatars/_face_tool.py`` it imports only the standard library, numpy, cv2 and mediapipe.

    python _mouth_track_tool.py --video a.mp4 --out a.npz [--video b.mp4 --out b.npz ...]

Each npz holds ``landmarks`` float32 (n_frames, 478, 2) in pixels, NaN where no face was found.
On a failure the exit status is non-zero and the last line on stderr starts with ``face tool:``.
"""

from __future__ import annotations

import argparse
import os
import sys

ERROR_PREFIX = "face tool: "
N_LANDMARKS = 478


def _fail(message: str) -> None:
    sys.stderr.write(ERROR_PREFIX + " ".join(message.split()) + "\n")
    raise SystemExit(1)


def _track(video_path: str, out_path: str) -> None:
    import cv2
    import mediapipe as mp
    import numpy as np

    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        _fail(f"cannot open {video_path}")
    frames = []
    # Video mode: landmarks are tracked from frame to frame, as a live face tracker does.
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
    ) as mesh:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            result = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if result.multi_face_landmarks:
                face = result.multi_face_landmarks[0].landmark
                frames.append(np.array([(p.x * w, p.y * h) for p in face], np.float32))
            else:
                frames.append(np.full((N_LANDMARKS, 2), np.nan, np.float32))
    capture.release()
    if not frames:
        _fail(f"no frames in {video_path}")
    tmp_out = out_path + ".part.npz"
    np.savez(tmp_out, landmarks=np.stack(frames))
    os.replace(tmp_out, out_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Face landmarks of every frame of a video.")
    parser.add_argument("--video", action="append", required=True, help="a video to track (repeatable)")
    parser.add_argument("--out", action="append", required=True, help="its .npz, one per --video")
    args = parser.parse_args(argv)
    if len(args.video) != len(args.out):
        _fail("give one --out per --video")
    try:
        for video, out in zip(args.video, args.out, strict=True):
            _track(video, out)
    except SystemExit:
        raise
    except Exception as exc:  # one line for the caller instead of a traceback
        _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
