from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from facecast.avatars import load_renderer
from facecast.engine import Engine, EngineConfig, FaceState, SegmentEnded, SegmentStarted
from facecast.engine.types import SegmentEvent
from facecast.hosts.live import (
    AUDIO_QUEUE_S,
    MAX_LAG_S,
    VIDEO_QUEUE_FRAMES,
    AudioOut,
    AvatarClosed,
    LiveCore,
    LiveFrame,
    VideoOut,
)

RATE = 16000


def _tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.4 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _engine(fps: int = 30, out_rate: int = 16000, renderer: object | None = "low") -> Engine:
    r = load_renderer("ava", quality=renderer) if isinstance(renderer, str) else renderer
    return Engine(r, EngineConfig(fps=fps, out_rate=out_rate, tracker="energy"))  # type: ignore[arg-type]


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until cond() holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


class Recorder:
    """Consumes both outputs of an avatar into lists, and records events with the frame they came on."""

    def __init__(self, avatar: LiveCore) -> None:
        self.avatar = avatar
        self.video: list[VideoOut] = []
        self.audio: list[AudioOut] = []
        self.events: list[tuple[SegmentEvent, int, bool]] = []  # event, frames released, on loop thread
        self._tasks: list[asyncio.Task[None]] = []

    def on_event(self, event: SegmentEvent) -> None:
        on_loop = threading.current_thread() is threading.main_thread()
        self.events.append((event, self.avatar.stats.frames, on_loop))

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._pull_video()), asyncio.create_task(self._pull_audio())]
        await asyncio.sleep(0)  # both consumers subscribe before frame 0 is released
        await self.avatar.start()

    async def _pull_video(self) -> None:
        while True:
            self.video.append(await self.avatar.next_video())

    async def _pull_audio(self) -> None:
        while True:
            self.audio.append(await self.avatar.next_audio())

    async def stop(self) -> None:
        await self.avatar.aclose()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        assert all(isinstance(r, AvatarClosed) for r in results), results

    def pcm(self) -> np.ndarray:
        return np.concatenate([a.samples for a in self.audio])

    def speech_frames(self) -> list[AudioOut]:
        return [a for a in self.audio if np.any(a.samples)]


@pytest.fixture(params=["own", "loop"])
async def recorders(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[Engine], Recorder]]:
    """Recorders over live cores whose engine runs on its own thread, or on the event loop."""
    made: list[Recorder] = []

    def make(engine: Engine, **kwargs: object) -> Recorder:
        holder: list[Recorder] = []
        kwargs.setdefault("engine_thread", request.param)
        avatar = LiveCore(engine, on_event=lambda e: holder[0].on_event(e), **kwargs)  # type: ignore[arg-type]
        holder.append(Recorder(avatar))
        made.append(holder[0])
        return holder[0]

    yield make
    for rec in made:
        await rec.avatar.aclose()


