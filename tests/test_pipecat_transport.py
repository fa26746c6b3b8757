"""FacecastVideoService in front of a real Pipecat output transport whose audio plays in real time."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner
from pipecat_facecast import FacecastVideoService

FPS = 30
RATE = 24000


class PacedOutput(BaseOutputTransport):
    """An output transport whose audio write takes as long as the audio lasts, like a sound card."""

    def __init__(self, params: TransportParams) -> None:
        super().__init__(params)
        self.audio_writes: list[tuple[float, OutputAudioRawFrame]] = []
        self.video_writes: list[tuple[float, OutputImageRawFrame]] = []
        self.interrupted_at: list[float] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.interrupted_at.append(time.monotonic())  # the queues have been emptied by now

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self.audio_writes.append((time.monotonic(), frame))
        await asyncio.sleep(len(frame.audio) / 2 / frame.sample_rate)
        return True

    async def write_video_frame(self, frame: OutputImageRawFrame) -> bool:
        self.video_writes.append((time.monotonic(), frame))
        return True


class Tap(FrameProcessor):
    """Records when each downstream frame passes."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)


def tone(seconds: float) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.rint(8000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16).tobytes()


def utterance(seconds: float, context_id: str) -> list[Frame]:
    return [
        TTSStartedFrame(context_id=context_id),
        TTSAudioRawFrame(tone(seconds), RATE, 1, context_id=context_id),
        TTSStoppedFrame(context_id=context_id),
    ]


async def run_pipeline(script) -> tuple[Tap, PacedOutput, Tap]:
    """Avatar → tap → paced output → tap; `script(queue_frames)` feeds the avatar, then the run ends."""
    avatar = FacecastVideoService(tracker="energy", settings=FacecastVideoService.Settings(quality="low"))
    width, height = avatar.video_size
    output = PacedOutput(
        TransportParams(
            audio_out_enabled=True,
            audio_out_end_silence_secs=0,
            video_out_enabled=True,
            video_out_is_live=True,
            video_out_width=width,
            video_out_height=height,
            video_out_framerate=FPS,
        )
    )
    before, after = Tap(), Tap()
    worker = PipelineWorker(
        Pipeline([avatar, before, output, after]),
        params=PipelineParams(audio_out_sample_rate=RATE),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def drive() -> None:
        await asyncio.wait_for(started.wait(), 10)
        await script(worker.queue_frames, after)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())
    return before, output, after


def bot_speaking(tap: Tap) -> list[str]:
    return [
        type(f).__name__
        for _, f in tap.frames
        if isinstance(f, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame))
    ]


async def stopped_speaking(tap: Tap, times: int, timeout: float = 20.0) -> None:
    """Wait until the bot has stopped speaking `times` times: fixed sleeps alone flake on a loaded machine."""
    deadline = time.monotonic() + timeout
    while bot_speaking(tap).count("BotStoppedSpeakingFrame") < times:
        assert time.monotonic() < deadline, f"the bot did not stop speaking {times} time(s)"
        await asyncio.sleep(0.02)


def of_type(tap: Tap, cls: type) -> list[tuple[float, Frame]]:
    return [(t, f) for t, f in tap.frames if isinstance(f, cls)]


async def test_pairs_are_paced_and_bot_speaking_follows_each_utterance() -> None:
    async def script(queue_frames, after: Tap) -> None:
        await asyncio.sleep(0.3)
        await queue_frames(utterance(0.6, "one"))
        await asyncio.sleep(1.2)
        await stopped_speaking(after, 1)
        await queue_frames(utterance(0.6, "two"))
        await asyncio.sleep(1.2)
        await stopped_speaking(after, 2)

    before, output, after = await run_pipeline(script)

    # Bot speaking: started and stopped exactly once per utterance, in turn.
    assert bot_speaking(after) == ["BotStartedSpeakingFrame", "BotStoppedSpeakingFrame"] * 2

    for context_id in ("one", "two"):
        pushed = [(t, f) for t, f in of_type(before, TTSAudioRawFrame) if f.context_id == context_id]
        assert len(pushed) == 18  # 0.6 s at 30 fps
        # The avatar is the clock: it hands out one frame per 1/fps, never faster than real time (the
        # speech was queued all at once).
        span = pushed[-1][0] - pushed[0][0]
        assert span >= (len(pushed) - 3) / FPS

    # Only speech reached the speaker: 2 × 0.6 s, in the transport's 40 ms chunks (no idle silence).
    written = sum(len(f.audio) // 2 for _, f in output.audio_writes)
    assert written == 2 * round(0.6 * RATE)
    assert all(isinstance(f, TTSAudioRawFrame) for _, f in output.audio_writes)
    # Idle video before, between and after the utterances.
    first_audio = output.audio_writes[0][0]
    assert any(t < first_audio for t, _ in output.video_writes)
    assert len(output.video_writes) >= len(of_type(before, TTSAudioRawFrame))


async def test_interruption_silences_the_transport_and_ends_bot_speaking() -> None:
    async def script(queue_frames, after: Tap) -> None:
        await asyncio.sleep(0.3)
        await queue_frames(utterance(3.0, "long"))
        await asyncio.sleep(0.8)
        await queue_frames([InterruptionFrame()])
        await asyncio.sleep(0.6)
        await queue_frames(utterance(0.4, "next"))
        await asyncio.sleep(1.0)
        await stopped_speaking(after, 2)

    before, output, after = await run_pipeline(script)

    (interrupted,) = output.interrupted_at
    next_start = min(t for t, f in of_type(before, TTSAudioRawFrame) if f.context_id == "next")
    # No write of the interrupted speech began once the interruption reached the transport: the chunk
    # already being played (40 ms) is all that is heard of it.
    assert not [t for t, _ in output.audio_writes if interrupted < t < next_start]
    written_long = sum(len(f.audio) // 2 for t, f in output.audio_writes if t < next_start) / RATE
    assert written_long < 2.0
    assert bot_speaking(after) == ["BotStartedSpeakingFrame", "BotStoppedSpeakingFrame"] * 2
