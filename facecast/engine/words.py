"""Text-aware streaming: known words aligned to the audio inside the look-ahead window.

A host that knows the words of some audio ("these words belong to the audio from t to t+d") hands
them to the engine; each such span gets a left-to-right chain of the words' phones (pronunciations
from the recogniser's dictionary, espeak-ng for words it lacks) with optional pauses between words.
Every 10 ms track frame the recogniser has decoded is matched against the chain by a monotonic
Viterbi pass whose emissions are the mouth classifier's class log-probabilities (one numpy row per
frame, rows for unchanged frames are kept): the classes are the text's, only their timing is searched,
so the mouth shows the phones the text says, at the times the audio says, as soon as the audio is in —
not only once the segment has ended.

What following the text costs against the classifier's own best classes is the alignment's measure of
fit: a transcript that does not match the audio costs much more, and the span is then rejected (its
frames fall back to recognition).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import numpy as np

from facecast.engine.visemes import REST_INDEX, VISEME_INDEX, phone_to_viseme

# Phone identities of the recogniser (CMUdict ARPAbet without stress) and silence.
ARPABET: tuple[str, ...] = (
    "SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW",
    "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
SIL_ID = 0
UNDECODED = -1
_PHONE_ID = {p: i for i, p in enumerate(ARPABET)}
_ID_CODE = np.array([VISEME_INDEX[phone_to_viseme(p)] for p in ARPABET], np.int8)

MIN_PHONE_FRAMES = 3  # each phone of the text lasts at least 30 ms (three chain states)
# A transcript is judged by what following it costs: the pass's mean log-probability per frame minus
# that of the classifier's own best class in each frame. Words of the audio cost little (the classes
# they imply are the ones heard, only their timing is searched); other words cost much more. A span is
# rejected when the cost exceeds MISMATCH_COST, judged from JUDGE_AFTER_FRAMES decoded speech frames
# on, and accepted for good at JUDGE_UNTIL_FRAMES. The cost was chosen on the tuning voices (48
# utterances, streamed: right text cost at most 1.24 there at its worst judged frame, another sentence's
# text at least 1.28), midway. With the classifier trained again on the corrected espeak-ng truth the
# same 48 give at most 1.18 and at least 1.37 (midway 1.27), so it stays.
MISMATCH_COST = 1.26
JUDGE_AFTER_FRAMES = 60
JUDGE_UNTIL_FRAMES = 200

_WORD_RE = re.compile(r"[a-z0-9']+")
_NEG = -1e9


def phone_id(label: str) -> int:
    """Index in ARPABET of a phone label (stress digits and case ignored; noise counts as silence)."""
    return _PHONE_ID.get(label.upper().rstrip("012"), SIL_ID)


def id_code(ids: np.ndarray) -> np.ndarray:
    return _ID_CODE[ids]


class Lexicon:
    """Pronunciations: the recogniser's dictionary first, espeak-ng's rules for words it lacks (cached).

    One per process; the dictionary decoder is the forced aligner's (no second copy is loaded)."""

    _instance: Lexicon | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> Lexicon:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = Lexicon()
            return cls._instance

    def phones(self, word: str) -> tuple[str, ...]:
        with self._lock:
            found = self._cache.get(word)
            if found is None:
                found = self._lookup(word)
                self._cache[word] = found
            return found

    @staticmethod
    def _lookup(word: str) -> tuple[str, ...]:
        from facecast.engine.tracker import SharedAligner

        for candidate in (word, word.replace("'", ""), word[:-2] if word.endswith("'s") else ""):
            if candidate:
                pron = SharedAligner.get().pronunciation(candidate)
                if pron:
                    return tuple(pron.split())
        return _espeak_phones(word)


def _espeak_phones(word: str) -> tuple[str, ...]:
    """espeak-ng's pronunciation of a word the dictionary lacks (numbers, names, made-up words)."""
    try:
        from facecast.tts.espeak import EspeakTTS, TTSError
    except ImportError:  # pragma: no cover - espeakng-loader is a declared dependency
        return ()
    try:
        speech = EspeakTTS().synthesize_timed(word)
    except TTSError:
        return ()
    return tuple(p.phone for p in speech.phones if p.phone != "SIL")


def words_of(text: str) -> list[str]:
    return [w.strip("'") for w in _WORD_RE.findall(text.lower()) if w.strip("'")]


def chain_of(text: str, lexicon: Lexicon) -> np.ndarray:
    """Phone ids of the chain for `text`: a pause, then each word's phones (MIN_PHONE_FRAMES states
    each) followed by a pause."""
    states = [SIL_ID]
    for word in words_of(text):
        for phone in lexicon.phones(word):
            states.extend([phone_id(phone)] * MIN_PHONE_FRAMES)
        states.append(SIL_ID)
    return np.array(states, np.int16)