def _assert_continuous(audio: list[AudioOut], cfg: EngineConfig) -> None:
    assert audio
    first = audio[0].sample_start
    index = next(i for i in range(first * cfg.fps // cfg.out_rate + 2) if cfg.frame_start_sample(i) == first)
    for k, out in enumerate(audio):
        assert out.sample_start == cfg.frame_start_sample(index + k)
        assert len(out.samples) == cfg.frame_samples(index + k)
        assert out.samples.dtype == np.int16


@pytest.mark.parametrize(("fps", "out_rate"), [(25, 48000), (30, 16000)])
async def test_idle_frames_carry_continuous_silence_and_video_at_their_index(
    recorders: Callable[[Engine], Recorder], fps: int, out_rate: int
) -> None:
    rec = recorders(_engine(fps, out_rate))
    await rec.start()
    await _until(lambda: len(rec.audio) >= 12 and len(rec.video) >= 12)
    await rec.stop()
    cfg = rec.avatar.config
    _assert_continuous(rec.audio, cfg)
    assert rec.audio[0].sample_start == 0  # subscribed before start: nothing missed
    assert not rec.pcm().any()
    stats = rec.avatar.stats
    indices = [v.index for v in rec.video]
    assert indices[0] == 0 and indices == sorted(set(indices))
    missing = set(range(indices[-1])) - set(indices)
    assert len(missing) <= stats.frames_dropped + stats.frames_lost_in_queue
    for v in rec.video:
        assert v.pts == v.index / fps
        assert v.image.shape == (256, 256, 3) and v.image.dtype == np.uint8
    assert stats.started_at is not None and stats.first_frame_at is not None
    assert stats.first_frame_at >= stats.started_at
    assert stats.frames >= len(rec.audio)
    assert stats.engine_ms > 0


async def test_speech_plays_intact_with_events_in_order_on_the_frames_that_carry_them(
    recorders: Callable[[Engine], Recorder],
) -> None:
    tone = _tone(0.6)
    offline = _engine(renderer=None)
    offline.push_audio(tone, RATE)
    offline.end_segment()
    expected = []
    while offline.pending_speech:
        pair = offline.next_frame()
        if pair.audio is not None:
            expected.append(pair.audio)

    rec = recorders(_engine())
    await rec.start()
    await _until(lambda: len(rec.audio) >= 3)
    first = await rec.avatar.push_audio(tone[:4000], RATE, text="hello")
    second = await rec.avatar.push_audio(tone[4000:], RATE)
    assert await rec.avatar.push_text("world") == first == second == 0
    await rec.avatar.end_segment()
    assert await rec.avatar.push_audio(tone[:1600], RATE) == 1
    await rec.avatar.end_segment()
    await _until(lambda: sum(isinstance(e, SegmentEnded) for e, _, _ in rec.events) == 2)
    await _until(lambda: len(rec.audio) >= rec.events[-1][1])
    await rec.stop()

    cfg = rec.avatar.config
    _assert_continuous(rec.audio, cfg)
    kinds = [(type(e).__name__, e.segment_id) for e, _, _ in rec.events]
    assert kinds == [("SegmentStarted", 0), ("SegmentEnded", 0), ("SegmentStarted", 1), ("SegmentEnded", 1)]
    assert all(on_loop for _, _, on_loop in rec.events)
    assert not any(e.interrupted for e, _, _ in rec.events if isinstance(e, SegmentEnded))
    # Each event came with the frame it belongs to: frames are released in index order from 0, so
    # the frame that carried an event is frame (frames released - 1).
    by_start = {a.sample_start: a for a in rec.audio}
    (s0, n0, _), (e0, m0, _), (s1, n1, _), _ = rec.events
    assert isinstance(s0, SegmentStarted) and isinstance(e0, SegmentEnded)
    assert by_start[cfg.frame_start_sample(n0 - 1)].samples.any()  # first speech frame
    assert not by_start[cfg.frame_start_sample(n0 - 2)].samples.any()  # the idle frame before it
    assert isinstance(s1, SegmentStarted) and n1 > m0
    # The first segment's audio went through untouched: same samples as an offline pull.
    played = np.concatenate([by_start[cfg.frame_start_sample(i)].samples for i in range(n0 - 1, m0)])
    np.testing.assert_array_equal(played, np.concatenate(expected))
    stats = rec.avatar.stats
    latency = stats.audio_to_video_latency_ms
    assert len(latency) == 2 and all(v >= 0 for v in latency)
    assert stats.segments == 2
    assert stats.as_dict()["audio_to_video_latency_ms"] == round(statistics.median(latency), 1)


class _GatedRenderer:
    """A renderer that can be held inside render(), to call clear() while a frame is being made."""

    def __init__(self) -> None:
        self._inner = load_renderer("ava", quality="low")
        self.width, self.height, self.channels = self._inner.width, self._inner.height, 3
        self.hold = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def render(self, state: FaceState) -> np.ndarray:
        if self.hold:
            self.hold = False
            self.entered.set()
            self.gate.wait(10)
        return self._inner.render(state)


async def test_clear_silences_speech_from_the_next_released_frame(
    recorders: Callable[[Engine], Recorder],
) -> None:
    renderer = _GatedRenderer()
    rec = recorders(_engine(renderer=renderer), queue_frames=3)
    await rec.start()
    segment = await rec.avatar.push_audio(_tone(3.0), RATE)
    await rec.avatar.end_segment()
    await _until(lambda: len(rec.speech_frames()) >= 4)
    # Interrupt while a speech frame is being produced: that frame was asked for before the clear,
    # so it must lose its speech too, like the frames already waiting for their due time.
    renderer.hold = True
    await asyncio.to_thread(renderer.entered.wait, 10)
    released_at_call = rec.avatar.stats.frames
    clearing = asyncio.create_task(rec.avatar.clear())
    await asyncio.sleep(0)
    renderer.gate.set()
    await clearing
    await _until(lambda: len(rec.audio) >= released_at_call + 10)
    await rec.stop()

    cfg = rec.avatar.config
    _assert_continuous(rec.audio, cfg)
    cutoff = cfg.frame_start_sample(released_at_call)
    assert not any(a.samples.any() for a in rec.audio if a.sample_start >= cutoff)
    assert sum(a.samples.any() for a in rec.audio if a.sample_start < cutoff) >= 4
    ended = [e for e, _, _ in rec.events if isinstance(e, SegmentEnded)]
    assert len(ended) == 1 and ended[0].segment_id == segment and ended[0].interrupted
    assert 0 < ended[0].played_s < 3.0
    # Frames produced before the clear lose their video as well: the held frame and those queued
    # before it are skipped, then drawing resumes.
    after = [v.index for v in rec.video if v.index >= released_at_call]
    assert after and after[0] <= released_at_call + 3 + rec.avatar.stats.frames_dropped


async def test_clear_while_idle_skips_nothing(recorders: Callable[[Engine], Recorder]) -> None:
    rec = recorders(_engine())
    await rec.start()
    await _until(lambda: len(rec.video) >= 3)
    await rec.avatar.clear()
    await rec.avatar.set_listening(True)
    await _until(lambda: len(rec.video) >= 12)
    await rec.stop()
    indices = [v.index for v in rec.video]
    assert rec.avatar.stats.frames_dropped > 0 or indices == list(range(indices[0], indices[-1] + 1))
    assert not rec.events


class _SlowRenderer:
    """A renderer that takes 1.5 frame periods per frame: production cannot keep up."""

    def __init__(self, seconds: float) -> None:
        self._inner = load_renderer("ava", quality="low")
        self._seconds = seconds
        self.width, self.height, self.channels = self._inner.width, self._inner.height, 3

    def render(self, state: FaceState) -> np.ndarray:
        time.sleep(self._seconds)
        return self._inner.render(state)


async def test_late_frames_are_produced_without_video_but_audio_stays_continuous(
    recorders: Callable[[Engine], Recorder],
) -> None:
    rec = recorders(_engine(fps=25, renderer=_SlowRenderer(1.5 / 25)))
    await rec.start()
    await rec.avatar.push_audio(_tone(0.8), RATE)
    await rec.avatar.end_segment()
    await _until(lambda: rec.avatar.stats.frames >= 30 and len(rec.audio) >= 30)
    await rec.stop()

    stats = rec.avatar.stats
    assert stats.frames_dropped > 0
    _assert_continuous(rec.audio, rec.avatar.config)
    assert len(rec.speech_frames()) >= 0.8 * 25 - 1  # no speech frame was lost
    indices = [v.index for v in rec.video]
    assert indices == sorted(set(indices))
    assert len(indices) < indices[-1] - indices[0] + 1  # the skipped frames are missing from the video
    assert (
        len(rec.video) + stats.frames_dropped + stats.frames_lost_in_queue
        >= stats.frames - VIDEO_QUEUE_FRAMES
    )


async def test_a_late_video_consumer_gets_the_latest_released_frame_at_once() -> None:
    avatar = LiveCore(_engine())
    try:
        await avatar.start()
        await _until(lambda: avatar.stats.frames >= 3)
        released = avatar.last_frame
        assert released is not None
        # One already released (the latest drawn), not the next release.
        first = await avatar.next_video()
        assert first.index <= released.index
        assert (await avatar.next_video()).index > first.index
        avatar.clear_now()  # a clear drops what was released and not taken, the kept frame too
        assert avatar._video.last is None and not avatar._video.items
    finally:
        await avatar.aclose()


async def test_outputs_stay_bounded_when_the_consumer_stops_reading() -> None:
    avatar = LiveCore(_engine())
    try:
        await avatar.start()
        await avatar.next_video()  # subscribes; the queue is empty again
        video_from, dropped_from = avatar.stats.frames, avatar.stats.frames_dropped
        await avatar.next_audio()
        audio_from = avatar.stats.frames
        await _until(lambda: avatar.stats.frames >= audio_from + 20)
        stats = avatar.stats
        # Every frame released since is queued and all but the newest ones are dropped. (A frame or two
        # may have been released before the first call returned, and may still be queued; frames
        # produced without video put nothing, and a few of those may not be released yet.)
        audio_puts = stats.frames - audio_from
        audio_limit = round(AUDIO_QUEUE_S * 30)
        assert audio_puts - audio_limit <= stats.audio_frames_lost_in_queue <= audio_puts - audio_limit + 2
        drawn = stats.frames - video_from
        undrawn = stats.frames_dropped - dropped_from + 2
        assert (
            drawn - undrawn - VIDEO_QUEUE_FRAMES
            <= stats.frames_lost_in_queue
            <= drawn - VIDEO_QUEUE_FRAMES + 2
        )
    finally:
        await avatar.aclose()


async def test_aclose_is_idempotent_wakes_consumers_and_stops_the_worker() -> None:
    avatar = LiveCore(_engine())
    await avatar.start()
    await avatar.next_video()
    waiting = [asyncio.create_task(avatar.next_video()), asyncio.create_task(avatar.next_audio())]
    pushing = asyncio.create_task(avatar.push_audio(_tone(0.1), RATE))
    await asyncio.sleep(0)
    await asyncio.gather(avatar.aclose(), avatar.aclose())
    await avatar.aclose()
    assert await pushing == 0  # a call already on its way completes instead of being cancelled
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, AvatarClosed) for r in results), results
    assert avatar.closed
    with pytest.raises(AvatarClosed):
        await avatar.next_video()
    with pytest.raises(AvatarClosed):
        await avatar.push_audio(_tone(0.1), RATE)
    with pytest.raises(AvatarClosed):
        await avatar.clear()
    frames = avatar.stats.frames
    await asyncio.sleep(0.1)
    assert avatar.stats.frames == frames  # pacing stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("facecast-avatar")]


