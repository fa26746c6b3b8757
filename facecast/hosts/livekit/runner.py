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

Pacing is the live core's (facecast.hosts.live): frames are released PLAYOUT_LEAD_S before they play,
and the audio source's queue is kept that full (silence while idle), so a late event-loop tick does not
starve the source. Speech does not wait behind that silence: its first frame plays at release (the
core's idle_yields_to_speech), so the silence queued and the idle pictures still to show are dropped,
and the core releases the frames after it sooner until the lead is full again (with speech).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents.voice.avatar import AudioReceiver, AudioSegmentEnd

from facecast.engine import AudioFormatError, SegmentEnded
from facecast.engine.mouth_track import mouth_track_record
from facecast.hosts.live import LiveFrame, LiveStats
from facecast.hosts.livekit.generator import FacecastVideoGenerator, audio_frame, video_frame
from facecast.hosts.livekit.names import AUDIO_TRACK_NAME, MOUTH_TRACK_TOPIC, VIDEO_TRACK_NAME

logger = logging.getLogger("facecast.livekit")


# Both tracks name one stream. In a room with `sync_streams` (a LiveKit room option) subscribers then get
# them in one media stream, which browsers play in sync (lip sync from the RTCP sender reports);
# elsewhere each track is its own stream, as without the name.
AV_STREAM = "facecast-avatar"
# Bits per pixel per frame for the video track's top bitrate: LiveKit's 720p30 camera preset
# (1.7 Mbps) is 0.06; a talking head on a still background needs no more.
VIDEO_BITS_PER_PIXEL = 0.06
MIN_VIDEO_BITRATE = 150_000
# Audio queued in the source ahead of playout: the jitter the event loop may add without a gap. The
# SDK's buffer adds latency with its size: measured with `facecast bench livekit`, first audio sent ->
# speech heard was 321 ms with 0.1 s in a 300 ms source (two frames made ahead), 230 ms with 0.04 s in
# 100 ms (one frame ahead), when speech waited behind the lead's silence and an idle frame; the runner
# before the live core, which had no lead at speech onset, 146 ms.
PLAYOUT_LEAD_S = 0.04
SOURCE_QUEUE_MS = 100  # room for the lead and two frames, so capture_frame does not wait
MAX_EARLY_TEXT_CHARS = 4000  # transcript held for speech not yet heard: a few utterances' worth


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
    in_engine: bool = False  # some of its audio was accepted by the engine
    rejected: bool = False
    pushed_s: float = 0.0  # audio handed to the source
    ends_at: float = 0.0  # monotonic time its last pushed sample finishes playing
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def played_s(self, now: float) -> float:
        return max(0.0, self.pushed_s - max(0.0, self.ends_at - now))


@dataclass(frozen=True, slots=True)
class TranscriptPiece:
    """One delta of an agent's transcript. `start` / `end`: where its TTS timed it, in seconds from the
    start of the speech's audio (a TimedString's `start_time` / `end_time`); None where it did not."""

    text: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True, slots=True)
class _TimedWords:
    """Words the engine takes as belonging to the segment's audio from `start` for `duration` seconds
    (None: until the segment ends)."""

    text: str
    start: float
    duration: float | None
    pause_after: bool  # the span runs to the next word's start, not to its last word's end


