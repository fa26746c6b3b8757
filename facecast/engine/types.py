"""The engine's value types: what flows between mouth tracker, animator, renderer and hosts.

Everything here is an immutable value. Units are explicit in the field names or docstrings so that
hosts, renderers and the public `--params` JSONL format agree on them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from facecast.phone_timing import PhoneTiming as PhoneTiming  # an engine input, defined below the TTS

# The 9 mouth classes (Rhubarb / Preston-Blair) used for viseme output and lip-sync measurement.
#   X rest · A m/b/p closed · B most consonants, EE · C EH/AE/AH · D AA/AY/AW · E AO/ER/R
#   F UW/OW/W · G F/V · H L
VISEMES: tuple[str, ...] = ("X", "A", "B", "C", "D", "E", "F", "G", "H")
Viseme = Literal["X", "A", "B", "C", "D", "E", "F", "G", "H"]


@dataclass(frozen=True, slots=True)
class MouthParams:
    """Continuous mouth shape. All values are in 0..1; all zeros is the closed, relaxed rest mouth."""

    open: float = 0.0  # jaw drop / lip gap
    width: float = 0.0  # lip corners spread (EE, smile-like)
    round: float = 0.0  # lips rounded and pushed forward (OO, W)
    closed: float = 0.0  # lips pressed together (m/b/p); overrides open when 1
    teeth: float = 0.0  # upper/lower teeth visible through the lip gap
    tongue: float = 0.0  # tongue tip visible (L, TH, D/T)
    bite: float = 0.0  # upper teeth resting on the lower lip (F/V)
    viseme: Viseme = "X"  # the dominant mouth class at this instant

    def clamped(self) -> MouthParams:
        """The same shape with every value limited to 0..1 (what renderers draw)."""
        c = lambda v: min(1.0, max(0.0, v))  # noqa: E731
        return MouthParams(
            c(self.open), c(self.width), c(self.round), c(self.closed), c(self.teeth), c(self.tongue),
            c(self.bite), self.viseme,
        )  # fmt: skip

    def as_dict(self) -> dict[str, float | str]:
        return {
            "open": round(self.open, 4),
            "width": round(self.width, 4),
            "round": round(self.round, 4),
            "closed": round(self.closed, 4),
            "teeth": round(self.teeth, 4),
            "tongue": round(self.tongue, 4),
            "bite": round(self.bite, 4),
            "viseme": self.viseme,
        }


REST_MOUTH = MouthParams()


@dataclass(frozen=True, slots=True)
class FaceState:
    """Everything a renderer needs to draw one frame. Angles are in degrees; positions in -1..1."""

    mouth: MouthParams = REST_MOUTH
    head_yaw: float = 0.0  # + turns the face to the viewer's right, typically within ±8°
    head_pitch: float = 0.0  # + tilts the chin down (nod), typically within ±6°
    head_roll: float = 0.0  # + tilts the head clockwise on screen, typically within ±5°
    gaze_x: float = 0.0  # -1 looks to the viewer's left .. +1 right
    gaze_y: float = 0.0  # -1 up .. +1 down
    blink: float = 0.0  # 0 eyes open .. 1 lids fully closed
    breath: float = 0.0  # -1..1, chest/shoulder rise
    brow: float = 0.0  # 0 neutral .. 1 raised
    smile: float = 0.0  # 0 neutral .. 1 friendly smile (adds to mouth corners and cheeks)
    speaking: bool = False
    listening: bool = False


class Renderer(Protocol):
    """Turns a FaceState into one video frame. One class per avatar kind."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def channels(self) -> int:
        """3 for RGB, 4 for RGBA (transparent background)."""
        ...

    def render(self, state: FaceState) -> np.ndarray:
        """Return a C-contiguous uint8 array of shape (height, width, channels)."""
        ...


SegmentTag = Hashable  # what a host calls an utterance (its event id, its own counter, ...)


@dataclass(frozen=True, slots=True)
class SegmentStarted:
    """The first frame that plays audio of segment `segment_id`; `tag` is what the host named it."""

    segment_id: int
    tag: SegmentTag | None = None


@dataclass(frozen=True, slots=True)
class SegmentEnded:
    """Segment `segment_id` finished playing at the end of this frame (or was dropped by clear()).

    `played_s` is how much of its audio was played (seconds on the output timeline); `interrupted`
    is True when clear() cut it short (or dropped it before it started). `tag` is what the host named it."""

    segment_id: int
    played_s: float
    interrupted: bool
    tag: SegmentTag | None = None


SegmentEvent = SegmentStarted | SegmentEnded


# FrameMeta.mouth_source values where the mouth followed what the speech's source knows (its phone
# timings, or its words aligned to the audio) rather than recognition or energy.
TEXT_MOUTH_SOURCES: frozenset[str] = frozenset({"timings", "alignment", "words"})


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What a frame is, so that latency and A/V offset can be measured from the frame itself."""

    index: int  # frame number since the engine was created
    t: float  # seconds: the frame's start on the output audio timeline (index-based, never wall time)
    out_sample_start: int  # first output sample of this frame on the output timeline
    mouth: MouthParams
    state: FaceState
    segment_id: int | None = None  # segment whose audio this frame plays, None for idle frames
    segment_tag: SegmentTag | None = None  # that segment's tag (Engine.open_segment)
    input_start: int | None = None  # first input sample (segment-relative, at the input rate) played here
    input_end: int | None = None  # one past the last input sample played here
    playback_position: float = 0.0  # seconds of the current segment played at the end of this frame
    # Which tracker decided the mouth: timings | alignment | words | phones | energy | rest.
    mouth_source: str = "rest"
    transcript_mismatch: bool = False  # words were given for this audio but did not fit it (recognised)
    events: tuple[SegmentEvent, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class FramePair:
    """One video frame and the output audio that plays during it.

    `audio` holds exactly the samples of this frame's slot on the output timeline (int16 mono,
    `EngineConfig.out_rate`), or is None for a video-only idle frame."""

    video: np.ndarray | None
    audio: np.ndarray | None
    meta: FrameMeta

    @property
    def is_speech(self) -> bool:
        return self.audio is not None