async def test_aclose_before_start_and_bad_arguments() -> None:
    avatar = LiveCore(_engine())
    await avatar.aclose()
    with pytest.raises(AvatarClosed):
        await avatar.start()
    with pytest.raises(ValueError, match="queue_frames"):
        LiveCore(_engine(), queue_frames=0)
    with pytest.raises(ValueError, match="engine_thread must be 'own' or 'loop', got 'shared'"):
        LiveCore(_engine(), engine_thread="shared")  # type: ignore[arg-type]
    avatar = LiveCore(_engine())
    try:
        await avatar.start()
        with pytest.raises(RuntimeError, match="already started"):
            await avatar.start()
    finally:
        await avatar.aclose()


class _ThreadsSeen:
    """A renderer that records which thread draws each frame."""

    def __init__(self) -> None:
        self._inner = load_renderer("ava", quality="low")
        self.width, self.height, self.channels = self._inner.width, self._inner.height, self._inner.channels
        self.threads: set[str] = set()

    def render(self, state: FaceState) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        return self._inner.render(state)


@pytest.mark.parametrize("engine_thread", ["own", "loop"])
async def test_the_engine_runs_on_its_own_thread_or_on_the_loop_and_in_call_order(engine_thread: str) -> None:
    renderer = _ThreadsSeen()
    seen: list[str] = []
    avatar = LiveCore(
        _engine(renderer=renderer),
        on_event=lambda e: seen.append(type(e).__name__),
        engine_thread=engine_thread,  # type: ignore[arg-type]
    )
    try:
        await avatar.start()
        await avatar.next_video()
        await avatar.push_audio(_tone(0.3), RATE)
        await avatar.end_segment()
        await avatar.set_listening(True)
        await _until(lambda: "SegmentEnded" in seen)
        assert seen == ["SegmentStarted", "SegmentEnded"]
        assert avatar.stats.speech_frames >= 0.3 * 30 - 1
        assert avatar.stats.engine_cpu_s > 0
    finally:
        await avatar.aclose()
    workers = {name for name in renderer.threads if name.startswith("facecast-avatar")}
    if engine_thread == "own":
        assert renderer.threads == workers and len(workers) == 1
    else:
        assert renderer.threads == {threading.current_thread().name}


