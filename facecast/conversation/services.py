"""FULL mode's speech services. The default recognition, as a Pipecat service: PocketSphinx, offline from
what pip installed (no key, no download). Its default voice, espeak-ng, is facecast.tts.espeak_service,
shared with the Pipecat plugin. `stt_service` / `tts_service` build the Pipecat service a session chose
instead (the token's stt_service / tts_service)."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncGenerator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    SystemFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.utils.time import time_now_iso8601

from facecast.conversation import sphinx_worker
from facecast.conversation.sphinx_worker import STT_RATE
from facecast.tts.espeak_service import EspeakTTSService

PREROLL_S = 1  # audio kept from before the VAD's start (it fires a fraction of a second into speech)
# The utterance's audio goes to the decoder process in pieces this long rather than per 20 ms frame: a
# fifth of the hops, and no more left to decode at the VAD's stop than the piece not yet sent.
FEED_S = 0.1
# Quiet this long inside the user's speech (the VAD's STOPPING state, before its stop) is a pause: the
# decoder finishes the utterance then, in the time left until the VAD's stop (measured: 15-420 ms on a
# busy machine, as the VAD's STOPPING state starts late). Shorter pauses between words would each cost a
# final decode, and a second decode of the utterance when the user goes on (none in the bench's speech).
PAUSE_S = 0.05


@dataclass
class UserPausedFrame(SystemFrame):
    """The user has been quiet for `PAUSE_S` while speaking: the VAD's stop may follow."""


@dataclass
class UserResumedFrame(SystemFrame):
    """The user spoke again after a `UserPausedFrame`, before the VAD's stop."""


class PauseTrackingSileroVAD(SileroVADAnalyzer):
    """Silero VAD that also tells how long its STOPPING state has lasted (`quiet_s`), and whether the
    user is speaking again after it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quiet_s = 0.0
        self.state = VADState.QUIET

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self.state = await super().analyze_audio(buffer)
        self.quiet_s = (
            self.quiet_s + len(buffer) / (2 * self.sample_rate) if self.state == VADState.STOPPING else 0.0
        )
        return self.state


class PausingVADProcessor(VADProcessor):
    """Pipecat's VADProcessor, and `UserPausedFrame` / `UserResumedFrame` between its start and stop, so
    that speech recognition can finish an utterance while the VAD waits out its stop."""

    def __init__(self, *, vad_analyzer: PauseTrackingSileroVAD, **kwargs: Any) -> None:
        super().__init__(vad_analyzer=vad_analyzer, **kwargs)
        self._analyzer = vad_analyzer
        self._paused = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, InputAudioRawFrame):
            return
        state = self._analyzer.state
        if not self._paused and state == VADState.STOPPING and self._analyzer.quiet_s >= PAUSE_S:
            self._paused = True
            await self.push_frame(UserPausedFrame())
        elif self._paused and state != VADState.STOPPING:
            self._paused = False
            if state == VADState.SPEAKING:
                await self.push_frame(UserResumedFrame())


@dataclass
class PocketSphinxSTTSettings(STTSettings):
    """Settings for `PocketSphinxSTTService` (the model is fixed: US English)."""


class PocketSphinxSTTService(STTService):
    """Offline speech recognition with PocketSphinx, decoding while the user speaks: the VAD's start
    opens an utterance (with the second of audio before it), the audio is decoded as it arrives, a pause
    (`UserPausedFrame`, from `PausingVADProcessor`) finishes the decode while the VAD waits out its stop,
    and the stop yields the transcript, so little or nothing is left to decode then.
    The decoder runs in a process of the service's own (facecast.conversation.sphinx_worker, one call at
    a time, in order), started by `load()` and stopped at cleanup."""

    Settings = PocketSphinxSTTSettings
    _settings: Settings

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            sample_rate=STT_RATE,
            # Only the tail is left to decode at the VAD's stop; more on a busy CPU.
            ttfs_p99_latency=1.0,
            settings=self.Settings(model="en-us", language=None),
            **kwargs,
        )
        self._decoder: ProcessPoolExecutor | None = None
        self._preroll = bytearray()  # the latest audio while the user is silent
        self._unsent = bytearray()  # the open utterance's audio not yet sent to the decoder
        self._in_utterance = False

    def can_generate_metrics(self) -> bool:
        """The service reports TTFB."""
        return True

    async def load(self) -> None:
        """Start the decoding process and load its decoder (about a second); idempotent."""
        if self._decoder is None:
            self._decoder = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=sphinx_worker.load
            )
            await asyncio.wrap_future(self._decoder.submit(sphinx_worker.ready))

    async def cleanup(self) -> None:
        """Stop the decoding process."""
        await super().cleanup()
        await self.unload()

    async def unload(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            await asyncio.to_thread(decoder.shutdown, wait=True, cancel_futures=True)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Feed one chunk of 16 kHz PCM: to the open utterance, else to the pre-roll."""
        if self._in_utterance and self._decoder is not None:
            self._unsent += audio
            if len(self._unsent) >= FEED_S * 2 * STT_RATE:
                self._decoder.submit(sphinx_worker.feed, bytes(self._unsent))
                self._unsent.clear()
        else:
            self._preroll += audio
            del self._preroll[: -PREROLL_S * 2 * STT_RATE]
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if self._decoder is None:
            return
        if isinstance(frame, UserPausedFrame) and self._in_utterance:
            self._decoder.submit(sphinx_worker.feed, bytes(self._unsent))
            self._unsent.clear()
            self._decoder.submit(sphinx_worker.pause)
        elif isinstance(frame, UserResumedFrame) and self._in_utterance:
            self._decoder.submit(sphinx_worker.resume)
        elif isinstance(frame, VADUserStartedSpeakingFrame) and not self._in_utterance:
            self._in_utterance = True
            self._decoder.submit(sphinx_worker.begin, bytes(self._preroll))
            self._preroll.clear()
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._in_utterance:
            self._in_utterance = False
            # What is left includes the end of the silence the VAD waited for, which lets the decoder
            # finish the last word.
            done = self._decoder.submit(sphinx_worker.finish, bytes(self._unsent))
            self._unsent.clear()
            self.create_task(self._transcript(done), "facecast-transcript")

    async def _transcript(self, done: Future[str]) -> None:
        await self.start_processing_metrics()
        try:
            text = await asyncio.wrap_future(done)
        except Exception as exc:  # the decoder process died or was stopped with the session
            await self.push_error(f"{self}: transcription failed: {exc}", exception=exc)
            return
        await self.stop_processing_metrics()
        if text:
            await self.push_frame(TranscriptionFrame(text, self._user_id, time_now_iso8601(), finalized=True))


