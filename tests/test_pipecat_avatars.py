"""FacecastVideoService with avatars from the avatar library and from .facecast files (local mode), and
server avatar ids passed through untouched (remote mode)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    OutputImageRawFrame,
    OutputTransportReadyFrame,
    ServiceUpdateSettingsFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat_facecast import FacecastVideoService

from facecast.avatars import AvatarLibrary, load_renderer
from facecast.avatars.bundle import write_bundle
from facecast.avatars.procedural import bundle_from_style
from facecast.engine.types import FaceState


def make_bundle(folder: Path, name: str, style: str) -> Path:
    manifest, files = bundle_from_style(style)
    return write_bundle(folder / f"{name}.facecast", dataclasses.replace(manifest, name=name), files)


def closest_style(frame: np.ndarray) -> str:
    """Which built-in style a low-quality frame was drawn with (the colours differ a lot between them)."""
    distances = {}
    for style in ("ava", "leo", "mira", "noah"):
        rest = load_renderer(style, quality="low").render(FaceState()).astype(np.float32)
        distances[style] = float(np.abs(frame.astype(np.float32) - rest).mean())
    return min(distances, key=distances.__getitem__)


async def frames_of(service: FacecastVideoService, *extra: object) -> list[np.ndarray]:
    down, up = await run_test(
        service,
        frames_to_send=[OutputTransportReadyFrame(), SleepFrame(0.2), *extra, SleepFrame(0.3)],  # type: ignore[list-item]
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    return [
        np.frombuffer(f.image, np.uint8).reshape(f.size[1], f.size[0], 3)
        for f in down
        if isinstance(f, OutputImageRawFrame)
    ]


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AvatarLibrary:
    monkeypatch.setenv("FACECAST_AVATARS_DIR", str(tmp_path / "lib"))
    lib = AvatarLibrary()
    lib.install(make_bundle(tmp_path, "bob", "noah"))
    return lib


async def test_library_ids_and_bundle_paths_render(library: AvatarLibrary, tmp_path: Path) -> None:
    service = FacecastVideoService(settings=FacecastVideoService.Settings(avatar="bob", quality="low"))
    frames = await frames_of(service)
    assert frames and closest_style(frames[0]) == "noah"

    path = make_bundle(tmp_path, "carol", "leo")
    service = FacecastVideoService(settings=FacecastVideoService.Settings(avatar=str(path), quality="low"))
    frames = await frames_of(service)
    assert frames and closest_style(frames[0]) == "leo"


async def test_switching_to_a_library_avatar_while_running(library: AvatarLibrary) -> None:
    service = FacecastVideoService(settings=FacecastVideoService.Settings(avatar="mira", quality="low"))
    update = ServiceUpdateSettingsFrame(delta=FacecastVideoService.Settings(avatar="bob"))
    frames = await frames_of(service, update)
    assert closest_style(frames[0]) == "mira" and closest_style(frames[-1]) == "noah"
    assert service.settings.avatar == "bob"


def test_unknown_and_damaged_avatars_are_refused(library: AvatarLibrary, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown avatar 'nobody'.*bob"):
        FacecastVideoService(settings=FacecastVideoService.Settings(avatar="nobody"))
    broken = tmp_path / "broken.facecast"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a valid zip"):
        FacecastVideoService(settings=FacecastVideoService.Settings(avatar=str(broken)))


def test_remote_mode_leaves_the_avatar_to_the_server(library: AvatarLibrary) -> None:
    # An avatar made on the server (POST /v1/avatars) exists only there: not checked locally.
    service = FacecastVideoService(
        settings=FacecastVideoService.Settings(avatar="photo-0123456789ab"),
        server_url="http://127.0.0.1:1",
        api_key="k",
    )
    assert service.settings.avatar == "photo-0123456789ab"
