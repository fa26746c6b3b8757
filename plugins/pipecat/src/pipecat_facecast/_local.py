"""In-process avatar: the Facecast engine, driven by Facecast's live core, is the A/V master clock.

The live core (facecast.hosts.live.LiveCore) runs the engine on its own worker thread and releases one
(audio, image) frame every 1/fps; this module turns each one into Pipecat frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from pipecat.frames.frames import OutputImageRawFrame
from pipecat.utils.base_object import BaseObject

from facecast.avatars import AvatarLibrary, Look, ProceduralRenderer, load_look
from facecast.engine import Engine, EngineConfig, PhoneTiming, Renderer, SegmentEnded, SegmentStarted
from facecast.engine.config import OUT_RATES, TrackerMode
from facecast.hosts.live import AvatarClosed, LiveCore, LiveFrame
from pipecat_facecast._playout import SEGMENT_DONE, OutputResampler, Position

IMAGE_FORMATS = {3: "RGB", 4: "RGBA"}
ALIGNER_WARMUP_SAMPLES = 8000  # 0.5 s at 16 kHz


# One frame out: its audio at the pipeline's rate (None while idle), its image, the segment the audio belongs
# to, how far the speech has been played once it is out, and whether it starts an utterance.
EmitFrame = Callable[
    [bytes | None, OutputImageRawFrame | None, int | None, Position | None, bool], Awaitable[None]
]


def _load_aligner() -> None:
    """Force-align a moment of silence: loads the process-wide aligner (~0.3-0.8 s) ahead of real use."""
    engine = Engine(None, EngineConfig(tracker="phones"))
    engine.push_audio(np.zeros(ALIGNER_WARMUP_SAMPLES, np.int16), 16000, text="hello")
    engine.end_segment()


def engine_rate(pipeline_rate: int) -> int:
    """The engine output rate closest above the pipeline's (the engine offers 16, 24 and 48 kHz)."""
    return next((rate for rate in OUT_RATES if rate >= pipeline_rate), OUT_RATES[-1])


