"""The held-out voices' truth: festival's segment timings and espeak-ng's phone events, read from real
synthesiser output and checked against the audio's own silences (facecast.bench.truth_check)."""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from facecast.bench import _lipsync_sets
from facecast.bench import corpus as corpus_module
from facecast.bench.corpus import (
    ESPEAK_PREFIX,
    FESTIVAL_INSTALL,
    HELD_OUT_FESTIVAL_VOICES,
    HELD_OUT_VOICES,
    TUNING_VOICES,
    FestivalMissingError,
    Phone,
    build_corpus,
    have_festival_voice,
    parse_festival_segments,
    synthesiser,
    synthesize,
)
from facecast.bench.report import Log
from facecast.bench.truth_check import _pauses, check_utterance
from facecast.engine.visemes import phone_to_viseme

# Every silence boundary next to a nasal or a vowel, whose sound starts with the phone (a stop's would
# start at its burst).
TINY = "My mom, all alone."
# festival's lexicon (CMU, radio phones) for TINY, pauses left out.
TINY_PHONES = ["m", "ay", "m", "aa", "m", "ao", "l", "ax", "l", "ow", "n"]


def need_festival_voice(voice: str) -> None:
    """Skip with the install command, except under CI=true, where a missing voice fails the test."""
    if have_festival_voice(voice):
        return
    message = f"{voice} is not installed ({FESTIVAL_INSTALL})"
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the festival tests: {message}")
    pytest.skip(message)


def test_festival_segments_parse_into_contiguous_phones() -> None:
    output = "festival banner\nsegment pau 0.220000\nsegment b 0.312658\nnil\nsegment aa 0.30\n"
    phones = parse_festival_segments(output)
    assert [p.phone for p in phones] == ["pau", "b", "aa"]
    assert phones[0].start == 0.0 and phones[1].start == phones[0].end == 0.22
    assert phones[2].start == phones[2].end == pytest.approx(0.312658)  # never ends before it starts
    with pytest.raises(ValueError, match="no segment timings"):
        parse_festival_segments("SIOD ERROR: unbound variable : voice_nope\n")


@pytest.mark.parametrize(
    ("voice", "rate"), [(HELD_OUT_FESTIVAL_VOICES[0], 16000), (HELD_OUT_FESTIVAL_VOICES[1], 32000)]
)
def test_festival_speaks_a_tiny_sentence_with_its_phone_timings(
    voice: str, rate: int, tmp_path: Path
) -> None:
    need_festival_voice(voice)
    utt = synthesize(TINY, voice, tmp_path)
    assert utt.sample_rate == rate
    phones = utt.phones
    assert [p.phone for p in phones if p.phone != "pau"] == TINY_PHONES
    assert phones[0].phone == phones[-1].phone == "pau" and phones[0].start == 0.0
    assert all(b.start == a.end and b.end > b.start for a, b in itertools.pairwise(phones))
    # The segments span the wave: festival's last pause ends where its samples do (within 30 ms).
    assert abs(phones[-1].end - utt.duration) < 0.03, (phones[-1].end, utt.duration)
    # m/b/p are the truth's closures: the three m.
    assert len(utt.truth.closures) == sum(phone_to_viseme(p) == "A" for p in TINY_PHONES) == 3
    # The comma is a pause in the audio, and the truth says so where the audio does.
    check = check_utterance(utt)
    assert check.onsets_ms and check.offsets_ms and check.unmatched == 0
    # Within a few 10 ms frames (festival's diphones carry a final nasal ~40 ms into the pause).
    boundaries = np.abs(check.onsets_ms + check.offsets_ms)
    assert np.median(boundaries) <= 25.0 and boundaries.max() <= 60.0, check
    # Festival's Word relation times each word by its first and last segment.
    assert [w.text for w in utt.words] == ["My", "mom", "all", "alone"]
    starts = {p.start for p in phones if p.phone != "pau"}
    ends = {p.end for p in phones if p.phone != "pau"}
    for word in utt.words:
        assert any(abs(word.start - t) < 1e-5 for t in starts) and any(abs(word.end - t) < 1e-5 for t in ends)
    spoken_in = [[p.phone for p in phones if w.start - 1e-5 <= p.start < w.end - 1e-5] for w in utt.words]
    assert spoken_in[1] == ["m", "aa", "m"] and spoken_in[3] == ["ax", "l", "ow", "n"], spoken_in
    # Cached: a second call reads the same phones and words back from the cache, without festival.
    again = synthesize(TINY, voice, tmp_path)
    assert again.phones == phones and again.words == utt.words


def test_a_run_of_silence_phones_is_one_pause() -> None:
    phones = (
        Phone("sil", 0.0, 0.05),
        Phone("m", 0.05, 0.1),
        Phone("sil", 0.1, 0.16),
        Phone("sil", 0.16, 0.22),
    )
    pauses = [
        (b and b.phone, (p.start, p.end), a and a.phone)
        for b, p, a in _pauses((*phones, Phone("ae", 0.22, 0.3)))
    ]
    assert pauses == [(None, (0.0, 0.05), "m"), ("m", (0.1, 0.22), "ae")]


