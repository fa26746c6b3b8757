"""`facecast bench portrait`'s independent tracker: MediaPipe reads the mouth opening back from an MP4."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from photos import astronaut_rgb

from facecast.avatars.bundle import read_bundle, write_bundle
from facecast.avatars.faces import analyze_faces
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.portrait_build import build_portrait
from facecast.bench.metrics import pearson
from facecast.bench.portrait import CHIN, FOREHEAD, INNER_LIP_PAIRS, mouth_opening, track_videos
from facecast.engine.types import FaceState, MouthParams


def test_mouth_opening_is_the_inner_lip_gap_over_the_face_height() -> None:
    lm = np.zeros((3, 478, 2), np.float32)
    lm[:, CHIN, 1] = 100.0  # a face 100 px tall
    for _, lower in INNER_LIP_PAIRS:
        lm[:, lower, 1] = [0.0, 10.0, 20.0]
    lm[1] = np.nan  # no face found in the middle frame: filled in from its neighbours
    assert lm[0, FOREHEAD, 1] == 0.0
    assert np.allclose(mouth_opening(lm), [0.0, 0.1, 0.2])


def test_the_tracker_reads_a_rendered_opening_back(tmp_path: Path) -> None:
    photo = astronaut_rgb()
    manifest, files = build_portrait(photo, analyze_faces(photo), name="astro", display_name="astro")
    r = renderer_from_bundle(read_bundle(write_bundle(tmp_path / "astro.facecast", manifest, files)))
    opens = np.r_[np.linspace(0, 1, 11), np.linspace(1, 0, 11), np.zeros(5)]
    video = tmp_path / "ramp.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = r.width, r.height, "yuv420p"
        for value in opens:
            frame = r.render(FaceState(mouth=MouthParams(open=float(value), teeth=0.5)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    (landmarks,) = track_videos([video])
    assert landmarks.shape == (len(opens), 478, 2) and np.isfinite(landmarks).all()
    opening = mouth_opening(landmarks)
    assert pearson(opens, opening) > 0.9
    assert opening[10] > opening[0] + 0.05  # wide open vs closed, in face heights
