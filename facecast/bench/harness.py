"""Drive the engine over a labelled utterance the way a host would, and score what it produced."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from facecast.bench import metrics
from facecast.bench.corpus import Utterance, Word
from facecast.engine.config import DEFAULT_LOOKAHEAD_MS
from facecast.engine.types import VISEMES, FramePair, Renderer

if TYPE_CHECKING:
    from facecast.engine import Engine


@dataclass(frozen=True)
class EngineTrack:
    """Speech frames the engine produced for one utterance, placed on the input timeline."""

    starts: np.ndarray  # seconds, segment-relative input time of each frame's first sample
    ends: np.ndarray  # seconds, one past its last sample
    open: np.ndarray
    closed: np.ndarray
    codes: np.ndarray  # viseme index (order of VISEMES)
    sources: tuple[str, ...]  # meta.mouth_source per frame
    mismatch: np.ndarray  # meta.transcript_mismatch per frame
    step_s: np.ndarray  # wall time per host step (push + pull, or pull alone offline)

    @property
    def centres(self) -> np.ndarray:
        return (self.starts + self.ends) / 2


@dataclass
class _Collector:
    in_rate: int
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    open: list[float] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)
    visemes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    mismatch: list[bool] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)

    def add(self, pair: FramePair, step_s: float) -> None:
        self.steps.append(step_s)
        meta = pair.meta
        # Idle frames (before the look-ahead fills, after the speech) play no input audio.
        if meta.segment_id is None or meta.input_start is None or meta.input_end is None:
            return
        if meta.input_end <= meta.input_start:
            return
        self.starts.append(meta.input_start / self.in_rate)
        self.ends.append(meta.input_end / self.in_rate)
        self.open.append(meta.mouth.open)
        self.closed.append(meta.mouth.closed)
        self.visemes.append(meta.mouth.viseme)
        self.sources.append(meta.mouth_source)
        self.mismatch.append(meta.transcript_mismatch)

    def track(self) -> EngineTrack:
        return EngineTrack(
            starts=np.array(self.starts),
            ends=np.array(self.ends),
            open=np.array(self.open),
            closed=np.array(self.closed),
            codes=metrics.viseme_codes(self.visemes),
            sources=tuple(self.sources),
            mismatch=np.array(self.mismatch, bool),
            step_s=np.array(self.steps),
        )


def make_engine(
    *,
    tracker: str = "phones",
    lookahead_ms: int = DEFAULT_LOOKAHEAD_MS,
    fps: int = 30,
    out_rate: int = 24000,
    renderer: Renderer | None = None,
) -> Engine:
    # Imported here so that the corpus and metrics stay usable without the engine.
    from facecast.engine import Engine, EngineConfig

    cfg = EngineConfig(fps=fps, out_rate=out_rate, lookahead_ms=lookahead_ms, tracker=tracker)  # type: ignore[arg-type]
    return Engine(renderer, cfg)


def run_utterance(
    utt: Utterance,
    *,
    tracker: str = "phones",
    streaming: bool = True,
    text: str | None = None,
    words: Sequence[Word] = (),
    lookahead_ms: int = DEFAULT_LOOKAHEAD_MS,
    fps: int = 30,
    renderer: Renderer | None = None,
    engine: Engine | None = None,
) -> EngineTrack:
    """Feed one utterance to a fresh engine (or `engine`) and collect its speech frames.

    Streaming is a live host: push 1/fps of audio, pull one frame, repeat; then end the segment and
    drain. Offline pushes everything, ends the segment, then pulls while speech is pending. `text` comes
    with the first audio, untimed; `words` (as a TTS with word timestamps reports them) right after it,
    each as `push_words(word, start, end - start)`.
    """
    eng = (
        engine
        if engine is not None
        else make_engine(tracker=tracker, lookahead_ms=lookahead_ms, fps=fps, renderer=renderer)
    )
    audio = utt.audio()
    rate = utt.sample_rate
    col = _Collector(rate)
    clock = time.perf_counter
    if streaming:
        n_chunks = -(-len(audio) * fps // rate)
        for i in range(n_chunks):
            a, b = i * rate // fps, min(len(audio), (i + 1) * rate // fps)
            t0 = clock()
            eng.push_audio(audio[a:b], rate, text=text if i == 0 else None)
            if i == 0:
                _push_words(eng, words)
            pair = eng.next_frame()
            col.add(pair, clock() - t0)
        eng.end_segment()
    else:
        eng.push_audio(audio, rate, text=text)
        _push_words(eng, words)
        eng.end_segment()
    guard = 10 * fps + len(audio) * fps // rate  # a stuck engine must not hang the benchmark
    while eng.pending_speech and guard > 0:
        guard -= 1
        t0 = clock()
        pair = eng.next_frame()
        col.add(pair, clock() - t0)
    if eng.pending_speech:
        raise RuntimeError(f"engine still has speech pending after draining {utt.uid}")
    return col.track()


def _push_words(engine: Engine, words: Sequence[Word]) -> None:
    for word in words:
        engine.push_words(word.text, word.start, word.end - word.start)


@dataclass
class Score:
    """Pooled lip-sync scores over many utterances (frame-weighted)."""

    correct: int = 0
    frames: int = 0
    closure_hits: int = 0
    closures: int = 0
    truth_open: list[np.ndarray] = field(default_factory=list)
    pred_open: list[np.ndarray] = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((len(VISEMES), len(VISEMES)), np.int64))
    sources: dict[str, int] = field(default_factory=dict)
    coverage: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    mismatch_frames: int = 0  # frames whose given words were rejected as not matching the audio

    def add(self, utt: Utterance, track: EngineTrack) -> None:
        truth = utt.truth
        rate = truth.rate_hz
        centres = track.centres
        cm = metrics.confusion_matrix(truth.codes, rate, centres, track.codes)
        self.confusion += cm
        self.correct += int(np.trace(cm))
        self.frames += int(cm.sum())
        self.truth_open.append(metrics.sample_track(truth.open, centres, rate, 0.0))
        self.pred_open.append(track.open)
        hits, total = metrics.closure_hits(truth.closures, track.starts, track.ends, track.closed, track.open)
        self.closure_hits += hits
        self.closures += total
        self.mismatch_frames += int(track.mismatch.sum())
        for s in track.sources:
            self.sources[s] = self.sources.get(s, 0) + 1
        # Fraction of the input the speech frames covered: catches dropped or duplicated audio.
        self.coverage.append(float((track.ends - track.starts).sum() * utt.sample_rate / utt.num_samples))
        # Systematic lag of the engine's openness behind the truth (frames are evenly spaced).
        if len(track.starts) > 12:
            frame_rate = 1.0 / float(np.median(np.diff(track.starts)))
            self.lags_ms.append(metrics.av_offset_ms(self.truth_open[-1], track.open, frame_rate))

    @property
    def accuracy(self) -> float:
        return self.correct / self.frames if self.frames else float("nan")

    @property
    def open_corr(self) -> float:
        if not self.truth_open:
            return float("nan")
        return metrics.pearson(np.concatenate(self.truth_open), np.concatenate(self.pred_open))

    @property
    def closure_recall(self) -> float:
        return self.closure_hits / self.closures if self.closures else float("nan")

    @property
    def lag_ms(self) -> float:
        """Median over utterances of the lag that best aligns engine openness with the truth
        (positive: the mouth moves late)."""
        return float(np.median(self.lags_ms)) if self.lags_ms else float("nan")
