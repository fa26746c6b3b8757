"""Publishes the engine's frames to a LiveKit room and answers the avatar protocol.

Wire behaviour is the stock `AvatarRunner`'s: tracks `avatar_audio` (microphone, published first, then
waited on until subscribed) and `avatar_video` (camera); `lk.playback_started` / `lk.playback_finished`
through the `AudioReceiver`. It is its own class because the stock runner
- keeps one "audio playing" flag, so a segment that arrives while the previous one still plays loses
  its `playback_finished`; here every segment is tracked on its own and reported exactly once;
- leaves ~100 ms of queued audio playing after `lk.clear_buffer`; here the source queue is dropped;
- reports the audio handed to the source as played; here positions count only what has played out;
- paces video with a queue separate from the audio queue, so lips lag the voice at speech onset; here
  each video frame is shown when its audio starts playing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents.voice.avatar import AudioReceiver, AudioSegmentEnd

from facecast.engine import AudioFormatError, SegmentEnded
from facecast.hosts.livekit.generator import FacecastVideoGenerator, Tick
from facecast.hosts.livekit.names import AUDIO_TRACK_NAME, VIDEO_TRACK_NAME

logger = logging.getLogger("facecast.livekit")


# Both tracks name one stream. In a room with `sync_streams` (a LiveKit room option) subscribers then get
# them in one media stream, which browsers play in sync (lip sync from the RTCP sender reports);
# elsewhere each track is its own stream, as without the name.
AV_STREAM = "facecast-avatar"
# Bits per pixel per frame for the video track's top bitrate: LiveKit's 720p30 camera preset
# (1.7 Mbps) is 0.06; a talking head on a still background needs no more.
VIDEO_BITS_PER_PIXEL = 0.06
MIN_VIDEO_BITRATE = 150_000


def video_publish_options(width: int, height: int, fps: int) -> rtc.TrackPublishOptions:
    """Publish at the avatar's own frame rate. Without an explicit encoding the SDK picks LiveKit's
    camera preset for the resolution, which caps small tracks at 15 fps (≤ 180 lines) or 20 fps
    (≤ 540 lines): measured at a viewer on a real server, a 30 fps avatar arrived at 15 fps (256²) and
    20 fps (512²). One layer, no simulcast: the SFU first forwarded a lower layer and the switch waited
    on its keyframe-request throttle, so a viewer's first frame came after ~1.35 s in 2–7 starts of 10;
    with one layer, `facecast bench livekit` measured first frame p50 0.86 → 0.36 s, p95 1.37 → 0.93 s."""
    bitrate = max(MIN_VIDEO_BITRATE, int(width * height * fps * VIDEO_BITS_PER_PIXEL))
    return rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_CAMERA,
        stream=AV_STREAM,
        video_encoding=rtc.VideoEncoding(max_framerate=fps, max_bitrate=bitrate),
        simulcast=False,
    )


@dataclass(eq=False)
class _Segment:
    """One utterance as the sender sees it: one byte stream, one `playback_finished`."""

    received_at: float  # monotonic time its first audio arrived
    engine_id: int | None = None
    rejected: bool = False
    pushed_s: float = 0.0  # audio handed to the source
    ends_at: float = 0.0  # monotonic time its last pushed sample finishes playing
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def played_s(self, now: float) -> float:
        return max(0.0, self.pushed_s - max(0.0, self.ends_at - now))


class FacecastAvatarRunner:
    """Runs one generator in one room: receives audio from `audio_recv`, publishes audio + video."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        audio_recv: AudioReceiver,
        generator: FacecastVideoGenerator,
        queue_size_ms: int = 100,
    ) -> None:
        self._room = room
        self._recv = audio_recv
        self._gen = generator
        self._queue_s = queue_size_ms / 1000
        self._audio_source = rtc.AudioSource(generator.sample_rate, 1, queue_size_ms=queue_size_ms)
        self._video_source = rtc.VideoSource(generator.width, generator.height)
        self.audio_publication: rtc.LocalTrackPublication | None = None
        self.video_publication: rtc.LocalTrackPublication | None = None

        self._pending: list[_Segment] = []  # segments with audio not yet reported, oldest first
        self._by_engine_id: dict[int, _Segment] = {}
        self._open: _Segment | None = None
        self._video_timers: set[asyncio.TimerHandle] = set()
        self._last_video_at = 0.0
        self._last_was_speech = False
        self._audio_arrived = asyncio.Event()
        self._inbox: deque[tuple[_Segment, rtc.AudioFrame | None]] = deque()  # None: end of segment
        self._inbox_ready = asyncio.Event()
        self._after_clear = False  # no item has arrived since the last clear
        self._open_at_clear = False
        self._tasks: list[asyncio.Task[None]] = []
        self._notify_tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

        self.frames = 0
        self.speech_frames = 0
        self.dropped_frames = 0
        self.segments = 0
        self.interrupts = 0
        self.finished_sent = 0
        self.started_at: float | None = None  # monotonic, when start() was called
        self.last_audio_at: float | None = None  # monotonic, when the last audio frame arrived
        self.first_frame_at: float | None = None  # monotonic, when the first video frame was captured
        self.audio_to_lips_s: list[float] = []

    @property
    def audio_source(self) -> rtc.AudioSource:
        return self._audio_source

    @property
    def generator(self) -> FacecastVideoGenerator:
        return self._gen

    async def start(self) -> None:
        """Publish the tracks and start receiving and rendering; returns once the audio track is
        published (the video track follows when the audio is subscribed, like the stock runner)."""
        self.started_at = time.monotonic()
        audio_track = rtc.LocalAudioTrack.create_audio_track(AUDIO_TRACK_NAME, self._audio_source)
        self.audio_publication = await self._room.local_participant.publish_track(
            audio_track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, stream=AV_STREAM)
        )
        self._tasks = [
            asyncio.create_task(self._receive(), name="facecast-receive"),
            asyncio.create_task(self._feed(), name="facecast-feed"),
            asyncio.create_task(self._publish_video_then_render(), name="facecast-render"),
        ]

    async def wait(self) -> None:
        """Return when the runner stops; raise what stopped it."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    def interrupt_pending(self) -> list[float]:
        """Stop all speech now and return what each unreported segment played, without reporting
        them: for a host that must tell the sender itself because it is leaving the room."""
        positions = [seg.played_s(time.monotonic()) for seg in self._pending]
        for seg in self._pending:
            self._cancel_timers(seg)
        self._drop_all()
        return positions

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        for seg in list(self._pending):
            self._report_finished(seg, seg.played_s(now), interrupted=True)
        self._drop_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._notify_tasks, return_exceptions=True)
        await self._recv.aclose()
        for pub in (self.video_publication, self.audio_publication):
            if pub is not None and self._room.isconnected():
                with contextlib.suppress(Exception):
                    await self._room.local_participant.unpublish_track(pub.sid)
        await self._gen.aclose()
        await self._audio_source.aclose()
        await self._video_source.aclose()

    def stats(self) -> dict[str, Any]:
        lat = self.audio_to_lips_s
        first = None
        if self.first_frame_at is not None and self.started_at is not None:
            first = round((self.first_frame_at - self.started_at) * 1000, 1)
        return {
            "frames": self.frames,
            "speech_frames": self.speech_frames,
            "dropped_frames": self.dropped_frames,
            "segments": self.segments,
            "interrupts": self.interrupts,
            "playback_finished_sent": self.finished_sent,
            "first_frame_ms": first,
            "audio_to_lips_ms": {
                "count": len(lat),
                "last": round(lat[-1] * 1000, 1) if lat else None,
                "mean": round(sum(lat) / len(lat) * 1000, 1) if lat else None,
                "max": round(max(lat) * 1000, 1) if lat else None,
            },
            "engine_cpu_s": round(self._gen.cpu_s, 3),
            # for an idle timeout: seconds since audio last arrived (or since start)
            "idle_s": round(
                time.monotonic() - (self.last_audio_at or self.started_at or time.monotonic()), 3
            ),
        }

    # -- receiving ---------------------------------------------------------------------------------------
    # The receiver drops what is still in its own queue when a clear arrives, so whatever reaches us is
    # moved at once into our inbox (where a clear can still see which segments it held) and fed to the
    # engine by a second task.
    async def _receive(self) -> None:
        await self._recv.start()
        self._recv.on("clear_buffer", self._on_clear_buffer)
        async for item in self._recv:
            after_clear, self._after_clear = self._after_clear, False
            if isinstance(item, AudioSegmentEnd):
                seg, self._open = self._open, None
                if seg is not None:
                    self._enqueue(seg, None)
                elif after_clear and not self._open_at_clear:
                    # The trailer of a stream cleared before any of its audio reached us. The sender
                    # counted that segment, so it still gets its one answer.
                    seg = self._new_segment()
                    self._report_finished(seg, 0.0, interrupted=True)
                # else: an empty stream, or the trailer of a segment the clear already answered
            elif item.samples_per_channel > 0:
                self.last_audio_at = time.monotonic()
                self._enqueue(self._open or self._new_segment(open_=True), item)

    def _new_segment(self, *, open_: bool = False) -> _Segment:
        seg = _Segment(received_at=time.monotonic())
        self._pending.append(seg)
        self.segments += 1
        if open_:
            self._open = seg
        return seg

    def _enqueue(self, seg: _Segment, frame: rtc.AudioFrame | None) -> None:
        self._inbox.append((seg, frame))
        self._inbox_ready.set()

    async def _feed(self) -> None:
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready.clear()
            while self._inbox:
                seg, frame = self._inbox.popleft()
                if seg not in self._pending:
                    continue  # answered by a clear
                if frame is None:
                    await self._end_segment(seg)
                    continue
                frames = [frame]
                while self._inbox and self._inbox[0][0] is seg and (nxt := self._inbox[0][1]) is not None:
                    if (nxt.sample_rate, nxt.num_channels) != (frame.sample_rate, frame.num_channels):
                        break
                    frames.append(nxt)
                    self._inbox.popleft()
                await self._push(seg, frames)

    async def _push(self, seg: _Segment, frames: list[rtc.AudioFrame]) -> None:
        if seg.rejected:
            return
        pcm = b"".join(bytes(f.data) for f in frames)
        try:
            engine_id = await self._gen.push_pcm(pcm, frames[0].sample_rate, frames[0].num_channels)
        except AudioFormatError as exc:
            logger.warning("dropping a segment the engine cannot play: %s", exc)
            seg.rejected = True
            return
        # None: a clear overtook this push, and the clear has already answered for the segment.
        if engine_id is not None and seg in self._pending:
            if seg.engine_id is None:
                seg.engine_id = engine_id
                self._by_engine_id[engine_id] = seg
            self._audio_arrived.set()

    async def _end_segment(self, seg: _Segment) -> None:
        if seg.engine_id is None:
            # Nothing playable arrived; the sender still counts this segment and waits for it.
            self._report_finished(seg, 0.0, interrupted=False)
            return
        await self._gen.end_segment()

    def _on_clear_buffer(self) -> None:
        now = time.monotonic()
        self.interrupts += 1
        if not self._after_clear:
            # Whether the stream being cleared has shown us audio (its answer is given below) decides
            # what its trailer, if one still comes, means. A repeated clear refers to the same stream.
            self._open_at_clear = self._open is not None
        self._after_clear = True
        for seg in list(self._pending):
            self._report_finished(seg, seg.played_s(now), interrupted=True)
        self._drop_all()

    def _drop_all(self) -> None:
        """Silence now: the engine's pending speech, the source's queue and the scheduled lip frames."""
        self._gen.clear_buffer()
        self._audio_source.clear_queue()
        for timer in self._video_timers:
            timer.cancel()
        self._video_timers.clear()
        self._pending.clear()
        self._by_engine_id.clear()
        self._inbox.clear()
        self._open = None
        self._last_video_at = time.monotonic()
        self._last_was_speech = False

    # -- rendering -------------------------------------------------------------------------------------
    async def _publish_video_then_render(self) -> None:
        assert self.audio_publication is not None
        await self.audio_publication.wait_for_subscription()
        video_track = rtc.LocalVideoTrack.create_video_track(VIDEO_TRACK_NAME, self._video_source)
        self.video_publication = await self._room.local_participant.publish_track(
            video_track, video_publish_options(self._gen.width, self._gen.height, self._gen.fps)
        )
        await self._render()

    async def _render(self) -> None:
        frame_s = 1 / self._gen.fps
        self._last_video_at = time.monotonic() - frame_s
        tick_s = 0.0
        while True:
            # Behind real time mid-speech: the source is about to run dry because frames take too long
            # to make (not because the sender is slow). Keep the audio going and skip drawing this frame;
            # the viewer sees the previous frame a little longer.
            behind = (
                self._last_was_speech
                and self._audio_source.queued_duration < frame_s / 2
                and tick_s > frame_s / 2
            )
            self._audio_arrived.clear()
            asked = time.monotonic()
            tick = await self._gen.next_tick(render=not behind)
            tick_s = time.monotonic() - asked
            if tick.epoch != self._gen.epoch:
                continue  # computed before a clear
            if behind:
                self.dropped_frames += 1
            if tick.audio is not None:
                show_at = await self._play_audio(tick)
                if show_at is None:
                    continue  # a clear arrived while waiting for room in the queue
                self._last_was_speech = True
                self._finish_ended(tick)
            else:
                self._finish_ended(tick)
                self._last_was_speech = False
                show_at = max(self._last_video_at + frame_s, time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio_arrived.wait(), show_at - time.monotonic())
                    # Speech arrived while this idle frame waited: drop it and render the speech now.
                    continue
                if tick.epoch != self._gen.epoch:
                    continue
            if tick.video is not None:
                self._show(tick.video, show_at, speech=tick.audio is not None)
            self._last_video_at = show_at

    async def _play_audio(self, tick: Tick) -> float | None:
        """Queue a frame's audio once the source has room (capture_frame then never blocks, so a clear
        can't be overtaken by a frame stuck inside it). Returns when that audio starts playing."""
        assert tick.audio is not None
        duration = tick.audio.duration
        while (wait := self._audio_source.queued_duration + duration - self._queue_s) > 0:
            await asyncio.sleep(wait)
        if tick.epoch != self._gen.epoch:
            return None
        starts_at = time.monotonic() + self._audio_source.queued_duration
        await self._audio_source.capture_frame(tick.audio)
        seg = self._segment_for(tick.meta.segment_id)
        if seg is not None:
            if seg.pushed_s == 0.0:
                self.audio_to_lips_s.append(max(0.0, starts_at - seg.received_at))
                seg.timers.append(self._call_at(starts_at, self._report_started))
            seg.pushed_s += duration
            seg.ends_at = starts_at + duration
        return max(starts_at, self._last_video_at)

    def _show(self, frame: rtc.VideoFrame, at: float, *, speech: bool) -> None:
        def capture() -> None:
            self._video_timers.discard(timer)
            self._video_source.capture_frame(frame)
            self.frames += 1
            self.speech_frames += speech
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()

        timer = self._call_at(at, capture)
        self._video_timers.add(timer)

    def _finish_ended(self, tick: Tick) -> None:
        for event in tick.meta.events:
            if not isinstance(event, SegmentEnded) or event.interrupted:
                continue  # interrupted segments were answered when the clear arrived
            seg = self._segment_for(event.segment_id)
            if seg is None:
                continue
            del self._by_engine_id[event.segment_id]
            # Report when the last sample has played, not when it was queued.
            report = functools.partial(self._report_finished, seg, event.played_s, False)
            seg.timers.append(self._call_at(seg.ends_at, report))

    def _segment_for(self, engine_id: int | None) -> _Segment | None:
        if engine_id is None:
            return None
        if (seg := self._by_engine_id.get(engine_id)) is not None:
            return seg
        # The engine already plays a segment whose push result _receive has not seen yet. Engine segments
        # open in the order of our pushes, and earlier segments' pushes have all completed, so it is the
        # oldest pending segment still waiting for its engine id.
        for seg in self._pending:
            if seg.engine_id is None and not seg.rejected:
                seg.engine_id = engine_id
                self._by_engine_id[engine_id] = seg
                return seg
        return None

    # -- notifications ---------------------------------------------------------------------------------
    def _report_started(self) -> None:
        self._notify(self._recv.notify_playback_started)

    def _report_finished(self, seg: _Segment, position: float, interrupted: bool) -> None:
        if seg not in self._pending:
            return  # exactly one report per segment
        self._pending.remove(seg)
        self._cancel_timers(seg)
        self.finished_sent += 1
        self._notify(lambda: self._recv.notify_playback_finished(round(position, 3), interrupted))

    def _cancel_timers(self, seg: _Segment) -> None:
        for timer in seg.timers:
            timer.cancel()
        seg.timers.clear()

    def _notify(self, fn: Callable[[], Any]) -> None:
        result = fn()
        if asyncio.iscoroutine(result):
            task = asyncio.create_task(result)
            self._notify_tasks.add(task)
            task.add_done_callback(self._notify_tasks.discard)

    @staticmethod
    def _call_at(at: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        # loop.time() is time.monotonic() on the default loop; convert anyway so a custom loop works.
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + (at - time.monotonic()), fn)
