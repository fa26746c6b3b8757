"""The two ends of a FULL session's pipeline: the user's microphone in, the avatar out.

`Microphone` heads the pipeline: it reads the user's audio (a WebRTC session's aiortc track, decoded Opus
of any rate and layout, or 16 kHz mono PCM from a LiveKit room's track), turns it into 16 kHz mono
`InputAudioRawFrame`s and, while the microphone is closed
(push-to-talk outside its window), sends silence of the same length instead, so the VAD sees the user stop.

`AvatarSpeech` follows the TTS service: it swallows the TTS audio into the session's `LiveCore` (the
avatar is the A/V clock; the WebRTC peer streams what the core releases), drops it on `InterruptionFrame`,
and turns the core's segment events into `BotStartedSpeakingFrame` / `BotStoppedSpeakingFrame` and the
avatar's `agent-response` events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from facecast.conversation import events as ev
from facecast.conversation.services import STT_RATE
from facecast.engine.types import SegmentEnded, SegmentEvent, SegmentStarted
from facecast.hosts.live import LiveCore
from facecast.tts.espeak_service import PHONES_METADATA_KEY, TEXT_METADATA_KEY

log = logging.getLogger(__name__)

Emit = Callable[..., None]  # emit(event_type, **payload): one agent-response event to the client


class TurnTimer:
    """Where the time goes between the end of the user's speech and the avatar's first speech frame, per
    turn (monotonic seconds): the VAD's stop, the transcript, the TTS's first audio of the answer, the
    avatar's first speech frame released to the transport. `turns` keeps the latest, in milliseconds."""

    def __init__(self, vad_stop_s: float, keep: int = 50) -> None:
        self.vad_stop_s = vad_stop_s
        self.turns: list[dict[str, float]] = []
        self._keep = keep
        self._marks: dict[str, float] = {}

    STAGES = ("vad_stop", "transcript", "first_audio", "first_frame")

    def mark(self, stage: str) -> None:
        """Record a stage of the current turn, once, and only after the stage before it (audio still
        playing from an earlier answer is no answer to this turn); a VAD stop starts a new turn."""
        index = self.STAGES.index(stage)
        if index == 0:
            self._marks = {}
        elif self.STAGES[index - 1] not in self._marks:
            return
        self._marks.setdefault(stage, time.monotonic())
        if stage == "first_frame":
            m, self._marks = self._marks, {}
            self.turns.append(
                {
                    "vad_stop_ms": 1000 * self.vad_stop_s,  # the silence the VAD waits for (configured)
                    "stt_ms": 1000 * (m["transcript"] - m["vad_stop"]),
                    "answer_first_audio_ms": 1000 * (m["first_audio"] - m["transcript"]),
                    "avatar_first_frame_ms": 1000 * (m["first_frame"] - m["first_audio"]),
                    "total_ms": 1000 * (m["first_frame"] - m["vad_stop"] + self.vad_stop_s),
                }
            )
            del self.turns[: -self._keep]

    def stats(self) -> dict[str, Any]:
        """The median of each stage over the kept turns, and how many there were."""
        if not self.turns:
            return {"turns": 0}
        out: dict[str, Any] = {"turns": len(self.turns)}
        for name in self.turns[0]:
            out[f"{name}_p50"] = round(statistics.median(t[name] for t in self.turns), 1)
        return out