async def test_a_failing_renderer_closes_the_outputs_with_the_cause() -> None:
    class Broken(_SlowRenderer):
        def render(self, state: FaceState) -> np.ndarray:
            raise RuntimeError("renderer exploded")

    avatar = LiveCore(_engine(renderer=Broken(0.0)))
    try:
        await avatar.start()
        with pytest.raises(AvatarClosed) as info:
            await avatar.next_video()
        assert isinstance(info.value.__cause__, RuntimeError)
    finally:
        await avatar.aclose()


async def test_a_long_stall_moves_the_clock_on_instead_of_skipping_every_later_frame(
    recorders: Callable[[Engine], Recorder],
) -> None:
    renderer = _GatedRenderer()
    rec = recorders(_engine(fps=25, renderer=renderer))
    await rec.start()
    await _until(lambda: len(rec.video) >= 3)
    renderer.hold = True  # the next frame stalls well past MAX_LAG_S, as on an overloaded machine
    await asyncio.to_thread(renderer.entered.wait, 10)
    await asyncio.sleep(3 * MAX_LAG_S)
    stalled_at = rec.avatar.stats.frames
    renderer.gate.set()
    await _until(lambda: rec.avatar.stats.frames >= stalled_at + 20)
    await rec.stop()

    stats = rec.avatar.stats
    assert stats.clock_rebased >= 1
    _assert_continuous(rec.audio, rec.avatar.config)
    drawn_after = [v for v in rec.video if v.index > stalled_at + 2]
    assert len(drawn_after) >= 10  # drawing resumed rather than every frame being late