def test_espeak_held_out_truth_matches_its_silences(tmp_path: Path) -> None:
    utt = synthesize(TINY, HELD_OUT_VOICES[0], tmp_path)
    assert synthesiser(utt.voice) == "espeak-ng"
    spoken = [p.phone for p in utt.phones if p.phone != "sil"]
    assert spoken[0] == spoken[2] == spoken[4] == "m" and spoken[-1] == "n", spoken  # my mom ... alone
    assert [w.text for w in utt.words] == TINY.split()  # espeak-ng's word events
    assert utt.words[0].start == next(p.start for p in utt.phones if p.phone != "sil")
    assert utt.words[-1].end == max(p.end for p in utt.phones if p.phone != "sil")
    check = check_utterance(utt)
    assert check.onsets_ms and check.offsets_ms, check
    boundaries = np.abs(check.onsets_ms + check.offsets_ms)
    assert np.median(boundaries) <= 25.0 and boundaries.max() <= 60.0, check


def test_truth_check_finds_a_shifted_truth(tmp_path: Path) -> None:
    """The check can fail: the same audio with every phone 60 ms late reads as the audio 60 ms early."""
    need_festival_voice(HELD_OUT_FESTIVAL_VOICES[0])
    utt = synthesize(TINY, HELD_OUT_FESTIVAL_VOICES[0], tmp_path)
    shift = 0.06
    late = [Phone(p.phone, p.start + shift, p.end + shift) for p in utt.phones]
    late.insert(0, Phone("pau", 0.0, shift))
    shifted = corpus_module.Utterance(
        uid="late",
        text=utt.text,
        voice=utt.voice,
        wav_path=utt.wav_path,
        sample_rate=utt.sample_rate,
        phones=tuple(late),
    )
    exact, moved = check_utterance(utt), check_utterance(shifted)
    assert np.median(moved.onsets_ms) < np.median(exact.onsets_ms) - 40.0, (exact, moved)


def test_held_out_set_keeps_the_tuning_voices_and_adds_festival() -> None:
    assert {synthesiser(v) for v in HELD_OUT_VOICES} == {"espeak-ng", "festival"}
    assert not set(HELD_OUT_VOICES) & set(TUNING_VOICES)
    assert "festival:kal_diphone" not in HELD_OUT_VOICES  # flite's kal16 (tuning) is built from it


def test_no_tuning_voice_shares_a_held_out_accent_or_speaker_variant() -> None:
    def accent_and_variant(voice: str) -> tuple[str, str | None]:
        accent, _, variant = voice.removeprefix(ESPEAK_PREFIX).partition("+")
        return accent, variant or None

    held = [accent_and_variant(v) for v in HELD_OUT_VOICES if synthesiser(v) == "espeak-ng"]
    tuning = [accent_and_variant(v) for v in TUNING_VOICES if synthesiser(v) == "espeak-ng"]
    assert not {a for a, _ in held} & {a for a, _ in tuning}
    assert not {v for _, v in held if v} & {v for _, v in tuning if v}


def test_missing_festival_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no festival on it
    corpus_module.festival_voices.cache_clear()
    try:
        with pytest.raises(FestivalMissingError, match="apt-get install festival festvox-kdlpc16k"):
            build_corpus(["festival:ked_diphone"], [TINY], tmp_path)
        # The default held-out set leaves the festival voices out and says so in a table note.
        args = argparse.Namespace(voices="espeak:en-us", held_out_voices=None, full=True, cache_dir=tmp_path)
        sets, notes = _lipsync_sets(args, 1, Log(enabled=False))
        assert [u.voice for u in sets["held-out"]] == [
            v for v in HELD_OUT_VOICES if synthesiser(v) != "festival"
        ]
        assert len(notes) == 1 and "festival:ked_diphone" in notes[0] and FESTIVAL_INSTALL in notes[0]
    finally:
        corpus_module.festival_voices.cache_clear()


def test_an_unknown_festival_voice_names_the_known_ones(tmp_path: Path) -> None:
    need_festival_voice(HELD_OUT_FESTIVAL_VOICES[0])
    with pytest.raises(FestivalMissingError, match=r"has no voice 'nope'.*ked_diphone"):
        synthesize(TINY, "festival:nope", tmp_path)


def test_the_bench_names_a_missing_festival_voice_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from facecast.cli.bench import main

    argv = ["lipsync", "--voices", "espeak:en-us", "--held-out-voices", "festival:nope", "--sentences", "1"]
    assert main([*argv, "--quiet", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("facecast bench: festival") and "nope" in err and "\n" not in err, err
