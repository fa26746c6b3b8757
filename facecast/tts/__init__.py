"""Text-to-speech adapters. espeak-ng (from the `espeakng-loader` wheel) is the zero-setup default for
demos and tests; anything that turns text into int16 mono PCM can implement `TTS`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from facecast.tts.espeak import EspeakTTS, TimedSpeech, TTSError, WordTiming


@runtime_checkable
class TTS(Protocol):
    """Text → int16 mono PCM at `sample_rate` Hz."""

    @property
    def sample_rate(self) -> int: ...

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray: ...


__all__ = ["TTS", "EspeakTTS", "TTSError", "TimedSpeech", "WordTiming"]
