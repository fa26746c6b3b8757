"""FacecastVideoService in remote mode against a real Facecast server on loopback: the session's media comes
back over WebRTC as (TTSAudioRawFrame, OutputImageRawFrame) pairs, speech only, interruptible."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    OutputTransportReadyFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat_facecast import FacecastVideoService
from pipecat_pairs import StallingAvatar, assert_pairs, images_ahead

from tests.server_harness import RunningServer, running_server

RATE = 24000
CONNECT_S = 3.0  # session, WebRTC and the first key frame


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(Path(tmp_path_factory.mktemp("facecast-server"))) as running:
        yield running


def remote_avatar(server: RunningServer) -> tuple[FacecastVideoService, str]:
    """The service on a fresh API key, and that key's id."""
    key, secret = server.store.create_key("pipecat-test")
    avatar = FacecastVideoService(
        server_url=server.url, api_key=secret, settings=FacecastVideoService.Settings(quality="low")
    )
    return avatar, key.id


def speech(seconds: float, context_id: str) -> list[Frame]:
    t = np.arange(round(seconds * RATE)) / RATE
    pcm = np.rint(9000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).tobytes()
    step = 2 * RATE // 10
    return [
        TTSStartedFrame(context_id=context_id),
        *(
            TTSAudioRawFrame(pcm[i : i + step], RATE, 1, context_id=context_id)
            for i in range(0, len(pcm), step)
        ),
        TTSStoppedFrame(context_id=context_id),
    ]


def audio_seconds(frames: list[Frame]) -> float:
    return sum(f.num_frames / f.sample_rate for f in frames if isinstance(f, TTSAudioRawFrame))


async def test_remote_session_speaks_in_pairs(server: RunningServer) -> None:
    avatar, key_id = remote_avatar(server)
    frames = [OutputTransportReadyFrame(), SleepFrame(CONNECT_S), *speech(1.0, "hello"), SleepFrame(2.0)]
    down, up = await run_test(
        avatar, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=RATE)
    )

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and {f.sample_rate for f in audio} == {RATE}
    # The whole second came back (plus at most the server's last-frame padding and the quiet tail that
    # ends a speech run), and only speech: no idle silence before or after it.
    assert 0.95 <= audio_seconds(down) <= 1.4
    width, height = avatar.video_size
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    assert len(images) >= 30 * CONNECT_S / 2 and {f.size for f in images} == {(width, height)}
    # Each audio frame travels with an image, and TTSStoppedFrame only follows the last of the speech.
    assert_pairs(down)
    last_audio = max(i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame))
    assert max(i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame)) > last_audio
    (session,), _ = server.store.list_sessions(key_id, active=False, page=1, page_size=5)
    assert session.end_reason == "stopped"  # the service stopped its session at the end


async def test_remote_frames_held_up_send_their_audio_without_queuing_pictures(server: RunningServer) -> None:
    # After the loop is held up, the frames received meanwhile come in a burst. Pushed as they come, their
    # images would wait in the output transport's live video queue (one drawn per period, none dropped)
    # and keep the picture behind the sound for the rest of the session.
    _, secret = server.store.create_key("pipecat-stall")
    avatar = StallingAvatar(
        stall_s=0.3,
        after=10,
        server_url=server.url,
        api_key=secret,
        settings=FacecastVideoService.Settings(quality="low"),
    )
    frames = [OutputTransportReadyFrame(), SleepFrame(CONNECT_S), *speech(2.0, "held"), SleepFrame(2.0)]
    down, up = await run_test(
        avatar, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=RATE)
    )

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert 1.95 <= audio_seconds(down) <= 2.4  # all the speech still came through
    assert_pairs(down)
    assert max(np.diff(avatar.image_times)) >= 0.25  # the hold-up happened while images flowed
    assert images_ahead(avatar.image_times) <= 3.0  # yet no burst of images followed it


async def test_remote_interruption_drops_the_rest(server: RunningServer) -> None:
    avatar, _ = remote_avatar(server)
    frames = [
        OutputTransportReadyFrame(),
        SleepFrame(CONNECT_S),
        *speech(4.0, "long"),
        SleepFrame(1.5),
        InterruptionFrame(),
        SleepFrame(1.0),
    ]
    down, _ = await run_test(
        avatar, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=RATE)
    )
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert audio_seconds(down[:cut]) > 0.3
    assert audio_seconds(down[cut:]) == 0
    assert any(isinstance(f, OutputImageRawFrame) for f in down[cut:])  # the face stays on screen
