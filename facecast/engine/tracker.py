"""Mouth tracking: speech at 16 kHz → a 100 Hz track of mouth classes → mouth parameters per video frame.

Three sources, best first:
- timings: phones reported by the speech's source (a TTS engine knows what it said, and when);
- alignment: PocketSphinx forced alignment of the segment against its known text (run once the
  segment's audio is complete; frames still to be played use it);
- phones: streaming PocketSphinx phone recognition, queried `lookahead` behind the audio head, its
  phones and the spectrum around each frame read by the mouth classifier (`mouth_model`);
- energy: loudness and spectral balance, language-agnostic; used for non-English speech and where
  the recogniser hears silence in what is clearly speech.

Decoding is lazy and happens at positions derived from the video frame grid, so the result does not
depend on how the host chunked the audio.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facecast.engine.config import ANALYSIS_RATE
from facecast.engine.mouth_model import (
    LOG_PROB_FLOOR,
    MEL_CONTEXT,
    N_MEL,
    PHONE_CONTEXT,
    MouthModel,
    RunningMean,
    context_rows,
    fill_undecoded,
    mel_filterbank,
    model_inputs,
)
from facecast.engine.types import VISEMES, PhoneTiming
from facecast.engine.visemes import (
    CLOSED_COLUMN,
    CLOSED_INDEX,
    COARTICULATION_RADIUS,
    REST_INDEX,
    TARGETS,
    TRACK_HZ,
    coarticulate,
    gaussian_kernel,
    phone_to_viseme,
    viseme_from_params,
)
from facecast.engine.words import UNDECODED, Lexicon, WordSpan, chain_of, phone_id

HOP = ANALYSIS_RATE // TRACK_HZ  # analysis samples per track frame (160)
UNKNOWN = -1

# The recogniser's utterance is restarted inside long segments so partial backtraces stay cheap:
# at the first silent frame after SOFT_UTTERANCE_S, unconditionally at HARD_UTTERANCE_S.
SOFT_UTTERANCE_S = 8.0
HARD_UTTERANCE_S = 20.0
# Live cepstral mean normalisation starts from this speech prior instead of the model's default
# (40,3,-1,0,...), which misrecognises the first second of every utterance. It is the mean over
# 24 utterances (flite slt/awb and espeak-ng en/en-us, sentences disjoint from the benchmark corpus);
# with it, streaming phone accuracy on the flite benchmark voices rose from 0.715 to 0.751 at 10 ms.
CMN_PRIOR = "59.0,9.0,-4.1,34.5,-11.7,-1.3,2.4,-21.3,-2.2,-14.0,11.3,-4.6,-5.1"
ALIGN_MAX_S = 40.0  # longer segments are not force-aligned (cost and failure rate grow)

# Energy tracker: level = loudness relative to the loudest recent frame, gated below SPEECH_GATE_DB.
SPEECH_GATE_DB = -52.0
LEVEL_RANGE_DB = 26.0
PEAK_DECAY_DB_PER_FRAME = 0.02
ENERGY_WINDOW = 400  # 25 ms analysis window, as the recogniser's
# Track frames (1 s) of an ended segment's energy features computed at once: larger blocks gain little
# and wake OpenBLAS's threads for the mel matmul, which cost more CPU than they save.
FEATURE_BLOCK = 100
# Auto mode: where phones say silence but the energy level says this much, the recogniser missed speech.
RECOGNISER_MISS_LEVEL = 0.45


def model_dir() -> Path:
    """The en-us model inside the pocketsphinx wheel (nothing is downloaded)."""
    from pocketsphinx import get_model_path

    return Path(get_model_path()) / "en-us"


def _phone_config(with_dict: bool) -> Any:
    from pocketsphinx import Config

    d = model_dir()
    config = Config(
        hmm=str(d / "en-us"),
        allphone=str(d / "en-us-phone.lm.bin"),
        lw=2.0,
        # Narrower than the usual 1e-20: 24 % less CPU for -0.003 phone accuracy on the flite voices.
        beam=1e-10,
        pbeam=1e-10,
        loglevel="FATAL",
    )
    # The dictionary costs ~18 MB per decoder: only the shared aligner loads it.
    config["dict"] = str(d / "cmudict-en-us.dict") if with_dict else None
    return config


_CODE_CACHE: dict[str, int] = {}


def phone_code(phone: str) -> int:
    """Viseme index of a recogniser phone label (cached: called for every phone of every query)."""
    c = _CODE_CACHE.get(phone)
    if c is None:
        c = VISEMES.index(phone_to_viseme(phone))
        _CODE_CACHE[phone] = c
    return c


class PhoneRecognizer:
    """One streaming allphone decoder per engine (~7 MB).

    Each segment starts from a clean feature state and the cepstral mean adapted over the engine's
    previous segments (a session usually keeps one voice), so the result depends only on the audio
    pushed so far, never on timing or chunking."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(_phone_config(with_dict=False))
        self._in_utt = False
        self._cmn = CMN_PRIOR

    def start(self, reset_features: bool) -> None:
        if self._in_utt:
            self._end()
        if reset_features:
            self._decoder.reinit_feat()
            self._decoder.set_cmn(self._cmn)
        self._decoder.start_utt()
        self._in_utt = True

    def _end(self) -> None:
        self._decoder.end_utt()
        self._in_utt = False
        self._cmn = self._decoder.get_cmn(True)

    def process(self, pcm16: np.ndarray) -> None:
        if len(pcm16):
            self._decoder.process_raw(pcm16.tobytes(), False, False)

    def phones(self) -> list[tuple[int, int, int, int]]:
        """(viseme index, start frame, end frame inclusive, phone id) of the current (partial) utterance."""
        # seg() is None until the decoder has a hypothesis (the first frames of an utterance).
        segments = self._decoder.seg() or ()
        return [(phone_code(s.word), s.start_frame, s.end_frame, phone_id(s.word)) for s in segments]

    def finish(self) -> list[tuple[int, int, int, int]]:
        if not self._in_utt:
            return []
        self._end()
        return self.phones()

    def abort(self) -> None:
        if self._in_utt:
            self._end()