class FacecastAvatarRunner:
    """Runs one generator in one room: receives audio from `audio_recv`, publishes audio + video."""

    def __init__(
        self,
        room: rtc.Room,
        *,
        audio_recv: AudioReceiver,
        generator: FacecastVideoGenerator,
        mouth_track: bool = False,
    ) -> None:
        """`generator` must be built (`await generator.wait_ready()`). `mouth_track`: also send each
        frame's mouth-track record (docs/mouth-track.md) on MOUTH_TRACK_TOPIC as the frame plays."""
        self._mouth_track = mouth_track
        self._room = room
        self._recv = audio_recv
        self._gen = generator
        self._core = generator.core
        self._core.lead_s = PLAYOUT_LEAD_S
        self._audio_source = rtc.AudioSource(generator.sample_rate, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self._video_source = rtc.VideoSource(generator.width, generator.height)
        self.audio_publication: rtc.LocalTrackPublication | None = None
        self.video_publication: rtc.LocalTrackPublication | None = None

        self._pending: list[_Segment] = []  # segments with audio not yet reported, oldest first
        self._open: _Segment | None = None
        self._video_timers: set[asyncio.TimerHandle] = set()
        self._lead_missing = True  # the source holds less than the playout lead (start, after a clear)
        # None: end of segment; str, _TimedWords: words of the segment's speech (the agent's
        # lk.transcription)
        self._inbox: deque[tuple[_Segment, rtc.AudioFrame | str | _TimedWords | None]] = deque()
        self._text_tail = ""  # transcript text after the last space: maybe half a word
        self._timed_tail: TranscriptPiece | None = None  # a timed piece whose word or end may go on
        self._early_words: list[str | _TimedWords] = []  # words that came before their segment's audio
        self._inbox_ready = asyncio.Event()
        self._after_clear = False  # no item has arrived since the last clear
        self._open_at_clear = False
        self._tasks: list[asyncio.Task[None]] = []
        self._notify_tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

        self.segments_received = 0
        self.finished_sent = 0
        self.started_at: float | None = None  # monotonic, when start() was called
        self.last_audio_at: float | None = None  # monotonic, when the last audio frame arrived

    @property
    def audio_source(self) -> rtc.AudioSource:
        return self._audio_source

    @property
    def generator(self) -> FacecastVideoGenerator:
        return self._gen

    async def start(self, *, started_at: float | None = None) -> None:
        """Publish the tracks and start receiving and rendering; returns once the audio track is
        published (the video track follows when the audio is subscribed, like the stock runner).
        `started_at` (monotonic) is when the host's session began: time to first frame counts from it."""
        self.started_at = time.monotonic() if started_at is None else started_at
        audio_track = rtc.LocalAudioTrack.create_audio_track(AUDIO_TRACK_NAME, self._audio_source)
        self.audio_publication = await self._room.local_participant.publish_track(
            audio_track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, stream=AV_STREAM)
        )
        self._tasks = [
            asyncio.create_task(self._receive(), name="facecast-receive"),
            asyncio.create_task(self._feed(), name="facecast-feed"),
            asyncio.create_task(self._publish_video_then_play(), name="facecast-play"),
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
        self._drop_all(closing=True)
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

    @property
    def live_stats(self) -> LiveStats:
        return self._core.stats

    def stats(self) -> dict[str, Any]:
        """The live core's stats (facecast.hosts.live.LiveStats) and the avatar protocol's counters."""
        out = self._core.stats.as_dict()
        out.update(
            {
                "segments_received": self.segments_received,
                "playback_finished_sent": self.finished_sent,
                # for an idle timeout: seconds since audio last arrived (or since start)
                "idle_s": round(
                    time.monotonic() - (self.last_audio_at or self.started_at or time.monotonic()), 3
                ),
            }
        )
        return out

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
                if self._open is not None:
                    self._enqueue(self._open, item)
                    continue
                seg = self._new_segment(open_=True)
                self._enqueue(seg, item)
                for words in self._early_words:  # after the first audio: the engine takes words for
                    self._enqueue(seg, words)  # open speech
                self._early_words = []

    def _new_segment(self, *, open_: bool = False) -> _Segment:
        seg = _Segment(received_at=time.monotonic())
        self._pending.append(seg)
        self.segments_received += 1
        if open_:
            self._open = seg
        return seg

    def transcript_leads_playback(self) -> bool:
        """Whether a transcript stream starting now can still shape the mouth: its words come before
        the speech they describe plays. livekit-agents' synchronized transcripts (`sync_transcription`,
        its default) start once that speech is playing, after its first frames were drawn: aligned,
        they would only be judged late and mismatched, so the host leaves them out."""
        seg = self._open
        return seg is None or seg.played_s(time.monotonic()) == 0.0

    def add_transcript(self, pieces: list[TranscriptPiece]) -> None:
        """Words of the agent's speech (a delta of its `lk.transcription` stream). They go to the
        segment still receiving audio, in order with it, so the engine aligns them while the audio
        streams: untimed words as the segment's text, words its TTS timed as spans of the segment's
        audio. Words that come while no segment is receiving audio wait for the next one's first
        audio: an unsynchronized transcript leads its speech. An interrupt drops them."""
        for piece in pieces:
            if piece.start is None:
                self._give_timed_tail(None)
                text = self._text_tail + piece.text
                boundary = max(text.rfind(" "), text.rfind("\n"))
                words, self._text_tail = (
                    (text[:boundary], text[boundary + 1 :]) if boundary >= 0 else ("", text)
                )
                self._give_words(words)
            else:
                self._add_timed(piece)

    def _add_timed(self, piece: TranscriptPiece) -> None:
        """A timed piece is given once its word is complete (it ends in a space, or the next piece
        starts with one: livekit-agents' transcript carries each word's leading space) and its end is
        known (its own `end`, else the next piece's `start`): a word split over pieces is one span."""
        if self._text_tail:
            self._give_words(self._text_tail)
            self._text_tail = ""
        tail = self._timed_tail
        if tail is not None and not tail.text[-1:].isspace() and not piece.text[:1].isspace():
            piece = TranscriptPiece(tail.text + piece.text, tail.start, piece.end)
        else:
            self._give_timed_tail(piece.start)
        if piece.end is not None and piece.text[-1:].isspace():
            self._timed_tail = None
            self._give_timed(piece, piece.end, pause_after=False)
        else:
            self._timed_tail = piece

    def _give_timed_tail(self, next_start: float | None) -> None:
        tail, self._timed_tail = self._timed_tail, None
        if tail is not None:
            self._give_timed(
                tail, tail.end if tail.end is not None else next_start, pause_after=tail.end is None
            )

    def end_transcript(self) -> None:
        """The transcript stream closed: its last word is complete."""
        self._give_timed_tail(None)
        tail, self._text_tail = self._text_tail, ""
        self._give_words(tail)

    def _give_timed(self, piece: TranscriptPiece, end: float | None, *, pause_after: bool) -> None:
        words = piece.text.strip()
        start = piece.start
        if not words or start is None:
            return
        if not (math.isfinite(start) and start >= 0) or (end is not None and not end > start):
            self._give_words(words)  # a span the engine cannot take: the words still count, untimed
            return
        self._give(_TimedWords(words, start, None if end is None else end - start, pause_after))

    def _give_words(self, words: str) -> None:
        words = words.strip()
        if words:
            self._give(words)

    def _give(self, words: str | _TimedWords) -> None:
        if self._open is not None:
            self._enqueue(self._open, words)
            return
        held = sum(len(w if isinstance(w, str) else w.text) for w in self._early_words)
        if held + len(words if isinstance(words, str) else words.text) < MAX_EARLY_TEXT_CHARS:
            self._early_words.append(words)

    def _enqueue(self, seg: _Segment, frame: rtc.AudioFrame | str | _TimedWords | None) -> None:
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
                if isinstance(frame, str):
                    if seg.in_engine and not seg.rejected:
                        await self._core.push_text(frame)
                    continue
                if isinstance(frame, _TimedWords):
                    if seg.in_engine and not seg.rejected:
                        await self._core.push_words(
                            frame.text, frame.start, frame.duration, pause_after=frame.pause_after
                        )
                    continue
                frames = [frame]
                while (
                    self._inbox
                    and self._inbox[0][0] is seg
                    and isinstance(nxt := self._inbox[0][1], rtc.AudioFrame)
                ):
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
            await self._core.push_audio(pcm, frames[0].sample_rate, channels=frames[0].num_channels, tag=seg)
        except AudioFormatError as exc:
            logger.warning("dropping a segment the engine cannot play: %s", exc)
            seg.rejected = True
            return
        seg.in_engine = True

    async def _end_segment(self, seg: _Segment) -> None:
        if not seg.in_engine:
            # Nothing playable arrived; the sender still counts this segment and waits for it.
            self._report_finished(seg, 0.0, interrupted=False)
            return
        await self._core.end_segment()

    def _on_clear_buffer(self) -> None:
        now = time.monotonic()
        if not self._after_clear:
            # Whether the stream being cleared has shown us audio (its answer is given below) decides
            # what its trailer, if one still comes, means. A repeated clear refers to the same stream.
            self._open_at_clear = self._open is not None
        self._after_clear = True
        for seg in list(self._pending):
            self._report_finished(seg, seg.played_s(now), interrupted=True)
        self._drop_all()

    def _drop_all(self, *, closing: bool = False) -> None:
        """Silence now: the engine's pending speech, the source's queue and the scheduled lip frames."""
        if not closing and not self._core.closed:
            self._core.clear_now()
        self._audio_source.clear_queue()
        self._lead_missing = True
        for timer in self._video_timers:
            timer.cancel()
        self._video_timers.clear()
        self._pending.clear()
        self._inbox.clear()
        self._open = None
        self._text_tail = ""
        self._timed_tail = None
        self._early_words = []

    # -- playing -----------------------------------------------------------------------------------------
    async def _publish_video_then_play(self) -> None:
        assert self.audio_publication is not None
        await self.audio_publication.wait_for_subscription()
        video_track = rtc.LocalVideoTrack.create_video_track(VIDEO_TRACK_NAME, self._video_source)
        self.video_publication = await self._room.local_participant.publish_track(
            video_track, video_publish_options(self._gen.width, self._gen.height, self._gen.fps)
        )
        await self._core.start(started_at=self.started_at)
        await self._play()

    async def _play(self) -> None:
        """Hand each released frame to the sources: its audio (silence while idle) at once, its video
        when that audio starts playing."""
        sample_rate = self._gen.sample_rate
        silence: rtc.AudioFrame | None = None
        idle = True  # the source holds only silence
        while True:
            frame = await self._core.next_frame()
            if frame.audio is not None and idle:
                self._speech_ahead_of_silence()
            idle = frame.audio is None
            if self._lead_missing:
                await self._refill_lead()
            starts_at = time.monotonic() + self._audio_source.queued_duration
            if frame.audio is not None:
                audio = audio_frame(frame.audio, sample_rate)
            else:
                samples = round(frame.duration_s * sample_rate)
                if silence is None or silence.samples_per_channel != samples:
                    silence = rtc.AudioFrame.create(sample_rate, 1, samples)
                audio = silence
            await self._audio_source.capture_frame(audio)
            seg = frame.meta.segment_tag
            if frame.audio is not None and isinstance(seg, _Segment) and seg in self._pending:
                if seg.pushed_s == 0.0:
                    seg.timers.append(self._call_at(starts_at, self._report_started))
                seg.pushed_s += frame.duration_s
                seg.ends_at = starts_at + frame.duration_s
            self._finish_ended(frame)
            if frame.video is not None:
                self._show(video_frame(frame.video), starts_at)
            if self._mouth_track:
                self._send_mouth_track(frame, starts_at)

    def _speech_ahead_of_silence(self) -> None:
        """Speech after silence plays at release: the silence queued and the idle pictures waiting to be
        shown go (the core releases the next frames sooner, to fill the lead with speech)."""
        self._audio_source.clear_queue()
        self._lead_missing = False  # the frames after this one refill it
        for timer in self._video_timers:
            timer.cancel()
        self._video_timers.clear()

    async def _refill_lead(self) -> None:
        """Queue silence up to the playout lead: what is released from now on plays that much later,
        as the core expects (at start, and after a clear emptied the queue). Only the play loop
        captures, so the queue never holds more than the lead and a frame."""
        self._lead_missing = False
        samples = int((PLAYOUT_LEAD_S - self._audio_source.queued_duration) * self._gen.sample_rate)
        if samples > 0:
            await self._audio_source.capture_frame(rtc.AudioFrame.create(self._gen.sample_rate, 1, samples))

    def _show(self, frame: rtc.VideoFrame, at: float) -> None:
        def capture() -> None:
            self._video_timers.discard(timer)
            self._video_source.capture_frame(frame)

        timer = self._call_at(at, capture)
        self._video_timers.add(timer)

    def _send_mouth_track(self, frame: LiveFrame, at: float) -> None:
        """The frame's record, sent when its audio starts playing (like its picture), so a client that
        applies records as they come is in step with the sound; a clear cancels those not yet sent."""
        payload = json.dumps(mouth_track_record(frame.meta), separators=(",", ":")).encode()

        async def publish() -> None:
            try:
                await self._room.local_participant.publish_data(
                    payload, reliable=False, topic=MOUTH_TRACK_TOPIC
                )
            except Exception as exc:  # a lossy stream: one record lost is not the session's failure
                logger.debug("mouth-track record not sent: %s", exc)

        def send() -> None:
            self._video_timers.discard(timer)
            if self._room.isconnected():
                self._notify(publish)

        timer = self._call_at(at, send)
        self._video_timers.add(timer)

    def _finish_ended(self, frame: LiveFrame) -> None:
        for event in frame.meta.events:
            if not isinstance(event, SegmentEnded) or event.interrupted:
                continue  # interrupted segments were answered when the clear arrived
            seg = event.tag
            if not isinstance(seg, _Segment) or seg not in self._pending:
                continue
            # Report when the last sample has played, not when it was queued.
            report = functools.partial(self._report_finished, seg, event.played_s, False)
            seg.timers.append(self._call_at(seg.ends_at, report))

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