async def test_segment_tags_reach_the_events_and_the_frames() -> None:
    """Hosts name utterances; the events and frames carry the name, so no host keeps an id map."""
    seen: list[tuple[str, object]] = []
    tags: set[object] = set()
    avatar = LiveCore(_engine(renderer=None), on_event=lambda e: seen.append((type(e).__name__, e.tag)))
    pulled: list[LiveFrame] = []

    async def pull() -> None:
        while True:
            pulled.append(await avatar.next_frame())

    task = asyncio.create_task(pull())
    await asyncio.sleep(0)
    await avatar.start()
    try:
        await avatar.push_audio(_tone(0.3), RATE, tag="greeting")
        await avatar.end_segment()
        await avatar.open_segment("answer")
        await avatar.push_audio(_tone(0.2), RATE)
        with pytest.raises(ValueError, match="end_segment"):
            await avatar.open_segment("another")  # the open segment has a name already
        await avatar.end_segment()
        await _until(lambda: sum(kind == "SegmentEnded" for kind, _ in seen) == 2)
        tags = {f.meta.segment_tag for f in pulled if f.audio is not None}
    finally:
        task.cancel()
        await avatar.aclose()
    assert seen == [
        ("SegmentStarted", "greeting"),
        ("SegmentEnded", "greeting"),
        ("SegmentStarted", "answer"),
        ("SegmentEnded", "answer"),
    ]
    assert tags == {"greeting", "answer"}


