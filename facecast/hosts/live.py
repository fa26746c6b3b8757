"""The live core: one Engine driven at wall-clock pace for a live transport. Every live host uses it:
WebRTC sessions (facecast.hosts.webrtc), the LiveKit worker and local mode (facecast.hosts.livekit) and
Pipecat's local mode (pipecat_facecast).

Frame i is released at t0 + i/fps (event-loop time) and plays `lead_s` later: a transport with its own
playout queue (LiveKit's AudioSource) asks for that much lead and shows each video frame when its audio
starts playing; transports that send at once (aiortc, Pipecat) use no lead. A pacing task keeps at most
`queue_frames` frames produced ahead of their release.

One worker thread per avatar makes every engine call (pushes, clear, next_frame) in call order: the engine
is not thread-safe, and a frame costs milliseconds of CPU that must not block the event loop. A process
that runs nothing but live sessions (a server's worker process) makes them on the loop instead
(`engine_thread="loop"`): there the loop has nothing better to do meanwhile, and each frame saves two
thread hand-offs and the loop's wait for the GIL behind the engine threads.

One lag rule: a frame produced more than one period late is produced without drawing (its audio and face
state still advance); production more than MAX_LAG_S behind moves the clock on instead of chasing it.

Speech first (`idle_yields_to_speech`, for transports whose playout queue has no timestamps, such as
LiveKit's AudioSource): a push (or end_segment) that makes speech ready drops the idle frames produced
but not released, and the speech takes their release slots, so it does not wait behind a face that is
only breathing. Nor behind the lead: speech after silence plays at its release (`LiveFrame.plays_at`;
the host drops the silence it queued), and the core moves its clock back by the lead
(`release_sooner()`), so the next frames refill it with speech.

One interrupt epoch: clear() silences every frame produced but not yet released and skips its video, so
speech stops at the next released frame; frames computed for calls made before the clear are muted too.

Audio never stops: idle frames carry silence on the audio output, so frame i's audio starts at output
sample `config.frame_start_sample(i)` and the timeline is continuous.

Segments are named by the host (`tag`); the engine's SegmentStarted / SegmentEnded events and frames
carry the tag, so hosts keep no map from engine ids to their own utterances.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import numpy as np

from facecast.avatars.procedural import ProceduralRenderer
from facecast.engine import (
    Engine,
    EngineConfig,
    FrameMeta,
    PhoneTiming,
    Renderer,
    SegmentEnded,
    SegmentStarted,
)
from facecast.engine.types import TEXT_MOUTH_SOURCES, SegmentEvent, SegmentTag

log = logging.getLogger(__name__)

VIDEO_QUEUE_FRAMES = 2  # a consumer that falls behind gets the newest frames, not a growing backlog
AUDIO_QUEUE_S = 0.3  # audio is never skipped on purpose, so its queue absorbs a few hundred ms of stall
STATS_WINDOW = 100  # frames in engine_ms; segments in audio_to_video_latency_ms
MAX_LAG_S = 0.25  # behind by more than this, the clock is moved on rather than caught up
# A live procedural avatar's idle frames that would move no point by this many pixels repeat the last one
# drawn (ProceduralRenderer.still_px): about half of them, at luma PSNR ≥ 44 dB against drawing each
# (docs/benchmarks.md § Cheaper frames). Each costs no render, and the encoder finds it unchanged.
STILL_PX = 0.25

T = TypeVar("T")

# Where a live avatar's engine calls run: on its own worker thread, or on the event loop (a process that
# runs only live sessions, such as a server's worker process: see LiveCore).
EngineThread = Literal["own", "loop"]


class AvatarClosed(ConnectionError):
    """The avatar was closed (or its frame production failed): there are no more frames."""


class VideoOut(NamedTuple):
    image: np.ndarray  # uint8 (height, width, channels) as the renderer draws it: RGB, or RGBA
    index: int  # the engine's frame index
    pts: float  # seconds: index / fps


class AudioOut(NamedTuple):
    samples: np.ndarray  # int16 mono at config.out_rate, exactly config.frame_samples(index) of them
    sample_start: int  # config.frame_start_sample(index): continuous from one frame to the next


class LiveFrame(NamedTuple):
    """One released frame, video and audio together, for transports that send both themselves."""

    video: np.ndarray | None  # None: not drawn (production ran late) or silenced by a clear
    audio: np.ndarray | None  # the frame's speech (int16 mono, out_rate); None when idle or silenced
    meta: FrameMeta  # events, segment tag, input positions; `events` are reported even when silenced
    plays_at: float  # event-loop time at which this frame is heard and seen (release + lead_s)
    duration_s: float  # the frame's slot on the audio timeline


@dataclass
class LiveStats:
    """What a live avatar did. The names are the same in every host (docs/engine.md § Live stats)."""

    started_at: float | None = None  # time.monotonic() when the host's session began (default: start())
    first_frame_at: float | None = None  # when the first frame was released
    frames: int = 0  # frames released
    speech_frames: int = 0  # released frames that carried speech
    # Speech frames whose mouth followed what the source knows: its words or its phone timings.
    text_frames: int = 0
    # Speech frames whose given words did not fit the audio (the mouth followed recognition there).
    transcript_mismatch_frames: int = 0
    frames_dropped: int = 0  # produced without video because production ran more than a period late
    frames_lost_in_queue: int = 0  # drawn video frames dropped because the transport fell behind
    audio_frames_lost_in_queue: int = 0  # audio frames dropped because the transport fell behind
    clock_rebased: int = 0  # times the clock moved on because production fell MAX_LAG_S behind
    segments: int = 0  # segments (utterances) that started playing
    interrupts: int = 0  # clear() calls
    engine_ms: float = 0.0  # mean wall time of one engine frame (tracking + animation + render)
    engine_cpu_s: float = 0.0  # CPU time of the worker thread (all engine calls)
    # Per segment (the last STATS_WINDOW): from the moment it could first play (its first audio arrived,
    # or the speech before it finished, whichever is later) to the release of its first frame.
    audio_to_video_latency_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        latency = self.audio_to_video_latency_ms
        first = None
        if self.first_frame_at is not None and self.started_at is not None:
            first = round(1000.0 * (self.first_frame_at - self.started_at), 1)
        return {
            "frames": self.frames,
            "speech_frames": self.speech_frames,
            "text_frames": self.text_frames,
            "transcript_mismatch_frames": self.transcript_mismatch_frames,
            "frames_dropped": self.frames_dropped,
            "frames_lost_in_queue": self.frames_lost_in_queue,
            "audio_frames_lost_in_queue": self.audio_frames_lost_in_queue,
            "clock_rebased": self.clock_rebased,
            "segments": self.segments,
            "interrupts": self.interrupts,
            "engine_ms": round(self.engine_ms, 3),
            "engine_cpu_s": round(self.engine_cpu_s, 3),
            "time_to_first_frame_ms": first,
            "audio_to_video_latency_ms": round(statistics.median(latency), 1) if latency else None,
        }


@dataclass(slots=True)
class _Produced:
    pair_video: np.ndarray | None
    pair_audio: np.ndarray | None
    meta: FrameMeta
    release_at: float  # event-loop time
    muted: bool = False  # produced before a clear(): its speech is dropped
    released: bool = False


class _Output(Generic[T]):
    """A bounded drop-oldest queue that a consumer awaits; it fills only once someone has asked for an
    item, so a transport that connects late does not start with a stale backlog. With `keep_last`, the
    latest item put before then is the first one it gets (at once, rather than a period later)."""

    def __init__(self, limit: int, *, keep_last: bool = False) -> None:
        self.items: deque[T] = deque()
        self.limit = limit
        self.wanted = False
        self.ready = asyncio.Event()
        self.keep_last = keep_last
        self.last: T | None = None

    def want(self) -> None:
        if not self.wanted:
            self.wanted = True
            if self.last is not None:
                self.items.append(self.last)
                self.last = None

    def put(self, item: T) -> bool:
        """Queue `item`; False when the oldest one had to be dropped to make room."""
        if not self.wanted:
            if self.keep_last:
                self.last = item
            return True
        self.items.append(item)
        self.ready.set()
        if len(self.items) > self.limit:
            self.items.popleft()
            return False
        return True


class LiveCore:
    """An Engine paced against wall time, with async pushes and bounded outputs: `next_video()` and
    `next_audio()` for transports with one track each, `next_frame()` for those that send both.

    `on_event` receives SegmentStarted / SegmentEnded on the event loop when the frame carrying the event
    is released. `on_frame` receives each released frame's FrameMeta on the event loop (transports
    without a lead: as its audio starts playing), except frames whose speech a clear silenced: a stream
    of per-frame data (the mouth track) stops with the speech. Outputs start filling on their first
    call."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_event: Callable[[SegmentEvent], None] | None = None,
        on_frame: Callable[[FrameMeta], None] | None = None,
        queue_frames: int = 2,
        lead_s: float = 0.0,
        idle_yields_to_speech: bool = False,
        still_px: float = STILL_PX,
        engine_thread: EngineThread = "own",
    ) -> None:
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be at least 1, got {queue_frames}")
        if lead_s < 0:
            raise ValueError(f"lead_s must not be negative, got {lead_s}")
        self._engine = engine
        self._on_event = on_event
        self._on_frame = on_frame
        self._queue_frames = queue_frames
        self._lead_s = lead_s
        self._idle_yields = idle_yields_to_speech
        self._still_px = still_px
        _hold_still(engine.renderer, still_px)
        self.stats = LiveStats()
        if engine_thread not in ("own", "loop"):
            raise ValueError(f"engine_thread must be 'own' or 'loop', got {engine_thread!r}")
        # None: every engine call runs on the event loop, in call order.
        self._worker = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="facecast-avatar")
            if engine_thread == "own"
            else None
        )
        fps = engine.config.fps
        audio_frames = max(1, round(AUDIO_QUEUE_S * fps))
        # A video track that starts late gets the latest frame at once: its first picture on the wire.
        self._video: _Output[VideoOut] = _Output(VIDEO_QUEUE_FRAMES, keep_last=True)
        self._audio: _Output[AudioOut] = _Output(audio_frames)
        self._frames: _Output[LiveFrame] = _Output(audio_frames)
        self._pending: deque[_Produced] = deque()  # produced, not yet released, in release order
        self._room = asyncio.Event()
        self._produced = 0  # release slots taken: frame k of those kept is released at t0 + k / fps
        self._t0 = 0.0  # event-loop time at which frame 0 is released
        self._catch_up_s = 0.0  # how far release_sooner() moved the clock back, until production is ahead
        self._epoch = 0  # bumped by clear(): frames requested before it get muted
        self._engine_s: deque[float] = deque(maxlen=STATS_WINDOW)
        self._first_push: dict[int, float] = {}  # engine segment id -> monotonic time of its first audio
        self._speech_free_at = 0.0  # monotonic time the last released speech finishes playing
        self._speaking = False  # the last frame released carried speech
        self._silence: dict[int, np.ndarray] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._last_meta: FrameMeta | None = None

    @property
    def config(self) -> EngineConfig:
        return self._engine.config

    @property
    def engine(self) -> Engine:
        """The engine, for reading only: every call that changes it goes through this core's worker."""
        return self._engine

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lead_s(self) -> float:
        """How long before it plays each frame is released (settable until start())."""
        return self._lead_s

    @lead_s.setter
    def lead_s(self, seconds: float) -> None:
        if self._task is not None:
            raise RuntimeError("the lead cannot change once the avatar is started")
        if seconds < 0:
            raise ValueError(f"lead_s must not be negative, got {seconds}")
        self._lead_s = seconds

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def last_frame(self) -> FrameMeta | None:
        """What the latest released frame showed (None before the first)."""
        return self._last_meta

    # -- life cycle -----------------------------------------------------------------------------------
    async def start(self, *, started_at: float | None = None) -> None:
        """Start pacing: frame 0 is released now. `started_at` (monotonic; default now) is when the host's
        session began, from which `time_to_first_frame_ms` counts."""
        self._check_open()
        if self._task is not None:
            raise RuntimeError("the avatar is already started")
        self._t0 = asyncio.get_running_loop().time()
        self.stats.started_at = time.monotonic() if started_at is None else started_at
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
        if self._worker is not None:
            await asyncio.to_thread(self._worker.shutdown, wait=True)

    def _close_outputs(self) -> None:
        self._closed = True
        self._pending.clear()
        self._video.last = None
        for output in (self._video, self._audio, self._frames):
            output.items.clear()
            output.ready.set()

    def _check_open(self) -> None:
        if self._closed:
            raise AvatarClosed("the avatar is closed") from self._error

    # -- input (all on the worker thread, in call order) ----------------------------------------------
    async def open_segment(self, tag: SegmentTag | None = None) -> int:
        """Open the current segment, named `tag`, and return its engine id (see Engine.open_segment)."""
        return await self._call(self._engine.open_segment, tag)

    async def push_audio(
        self,
        pcm: bytes | bytearray | memoryview | np.ndarray,
        sample_rate: int,
        *,
        channels: int = 1,
        text: str | None = None,
        tag: SegmentTag | None = None,
    ) -> int:
        """Queue speech for the current segment (named `tag` if it is new); returns its engine id."""
        called = time.monotonic()
        segment_id, ready = await self._call(
            self._push_audio, pcm, sample_rate, channels=channels, text=text, tag=tag
        )
        self._first_push.setdefault(segment_id, called)
        if ready and self._idle_yields:
            self._drop_idle_pending()
        return segment_id

    def _push_audio(self, *args: Any, **kwargs: Any) -> tuple[int, bool]:
        segment_id = self._engine.push_audio(*args, **kwargs)
        return segment_id, self._engine.speech_ready

    def _drop_idle_pending(self) -> None:
        """Speech is ready: the idle frames at the end of the unreleased ones give their release slots
        to it. The worker runs calls in order, so every frame made before the push has reached _pending
        by now, and every frame made after it carries the speech."""
        dropped = 0
        while self._pending and _is_idle(self._pending[-1]):
            self._pending.pop().released = True  # its release timer finds nothing to do
            dropped += 1
        if dropped:
            self._produced -= dropped
            self._room.set()

    def release_sooner(self, seconds: float) -> None:
        """Move the release clock `seconds` back: the frames produced but not released, and those after
        them, are released that much sooner (at once where that is past), and drawn all the same. For a
        host that emptied its playout queue and wants its lead back."""
        if seconds <= 0 or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._t0 -= seconds
        self._catch_up_s += seconds
        for item in self._pending:
            item.release_at -= seconds
            loop.call_at(item.release_at, self._release_through, item)

    async def push_phones(self, timings: Sequence[PhoneTiming]) -> int:
        return await self._call(self._engine.push_phones, timings)

    async def push_text(self, text: str) -> int | None:
        return await self._call(self._engine.push_text, text)

    async def push_words(
        self, text: str, start: float = 0.0, duration: float | None = None, *, pause_after: bool = False
    ) -> int | None:
        """Words of the current segment's audio from `start` for `duration` seconds (Engine.push_words)."""
        return await self._call(self._engine.push_words, text, start, duration, pause_after=pause_after)

    async def end_segment(self) -> None:
        """End the current segment (see Engine.end_segment); a short one becomes ready to play."""
        if await self._call(self._end_segment) and self._idle_yields:
            self._drop_idle_pending()

    def _end_segment(self) -> bool:
        self._engine.end_segment()
        return self._engine.speech_ready

    async def clear(self) -> None:
        """Interrupt; returns once the engine has dropped its speech. See `clear_now`."""
        self.clear_now()
        await self._call(lambda: None)  # the worker runs calls in order: the clear is done after this

    def clear_now(self) -> None:
        """Interrupt, from synchronous code. Frames produced but not yet released lose their speech:
        their audio becomes silence and their video is skipped, so speech stops at the next released
        frame and the mouth is at rest two drawn frames later (see Engine.clear). Pushes made after this
        call start a new segment."""
        self._check_open()
        self._epoch += 1
        self.stats.interrupts += 1
        for item in self._pending:
            self._mute(item)
        # Released but not yet taken by the transport: its speech must not be heard either.
        self._video.items.clear()
        self._video.last = None
        self._audio.items = deque(
            AudioOut(self._silent(len(a.samples)), a.sample_start) for a in self._audio.items
        )
        self._frames.items = deque(f._replace(video=None, audio=None) for f in self._frames.items)
        self._submit(self._engine.clear)

    async def set_listening(self, listening: bool) -> None:
        await self._call(self._engine.set_listening, listening)

    def set_renderer_now(self, renderer: Renderer | None) -> None:
        """Draw with `renderer` from the next frame made after the calls already queued."""

        _hold_still(renderer, self._still_px)

        def swap() -> None:
            self._engine.renderer = renderer

        if not self._closed:
            self._submit(swap)

    def set_listening_now(self, listening: bool) -> None:
        """set_listening from synchronous code (it takes effect in call order all the same)."""
        if not self._closed:
            self._submit(functools.partial(self._engine.set_listening, listening))

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        self._check_open()
        return await self._run(functools.partial(fn, *args, **kwargs))

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._worker is None:
            return self._timed(fn)
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._timed, fn)

    def _submit(self, fn: Callable[[], object]) -> None:
        """Run `fn` after the engine calls already made, without waiting for it."""
        if self._worker is None:
            self._timed(fn)
        else:
            self._worker.submit(self._timed, fn)

    def _timed(self, fn: Callable[[], T]) -> T:
        started = time.thread_time()
        try:
            return fn()
        finally:
            self.stats.engine_cpu_s += time.thread_time() - started

    # -- output ---------------------------------------------------------------------------------------
    async def next_video(self) -> VideoOut:
        """The next released, drawn video frame (indices skip frames that were not drawn)."""
        return await self._next(self._video)

    async def next_audio(self) -> AudioOut:
        """The next released frame's audio: silence when idle, never skipped by the avatar itself."""
        return await self._next(self._audio)

    async def next_frame(self) -> LiveFrame:
        """The next released frame, video and speech together."""
        return await self._next(self._frames)

    async def _next(self, output: _Output[T]) -> T:
        output.want()
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
                release_at = self._t0 + self._produced * period
                lag = loop.time() - release_at
                if lag <= 0:
                    self._catch_up_s = 0.0  # production is ahead of release again
                lag -= self._catch_up_s  # frames released sooner on purpose are not late
                if lag > MAX_LAG_S:
                    # Skipping drawing did not catch up (the machine is overloaded): accept the delay
                    # instead of chasing it, or every later frame would be late and none drawn.
                    self._t0 += lag
                    release_at += lag
                    lag = 0.0
                    self.stats.clock_rebased += 1
                render = lag <= period
                epoch = self._epoch
                video, audio, meta, seconds = await self._run(
                    functools.partial(self._next_engine_frame, render)
                )
                self._engine_s.append(seconds)
                self.stats.engine_ms = 1000.0 * sum(self._engine_s) / len(self._engine_s)
                if not render:
                    self.stats.frames_dropped += 1
                # Taken now: a push (idle frames dropped) or release_sooner() may have moved the slots.
                release_at = self._t0 + self._produced * period
                self._produced += 1
                item = _Produced(video, audio, meta, release_at)
                if epoch != self._epoch:  # requested before a clear() that ran after it
                    self._mute(item)
                self._pending.append(item)
                loop.call_at(release_at, self._release_through, item)
        except Exception as exc:
            log.exception("avatar frame production failed")
            self._error = exc
            self._close_outputs()

    def _next_engine_frame(
        self, render: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None, FrameMeta, float]:
        start = time.perf_counter()
        pair = self._engine.next_frame(render=render)
        return pair.video, pair.audio, pair.meta, time.perf_counter() - start

    def _mute(self, item: _Produced) -> None:
        if item.pair_audio is not None:
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
        meta = item.meta
        stats = self.stats
        stats.frames += 1
        self._last_meta = meta
        if stats.first_frame_at is None:
            stats.first_frame_at = now
        speech = item.pair_audio if not item.muted else None
        video = item.pair_video if not item.muted else None
        duration = cfg.frame_samples(meta.index) / cfg.out_rate
        lead = self._lead_s
        if self._idle_yields and speech is not None and not self._speaking and lead > 0:
            # Speech after silence skips the lead: it plays at release (the host drops the silence it
            # queued), and the frames after it come sooner until the lead is full again.
            lead = 0.0
            self.release_sooner(self._lead_s)
        self._speaking = speech is not None
        if speech is not None:
            stats.speech_frames += 1
            stats.text_frames += int(meta.mouth_source in TEXT_MOUTH_SOURCES)
            stats.transcript_mismatch_frames += int(meta.transcript_mismatch)
        # Only the outputs a transport reads are filled (and their items made); video keeps its latest.
        wants_video = video is not None
        if wants_video and not self._video.put(VideoOut(video, meta.index, meta.index / cfg.fps)):
            stats.frames_lost_in_queue += 1
        if self._audio.wanted:
            audio = speech if speech is not None else self._silent(cfg.frame_samples(meta.index))
            if not self._audio.put(AudioOut(audio, cfg.frame_start_sample(meta.index))):
                stats.audio_frames_lost_in_queue += 1
        if self._frames.wanted:
            frame = LiveFrame(video, speech, meta, item.release_at + lead, duration)
            if not self._frames.put(frame):
                stats.audio_frames_lost_in_queue += 1
        plays_mono = now + lead
        for event in meta.events:
            if isinstance(event, SegmentStarted):
                pushed = self._first_push.pop(event.segment_id, None)
                if speech is not None:
                    stats.segments += 1
                    if pushed is not None:
                        ready = max(pushed, self._speech_free_at)
                        stats.audio_to_video_latency_ms.append(1000.0 * max(0.0, plays_mono - ready))
                        del stats.audio_to_video_latency_ms[:-STATS_WINDOW]
            elif isinstance(event, SegmentEnded):
                self._first_push.pop(event.segment_id, None)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("on_event callback failed for %s", event)
        if speech is not None:
            self._speech_free_at = plays_mono + duration
        if self._on_frame is not None and not item.muted:
            try:
                self._on_frame(meta)
            except Exception:
                log.exception("on_frame callback failed for frame %d", meta.index)

    def _silent(self, n: int) -> np.ndarray:
        # Shared read-only buffers: idle frames are the common case.
        buf = self._silence.get(n)
        if buf is None:
            buf = np.zeros(n, np.int16)
            buf.setflags(write=False)
            self._silence[n] = buf
        return buf


def _is_idle(item: _Produced) -> bool:
    """A frame without speech or events: dropping it only skips a little idle motion."""
    return item.pair_audio is None and not item.meta.events


def _hold_still(renderer: Renderer | None, still_px: float) -> None:
    """Let a procedural renderer repeat idle frames that would barely move (see STILL_PX)."""
    if isinstance(renderer, ProceduralRenderer):
        renderer.still_px = still_px
