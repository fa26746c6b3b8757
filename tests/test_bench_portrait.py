"""`facecast bench portrait`'s independent tracker: MediaPipe reads the mouth opening back from an MP4."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from photos import astronaut_rgb
from PIL import Image

from facecast.avatars.bundle import read_bundle, write_bundle
from facecast.avatars.faces import analyze_faces
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.portrait_build import build_portrait
from facecast.bench.metrics import pearson
from facecast.bench.portrait import (
    CHIN,
    FOREHEAD,
    INNER_LIP_PAIRS,
    SWEEP_LEVELS,
    main,
    mouth_opening,
    photo_path,
    photos_from,
    track_videos,
)
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


def test_photos_are_bench_names_or_image_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "me.png"
    Image.fromarray(astronaut_rgb()).save(mine)
    assert photos_from(f"astronaut,{mine}") == {"astronaut": str(photo_path("astronaut")), "me": str(mine)}
    (tmp_path / "other").mkdir()
    Image.fromarray(astronaut_rgb()).save(tmp_path / "other" / "me.png")
    with pytest.raises(ValueError, match="two photos named 'me'"):
        photos_from(f"{mine},{tmp_path / 'other' / 'me.png'}")
    assert main(["--photos", f"astronaut,{tmp_path / 'missing.png'}"]) == 2
    assert "missing.png: neither a bench photo" in capsys.readouterr().err


def test_the_sweep_reads_held_openings_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    face = tmp_path / "face.png"
    Image.fromarray(astronaut_rgb()).save(face)
    assert main(["--sweep", "--photos", str(face), "--markdown", "--quiet"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| new | face |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    readings = np.array([float(c) for c in cells[2 : 2 + len(SWEEP_LEVELS)]])
    assert readings[-1] > readings[0] + 3  # wide open vs closed, in hundredths of the face height
    assert float(cells[-1]) > 0.9  # the readings follow the drawn opening
