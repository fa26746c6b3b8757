"""Playout towards the output transport: frames held behind their speech, images paced, audio resampled."""

from __future__ import annotations

from collections import deque

import numpy as np
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection

# A position in the avatar's speech: (segment id, input samples of that segment). Segment ids only grow.
Position = tuple[int, int]
SEGMENT_DONE = 1 << 62  # the sample position of a finished segment: past any real one


class PlayoutGate:
    """Frames that arrive behind speech audio leave only once that audio has been played.

    This is the order the output transport would have kept had the audio gone straight to it (frames after
    audio wait in its audio queue), so a `TTSStoppedFrame` or `TTSTextFrame` never overtakes the speech it
    follows.
    """

    def __init__(self) -> None:
        """Create an empty gate: nothing played, nothing held."""
        self._held: deque[tuple[Position, Frame, FrameDirection]] = deque()
        self._played: Position = (-1, 0)

    @property
    def holding(self) -> bool:
        """Whether any frame is waiting for its speech to be played."""
        return bool(self._held)

    def admit(self, frame: Frame, direction: FrameDirection, behind: Position | None) -> bool:
        """Offer a frame that arrived behind the speech up to `behind` (None: no speech yet).

        Returns:
            True when the frame may go on now, False when the gate keeps it.
        """
        if not self._held and (behind is None or behind <= self._played):
            return True
        self._held.append((behind or self._played, frame, direction))
        return False

    def played(self, position: Position) -> list[tuple[Frame, FrameDirection]]:
        """Record that speech up to `position` has been played; returns the frames that may go now."""
        self._played = max(self._played, position)
        released = []
        while self._held and self._held[0][0] <= self._played:
            _, frame, direction = self._held.popleft()
            released.append((frame, direction))
        return released

    def interrupt(self) -> list[tuple[Frame, FrameDirection]]:
        """Drop the interruptible frames held, as the output transport drops its queue; returns the rest."""
        kept = [(frame, direction) for _, frame, direction in self._held if not frame.interruptible]
        self._held.clear()
        return kept

    def release_all(self) -> list[tuple[Frame, FrameDirection]]:
        """Everything still held, in order (at shutdown)."""
        released = [(frame, direction) for _, frame, direction in self._held]
        self._held.clear()
        return released


class ImagePacer:
    """Lets images through no faster than the output transport draws them.

    Pipecat's live video output draws one queued image per period and drops none, so every image pushed
    ahead of its period stays queued for good and the picture trails the sound by that much more. This
    counts the images pushed against the periods elapsed (a leaky bucket) and refuses an image while a
    whole one is still undrawn by that count: a burst (after the event loop was held up) leaves at most one
    image queued ahead, and the next image that comes early drains it. A steady stream all goes through
    while its jitter spans less than a period.
    """

    def __init__(self, fps: int) -> None:
        """Pace for a transport drawing `fps` images a second."""
        self._fps = fps
        self._queued = 0.0  # images the transport has not drawn yet, by this reckoning
        self._at = 0.0

    def admit(self, now: float) -> bool:
        """Whether an image ready at monotonic time `now` may be pushed (it is then counted as queued)."""
        self._queued = max(0.0, self._queued - (now - self._at) * self._fps)
        self._at = now
        if self._queued >= 1.0:
            return False
        self._queued += 1.0
        return True


class OutputResampler:
    """The avatar's int16 audio at the engine's rate → bytes at the pipeline's rate, one segment at a time.

    Pipecat's streaming resampler with no inactivity reset: the filter tail is flushed at the end of each
    segment instead, so nothing is dropped mid-word when the speech pauses.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        """Resample from `in_rate` to `out_rate` Hz (a pass-through when they are equal)."""
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = create_stream_resampler(clear_after_secs=None) if in_rate != out_rate else None

    async def convert(self, samples: np.ndarray, *, segment_end: bool) -> bytes:
        """One frame's samples; `segment_end` adds the filter tail because the segment ends here."""
        pcm = samples.astype("<i2", copy=False).tobytes()
        if self._resampler is None:
            return pcm
        out = await self._resampler.resample(pcm, self.in_rate, self.out_rate)
        if segment_end:
            out += await self._resampler.flush()
        return out

    async def reset(self) -> None:
        """Forget the filter state (after an interruption: the rest of that speech is not wanted)."""
        if self._resampler is not None:
            await self._resampler.reset()