class LocalAvatar:
    """A Facecast engine on the live core: one (audio, image) pair every 1/fps, against wall time.

    The core's one lag rule applies: a frame produced more than a period late still plays its audio but
    has no image (the output transport draws live video one image per period from a queue and drops
    none, so the images of a catch-up burst would stay queued and the picture would trail the sound for
    the rest of the session); a clock more than a quarter second behind moves on.
    """

    def __init__(
        self,
        owner: BaseObject,
        emit: EmitFrame,
        *,
        look: Look,
        lookahead_ms: int,
        tracker: TrackerMode,
        language: str,
        seed: int,
        align_text: bool = False,
        renderer: Renderer | None = None,
    ) -> None:
        """Describe the avatar; nothing is loaded until `setup()`.

        Args:
            owner: The processor whose task manager runs the frame task.
            emit: Called with every frame the clock produces.
            look: The avatar (a built-in name, an id in the avatar library or a ``.facecast`` path), its
                frame shape and size, background and frame rate.
            lookahead_ms: The engine's look-ahead.
            tracker: The engine's mouth tracker.
            language: Language of the speech.
            seed: Seed of the idle motion.
            align_text: Utterances will come with their text (load the aligner ahead of the first one).
            renderer: A custom renderer used instead of the built-in avatar (the look is then fixed).
        """
        self._owner = owner
        self._emit = emit
        self._look = look
        self._fps = look.fps
        self._lookahead_ms = lookahead_ms
        self._tracker: TrackerMode = tracker
        self._language = language
        self._seed = seed
        self._align_text = align_text
        self._custom_renderer = renderer
        self._core: LiveCore | None = None
        self._resampler: OutputResampler | None = None
        self._task: asyncio.Task | None = None
        # Utterances are numbered here and the engine carries the number as the segment's tag, so the
        # numbering survives an engine rebuilt for a new fps.
        self._utterance = 0
        self._speaking = False  # the current utterance has audio in the engine
        self._interrupts = 0  # a frame taken before an interrupt must not be pushed after it
        self._rebuild = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def setup(self, sample_rate: int) -> None:
        """Load the renderer and the engine for a pipeline that plays audio at `sample_rate` Hz."""
        out_rate = engine_rate(sample_rate)
        self._resampler = OutputResampler(out_rate, sample_rate)
        # Loading the models takes a few hundred ms: keep it off the event loop.
        self._core = LiveCore(await asyncio.to_thread(self._new_engine, self._fps))
        if self._align_text and self._core.config.uses_phones:
            await asyncio.to_thread(_load_aligner)

    async def start(self) -> None:
        """Start the clock (idle frames from now on)."""
        if self._task is None:
            self._task = self._owner.create_task(self._run_clock(), "facecast-clock")

    async def stop(self) -> None:
        """Stop the clock and the engine's worker; idempotent."""
        if self._task is not None:
            await self._owner.cancel_task(self._task)
            self._task = None
        if self._core is not None:
            await self._core.aclose()

    @property
    def running(self) -> bool:
        """Whether the clock is running."""
        return self._task is not None

    # -- speech in ------------------------------------------------------------------------------------
    async def speak(
        self, pcm: bytes, sample_rate: int, channels: int, phones: Sequence[PhoneTiming] | None
    ) -> int:
        """Queue TTS audio (and the phones it holds, segment-relative) for the current utterance.

        Returns the utterance's number.
        """
        core = self._require_core()
        if not self._speaking:
            self._speaking = True
            await core.open_segment(self._utterance)
        if phones:
            await core.push_phones(phones)
        await core.push_audio(pcm, sample_rate, channels=channels)
        return self._utterance

    async def add_text(self, text: str) -> None:
        """Words of the current utterance, as the TTS reports them (aligned while the audio plays)."""
        if self._speaking:
            await self._require_core().push_text(text)

    async def add_words(self, text: str, start: float, duration: float | None) -> None:
        """Words the TTS timed: spoken from `start` for `duration` s of the utterance (None: to its end).

        Pipecat times only when each word starts, so a span runs to the next word's start, over the
        pause between them.
        """
        if self._speaking:
            await self._require_core().push_words(text, start, duration, pause_after=True)

    async def end_speech(self, text: str | None) -> None:
        """The current utterance is complete; `text` (its transcript) enables forced alignment."""
        core = self._require_core()
        if text:
            await core.push_text(text)
        await core.end_segment()
        self._next_utterance()

    async def interrupt(self) -> None:
        """Drop all pending speech: the next frame is silent, the mouth closes within two frames."""
        self._interrupts += 1
        await self._require_core().clear()
        self._next_utterance()
        if self._resampler is not None:
            await self._resampler.reset()

    async def set_listening(self, listening: bool) -> None:
        """Show the attentive pose while the user talks."""
        await self._require_core().set_listening(listening)

    @property
    def pending_speech(self) -> bool:
        """Whether speech is queued that has not been played."""
        return self._core is not None and self._core.engine.pending_speech

    def _next_utterance(self) -> None:
        if self._speaking:
            self._speaking = False
            self._utterance += 1

    # -- runtime settings -----------------------------------------------------------------------------
    def set_look(self, look: Look) -> None:
        """Draw with another avatar, size or background from the next frame on (its fps: set_fps)."""
        self._look = look
        if self._core is not None:
            self._core.set_renderer_now(self._renderer())

    def set_fps(self, fps: int) -> None:
        """Change the frame rate at the next moment without pending speech (the clock is rebuilt)."""
        if fps != self._fps:
            self._fps = fps
            self._rebuild = True

    # -- the clock ------------------------------------------------------------------------------------
    async def _run_clock(self) -> None:
        core = self._require_core()
        if not core.started:
            await core.start()
        while True:
            if self._rebuild and not self.pending_speech:
                core = await self._replace_core()
            try:
                frame = await core.next_frame()
            except AvatarClosed:
                if core is self._core:
                    raise
                continue  # replaced while waiting
            await self._play(frame)

    async def _replace_core(self) -> LiveCore:
        self._rebuild = False
        old = self._require_core()
        self._core = LiveCore(await asyncio.to_thread(self._new_engine, self._fps))
        await self._core.start()
        with contextlib.suppress(Exception):
            await old.aclose()
        return self._core

    async def _play(self, frame: LiveFrame) -> None:
        interrupts = self._interrupts
        meta = frame.meta
        played: Position | None = None
        ended_here = False
        started = False
        for event in meta.events:
            if isinstance(event, SegmentEnded) and isinstance(event.tag, int):
                played = max(played or (-1, 0), (event.tag, SEGMENT_DONE))
                ended_here = ended_here or event.segment_id == meta.segment_id
            elif isinstance(event, SegmentStarted):
                started = True
        utterance = None
        audio = None
        if frame.audio is not None and isinstance(meta.segment_tag, int) and meta.input_end is not None:
            assert self._resampler is not None
            utterance = meta.segment_tag
            audio = await self._resampler.convert(frame.audio, segment_end=ended_here)
            played = max(played or (-1, 0), (utterance, meta.input_end))
        image = None
        if frame.video is not None:
            height, width, channels = frame.video.shape
            image = OutputImageRawFrame(
                image=frame.video.tobytes(), size=(width, height), format=IMAGE_FORMATS[channels]
            )
        if interrupts != self._interrupts:  # interrupted while converting: this speech is not wanted
            audio = utterance = played = None
            started = False
        await self._emit(audio, image, utterance, played, started and audio is not None)

    # -- helpers --------------------------------------------------------------------------------------
    def _new_engine(self, fps: int) -> Engine:
        assert self._resampler is not None
        config = EngineConfig(
            fps=fps,
            out_rate=self._resampler.in_rate,
            lookahead_ms=self._lookahead_ms,
            tracker=self._tracker,
            language=self._language,
            seed=self._seed,
        )
        return Engine(self._renderer(), config)

    def _renderer(self) -> Renderer | ProceduralRenderer:
        if self._custom_renderer is not None:
            return self._custom_renderer
        return load_look(self._look, AvatarLibrary())

    def _require_core(self) -> LiveCore:
        if self._core is None:
            raise RuntimeError("the avatar is not set up yet (the pipeline has not started)")
        return self._core