@dataclass
class WordSpan:
    """Words known to be spoken from track frame `start` to `end` (None: until the segment ends)."""

    start: int
    end: int | None
    chain: np.ndarray  # phone id per state
    rejected: bool = False
    accepted: bool = False
    cost: float = float("nan")  # mean log-probability per decoded frame given up by following the text
    _rows: list[np.ndarray] = field(default_factory=list)  # Viterbi scores per decoded frame
    _back: list[np.ndarray] = field(default_factory=list)  # 0 stay, 1 from the previous state, 2 skip a pause
    _judged: int = 0  # frames the judge has looked at

    def __post_init__(self) -> None:
        chain = self.chain
        self._code = id_code(chain.astype(np.int64))
        self._is_pause = chain == SIL_ID
        # A pause state may be skipped: state j can be entered from j-2 when j-1 is a pause.
        self._skip = np.zeros(len(chain), bool)
        self._skip[2:] = self._is_pause[1:-1]
        self._path_key: tuple[int, int] | None = None
        self._path_lo = 0
        self._path_codes = np.zeros(0, np.int8)

    def extend(self, more: np.ndarray, redo_from: int) -> None:
        """Append states (more words of the same span). Frames before `redo_from` keep their rows
        (the new states count as unreached there); later ones are redone."""
        keep = max(0, min(len(self._rows), redo_from - self.start))
        del self._rows[keep:]
        del self._back[keep:]
        pad = np.full(len(more), _NEG, np.float32)
        self._rows = [np.concatenate([r, pad]) for r in self._rows]
        self._back = [np.concatenate([b, np.zeros(len(more), np.int8)]) for b in self._back]
        self.chain = np.concatenate([self.chain, more])
        self.__post_init__()  # the per-state tables, for the longer chain (judging goes on where it was)

    def update(self, labels: np.ndarray, log_probs: np.ndarray, known: int, dirty_from: int) -> None:
        """Extend the pass to decoded frames [start, known); rows from `dirty_from` on are redone (the
        recogniser revised its partial hypothesis there, or the classifier saw more context).
        `log_probs[f]` is the mouth classifier's log-probability of each mouth class at track frame f."""
        stop = known if self.end is None else min(known, self.end)
        keep = max(0, min(len(self._rows), dirty_from - self.start))
        del self._rows[keep:]
        del self._back[keep:]
        n = len(self.chain)
        for f in range(self.start + keep, stop):
            emit = log_probs[f][self._code]
            if not self._rows:
                row = np.full(n, _NEG, np.float32)
                row[0] = emit[0]
                if n > 1 and self._is_pause[0]:
                    row[1] = emit[1]  # the leading pause may be skipped
                self._rows.append(row)
                self._back.append(np.zeros(n, np.int8))
                continue
            prev = self._rows[-1]
            advance = np.full(n, _NEG, np.float32)
            advance[1:] = prev[:-1]
            skip = np.full(n, _NEG, np.float32)
            skip[2:] = prev[:-2]
            skip[~self._skip] = _NEG
            best = np.maximum(prev, np.maximum(advance, skip))
            back = np.where(best == prev, 0, np.where(best == advance, 1, 2)).astype(np.int8)
            self._rows.append(best + emit)
            self._back.append(back)
        frames = len(self._rows)
        self._judged = min(self._judged, keep)
        if self.accepted or self.rejected or frames <= self._judged:
            return
        # Judged frame by frame, as if each frame had been the last decoded one, so a segment decoded
        # at once (offline) is judged as a streamed one is.
        lo = self._judged
        decoded = labels[self.start : self.start + frames]
        speech = np.cumsum(decoded > SIL_ID)[lo:]
        free = np.cumsum(log_probs[self.start : self.start + frames].max(axis=1), dtype=np.float64)[lo:]
        best = np.array([row.max() for row in self._rows[lo:]], np.float64)
        cost = (free - best) / np.arange(lo + 1, frames + 1)
        judging = speech >= JUDGE_AFTER_FRAMES
        self.cost = float(cost[-1])
        self._judged = frames
        if (judging & (speech < JUDGE_UNTIL_FRAMES) & (cost > MISMATCH_COST)).any():
            self.rejected = True
        elif speech[-1] >= JUDGE_UNTIL_FRAMES or (self.end is not None and known >= self.end):
            self.accepted = True

    def codes(self, w0: int, w1: int, final: bool) -> tuple[np.ndarray, np.ndarray]:
        """Mouth classes for track frames [w0, w1) from the best path (frames past the decoded head
        hold its last class), and a mask of the frames the span decided."""
        out = np.full(w1 - w0, REST_INDEX, np.int8)
        mask = np.zeros(w1 - w0, bool)
        frames = len(self._rows)
        if frames == 0:
            return out, mask
        last = self.start + frames - 1
        row = self._rows[-1]
        # A finished span ends in its last phone or the pause after it; an open one wherever fits best.
        state = len(row) - 2 + int(np.argmax(row[-2:])) if final and len(row) > 1 else int(np.argmax(row))
        if row[state] <= _NEG / 2:  # the text is longer than the audio allows: best reachable state
            state = int(np.argmax(row))
        lo = max(w0, self.start)
        path = self._path(frames, state, lo)
        hi = min(w1, last + 1)
        if hi > lo:
            out[lo - w0 : hi - w0] = path[lo - self.start : hi - self.start]
            mask[lo - w0 : hi - w0] = True
        hold_hi = min(w1, self.end if self.end is not None else w1)
        if last + 1 < hold_hi:
            held_lo = max(w0, last + 1)
            out[held_lo - w0 : hold_hi - w0] = self._code[state]
            mask[held_lo - w0 : hold_hi - w0] = True
        return out, mask

    def _path(self, frames: int, state: int, lo: int) -> np.ndarray:
        """Mouth class per frame of the best path ending in `state` at the last decoded frame, traced
        back to frame `lo` (cached: offline, one trace serves the whole segment)."""
        key = (frames, state)
        if self._path_key == key and self._path_lo <= lo:
            return self._path_codes
        codes = np.full(frames, REST_INDEX, np.int8)
        f = frames - 1
        while f >= lo - self.start and f >= 0:
            codes[f] = self._code[state]
            state -= int(self._back[f][state])
            f -= 1
        self._path_key, self._path_lo, self._path_codes = key, lo, codes
        return codes
