"""FULL mode's default speech recognition, as a Pipecat service: PocketSphinx, offline from what pip installed
(no key, no download). Its default voice, espeak-ng, is facecast.tts.espeak_service, shared with the Pipecat
plugin."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncGenerator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    Frame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.utils.time import time_now_iso8601

from facecast.conversation import sphinx_worker
from facecast.conversation.sphinx_worker import STT_RATE

PREROLL_S = 1  # audio kept from before the VAD's start (it fires a fraction of a second into speech)
TRAILING_SILENCE_S = 0.2


@dataclass
class PocketSphinxSTTSettings(STTSettings):
    """Settings for `PocketSphinxSTTService` (the model is fixed: US English)."""


class PocketSphinxSTTService(STTService):
    """Offline speech recognition with PocketSphinx, decoding while the user speaks: the VAD's start
    opens an utterance (with the second of audio before it), the audio is decoded as it arrives, and the
    VAD's stop closes it and yields the transcript, so only the utterance's tail is left to decode then.
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
            self._decoder.submit(sphinx_worker.feed, audio)
        else:
            self._preroll += audio
            del self._preroll[: -PREROLL_S * 2 * STT_RATE]
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if self._decoder is None:
            return
        if isinstance(frame, VADUserStartedSpeakingFrame) and not self._in_utterance:
            self._in_utterance = True
            self._decoder.submit(sphinx_worker.begin, bytes(self._preroll))
            self._preroll.clear()
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._in_utterance:
            self._in_utterance = False
            # A little silence after the VAD's stop lets the decoder finish the last word.
            done = self._decoder.submit(sphinx_worker.finish, bytes(int(TRAILING_SILENCE_S * STT_RATE) * 2))
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
