"""espeak-ng as a Pipecat TTS service, offline and instant: FULL mode's voice (facecast.conversation) and the
Pipecat plugin's (pipecat_facecast.tts). Needs pipecat-ai, which the `full` extra and the plugin install.

Every utterance's first ``TTSAudioRawFrame`` carries the phones espeak-ng spoke (`PHONES_METADATA_KEY`: a list
of facecast.engine.PhoneTiming, seconds from that frame's first sample) and the text (`TEXT_METADATA_KEY`),
so the avatar that follows moves its mouth to the phones exactly instead of recognising the speech.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from pipecat.audio.utils import create_file_resampler
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.types import is_given

from facecast.tts.espeak import DEFAULT_VOICE, EspeakTTS, TTSError

PHONES_METADATA_KEY = "facecast.phones"
TEXT_METADATA_KEY = "facecast.text"


@dataclass
class EspeakTTSSettings(TTSSettings):
    """Settings for `EspeakTTSService`.

    Parameters:
        voice: espeak-ng voice name ("en-us", "en", "de", "fr", ...; the server lists them at GET /v1/voices).
    """


class EspeakTTSService(TTSService):
    """espeak-ng speech synthesis, offline and instant; robotic, but it needs no key and no download."""

    Settings = EspeakTTSSettings
    _settings: Settings

    def __init__(self, *, words_per_minute: int = 165, settings: Settings | None = None, **kwargs: Any):
        """Initialize the espeak-ng TTS service.

        Args:
            words_per_minute: Speaking rate.
            settings: Runtime settings (voice); defaults to "en-us".
            **kwargs: Additional arguments passed to `TTSService` (e.g. ``sample_rate``).
        """
        default_settings = self.Settings(model=None, voice=DEFAULT_VOICE, language=None)
        if settings is not None:
            default_settings.apply_update(settings)
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=default_settings, **kwargs)
        self._espeak = EspeakTTS(voice=str(self._settings.voice), rate=words_per_minute)
        self._resampler = create_file_resampler()

    def can_generate_metrics(self) -> bool:
        """Check if this service can generate processing metrics.

        Returns:
            True: the service reports TTFB and usage.
        """
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        """Synthesize `text` and yield its audio, resampled to the service's output rate.

        Args:
            text: The text to speak.
            context_id: Unique identifier for this TTS context.

        Yields:
            Frame: ``TTSAudioRawFrame`` chunks, or an ``ErrorFrame``.
        """
        voice = self._settings.voice if is_given(self._settings.voice) and self._settings.voice else None
        await self.start_tts_usage_metrics(text)
        try:
            # libespeak-ng is a C library called through ctypes, which releases the GIL while it runs.
            speech = await asyncio.to_thread(self._espeak.synthesize_timed, text, voice)
        except TTSError as e:
            yield ErrorFrame(error=f"{self} cannot speak {text!r}: {e}")
            return
        audio = await self._resampler.resample(speech.audio.tobytes(), speech.sample_rate, self.sample_rate)
        await self.stop_ttfb_metrics()
        chunk = self.chunk_size
        for start in range(0, len(audio), chunk):
            frame = TTSAudioRawFrame(audio[start : start + chunk], self.sample_rate, 1, context_id=context_id)
            if start == 0:
                frame.metadata[PHONES_METADATA_KEY] = list(speech.phones)
                frame.metadata[TEXT_METADATA_KEY] = text
            yield frame