_WORD_RE = re.compile(r"[a-z0-9']+")


class SharedAligner:
    """Forced alignment: one decoder with the pronunciation dictionary per process, shared by engines."""

    _instance: SharedAligner | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(_phone_config(with_dict=True))
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> SharedAligner:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = SharedAligner()
            return cls._instance

    def pronunciation(self, word: str) -> str | None:
        """The dictionary's phones of `word` ("HH AH L OW"), None when it lacks the word."""
        with self._lock:
            return self._decoder.lookup_word(word)

    def words(self, text: str) -> list[str] | None:
        """Dictionary words of `text`, or None when a word is unknown (the alignment would be wrong)."""
        out = []
        for raw in _WORD_RE.findall(text.lower()):
            word = raw.strip("'")
            if not word:
                continue
            if self._decoder.lookup_word(word) is None:
                stem = word[:-2] if word.endswith("'s") else word.replace("'", "")
                if not stem or self._decoder.lookup_word(stem) is None:
                    return None
                word = stem
            out.append(word)
        return out or None

    def align(self, pcm16: np.ndarray, text: str) -> np.ndarray | None:
        """Viseme index per track frame for the whole segment, or None where alignment fails."""
        n_frames = len(pcm16) // HOP
        if n_frames < 5:
            return None
        with self._lock:
            words = self.words(text)
            if words is None:
                return None
            d = self._decoder
            try:
                # Two passes: word alignment against the text, then state alignment for phone timings.
                d.reinit_feat()
                d.set_align_text(" ".join(words))
                d.start_utt()
                d.process_raw(pcm16.tobytes(), False, True)
                d.end_utt()
                if d.hyp() is None:
                    return None
                d.set_alignment()
                d.start_utt()
                d.process_raw(pcm16.tobytes(), False, True)
                d.end_utt()
                alignment = d.get_alignment()
            except RuntimeError:
                return None
            if alignment is None:
                return None
            codes = np.full(n_frames, REST_INDEX, dtype=np.int8)
            for word in alignment:
                for phone in word:
                    s = max(0, phone.start)
                    codes[s : min(n_frames, s + phone.duration)] = phone_code(phone.name)
            return codes


