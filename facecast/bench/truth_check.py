"""Does a synthesiser's phone timing match its own audio? Silence boundaries against the audio's energy.

The lip-sync truth is the synthesiser's word for when each phone is spoken; nothing in the benchmark
checks that word against the samples. This does, per voice: every pause (a run of silence phones)
of at least MIN_PAUSE_S gives a speech onset (its end) and, where speech precedes it, a speech offset
(its start); each is compared with the nearest quiet→loud (or loud→quiet) change of the 10 ms energy
within SEARCH_S. Boundaries with a stop or affricate on the speech side are left out: a stop's closure is
silent by nature, so its audio starts at the burst, tens of ms after the phone does. A systematic
difference is an offset in the truth; it is reported, never corrected here.
Inside speech, every vowel → p/t/k boundary is a closure: the sound stops abruptly, so the energy (10 ms
windows every 2.5 ms) falls steepest there; the truth's boundary minus that fall, within CLOSURE_SEARCH_S,
is the third figure (+ = the truth is later than the audio). The lag of the loudness envelope behind the
truth openness is printed too, as a softer check (loudness and openness are not the same thing, so even
exact timings give a few ms).

    python -m facecast.bench.truth_check [--sentences N] [--voices slt,espeak:en-us,festival:ked_diphone]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facecast.bench.corpus import HELD_OUT_SENTENCES, HELD_OUT_VOICES, Phone, Utterance, build_corpus
from facecast.bench.report import Table
from facecast.client.measure import av_offset_ms
from facecast.engine.visemes import TRACK_HZ, phone_to_viseme

MIN_PAUSE_S = 0.05
SEARCH_S = 0.15
# A 10 ms frame is loud when within LOUD_DB of the utterance's loudest frame: low enough for weak
# consonants, above the diphone voices' residual noise in pauses.
LOUD_DB = -40.0
DEFAULT_VOICES = ("slt", "espeak:en-us", *HELD_OUT_VOICES)
_STOPS = frozenset({"P", "B", "T", "D", "K", "G", "CH", "JH", "DX"})
_VOWELS = frozenset(
    {"aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"}
)
_VOICELESS_STOPS = frozenset({"p", "t", "k"})
CLOSURE_HOP_S = 0.0025
CLOSURE_SEARCH_S = 0.05
MIN_CLOSURE_S = 0.03  # shorter stops (flaps, clusters) have no clear closure


@dataclass(frozen=True, slots=True)
class BoundaryCheck:
    onsets_ms: tuple[float, ...]  # energy onset minus truth onset, per matched boundary
    offsets_ms: tuple[float, ...]  # energy offset minus truth offset
    unmatched: int  # truth boundaries with no energy change within SEARCH_S
    closures_ms: tuple[float, ...]  # truth vowel -> p/t/k boundary minus the steepest energy fall
    envelope_lag_ms: float  # lag of the loudness envelope behind the truth openness (+ = later)


def frame_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Energy of each 10 ms frame in dB relative to the loudest frame."""
    hop = sample_rate // TRACK_HZ
    n = len(samples) // hop
    frames = samples[: n * hop].astype(np.float64).reshape(n, hop)
    power = (frames**2).mean(axis=1) + 1e-9
    return 10.0 * np.log10(power / power.max())


def closure_offsets_ms(utt: Utterance) -> list[float]:
    """Per vowel -> p/t/k boundary of the truth: its time minus the steepest fall of the energy within
    CLOSURE_SEARCH_S (+ = the truth is later than the audio)."""
    x = utt.audio().astype(np.float64) / 32768.0
    hop = int(utt.sample_rate * CLOSURE_HOP_S)
    window = 4 * hop
    n = (len(x) - window) // hop
    db = 10.0 * np.log10((x[np.arange(n)[:, None] * hop + np.arange(window)] ** 2).mean(axis=1) + 1e-10)
    centres = (np.arange(n) + 2) * CLOSURE_HOP_S  # window k is centred at (k + 2) hops
    fall = np.diff(db)
    between = (centres[:-1] + centres[1:]) / 2
    out: list[float] = []
    for a, b in zip(utt.phones, utt.phones[1:], strict=False):
        if a.phone.lower().rstrip("012") not in _VOWELS or b.phone.lower() not in _VOICELESS_STOPS:
            continue
        if b.end - b.start <= MIN_CLOSURE_S:
            continue
        near = np.flatnonzero(np.abs(between - b.start) <= CLOSURE_SEARCH_S)
        if len(near) < 5:
            continue
        steepest = near[np.argmin(fall[near])]
        out.append((b.start - between[steepest]) * 1000.0)
    return out


def _is_stop(phone: str) -> bool:
    return phone.upper().rstrip("012") in _STOPS