class Microphone(FrameProcessor):
    """The user's audio as 16 kHz mono `InputAudioRawFrame`s; silence while closed."""

    def __init__(self, *, open_: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.open = open_
        self._source: AsyncIterator[bytes] | None = None
        self._has_source = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(self, track: Any) -> None:
        """Listen to this aiortc audio track (the session's peer calls it when the offer brings one)."""
        self.attach_pcm(_aiortc_pcm(track))

    def attach_pcm(self, source: AsyncIterator[bytes]) -> None:
        """Listen to this stream of 16 kHz mono int16 PCM chunks instead of the one before (a LiveKit
        room's user track; a user who leaves and comes back brings a new one). The stream ending means
        the user's audio has gone; the microphone waits for the next."""
        self._source = source
        self._has_source.set()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._task is None:
                self._task = self.create_task(self._read(), "facecast-microphone")
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()

    async def _stop(self) -> None:
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None

    async def _read(self) -> None:
        while True:
            await self._has_source.wait()
            self._has_source.clear()
            source = self._source
            assert source is not None
            async for pcm in source:
                if self._has_source.is_set():
                    break  # a newer source replaces this one
                if not self.open:
                    pcm = bytes(len(pcm))
                await self.push_frame(InputAudioRawFrame(audio=pcm, sample_rate=STT_RATE, num_channels=1))


async def _aiortc_pcm(track: Any) -> AsyncIterator[bytes]:
    """An aiortc audio track as 16 kHz mono int16 PCM; ends when the peer goes away (the session's owner
    then ends the session)."""
    from aiortc.mediastreams import MediaStreamError

    resampler = av.AudioResampler(format="s16", layout="mono", rate=STT_RATE)
    while True:
        try:
            received = await track.recv()
        except MediaStreamError:
            return
        for frame in resampler.resample(received):
            yield bytes(frame.planes[0])[: frame.samples * 2]


class AvatarSpeech(FrameProcessor):
    """Plays the TTS audio on the session's avatar and reports what the avatar says."""

    def __init__(self, core: LiveCore, emit: Emit, timer: TurnTimer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._core = core
        self._emit = emit
        self._timer = timer
        self._next_tag = 0
        self._open_tag: int | None = None  # the utterance receiving audio
        self._queued: set[int] = set()  # utterances given to the core and not yet ended
        self._texts: dict[int, str] = {}
        self._speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            await self._speak(frame)
            return  # the avatar plays it: the peer streams the core's audio with the video
        if isinstance(frame, (TTSStartedFrame, TTSStoppedFrame)):  # an utterance's bounds
            await self._end_utterance()
        elif isinstance(frame, InterruptionFrame):
            await self.interrupt()
        await self.push_frame(frame, direction)

    async def _speak(self, frame: TTSAudioRawFrame) -> None:
        if TEXT_METADATA_KEY in frame.metadata:
            # A new sentence (one synthesis): its own segment, so its phones line up and its text is
            # reported when it starts playing. One TTSStartedFrame may cover a whole answer.
            await self._end_utterance()
        self._timer.mark("first_audio")
        if self._open_tag is None:
            tag = self._open_tag = self._next_tag
            self._next_tag += 1
            self._queued.add(tag)
            self._texts[tag] = str(frame.metadata.get(TEXT_METADATA_KEY, ""))
            await self._core.open_segment(tag)
            phones = frame.metadata.get(PHONES_METADATA_KEY)
            if phones:
                await self._core.push_phones(phones)
        await self._core.push_audio(frame.audio, frame.sample_rate, channels=frame.num_channels)

    async def _end_utterance(self) -> None:
        if self._open_tag is not None:
            self._open_tag = None
            await self._core.end_segment()

    async def interrupt(self) -> None:
        """Drop every queued utterance: the next frame the avatar sends is silent."""
        self._open_tag = None
        self._queued.clear()
        self._texts.clear()
        with contextlib.suppress(Exception):  # the core may be closing with the session
            await self._core.clear()
        await self._stopped(interrupted=True)

    async def set_listening(self, listening: bool) -> None:
        """Show the avatar's attentive pose (avatar.start_listening) or its idle one."""
        await self._core.set_listening(listening)

    def on_segment_event(self, event: SegmentEvent) -> None:
        """The live core released the frame carrying this event (called on the event loop)."""
        tag = event.tag
        if not isinstance(tag, int) or tag not in self._queued:
            return  # an utterance dropped by an interruption
        if isinstance(event, SegmentStarted):
            if not self._speaking:
                self._speaking = True
                self._timer.mark("first_frame")
                self._emit(ev.AVATAR_SPEAK_STARTED)
                self.create_task(self.broadcast_frame(BotStartedSpeakingFrame), "facecast-bot-started")
            text = self._texts.pop(tag, "")
            if text:
                self._emit(ev.AVATAR_TRANSCRIPTION, text=text)
        elif isinstance(event, SegmentEnded):
            self._queued.discard(tag)
            self._texts.pop(tag, None)
            if not self._queued and self._open_tag is None:
                self.create_task(self._stopped(interrupted=event.interrupted), "facecast-bot-stopped")

    async def _stopped(self, *, interrupted: bool) -> None:
        if self._speaking:
            self._speaking = False
            self._emit(ev.AVATAR_SPEAK_ENDED, interrupted=interrupted)
            await self.broadcast_frame(BotStoppedSpeakingFrame)
