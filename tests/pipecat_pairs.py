"""The shape of the avatar's speech output (each frame's audio, then that frame's image), and a way to
hold the event loop up while it speaks."""

from __future__ import annotations

import time
from typing import Any

from pipecat.frames.frames import Frame, OutputImageRawFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat_facecast import FacecastVideoService

from facecast.hosts.live import MAX_LAG_S


def pictureless(frames: list[Frame]) -> int:
    """How many speech audio frames went out without an image right after them."""
    followers = [*frames[1:], None]
    return sum(
        1
        for frame, after in zip(frames, followers, strict=True)
        if isinstance(frame, TTSAudioRawFrame) and not isinstance(after, OutputImageRawFrame)
    )


def assert_pairs(frames: list[Frame], fps: int = 30, hold_ups: int = 1) -> None:
    """Each speech audio frame is followed by its image, but for frames sent late.

    After the event loop is held up (as a busy test machine can do) the frames that are late go without
    their image; a hold-up past MAX_LAG_S restarts the clock, so that many frames' worth at most for each
    of `hold_ups`.
    """
    assert any(isinstance(frame, TTSAudioRawFrame) for frame in frames), "no speech was pushed"
    late = pictureless(frames)
    assert late <= hold_ups * MAX_LAG_S * fps, f"{late} speech frames went out without their image"


def images_ahead(times: list[float], fps: int = 30) -> float:
    """The most images pushed in any stretch beyond what a transport drawing `fps` a second drew in it."""
    return max(
        (j - i + 1) - (times[j] - times[i]) * fps for i in range(len(times)) for j in range(i, len(times))
    )


class StallingAvatar(FacecastVideoService):
    """Blocks the event loop for `stall_s` after its `after`-th speech frame, as a busy machine can, and
    notes when each image leaves."""

    def __init__(self, stall_s: float, after: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stall_s = stall_s
        self.after = after
        self.spoken = 0
        self.image_times: list[float] = []

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        if isinstance(frame, OutputImageRawFrame):
            self.image_times.append(time.monotonic())
        await super().push_frame(frame, direction)

    async def _avatar_frame(self, audio: bytes | None, *args: Any) -> None:
        await super()._avatar_frame(audio, *args)
        if audio:
            self.spoken += 1
            if self.spoken == self.after:
                time.sleep(self.stall_s)
