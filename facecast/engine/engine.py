"""The engine: push speech, pull lock-step (video, audio) frame pairs.

Pure and synchronous: no threads, no clocks, no I/O beyond loading the recogniser's model and the mouth
classifier's parameters once. Audio is the master clock: frame i always starts at output sample
`config.frame_start_sample(i)`, whether it carries speech or is a video-only idle frame, so audio and
video cannot drift apart. Hosts pace the pulls against wall time; the engine never looks at it.

Not thread-safe: one host task owns an engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from facecast.engine.animator import FaceAnimator
from facecast.engine.config import ANALYSIS_RATE, EngineConfig
from facecast.engine.intake import (
    AudioFormatError,
    PcmDecoder,
    StreamResampler,
    to_int16,
    validate_channels,
    validate_rate,
)
from facecast.engine.tracker import PhoneRecognizer, SegmentTrack
from facecast.engine.types import (
    FrameMeta,
    FramePair,
    MouthParams,
    PhoneTiming,
    Renderer,
    SegmentEnded,
    SegmentEvent,
    SegmentStarted,
    SegmentTag,
)
from facecast.engine.visemes import mouth_from_row

ANALYSIS_SLACK = 32  # analysis samples (2 ms): more than any resampler's hold-back at 8..48 kHz in


class _SampleQueue:
    """FIFO of int16 samples; played audio is released as it is taken."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples already taken from the first chunk
        self.available = 0

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.available += len(samples)

    def take(self, n: int) -> np.ndarray:
        """Exactly n samples, zero-padded past the end of what was queued."""
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._chunks:
            chunk = self._chunks[0]
            k = min(n - filled, len(chunk) - self._offset)
            out[filled : filled + k] = chunk[self._offset : self._offset + k]
            filled += k
            self._offset += k
            if self._offset == len(chunk):
                self._chunks.popleft()
                self._offset = 0
        self.available -= filled
        return out


