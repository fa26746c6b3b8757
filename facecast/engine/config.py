"""Engine configuration: the few knobs a host chooses, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OUT_RATES = (16000, 24000, 48000)
FPS_CHOICES = (25, 30)
MIN_IN_RATE = 8000
MAX_IN_RATE = 48000
ANALYSIS_RATE = 16000  # PocketSphinx's en-us model rate; the energy tracker uses it too
MAX_LOOKAHEAD_MS = 200
DEFAULT_LOOKAHEAD_MS = 100  # the knee of the look-ahead sweep in docs/benchmarks.md

TrackerMode = Literal["auto", "phones", "energy"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """fps and out_rate set the A/V clock; lookahead_ms delays output audio and video alike so the
    mouth can be decided with that much future speech; tracker "auto" uses phone recognition for
    English (forced alignment when the text is known) and the energy tracker otherwise."""

    fps: int = 30
    out_rate: int = 24000
    lookahead_ms: int = DEFAULT_LOOKAHEAD_MS
    tracker: TrackerMode = "auto"
    language: str = "en"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fps not in FPS_CHOICES:
            raise ValueError(f"fps must be one of {FPS_CHOICES}, got {self.fps!r}")
        if self.out_rate not in OUT_RATES:
            raise ValueError(f"out_rate must be one of {OUT_RATES} Hz, got {self.out_rate!r}")
        if not 0 <= self.lookahead_ms <= MAX_LOOKAHEAD_MS:
            raise ValueError(f"lookahead_ms must be within 0..{MAX_LOOKAHEAD_MS}, got {self.lookahead_ms!r}")
        if self.tracker not in ("auto", "phones", "energy"):
            raise ValueError(f"tracker must be 'auto', 'phones' or 'energy', got {self.tracker!r}")

    @property
    def uses_phones(self) -> bool:
        if self.tracker == "auto":
            return self.language.lower().startswith("en")
        return self.tracker == "phones"

    def frame_start_sample(self, index: int) -> int:
        """First output sample of frame `index`. Frames hold out_rate/fps samples; where that is not an
        integer (16 kHz at 30 fps) sizes alternate (533/534) so the audio clock never drifts."""
        return index * self.out_rate // self.fps

    def frame_samples(self, index: int) -> int:
        return self.frame_start_sample(index + 1) - self.frame_start_sample(index)
