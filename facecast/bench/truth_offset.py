"""How late or early the corpus truth is against its own audio, per voice.

    python -m facecast.bench.truth_offset [VOICE,VOICE,...]   # default: every tuning and held-out voice

At every vowel → p/t/k boundary of the truth the sound stops abruptly (the closure), so the audio's
energy falls steeply there. Per boundary: the truth's boundary time minus the time of the steepest
energy fall within ±50 ms of it (10 ms windows, 2.5 ms hop); + means the truth is later than the
audio. Printed per voice: the median and quartiles over the voice's benchmark sentences. A measure of
the labels, not of the engine: the benchmark's truth is never shifted by it.
"""

from __future__ import annotations

import sys

import numpy as np

from facecast.bench import corpus

VOWELS = frozenset(["aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"])
VOICELESS_STOPS = frozenset({"p", "t", "k"})
HOP_S = 0.0025
SEARCH_S = 0.05
MIN_STOP_S = 0.03


def energy_db(utt: corpus.Utterance) -> np.ndarray:
    """Energy in dB of 10 ms windows every 2.5 ms; window k is centred at (k + 2) * HOP_S."""
    x = utt.audio().astype(np.float64) / 32768.0
    hop = int(utt.sample_rate * HOP_S)
    win = 4 * hop
    n = (len(x) - win) // hop
    idx = np.arange(n)[:, None] * hop + np.arange(win)
    return 10.0 * np.log10((x[idx] ** 2).mean(axis=1) + 1e-10)


def closure_offsets_ms(utt: corpus.Utterance) -> list[float]:
    db = energy_db(utt)
    centres = (np.arange(len(db)) + 2) * HOP_S
    fall = np.diff(db)
    between = (centres[:-1] + centres[1:]) / 2
    out = []
    for a, b in zip(utt.phones, utt.phones[1:], strict=False):
        if a.phone.lower().rstrip("012") not in VOWELS or b.phone.lower() not in VOICELESS_STOPS:
            continue
        if b.end - b.start <= MIN_STOP_S:
            continue
        near = np.flatnonzero(np.abs(between - b.start) <= SEARCH_S)
        if len(near) < 5:
            continue
        steepest = near[np.argmin(fall[near])]
        out.append((b.start - between[steepest]) * 1000.0)
    return out


def main(argv: list[str]) -> None:
    voices = argv[0].split(",") if argv else list(corpus.TUNING_VOICES + corpus.HELD_OUT_VOICES)
    for voice in voices:
        sentences = corpus.HELD_OUT_SENTENCES if voice in corpus.HELD_OUT_VOICES else corpus.SENTENCES
        offsets = [o for u in corpus.build_corpus([voice], sentences) for o in closure_offsets_ms(u)]
        if not offsets:
            print(f"{voice:26s} no vowel -> p/t/k boundaries")
            continue
        q1, median, q3 = np.percentile(offsets, [25, 50, 75])
        print(f"{voice:26s} n={len(offsets):3d} median {median:+6.1f} ms (quartiles {q1:+.1f} / {q3:+.1f})")


if __name__ == "__main__":
    main(sys.argv[1:])