@dataclass(frozen=True)
class SpeechChoice:
    """A session's STT or TTS service: the provider (protocol.STT_PROVIDERS / TTS_PROVIDERS), its key
    (decrypted; never logged), and the model, endpoint and voice where given (None: the service's)."""

    provider: str
    api_key: str | None = None
    model: str | None = None
    base_url: str | None = None
    voice: str | None = None

    def __repr__(self) -> str:  # keeps the key out of any log line that prints it
        return f"SpeechChoice(provider={self.provider!r}, model={self.model!r}, base_url={self.base_url!r})"

    def settings(self, settings_class: Any) -> Any:
        given = {"model": self.model, "voice": self.voice}
        return settings_class(**{name: value for name, value in given.items() if value is not None})


def stt_service(choice: SpeechChoice) -> STTService:
    """The Pipecat STT service a session chose; its module is imported only then."""
    if choice.provider == "pocketsphinx":
        return PocketSphinxSTTService()
    if choice.provider == "openai":
        from pipecat.services.openai.stt import OpenAISTTService

        return OpenAISTTService(
            api_key=choice.api_key or "not-needed",  # the client insists on one; local servers ignore it
            base_url=choice.base_url,
            settings=choice.settings(OpenAISTTService.Settings),
        )
    if choice.provider == "deepgram":
        from pipecat.services.deepgram.stt import DeepgramSTTService

        assert choice.api_key is not None  # /token asks for it
        return DeepgramSTTService(
            api_key=choice.api_key, settings=choice.settings(DeepgramSTTService.Settings)
        )
    raise ValueError(f"unknown STT provider {choice.provider!r}")


def tts_service(choice: SpeechChoice, espeak_voice: str) -> TTSService:
    """The Pipecat TTS service a session chose (espeak-ng speaks `espeak_voice`)."""
    if choice.provider == "espeak":
        return EspeakTTSService(settings=EspeakTTSService.Settings(voice=espeak_voice))
    if choice.provider == "openai":
        from pipecat.services.openai.tts import OpenAITTSService

        return OpenAITTSService(
            api_key=choice.api_key or "not-needed",
            base_url=choice.base_url,
            settings=choice.settings(OpenAITTSService.Settings),
        )
    assert choice.api_key is not None  # /token asks for the key and the voice of these
    if choice.provider == "cartesia":
        from pipecat.services.cartesia.tts import CartesiaTTSService

        return CartesiaTTSService(
            api_key=choice.api_key, settings=choice.settings(CartesiaTTSService.Settings)
        )
    if choice.provider == "elevenlabs":
        from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

        return ElevenLabsTTSService(
            api_key=choice.api_key, settings=choice.settings(ElevenLabsTTSService.Settings)
        )
    raise ValueError(f"unknown TTS provider {choice.provider!r}")