def _pauses(phones: Sequence[Phone]) -> list[tuple[Phone | None, Phone, Phone | None]]:
    """Each run of silence phones as one pause, with the phones either side (espeak-ng reports a
    pause as two or three silence phones in a row)."""
    pauses: list[tuple[Phone | None, Phone, Phone | None]] = []
    i = 0
    while i < len(phones):
        if phone_to_viseme(phones[i].phone) != "X":
            i += 1
            continue
        j = i
        while j + 1 < len(phones) and phone_to_viseme(phones[j + 1].phone) == "X":
            j += 1
        pause = Phone("pau", phones[i].start, phones[j].end)
        pauses.append(
            (phones[i - 1] if i > 0 else None, pause, phones[j + 1] if j + 1 < len(phones) else None)
        )
        i = j + 1
    return pauses


def check_utterance(utt: Utterance) -> BoundaryCheck:
    db = frame_db(utt.audio(), utt.sample_rate)
    loud = db > LOUD_DB
    change = np.flatnonzero(np.diff(loud.astype(np.int8)))  # change between frame k and k+1
    rises = (change[loud[change + 1]] + 1) / TRACK_HZ
    falls = (change[~loud[change + 1]] + 1) / TRACK_HZ
    onsets: list[float] = []
    offsets: list[float] = []
    unmatched = 0
    for before, pause, after in _pauses(utt.phones):
        if pause.end - pause.start < MIN_PAUSE_S:
            continue
        wanted: list[tuple[float, np.ndarray, list[float]]] = []
        if after is not None and not _is_stop(after.phone):
            wanted.append((pause.end, rises, onsets))
        if before is not None and not _is_stop(before.phone):
            wanted.append((pause.start, falls, offsets))
        for at, changes, out in wanted:
            near = changes[np.abs(changes - at) <= SEARCH_S]
            if len(near) == 0:
                unmatched += 1
                continue
            out.append(1000.0 * float(near[np.argmin(np.abs(near - at))] - at))
    envelope = np.clip(db, -50.0, 0.0)
    truth_open = utt.truth.open[: len(envelope)]
    lag = av_offset_ms(truth_open, envelope[: len(truth_open)], TRACK_HZ)
    return BoundaryCheck(tuple(onsets), tuple(offsets), unmatched, tuple(closure_offsets_ms(utt)), lag)


def check_voices(voices: Sequence[str], sentences: Sequence[str]) -> Table:
    table = Table(
        "Truth vs audio: energy minus truth at silence boundaries (median ms) and loudness lag",
        [
            "voice",
            "onset ms",
            "onsets",
            "offset ms",
            "offsets",
            "unmatched",
            "closure: truth late ms",
            "closures",
            "loudness lag ms",
            "utterances",
        ],
    )
    for voice in voices:
        checks = [check_utterance(u) for u in build_corpus((voice,), sentences)]
        onsets = [d for c in checks for d in c.onsets_ms]
        offsets = [d for c in checks for d in c.offsets_ms]
        closures = [d for c in checks for d in c.closures_ms]
        table.add(
            voice,
            float(np.median(onsets)) if onsets else float("nan"),
            len(onsets),
            float(np.median(offsets)) if offsets else float("nan"),
            len(offsets),
            sum(c.unmatched for c in checks),
            float(np.median(closures)) if closures else float("nan"),
            len(closures),
            float(np.median([c.envelope_lag_ms for c in checks])),
            len(checks),
        )
    table.notes.append(
        f"onset: end of a pause (>= {MIN_PAUSE_S * 1000:.0f} ms) vs the nearest rise of the 10 ms "
        f"energy above {LOUD_DB:.0f} dB of the loudest frame within {SEARCH_S * 1000:.0f} ms; offset: its "
        "start vs the nearest fall (+ = the audio changes later than the truth says); boundaries next to "
        "a stop or affricate are left out (its closure is silent)"
    )
    table.notes.append(
        "closure: a vowel -> p/t/k boundary of the truth minus the steepest energy fall (2.5 ms hop) within "
        f"{CLOSURE_SEARCH_S * 1000:.0f} ms (+ = the truth is later than the audio)"
    )
    table.notes.append("loudness lag: best-correlation lag of the energy envelope behind the truth openness")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m facecast.bench.truth_check", description=__doc__.splitlines()[0]
    )
    p.add_argument("--voices", default=",".join(DEFAULT_VOICES), help="comma-separated voices")
    p.add_argument("--sentences", type=int, default=len(HELD_OUT_SENTENCES), help="held-out sentences used")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    table = check_voices(args.voices.split(","), HELD_OUT_SENTENCES[: args.sentences])
    print(table.markdown() if args.markdown else table.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