async def test_frames_with_a_lead_play_that_much_after_release() -> None:
    lead = 0.1
    avatar = LiveCore(_engine(renderer=None), lead_s=lead)
    loop = asyncio.get_running_loop()
    avatar_t: list[tuple[float, LiveFrame]] = []

    async def pull() -> None:
        while True:
            frame = await avatar.next_frame()
            avatar_t.append((loop.time(), frame))

    task = asyncio.create_task(pull())
    await asyncio.sleep(0)
    await avatar.start()
    with pytest.raises(RuntimeError, match="started"):
        avatar.lead_s = 0.2
    await _until(lambda: len(avatar_t) >= 10)
    task.cancel()
    await avatar.aclose()
    # Frame i plays lead_s after its release slot: the transport takes it about that long before.
    assert statistics.median(frame.plays_at - taken for taken, frame in avatar_t) > lead / 2
    first = avatar_t[0][1]
    cfg = avatar.config
    for _, frame in avatar_t:
        assert frame.plays_at == pytest.approx(first.plays_at + (frame.meta.index - first.meta.index) / 30)
        assert frame.duration_s == cfg.frame_samples(frame.meta.index) / cfg.out_rate


async def test_clear_silences_frames_released_but_not_yet_taken() -> None:
    """A transport that has not taken a released frame yet must not play its speech after an interrupt."""
    avatar = LiveCore(_engine(renderer=None))
    frames: list[LiveFrame] = []
    audio: list[AudioOut] = []
    frames.append(await _first(avatar.next_frame(), avatar))
    audio.append(await avatar.next_audio())
    await avatar.push_audio(_tone(2.0), RATE)
    await avatar.end_segment()
    await _until(lambda: avatar.stats.speech_frames >= 5)
    await asyncio.sleep(0.2)  # several frames released and left in the outputs
    await avatar.clear()
    queued_frames = [await avatar.next_frame() for _ in range(3)]
    queued_audio = [await avatar.next_audio() for _ in range(3)]
    await avatar.aclose()
    assert all(f.audio is None for f in queued_frames)
    assert not any(a.samples.any() for a in queued_audio)
    assert avatar.stats.interrupts == 1


async def _first(awaitable: Any, avatar: LiveCore) -> Any:
    """Subscribe to an output, then start the avatar, and return the output's first item."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.sleep(0)
    await avatar.start()
    return await task


async def test_latency_counts_from_when_an_utterance_could_play() -> None:
    """A sentence queued behind another waits for it; that wait is not the avatar's latency."""
    avatar = LiveCore(_engine(renderer=None))
    await _first(avatar.next_audio(), avatar)
    drain = asyncio.create_task(_drain_audio(avatar))
    await avatar.push_audio(_tone(1.5), RATE, tag="greeting")
    await avatar.end_segment()
    await avatar.push_audio(_tone(0.3), RATE, tag="queued")  # waits 1.5 s behind the greeting
    await avatar.end_segment()
    await _until(lambda: avatar.stats.segments == 2)
    drain.cancel()
    await avatar.aclose()
    greeting, queued = avatar.stats.audio_to_video_latency_ms
    assert queued < 1000 * 1.5 / 2  # not the greeting's length
    assert queued < greeting + 1000 * 0.5


async def _drain_audio(avatar: LiveCore) -> None:
    while True:
        await avatar.next_audio()