_HANN = np.hanning(ENERGY_WINDOW).astype(np.float32)
_FREQS = np.fft.rfftfreq(ENERGY_WINDOW, 1.0 / ANALYSIS_RATE).astype(np.float32)
_MEL_BANK_T = np.ascontiguousarray(mel_filterbank(ENERGY_WINDOW).T)


class EnergyAnalyzer:
    """Per track frame, streaming: a 0..1 speech level, the spectral centroid (Hz), the log-mel spectrum."""

    def __init__(self) -> None:
        self._peak_db = -20.0

    def frames(self, audio: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features of frames first..last-1 of `audio` (16 kHz float); frames past its end see silence."""
        n = last - first
        if n <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, N_MEL), np.float32)
        lo = first * HOP
        span = audio[lo : (last - 1) * HOP + ENERGY_WINDOW]
        span = np.concatenate([span, np.zeros((last - 1) * HOP + ENERGY_WINDOW - lo - len(span), np.float32)])
        idx = (np.arange(n) * HOP)[:, None] + np.arange(ENERGY_WINDOW)[None, :]
        win = span[idx]
        rms = np.sqrt(np.mean(win * win, axis=1) + 1e-12)
        db = 20.0 * np.log10(rms)
        spec = np.abs(np.fft.rfft(win * _HANN, axis=1))
        centroid = (spec * _FREQS).sum(axis=1) / (spec.sum(axis=1) + 1e-9)
        log_mel = np.log((spec * spec) @ _MEL_BANK_T + 1e-8)
        level = np.empty(n, np.float32)
        for i in range(n):  # the running peak is sequential by nature
            self._peak_db = max(self._peak_db - PEAK_DECAY_DB_PER_FRAME, float(db[i]))
            if db[i] < SPEECH_GATE_DB:
                level[i] = 0.0
            else:
                rel = (db[i] - (self._peak_db - LEVEL_RANGE_DB)) / LEVEL_RANGE_DB
                level[i] = min(1.0, max(0.0, rel))
        return level, centroid.astype(np.float32), log_mel.astype(np.float32)


_ENERGY_KERNEL = gaussian_kernel(2.5)


def energy_params(level: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Mouth parameters from loudness and spectral balance (no phones, so no m/b/p closures)."""
    n = len(level)
    out = np.zeros((n, TARGETS.shape[1]), np.float32)
    if n == 0:
        return out
    bright = np.clip((centroid - 2500.0) / 2500.0, 0.0, 1.0)  # sibilants, EE: spread lips, teeth
    dark = np.clip((1200.0 - centroid) / 700.0, 0.0, 1.0)  # back rounded vowels
    out[:, 0] = level * (0.85 - 0.55 * bright)
    out[:, 1] = level * (0.15 + 0.3 * bright)
    out[:, 2] = level * 0.6 * dark
    out[:, 4] = np.clip(level * (0.4 + 0.5 * bright), 0, 1)
    r = len(_ENERGY_KERNEL) // 2
    pad = np.zeros((r, out.shape[1]), np.float32)
    padded = np.concatenate([pad, out, pad])
    for c in range(out.shape[1]):
        out[:, c] = np.convolve(padded[:, c], _ENERGY_KERNEL, mode="valid")
    return out


@dataclass(frozen=True, slots=True)
class TrackedMouth:
    row: np.ndarray  # mouth parameters in visemes.PARAM_NAMES order
    viseme: str
    source: str  # timings | alignment | words | phones | energy
    transcript_mismatch: bool = False  # words were given for this frame but did not fit the audio


class SegmentTrack:
    """The mouth track of one segment: 16 kHz audio in, mouth parameters per video frame out."""

    def __init__(self, recognizer: PhoneRecognizer | None) -> None:
        self._recognizer = recognizer
        self._pcm = np.zeros(1 << 14, np.int16)  # the whole segment at 16 kHz (alignment needs it)
        self._n = 0
        self._decoded = 0  # samples given to the recogniser
        self._ended = False
        self._finished = False
        self._codes = np.full(1024, UNKNOWN, np.int8)
        self._labels = np.full(1024, UNDECODED, np.int16)  # recognised phone id per track frame
        self._spans: list[WordSpan] = []  # words the host said belong to stretches of this audio
        self._dirty = 0  # first track frame whose label changed since the spans last looked
        self._text_span: WordSpan | None = None  # the span of text given without times
        # add_words / set_text calls not yet looked up: (kind, text, start or added, end, pause after)
        self._word_requests: list[tuple[str, str, float | str, float | None, bool]] = []
        self._level = np.zeros(1024, np.float32)
        self._centroid = np.zeros(1024, np.float32)
        self._n_feat = 0  # track frames with energy features (what the mouth may read)
        self._n_computed = 0  # track frames whose features are computed (ahead of _n_feat once ended)
        self._utt_base = 0  # track frame where the recogniser's current utterance started
        self._utt_started = False
        self._recogniser_failed = False
        self._align: np.ndarray | None = None
        self._timed = np.full(256, UNKNOWN, np.int8)  # classes from reported phone timings
        self._timed_until = 0  # track frames covered by reported timings
        self._energy = EnergyAnalyzer()
        # The classifier reads the recogniser's phones: without a recogniser there is nothing to correct.
        self._model = MouthModel.get() if recognizer is not None else None
        self._mel = np.zeros((1024 if self._model is not None else 0, N_MEL), np.float32)
        self._mel_mean = RunningMean(self._model.cmn_prior) if self._model is not None else None
        # The classifier's class log-probabilities per track frame, read by the word spans' passes;
        # frames from _log_probs_final on were computed before their whole context was known.
        self._log_probs = np.zeros((0, len(VISEMES)), np.float32)
        self._log_probs_final = 0
        self._classified_labels = np.zeros(0, np.int16)  # the phone each frame had when classified

    # -- intake -------------------------------------------------------------------------------------
    def feed(self, audio16: np.ndarray) -> None:
        pcm = np.clip(np.round(audio16 * 32767.0), -32768, 32767).astype(np.int16)
        need = self._n + len(pcm)
        if need > len(self._pcm):
            grown = np.zeros(max(need, 2 * len(self._pcm)), np.int16)
            grown[: self._n] = self._pcm[: self._n]
            self._pcm = grown
        self._pcm[self._n : need] = pcm
        self._n = need

    def end(self) -> None:
        self._ended = True

    @property
    def samples(self) -> int:
        return self._n

    @property
    def timed(self) -> bool:
        """True once reported phone timings cover the whole segment (alignment would add nothing)."""
        return self._timed_until > 0 and self._timed_until >= self._n // HOP

    def align(self, text: str) -> bool:
        """Force-align the complete segment against `text`; True when it worked (and the words fit
        the audio: a transcript of other speech is rejected, never forced onto it)."""
        if self._n > ALIGN_MAX_S * ANALYSIS_RATE or not text.strip():
            return False
        if self._recognizer is not None and not self.judge_transcript():
            return False
        codes = SharedAligner.get().align(self._pcm[: self._n], text)
        if codes is None:
            return False
        self._align = codes
        return True

    def add_timings(self, timings: Sequence[PhoneTiming]) -> None:
        """Phones reported by the speech's source (a TTS engine): used wherever they cover a frame."""
        for phone, start, end in timings:
            f0 = max(0, round(start * TRACK_HZ))
            f1 = round(end * TRACK_HZ)
            if f1 <= f0:
                continue
            if f1 > len(self._timed):
                grown = np.full(max(f1, 2 * len(self._timed)), UNKNOWN, np.int8)
                grown[: len(self._timed)] = self._timed
                self._timed = grown
            self._timed[f0:f1] = phone_code(phone)
            self._timed_until = max(self._timed_until, f1)

    def add_words(self, text: str, start: float, end: float | None, *, pause_after: bool = False) -> None:
        """Words spoken from `start` to `end` seconds of this segment (None: until it ends; with
        `pause_after`, the last word may end before `end`). Their pronunciations are looked up when a
        frame first needs them: a segment its source timed never loads the dictionary."""
        self._word_requests.append(("words", text, start, end, pause_after))

    def set_text(self, text: str, added: str) -> None:
        """The transcript of the whole segment so far (text without times): one span over all of it,
        extended when more text (`added`) arrives."""
        self._word_requests.append(("text", text, added, None, True))

    def _take_word_requests(self) -> None:
        requests, self._word_requests = self._word_requests, []
        for kind, text, a, b, pause_after in requests:
            if kind == "words":
                assert isinstance(a, float)
                self._add_words(text, a, b, anchored=True, pause_after=pause_after or b is None)
            else:
                assert isinstance(a, str)
                self._set_text(text, a)

    def _add_words(
        self, text: str, start: float, end: float | None, *, anchored: bool, pause_after: bool
    ) -> None:
        chain = chain_of(text, Lexicon.get())
        # The chain is a pause, then each word's phones and a pause after it. Where the source said
        # when its words start (and end), the first phone starts there (and the last ends there): the
        # classifier hears a stop's closure as silence, and a free pause would move the word's edge.
        chain = chain[int(anchored) : len(chain) - int(anchored and not pause_after)]
        if len(chain) < 2:
            return
        f0 = max(0, int(np.floor(start * TRACK_HZ)))
        f1 = None if end is None else max(f0 + 1, int(np.ceil(end * TRACK_HZ)))
        self._spans.append(WordSpan(f0, f1, chain))
        self._dirty = min(self._dirty, f0)

    def _set_text(self, text: str, added: str) -> None:
        # The last second is aligned again with the longer text; earlier frames keep their alignment
        # (rebuilding it all would cost a pass per word).
        span = self._text_span
        if span is not None and not span.rejected:
            more = chain_of(added, Lexicon.get())[1:]
            if len(more):
                known = min(len(self._labels), self._decoded // HOP)
                span.extend(more, max(span.start, known - TRACK_HZ))
            return
        if span is not None:
            self._spans.remove(span)
            self._text_span = None
        before = len(self._spans)
        self._add_words(text, 0.0, None, anchored=False, pause_after=True)
        if len(self._spans) > before:
            self._text_span = self._spans[-1]

    @property
    def transcript_rejected(self) -> bool:
        """True when a span's words did not fit the audio (its frames fall back to recognition)."""
        return any(span.rejected for span in self._spans)

    def judge_transcript(self) -> bool:
        """Decode the complete segment and score its word spans; True when none was rejected."""
        self._advance(self._n)
        self._update_spans()
        return not self.transcript_rejected

    def _update_spans(self) -> None:
        self._take_word_requests()
        if not self._spans:
            return
        known = min(len(self._labels), self._decoded // HOP)
        redo = max(0, min(self._dirty - PHONE_CONTEXT, self._log_probs_final))
        self._classify(redo, known)
        for span in self._spans:
            if not span.rejected:
                span.update(self._labels, self._log_probs, known, redo)
        self._dirty = known

    def _classify(self, lo: int, hi: int) -> None:
        """Class log-probabilities of track frames [lo, hi) (the recogniser has decoded them). A frame
        computed with its whole context is computed again only where the recogniser's phones around it
        changed since."""
        if hi > len(self._log_probs):
            size = max(hi, 2 * len(self._log_probs))
            grown = np.zeros((size, len(VISEMES)), np.float32)
            grown[: len(self._log_probs)] = self._log_probs
            self._log_probs = grown
            seen = np.full(size, UNDECODED, np.int16)
            seen[: len(self._classified_labels)] = self._classified_labels
            self._classified_labels = seen
        if hi <= lo:
            return
        if self._model is None or self._n_feat == 0:
            # No classifier: the recogniser's own classes, as certain.
            codes = _window_codes(self._codes, hi, lo, hi, complete=False)
            self._log_probs[lo:hi] = np.where(np.eye(len(VISEMES), dtype=bool)[codes], 0.0, LOG_PROB_FLOOR)
        else:
            labels = fill_undecoded(
                context_rows(self._labels, hi, lo - PHONE_CONTEXT, hi + PHONE_CONTEXT), UNDECODED
            )
            centre = labels[PHONE_CONTEXT : PHONE_CONTEXT + hi - lo]
            changed = centre != self._classified_labels[lo:hi]
            changed[max(0, self._log_probs_final - lo) :] = True
            near = np.convolve(changed, np.ones(2 * PHONE_CONTEXT + 1, bool), mode="same") > 0
            first = int(np.argmax(near)) if near.any() else hi - lo
            mel = context_rows(self._mel, self._n_feat, lo + first - MEL_CONTEXT, hi + MEL_CONTEXT)
            self._log_probs[lo + first : hi] = self._model.log_probs(model_inputs(mel, labels[first:]))
            self._classified_labels[lo:hi] = centre
        complete = self._complete and hi >= self._n // HOP
        self._log_probs_final = (
            hi if complete else max(0, min(hi - PHONE_CONTEXT, self._n_feat - MEL_CONTEXT))
        )

    def _words_window(self, w0: int, w1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes from accepted word spans for frames [w0, w1), the frames they decide, and the
        frames that rejected spans cover."""
        self._update_spans()
        codes = np.full(w1 - w0, REST_INDEX, np.int8)
        mask = np.zeros(w1 - w0, bool)
        rejected = np.zeros(w1 - w0, bool)
        seg_frames = -(-self._n // HOP) if self._ended else None
        for span in self._spans:
            end = span.end if span.end is not None else (seg_frames if seg_frames is not None else w1)
            lo, hi = max(w0, span.start), min(w1, end)
            if hi <= lo:
                continue
            if span.rejected:
                rejected[lo - w0 : hi - w0] = True
                continue
            decoded = min(len(self._labels), self._decoded // HOP)
            final = self._complete or (span.end is not None and decoded >= span.end)
            span_codes, span_mask = span.codes(w0, w1, final)
            span_mask[: lo - w0] = False
            span_mask[hi - w0 :] = False
            codes[span_mask] = span_codes[span_mask]
            mask |= span_mask
        return codes, mask, rejected

    def abort(self) -> None:
        if self._recognizer is not None and self._utt_started and not self._finished:
            self._recognizer.abort()
        self._finished = True

    # -- decoding -----------------------------------------------------------------------------------
    @property
    def _complete(self) -> bool:
        return self._ended and self._decoded >= self._n

    def _advance(self, head: int) -> None:
        head = min(head, self._n)
        if head > self._decoded:
            if self._align is None and self._timed_until * HOP < head:  # covered frames need no recogniser
                self._decode_phones(self._decoded, head)
            self._decoded = head
        feat_end = -(-self._n // HOP) if self._complete else max(0, (head - ENERGY_WINDOW) // HOP + 1)
        if feat_end > self._n_feat:
            if feat_end > self._n_computed:
                # An ended segment (a file) has its features computed ahead in blocks of FEATURE_BLOCK
                # frames instead of a few per video frame: the same numbers (each row sees the same
                # window, the running peak and mean take the rows in the same order), read only up to
                # feat_end as before.
                ahead = min(-(-self._n // HOP), self._n_computed + FEATURE_BLOCK) if self._ended else 0
                self._compute_features(max(feat_end, ahead))
            self._n_feat = feat_end
        if self._complete and not self._finished:
            self._finished = True
            if self._recognizer is not None and self._utt_started and not self._recogniser_failed:
                self._write_phones(self._recognizer.finish())

    def _compute_features(self, end: int) -> None:
        """Energy features (and normalised log-mel rows) of track frames [_n_computed, end)."""
        first = self._n_computed
        # Only the samples these frames' windows reach: the segment may hold minutes more.
        stop = min(self._n, (end - 1) * HOP + ENERGY_WINDOW)
        audio = self._pcm[first * HOP : stop].astype(np.float32) / 32768.0
        level, centroid, log_mel = self._energy.frames(audio, 0, end - first)
        self._ensure(end)
        self._level[first:end] = level
        self._centroid[first:end] = centroid
        if self._mel_mean is not None:
            self._mel[first:end] = self._mel_mean.normalise(log_mel)
        self._n_computed = end

    def _decode_phones(self, start: int, head: int) -> None:
        rec = self._recognizer
        if rec is None or self._recogniser_failed:
            return
        try:
            if not self._utt_started:
                # Decoding may start late (reported timings covered the beginning): the utterance's
                # frame 0 is the whole hop at or before `start`.
                rec.start(reset_features=True)
                self._utt_started = True
                self._utt_base = start // HOP
                start = self._utt_base * HOP
            rec.process(self._pcm[start:head])
            phones = rec.phones()
            self._write_phones(phones)
            utt_frames = head // HOP - self._utt_base
            if utt_frames > HARD_UTTERANCE_S * TRACK_HZ or (
                utt_frames > SOFT_UTTERANCE_S * TRACK_HZ and phones and phones[-1][0] == REST_INDEX
            ):
                # Restart at the last whole hop before the head: decoded phones are final, and the
                # partial hop is fed again so the new utterance's frame numbers stay exact.
                self._write_phones(rec.finish())
                self._utt_base = head // HOP
                rec.start(reset_features=False)
                rec.process(self._pcm[self._utt_base * HOP : head])
        except RuntimeError:
            # A recogniser failure must never stop the face: the energy track takes over.
            self._recogniser_failed = True

    def _write_phones(self, phones: list[tuple[int, int, int, int]]) -> None:
        if not phones:
            return
        base = self._utt_base
        end = base + phones[-1][2] + 1
        self._ensure(end)
        for code, s, e, pid in reversed(phones):
            lo, hi = base + s, base + e + 1
            self._codes[lo:hi] = code
            if self._spans and (self._labels[lo:hi] != pid).any():
                self._dirty = min(self._dirty, lo)  # the word spans' passes are redone from here
            self._labels[lo:hi] = pid
            if hi < end - 4 * TRACK_HZ:
                break  # older phones were written by earlier calls and have settled

    def _phone_codes(self, w0: int, w1: int) -> np.ndarray:
        """Classes of track frames [w0, w1) from the recogniser: its phones as the mouth classifier reads
        them together with the spectrum (rest before the segment and after a complete one)."""
        known = min(len(self._codes), self._decoded // HOP)
        if self._model is None or known == 0 or self._n_feat == 0:
            return _window_codes(self._codes, known, w0, w1, complete=self._complete)
        mel = context_rows(self._mel, self._n_feat, w0 - MEL_CONTEXT, w1 + MEL_CONTEXT)
        labels = context_rows(self._labels, known, w0 - PHONE_CONTEXT, w1 + PHONE_CONTEXT)
        codes = self._model.classes(model_inputs(mel, fill_undecoded(labels, UNDECODED)))
        codes[: max(0, min(w1, 0) - w0)] = REST_INDEX
        if self._complete:
            end = -(-self._n // HOP)
            codes[max(0, end - w0) :] = REST_INDEX
        return codes

    def _ensure(self, n: int) -> None:
        if n <= len(self._codes):
            return
        size = max(n, 2 * len(self._codes))
        for name, fill in (("_codes", UNKNOWN), ("_labels", UNDECODED), ("_level", 0.0), ("_centroid", 0.0)):
            old = getattr(self, name)
            new = np.full(size, fill, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        if self._model is not None:
            mel = np.zeros((size, N_MEL), np.float32)
            mel[: len(self._mel)] = self._mel
            self._mel = mel

    # -- query --------------------------------------------------------------------------------------
    def mouth(self, t0: float, t1: float, head: int) -> TrackedMouth:
        """Mouth for the video frame covering segment time [t0, t1) s, knowing audio up to `head`."""
        self._advance(head)
        f0 = int(np.floor(t0 * TRACK_HZ + 1e-9))
        f1 = max(f0 + 1, int(np.ceil(t1 * TRACK_HZ - 1e-9)))
        r = COARTICULATION_RADIUS + 1
        w0, w1 = f0 - r, f1 + r
        level = _window(self._level, self._n_feat, w0, w1)
        energy = energy_params(level, _window(self._centroid, self._n_feat, w0, w1))
        span = slice(f0 - w0, f1 - w0)
        centre = (f0 + f1) // 2 - w0

        mismatch = False
        # Reported timings are used where they cover the whole window (up to the end of an ended
        # segment; a rounding hop short of it is covered).
        if self._timed_until >= min(w1, self._n // HOP if self._ended else w1):
            codes = _window_codes(self._timed, self._timed_until, w0, w1, complete=self._ended)
            source = "timings"
        elif self._align is not None and not self.transcript_rejected:
            codes = _window_codes(self._align, len(self._align), w0, w1, complete=True)
            source = "alignment"
        elif self._recognizer is not None and not self._recogniser_failed:
            source = "phones"
            if self._spans or self._word_requests:
                word_codes, decided, rejected = self._words_window(w0, w1)
                # The classifier's own classes are needed only where the words do not decide.
                codes = (
                    word_codes if decided.all() else np.where(decided, word_codes, self._phone_codes(w0, w1))
                )
                codes = codes.astype(np.int8)
                if decided[centre]:
                    source = "words"
                mismatch = bool(rejected[centre])
            else:
                codes = self._phone_codes(w0, w1)
        else:
            rows = energy[span]
            row = rows.mean(axis=0)
            viseme = viseme_from_params(row) if level[span].max() > 0.05 else "X"
            return TrackedMouth(row, viseme, "energy")

        params = coarticulate(codes)
        # Silence in loud audio is a recogniser miss; reported timings are trusted as they are.
        miss = (codes == REST_INDEX) & (level > RECOGNISER_MISS_LEVEL) & (source != "timings")
        if miss[span].any():
            params = np.where(miss[:, None], energy, params)
            if miss[centre]:
                source = "energy"
        # A frame shows a closure when the lips are shut at its centre or it holds the centre of an m/b/p
        # run: every closure is seen once, and the vowels around it are not shut along with it.
        if params[centre, CLOSED_COLUMN] >= 0.99 or _holds_closure_centre(codes, f0 - w0, f1 - w0):
            return TrackedMouth(TARGETS[CLOSED_INDEX].copy(), VISEMES[CLOSED_INDEX], source, mismatch)
        rows = params[span]
        row = rows.mean(axis=0)
        viseme = viseme_from_params(row) if miss[centre] else VISEMES[int(codes[centre])]
        return TrackedMouth(row, viseme, source, mismatch)


def _holds_closure_centre(codes: np.ndarray, lo: int, hi: int) -> bool:
    closed = codes == CLOSED_INDEX
    if not closed[lo:hi].any():
        return False
    edges = np.diff(np.concatenate([[0], closed.astype(np.int8), [0]]))
    centres = (np.flatnonzero(edges == 1) + np.flatnonzero(edges == -1) - 1) // 2
    return bool(((centres >= lo) & (centres < hi)).any())


def _window(values: np.ndarray, known: int, w0: int, w1: int) -> np.ndarray:
    out = np.zeros(w1 - w0, values.dtype)
    lo, hi = max(0, w0), min(known, w1)
    if hi > lo:
        out[lo - w0 : hi - w0] = values[lo:hi]
    return out


def _window_codes(codes: np.ndarray, known: int, w0: int, w1: int, complete: bool) -> np.ndarray:
    """Codes for track frames [w0, w1): rest before the segment and after a complete one; past the
    head of an incomplete one (and in gaps) the last decided class is held."""
    out = np.full(w1 - w0, REST_INDEX, np.int8)
    last = REST_INDEX
    for i in range(w1 - w0):
        f = w0 + i
        if f < 0:
            continue
        if f >= known:
            out[i] = REST_INDEX if complete else last
            continue
        c = int(codes[f])
        if c == UNKNOWN:
            out[i] = last
        else:
            out[i] = c
            last = c
    return out
