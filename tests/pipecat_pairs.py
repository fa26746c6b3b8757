"""The shape of the in-process avatar's speech output: each frame's audio, then that frame's image."""

from __future__ import annotations

from pipecat.frames.frames import Frame, OutputImageRawFrame, TTSAudioRawFrame
from pipecat_facecast._local import MAX_LATE_SECS


def assert_pairs(frames: list[Frame], fps: int = 30) -> None:
    """Every image pushed during the speech directly follows its audio.

    A frame the clock plays late (the event loop was held up, as a busy test machine can do) has no
    image, and a hold-up longer than MAX_LATE_SECS restarts the clock, so at most that many frames'
    worth go without one.
    """
    audio_at = [i for i, frame in enumerate(frames) if isinstance(frame, TTSAudioRawFrame)]
    assert audio_at, "no speech was pushed"
    images_at = [
        i for i in range(audio_at[0], audio_at[-1] + 2) if isinstance(frames[i], OutputImageRawFrame)
    ]
    assert all(isinstance(frames[i - 1], TTSAudioRawFrame) for i in images_at)
    assert len(images_at) >= len(audio_at) - MAX_LATE_SECS * fps