class _Segment:
    """One utterance: its audio at the output rate, its mouth track, and how much has played."""

    def __init__(self, segment_id: int, out_rate: int, recognizer: PhoneRecognizer | None) -> None:
        self.id = segment_id
        self.tag: SegmentTag | None = None
        self.out_rate = out_rate
        self.in_rate: int | None = None
        self.channels: int | None = None
        self.pcm = PcmDecoder()
        self.to_out: StreamResampler | None = None
        self.to_analysis: StreamResampler | None = None
        self.audio = _SampleQueue()
        self.track = SegmentTrack(recognizer)
        self.text: list[str] = []
        self.untimed_text: list[str] = []  # text given without times (push_audio text=, push_text)
        self.uses_words = recognizer is not None
        self.in_total = 0
        self.out_total = 0
        self.played = 0  # output samples handed out, including end-of-segment padding
        self.ended = False
        self.started = False

    def push(self, pcm: bytes | bytearray | memoryview | np.ndarray, rate: int, channels: int) -> None:
        if self.in_rate is None:
            self.in_rate, self.channels = rate, channels
            self.to_out = StreamResampler(rate, self.out_rate)
            self.to_analysis = StreamResampler(rate, ANALYSIS_RATE)
        elif rate != self.in_rate or channels != self.channels:
            raise AudioFormatError(
                f"audio format changed within a segment ({self.in_rate} Hz × {self.channels} ch → "
                f"{rate} Hz × {channels} ch); call end_segment() before switching formats"
            )
        x = self.pcm.decode(pcm, channels)
        if len(x) == 0:
            return
        assert self.to_out is not None and self.to_analysis is not None
        self.in_total += len(x)
        self._append(self.to_out.process(x), self.to_analysis.process(x))

    def add_text(self, text: str) -> None:
        self.text.append(text)
        self.untimed_text.append(text)
        if self.uses_words:
            self.track.set_text(" ".join(self.untimed_text), text)

    def end(self) -> None:
        if self.to_out is not None and self.to_analysis is not None:
            self._append(self.to_out.flush(), self.to_analysis.flush())
        self.pcm.reset()  # a dangling half sample cannot be played
        self.track.end()
        self.ended = True

    def _append(self, out: np.ndarray, analysis: np.ndarray) -> None:
        self.audio.append(to_int16(out))
        self.out_total += len(out)
        self.track.feed(analysis)

    @property
    def remaining(self) -> int:
        return max(0, self.out_total - self.played)

    @property
    def finished(self) -> bool:
        return self.ended and self.played >= self.out_total

    def played_s(self) -> float:
        return min(self.played, self.out_total) / self.out_rate

    def input_sample(self, out_sample: int) -> int:
        assert self.in_rate is not None
        return min(self.in_total, out_sample * self.in_rate // self.out_rate)


class Engine:
    """Streamed speech in, lip-synced frame pairs out. See the module docstring for the clock."""

    def __init__(self, renderer: Renderer | None, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.renderer = renderer
        self._recognizer = PhoneRecognizer() if self.config.uses_phones else None
        self._animator = FaceAnimator(self.config.fps, self.config.seed)
        self._lookahead_out = self.config.lookahead_ms * self.config.out_rate // 1000
        self._segments: deque[_Segment] = deque()
        self._open: _Segment | None = None
        self._next_id = 0
        self._index = 0
        self._listening = False
        self._events: list[SegmentEvent] = []

    # -- input ----------------------------------------------------------------------------------------
    def push_audio(
        self,
        pcm: bytes | bytearray | memoryview | np.ndarray,
        sample_rate: int,
        *,
        channels: int = 1,
        text: str | None = None,
        tag: SegmentTag | None = None,
    ) -> int:
        """Queue speech for the current segment (opened on demand, named `tag` as by open_segment);
        returns that segment's id, the one its SegmentStarted / SegmentEnded events carry.

        `pcm` is int16 little-endian bytes (interleaved when stereo) or an int16 / float32 array of shape
        (n,) or (n, channels). `text`, when given, is (part of) the transcript of this segment and
        enables forced alignment once the segment ends."""
        rate = validate_rate(sample_rate)
        ch = validate_channels(pcm.shape[1] if isinstance(pcm, np.ndarray) and pcm.ndim == 2 else channels)
        opened = self._open is None
        if tag is not None:
            self.open_segment(tag)
        segment = self._open_segment()
        try:
            segment.push(pcm, rate, ch)
        except AudioFormatError:
            if opened:  # a rejected first push must not leave an empty segment pending
                self._segments.remove(segment)
                self._open = None
            raise
        if text:
            segment.add_text(text)
        return segment.id

    def open_segment(self, tag: SegmentTag | None = None) -> int:
        """Open the current segment (or keep the open one) without adding anything, and return its id.

        `tag` names the utterance: the segment's SegmentStarted / SegmentEnded events and its frames
        (`FrameMeta.segment_tag`) carry it, so a host needs no map of its own. Naming it before any audio
        makes it playable means even its first frame carries the name. An open segment keeps its tag;
        giving it another one is a host error (it forgot end_segment())."""
        segment = self._open_segment()
        if tag is not None:
            if segment.tag is not None and segment.tag != tag:
                raise ValueError(
                    f"segment {segment.id} is open as {segment.tag!r}; call end_segment() before "
                    f"opening {tag!r}"
                )
            segment.tag = tag
        return segment.id

    def push_phones(self, timings: Sequence[PhoneTiming]) -> int:
        """Phones known to be spoken in the current segment, at segment-relative input seconds (from
        a TTS engine). Frames whose analysis window they cover use them instead of recognition."""
        checked = []
        for phone, start, end in timings:
            if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end < start:
                raise ValueError(f"phone timing {phone!r} [{start}, {end}) is not a valid interval")
            checked.append(PhoneTiming(str(phone), float(start), float(end)))
        segment = self._open_segment()
        segment.track.add_timings(checked)
        return segment.id

    def push_text(self, text: str) -> int | None:
        """Add transcript text to the current segment without audio; returns the segment's id (None,
        and no segment opened, when `text` is empty)."""
        if not text:
            return None
        segment = self._open_segment()
        segment.add_text(text)
        return segment.id

    def push_words(
        self, text: str, start: float = 0.0, duration: float | None = None, *, pause_after: bool = False
    ) -> int | None:
        """These words belong to the current segment's audio from `start` to `start + duration`
        segment-relative input seconds (`duration` None: until the segment ends): the first word starts
        at `start`, the last ends at `start + duration`, or, with `pause_after`, somewhere before it
        (a source that knows only when each word starts gives spans that run to the next word's start,
        over the pause between them). They are aligned to the audio as it arrives, inside the
        look-ahead; words that do not fit it are rejected and their frames fall back to recognition
        (`FrameMeta.transcript_mismatch`). Returns the segment's id (None, and no segment opened, when
        `text` has no words)."""
        if not text or not text.strip():
            return None
        if not np.isfinite(start) or start < 0 or (duration is not None and not duration > 0):
            raise ValueError(f"words span start={start} duration={duration} is not a valid interval")
        segment = self._open_segment()
        if self._recognizer is not None:
            end = None if duration is None else float(start) + float(duration)
            segment.track.add_words(text, float(start), end, pause_after=pause_after)
        segment.text.append(text)
        return segment.id

    def end_segment(self) -> None:
        """The current utterance is complete: its tail plays out, then SegmentEnded is reported."""
        segment = self._open_segment()
        segment.end()
        if segment.text and self._recognizer is not None and not segment.track.timed:
            segment.track.align(" ".join(segment.text))
        self._open = None

    def clear(self) -> None:
        """Interrupt: drop all pending speech; the mouth is back at rest within two frames."""
        for segment in self._segments:
            segment.track.abort()
            played = segment.played_s() if segment.started else 0.0
            self._events.append(SegmentEnded(segment.id, played, interrupted=True, tag=segment.tag))
        self._segments.clear()
        self._open = None
        self._animator.interrupt()

    def set_listening(self, listening: bool) -> None:
        """Show the attentive listening pose while idle (e.g. while the user speaks)."""
        self._listening = bool(listening)

    @property
    def pending_speech(self) -> bool:
        """True while any pushed or still-open segment has not been fully played."""
        return bool(self._segments)

    @property
    def speech_ready(self) -> bool:
        """True when the next frame will carry speech: its segment has the audio (and look-ahead) it
        needs."""
        segment = self._segments[0] if self._segments else None
        return segment is not None and self._ready(segment, self.config.frame_samples(self._index))

    # -- output ---------------------------------------------------------------------------------------
    def next_frame(self, *, render: bool = True) -> FramePair:
        """Advance the clock by one frame. `render=False` skips drawing (video is None) but still
        advances audio and face state: a real-time host that fell behind drops frames this way."""
        cfg = self.config
        index = self._index
        n = cfg.frame_samples(index)
        start = cfg.frame_start_sample(index)
        events = self._events
        self._events = []
        self._drop_finished(events)

        segment = self._segments[0] if self._segments else None
        audio: np.ndarray | None = None
        mouth: MouthParams | None = None
        source = "rest"
        mismatch = False
        segment_id = input_start = input_end = None
        tag: SegmentTag | None = None
        playback = 0.0
        if segment is not None and self._ready(segment, n):
            if not segment.started:
                segment.started = True
                events.append(SegmentStarted(segment.id, segment.tag))
            pos = segment.played
            audio = segment.audio.take(n)
            segment.played += n
            tracked = segment.track.mouth(
                pos / cfg.out_rate, (pos + n) / cfg.out_rate, self._head(segment, pos + n)
            )
            mouth = mouth_from_row(tracked.row, tracked.viseme)
            source = tracked.source
            mismatch = tracked.transcript_mismatch
            segment_id, tag = segment.id, segment.tag
            input_start, input_end = segment.input_sample(pos), segment.input_sample(pos + n)
            playback = segment.played_s()
            self._drop_finished(events)
        elif segment is not None and segment.started:
            playback = segment.played_s()  # underrun mid-segment: video keeps going, audio waits

        state = self._animator.step(mouth, listening=self._listening)
        video = self.renderer.render(state) if render and self.renderer is not None else None
        meta = FrameMeta(
            index=index,
            t=start / cfg.out_rate,
            out_sample_start=start,
            mouth=state.mouth,
            state=state,
            segment_id=segment_id,
            segment_tag=tag,
            input_start=input_start,
            input_end=input_end,
            playback_position=playback,
            mouth_source=source if audio is not None else "rest",
            transcript_mismatch=mismatch,
            events=tuple(events),
        )
        self._index += 1
        return FramePair(video=video, audio=audio, meta=meta)

    def _open_segment(self) -> _Segment:
        if self._open is None:
            self._open = _Segment(self._next_id, self.config.out_rate, self._recognizer)
            self._next_id += 1
            self._segments.append(self._open)
        return self._open

    def _ready(self, segment: _Segment, n: int) -> bool:
        if segment.ended:
            return segment.remaining > 0
        need_out = segment.played + n + self._lookahead_out
        need_analysis = self._analysis_head(need_out)
        return segment.out_total >= need_out and segment.track.samples >= need_analysis

    def _head(self, segment: _Segment, frame_end: int) -> int:
        """Analysis samples the tracker may use for a frame ending at output sample `frame_end`."""
        head_out = frame_end + self._lookahead_out
        if segment.ended and head_out >= segment.out_total:
            return segment.track.samples
        return self._analysis_head(head_out)

    def _analysis_head(self, out_sample: int) -> int:
        # The analysis resampler holds back a few samples until its filter window is complete; asking
        # for that much less keeps a just-in-time stream from waiting an extra frame.
        return max(0, out_sample * ANALYSIS_RATE // self.config.out_rate - ANALYSIS_SLACK)

    def _drop_finished(self, events: list[SegmentEvent]) -> None:
        while self._segments and self._segments[0].finished:
            done = self._segments.popleft()
            done.track.abort()
            events.append(SegmentEnded(done.id, done.played_s(), interrupted=False, tag=done.tag))