@pytest.mark.parametrize("yields", [True, False])
async def test_ready_speech_takes_the_slot_of_an_idle_frame_made_ahead_and_skips_the_lead(
    yields: bool,
) -> None:
    lead = 0.04
    avatar = LiveCore(_engine(), queue_frames=1, lead_s=lead, idle_yields_to_speech=yields)
    period = 1 / avatar.config.fps
    try:
        await avatar.start()
        for _ in range(5):
            idle = await avatar.next_frame()
        await _until(lambda: len(avatar._pending) == 1)  # the next (idle) frame is made and waits
        await avatar.push_audio(_tone(0.5), RATE)
        frames = [await avatar.next_frame() for _ in range(4)]
    finally:
        await avatar.aclose()
    assert idle.audio is None
    first = next(i for i, f in enumerate(frames) if f.audio is not None)
    speech = frames[first]
    assert all(f.audio is not None for f in frames[first:])
    if yields:
        # The idle frame made before the push never plays: the speech is released in its slot (the
        # engine's clock skipped it), and plays at release instead of behind the lead's silence ...
        assert first == 0 and speech.meta.index == idle.meta.index + 2
        assert speech.plays_at == pytest.approx(idle.plays_at + period - lead)
        assert avatar.stats.audio_to_video_latency_ms  # counted to when it plays
    else:
        assert first == 1 and speech.meta.index == idle.meta.index + 2
        assert speech.plays_at == pytest.approx(idle.plays_at + 2 * period)
    # ... and the speech after it plays back to back, the lead refilled.
    for before, after in itertools.pairwise(frames[first:]):
        assert after.plays_at == pytest.approx(before.plays_at + period)
        assert after.video is not None


async def test_release_sooner_releases_the_next_frames_that_much_earlier_and_draws_them() -> None:
    avatar = LiveCore(_engine(), queue_frames=1)
    period = 1 / avatar.config.fps
    loop = asyncio.get_running_loop()
    sooner = 2.5 * period  # over two periods: the lag rule alone would skip drawing the first ones
    try:
        await avatar.start()
        for _ in range(3):
            before = await avatar.next_frame()
        avatar.release_sooner(sooner)
        taken = []
        for _ in range(6):
            frame = await avatar.next_frame()
            taken.append((loop.time(), frame))
    finally:
        await avatar.aclose()
    for i, (at, frame) in enumerate(taken, start=1):
        assert frame.plays_at == pytest.approx(before.plays_at + i * period - sooner)
        assert at >= frame.plays_at - 0.002  # released no sooner than its new slot
        assert frame.video is not None
    assert avatar.stats.frames_dropped == 0


async def test_ending_a_short_segment_makes_it_take_the_idle_slot_too() -> None:
    avatar = LiveCore(_engine(), queue_frames=1, idle_yields_to_speech=True)
    period = 1 / avatar.config.fps
    taken: list[LiveFrame] = []

    async def pull() -> None:
        while True:
            taken.append(await avatar.next_frame())

    task = asyncio.create_task(pull())
    try:
        await asyncio.sleep(0)
        await avatar.start()
        await _until(lambda: len(taken) >= 3)
        await avatar.push_audio(_tone(0.05), RATE)  # shorter than the engine's look-ahead: not ready
        await _until(lambda: len(avatar._pending) == 1)  # an idle frame made ahead waits
        await avatar.end_segment()  # now the speech is ready
        await _until(lambda: any(f.audio is not None for f in taken))
    finally:
        task.cancel()
        await avatar.aclose()
    first = next(i for i, f in enumerate(taken) if f.audio is not None)
    before, speech = taken[first - 1], taken[first]
    assert before.audio is None
    # The idle frame made ahead never played: one engine frame skipped, no release slot lost.
    assert speech.meta.index == before.meta.index + 2
    assert speech.plays_at == pytest.approx(before.plays_at + period)
