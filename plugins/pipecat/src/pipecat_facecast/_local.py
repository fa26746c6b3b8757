"""In-process avatar: the Facecast engine renders on the bot's event loop and is the A/V master clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from loguru import logger
from pipecat.frames.frames import OutputImageRawFrame
from pipecat.utils.base_object import BaseObject

from facecast.avatars import AvatarLibrary, ProceduralRenderer, load_renderer
from facecast.engine import Engine, EngineConfig, PhoneTiming, Renderer, SegmentEnded, SegmentStarted
from facecast.engine.config import OUT_RATES, TrackerMode
from pipecat_facecast._playout import SEGMENT_DONE, OutputResampler, Position

MAX_LATE_SECS = 0.5  # a clock this far behind (the event loop was blocked) restarts instead of catching up
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
    """Runs a Facecast `Engine` against wall time: one (audio, image) pair every 1/fps.

    Everything runs on the event loop; a frame costs a few milliseconds (see the package README). The
    loop keeps time with `time.monotonic()`: a frame more than a period late (the loop was held up)
    still plays its audio but sends no image. The output transport draws live video one image per
    period from a queue and drops none, so the images of a catch-up burst would stay queued and the
    picture would trail the sound by the whole hold-up for the rest of the session.
    """

    def __init__(
        self,
        owner: BaseObject,
        emit: EmitFrame,
        *,
        avatar: str,
        fps: int,
        aspect: str,
        quality: str,
        background: str,
        lookahead_ms: int,
        tracker: TrackerMode,
        language: str,
        seed: int,
        align_text: bool = False,
        renderer: Renderer | None = None,
    ) -> None:
        """Describe the avatar; nothing is loaded until `setup()`.

        Args:
            owner: The processor whose task manager runs the clock task.
            emit: Called with every frame the clock produces.
            avatar: A built-in avatar name, an id in the avatar library or a ``.facecast`` path.
            fps: Frames per second (25 or 30).
            aspect: Frame aspect ratio.
            quality: Frame size preset.
            background: Background mode.
            lookahead_ms: The engine's look-ahead.
            tracker: The engine's mouth tracker.
            language: Language of the speech.
            seed: Seed of the idle motion.
            align_text: Utterances will come with their text (load the aligner ahead of the first one).
            renderer: A custom renderer used instead of the built-in avatar (the look is then fixed).
        """
        self._owner = owner
        self._emit = emit
        self._look = (avatar, aspect, quality, background)
        self._fps = fps
        self._lookahead_ms = lookahead_ms
        self._tracker: TrackerMode = tracker
        self._language = language
        self._seed = seed
        self._align_text = align_text
        self._custom_renderer = renderer
        self._engine: Engine | None = None
        self._resampler: OutputResampler | None = None
        self._task: asyncio.Task | None = None
        self._id_base = 0  # engine segment ids restart when the engine is rebuilt for a new fps
        self._last_id = -1
        self._rebuild = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def setup(self, sample_rate: int) -> None:
        """Load the renderer and the engine for a pipeline that plays audio at `sample_rate` Hz."""
        out_rate = engine_rate(sample_rate)
        self._resampler = OutputResampler(out_rate, sample_rate)
        # Loading the models takes a few hundred ms: keep it off the event loop.
        self._engine = await asyncio.to_thread(self._new_engine, self._fps)
        if self._align_text and self._engine.config.uses_phones:
            await asyncio.to_thread(_load_aligner)

    async def start(self) -> None:
        """Start the clock (idle frames from now on)."""
        if self._task is None:
            self._task = self._owner.create_task(self._run_clock(), "facecast-clock")

    async def stop(self) -> None:
        """Stop the clock; idempotent."""
        if self._task is not None:
            await self._owner.cancel_task(self._task)
            self._task = None

    @property
    def running(self) -> bool:
        """Whether the clock is running."""
        return self._task is not None

    # -- speech in ------------------------------------------------------------------------------------
    async def speak(
        self, pcm: bytes, sample_rate: int, channels: int, phones: Sequence[PhoneTiming] | None
    ) -> int:
        """Queue TTS audio (and the phones it holds, segment-relative) for the current segment."""
        engine = self._require_engine()
        if phones:
            engine.push_phones(phones)
        segment = engine.push_audio(pcm, sample_rate, channels=channels)
        self._last_id = self._id_base + segment
        return self._last_id

    async def end_speech(self, text: str | None) -> None:
        """The current segment is complete; `text` (its transcript) enables forced alignment."""
        engine = self._require_engine()
        if text:
            engine.push_text(text)
        engine.end_segment()

    async def interrupt(self) -> None:
        """Drop all pending speech: the next frame is silent, the mouth closes within two frames."""
        self._require_engine().clear()
        if self._resampler is not None:
            await self._resampler.reset()

    async def set_listening(self, listening: bool) -> None:
        """Show the attentive pose while the user talks."""
        self._require_engine().set_listening(listening)

    @property
    def pending_speech(self) -> bool:
        """Whether speech is queued that has not been played."""
        return self._engine is not None and self._engine.pending_speech

    # -- runtime settings -----------------------------------------------------------------------------
    def set_look(self, avatar: str, aspect: str, quality: str, background: str) -> None:
        """Draw with another avatar or size from the next frame on."""
        self._look = (avatar, aspect, quality, background)
        if self._engine is not None:
            self._engine.renderer = self._renderer()

    def set_fps(self, fps: int) -> None:
        """Change the frame rate at the next moment without pending speech (the clock is rebuilt)."""
        if fps != self._fps:
            self._fps = fps
            self._rebuild = True

    # -- the clock ------------------------------------------------------------------------------------
    async def _run_clock(self) -> None:
        engine = self._require_engine()
        deadline = time.monotonic()
        while True:
            if self._rebuild and not engine.pending_speech:
                engine = self._engine = self._new_engine(self._fps)
            period = 1.0 / engine.config.fps
            # A fixed grid, even when speech becomes ready between two ticks: the output transport draws
            # video on its own grid, and re-phasing ours would shift every later frame against the sound.
            wait = deadline - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            late = time.monotonic() - deadline
            if late > MAX_LATE_SECS:
                logger.warning(f"Facecast avatar clock {late:.2f} s behind; restarting it")
                deadline, late = time.monotonic(), 0.0
            await self._play(engine, render=late < period)
            deadline += period

    async def _play(self, engine: Engine, *, render: bool) -> None:
        pair = engine.next_frame(render=render)
        meta = pair.meta
        played: Position | None = None
        ended_here = False
        started = False
        for event in meta.events:
            if isinstance(event, SegmentEnded):
                played = max(played or (-1, 0), (self._id_base + event.segment_id, SEGMENT_DONE))
                ended_here = ended_here or event.segment_id == meta.segment_id
            elif isinstance(event, SegmentStarted):
                started = True
        segment_id = None
        audio = None
        if pair.audio is not None and meta.segment_id is not None and meta.input_end is not None:
            assert self._resampler is not None
            segment_id = self._id_base + meta.segment_id
            audio = await self._resampler.convert(pair.audio, segment_end=ended_here)
            played = max(played or (-1, 0), (segment_id, meta.input_end))
        image = None
        if pair.video is not None:
            height, width, channels = pair.video.shape
            image = OutputImageRawFrame(
                image=pair.video.tobytes(), size=(width, height), format=IMAGE_FORMATS[channels]
            )
        await self._emit(audio, image, segment_id, played, started)

    # -- helpers --------------------------------------------------------------------------------------
    def _new_engine(self, fps: int) -> Engine:
        assert self._resampler is not None
        if self._engine is not None:
            self._id_base = self._last_id + 1
        self._rebuild = False
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
        avatar, aspect, quality, background = self._look
        return load_renderer(
            avatar, aspect=aspect, quality=quality, background=background, library=AvatarLibrary()
        )

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the avatar is not set up yet (the pipeline has not started)")
        return self._engine
