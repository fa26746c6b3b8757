"""Real-time host core: drives an Engine at wall-clock pace for live transports (WebRTC, LiveKit, …).

Frame i is due at t0 + i/fps. A pacing task keeps at most `queue_frames` frames produced ahead of their
due time and releases each one at its due time to two bounded outputs, video and audio, that a transport
consumes with `next_video()` / `next_audio()`. Every engine call (pushes, clear, next_frame) runs on one
worker thread per avatar: the engine is not thread-safe, a frame costs a few ms of CPU (recogniser and
renderer) that must not block the event loop, and a single worker keeps the calls in order.

Audio never stops: idle frames carry silence, so frame i's audio always starts at output sample
`config.frame_start_sample(i)` and the audio timeline is continuous. When production falls more than one
frame behind, frames are produced without drawing (`render=False`): their video is skipped, their audio
and face state still advance. clear() also silences the frames already produced and skips their video,
so an interrupt is heard at the next released frame.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from facecast.engine import Engine, EngineConfig, FramePair, PhoneTiming, SegmentEnded, SegmentStarted
from facecast.engine.types import SegmentEvent

log = logging.getLogger(__name__)

VIDEO_QUEUE_FRAMES = 2  # a consumer that falls behind gets the newest frames, not a growing backlog
AUDIO_QUEUE_S = 0.3  # audio is never skipped on purpose, so its queue absorbs a few hundred ms of stall
STATS_WINDOW = 100  # frames in the render_ms mean; segments in speech_latency_ms
MAX_LAG_S = 0.25  # behind by more than this, the clock is moved on rather than caught up

T = TypeVar("T")


class AvatarClosed(ConnectionError):
    """The avatar was closed (or its frame production failed): there are no more frames."""


class VideoOut(NamedTuple):
    image: np.ndarray  # uint8 (height, width, channels) as the renderer draws it: RGB, or RGBA
    index: int  # the engine's frame index
    pts: float  # seconds: index / fps


class AudioOut(NamedTuple):
    samples: np.ndarray  # int16 mono at config.out_rate, exactly config.frame_samples(index) of them
    sample_start: int  # config.frame_start_sample(index): continuous from one frame to the next


@dataclass
class RealtimeStats:
    started_at: float | None = None  # time.monotonic() of start()
    first_frame_at: float | None = None  # when the first frame was released to the transport
    frames: int = 0  # frames released
    frames_dropped: int = 0  # frames produced without video (render=False) because the loop ran late
    render_ms: float = 0.0  # mean engine + render time per frame over the last STATS_WINDOW frames
    speech_latency_ms: list[float] = field(default_factory=list)  # per segment, the last STATS_WINDOW
    video_overflow: int = 0  # video frames dropped because the consumer fell behind
    audio_overflow: int = 0  # audio frames dropped because the consumer fell behind
    rebased: int = 0  # times the clock was moved on because production fell MAX_LAG_S behind

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "first_frame_at": self.first_frame_at,
            "frames": self.frames,
            "frames_dropped": self.frames_dropped,
            "render_ms": round(self.render_ms, 3),
            "speech_latency_ms": [round(v, 1) for v in self.speech_latency_ms],
            "video_overflow": self.video_overflow,
            "audio_overflow": self.audio_overflow,
            "rebased": self.rebased,
        }


@dataclass(slots=True)
class _Produced:
    pair: FramePair
    due: float  # event-loop time
    muted: bool = False  # produced before a clear(): its speech is dropped
    released: bool = False


class _Output(Generic[T]):
    """A bounded drop-oldest queue that a consumer awaits; it fills only once someone has asked for an
    item, so a transport that connects late does not start with a stale backlog."""

    def __init__(self, limit: int) -> None:
        self.items: deque[T] = deque()
        self.limit = limit
        self.wanted = False
        self.ready = asyncio.Event()

    def put(self, item: T) -> bool:
        """Queue `item`; False when the oldest one had to be dropped to make room."""
        if not self.wanted:
            return True
        self.items.append(item)
        self.ready.set()
        if len(self.items) > self.limit:
            self.items.popleft()
            return False
        return True


class RealtimeAvatar:
    """An Engine paced against wall time, with async pushes and bounded video/audio outputs.

    `on_event` receives SegmentStarted / SegmentEnded on the event loop when the frame carrying the event
    is released. Outputs start filling on the first `next_video()` / `next_audio()` call."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_event: Callable[[SegmentEvent], None] | None = None,
        queue_frames: int = 2,
    ) -> None:
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be at least 1, got {queue_frames}")
        self._engine = engine
        self._on_event = on_event
        self._queue_frames = queue_frames
        self.stats = RealtimeStats()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facecast-avatar")
        fps = engine.config.fps
        self._video: _Output[VideoOut] = _Output(VIDEO_QUEUE_FRAMES)
        self._audio: _Output[AudioOut] = _Output(max(1, round(AUDIO_QUEUE_S * fps)))
        self._pending: deque[_Produced] = deque()  # produced, not yet released, in due order
        self._room = asyncio.Event()
        self._produced = 0
        self._t0 = 0.0  # event-loop time at which frame 0 is due
        self._clear_seq = 0  # bumped by clear(): frames requested before it get muted
        self._render_s: deque[float] = deque(maxlen=STATS_WINDOW)
        self._first_push: dict[int, float] = {}  # segment id -> monotonic time of its first push_audio
        self._silence: dict[int, np.ndarray] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        self._error: BaseException | None = None

    @property
    def config(self) -> EngineConfig:
        return self._engine.config

    @property
    def closed(self) -> bool:
        return self._closed

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start pacing: frame 0 is due now."""
        self._check_open()
        if self._task is not None:
            raise RuntimeError("the avatar is already started")
        self._t0 = asyncio.get_running_loop().time()
        self.stats.started_at = time.monotonic()
        self._task = asyncio.create_task(self._produce(), name="facecast-avatar-pacer")

    async def aclose(self) -> None:
        """Stop pacing and the worker thread; waiting and later consumers get AvatarClosed. Idempotent."""
        if self._closing is None:
            self._close_outputs()
            self._closing = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Joined off the loop: the worker may be in the middle of a frame. Calls already queued still
        # run, so their callers get a result rather than a CancelledError they did not ask for.
        await asyncio.to_thread(self._worker.shutdown, wait=True)

    def _close_outputs(self) -> None:
        self._closed = True
        self._pending.clear()
        for output in (self._video, self._audio):
            output.items.clear()
            output.ready.set()

    def _check_open(self) -> None:
        if self._closed:
            raise AvatarClosed("the avatar is closed") from self._error

    # -- input (all on the worker thread, in call order) ----------------------------------------------
    async def push_audio(
        self, pcm: bytes | bytearray | memoryview | np.ndarray, sample_rate: int, *, text: str | None = None
    ) -> int:
        """Queue speech for the current segment; returns its id (see Engine.push_audio)."""
        called = time.monotonic()
        segment_id = await self._call(self._engine.push_audio, pcm, sample_rate, text=text)
        self._first_push.setdefault(segment_id, called)
        return segment_id

    async def open_segment(self) -> int:
        """Open the current segment and return its id (see Engine.open_segment)."""
        return await self._call(self._engine.open_segment)

    async def push_phones(self, timings: Sequence[PhoneTiming]) -> int:
        return await self._call(self._engine.push_phones, timings)

    async def push_text(self, text: str) -> int | None:
        return await self._call(self._engine.push_text, text)

    async def end_segment(self) -> None:
        await self._call(self._engine.end_segment)

    async def clear(self) -> None:
        """Interrupt. Frames already produced but not yet released lose their speech too: their audio
        becomes silence and their video is skipped, so speech stops at the next released frame and the
        mouth is at rest two drawn frames later (see Engine.clear)."""
        self._check_open()
        self._clear_seq += 1
        for item in self._pending:
            self._mute(item)
        await self._call(self._engine.clear)

    async def set_listening(self, listening: bool) -> None:
        await self._call(self._engine.set_listening, listening)

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, functools.partial(fn, *args, **kwargs))

    # -- output ---------------------------------------------------------------------------------------
    async def next_video(self) -> VideoOut:
        """The next released video frame (frame indices skip frames that were not drawn)."""
        return await self._next(self._video)

    async def next_audio(self) -> AudioOut:
        """The next released frame's audio: silence when idle, never skipped by the avatar itself."""
        return await self._next(self._audio)

    async def _next(self, output: _Output[T]) -> T:
        output.wanted = True
        while True:
            self._check_open()
            if output.items:
                return output.items.popleft()
            output.ready.clear()
            await output.ready.wait()

    # -- pacing ---------------------------------------------------------------------------------------
    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.config.fps
        try:
            while True:
                while len(self._pending) >= self._queue_frames:
                    self._room.clear()
                    await self._room.wait()
                due = self._t0 + self._produced * period
                lag = loop.time() - due
                if lag > MAX_LAG_S:
                    # Skipping drawing did not catch up (the machine is overloaded): accept the delay
                    # instead of chasing it, or every later frame would be late and none drawn.
                    self._t0 += lag
                    due += lag
                    lag = 0.0
                    self.stats.rebased += 1
                render = lag <= period  # more than a frame behind: skip drawing
                seq = self._clear_seq
                pair, seconds = await loop.run_in_executor(self._worker, self._next_frame, render)
                self._produced += 1
                self._render_s.append(seconds)
                self.stats.render_ms = 1000.0 * sum(self._render_s) / len(self._render_s)
                if not render:
                    self.stats.frames_dropped += 1
                item = _Produced(pair, due)
                if seq != self._clear_seq:  # requested before a clear() that ran after it
                    self._mute(item)
                self._pending.append(item)
                loop.call_at(due, self._release_through, item)
        except Exception as exc:
            log.exception("avatar frame production failed")
            self._error = exc
            self._close_outputs()

    def _next_frame(self, render: bool) -> tuple[FramePair, float]:
        start = time.perf_counter()
        pair = self._engine.next_frame(render=render)
        return pair, time.perf_counter() - start

    def _mute(self, item: _Produced) -> None:
        if item.pair.audio is not None:
            item.muted = True

    def _release_through(self, item: _Produced) -> None:
        """Release every pending frame up to and including `item` (timer callbacks may coalesce)."""
        if item.released or self._closed:
            return
        while self._pending:
            head = self._pending.popleft()
            head.released = True
            self._release(head)
            if head is item:
                break
        self._room.set()

    def _release(self, item: _Produced) -> None:
        now = time.monotonic()
        cfg = self.config
        meta = item.pair.meta
        stats = self.stats
        stats.frames += 1
        if stats.first_frame_at is None:
            stats.first_frame_at = now
        video = item.pair.video
        if (
            video is not None
            and not item.muted
            and not self._video.put(VideoOut(video, meta.index, meta.index / cfg.fps))
        ):
            stats.video_overflow += 1
        speech = item.pair.audio is not None and not item.muted
        audio = item.pair.audio if speech else self._silent(cfg.frame_samples(meta.index))
        if not self._audio.put(AudioOut(audio, cfg.frame_start_sample(meta.index))):
            stats.audio_overflow += 1
        for event in meta.events:
            if isinstance(event, SegmentStarted):
                pushed = self._first_push.pop(event.segment_id, None)
                if pushed is not None and speech:
                    stats.speech_latency_ms.append(1000.0 * (now - pushed))
                    del stats.speech_latency_ms[:-STATS_WINDOW]
            elif isinstance(event, SegmentEnded):
                self._first_push.pop(event.segment_id, None)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("on_event callback failed for %s", event)

    def _silent(self, n: int) -> np.ndarray:
        # Shared read-only buffers: idle frames are the common case.
        buf = self._silence.get(n)
        if buf is None:
            buf = np.zeros(n, np.int16)
            buf.setflags(write=False)
            self._silence[n] = buf
        return buf
