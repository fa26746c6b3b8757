"""espeak-ng TTS through the bundled library: real audio out, clear errors in."""

from __future__ import annotations

import inspect
import itertools
import threading

import numpy as np
import pytest

from facecast.tts import TTS, EspeakTTS, TTSError
from facecast.tts.espeak import espeak_phone_to_arpabet


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


def test_implements_protocol(tts: EspeakTTS) -> None:
    # isinstance against a runtime-checkable Protocol only sees that the names exist: the call shape and
    # what comes back are what a caller of `TTS` relies on.
    assert isinstance(tts, TTS)
    wanted = inspect.signature(TTS.synthesize).parameters
    given = inspect.signature(EspeakTTS.synthesize).parameters
    assert list(given) == list(wanted) and given["voice"].default is None
    assert type(tts.sample_rate) is int and tts.sample_rate == 22050
    audio = tts.synthesize(text="Hi.", voice=None)
    assert audio.dtype == np.int16 and audio.ndim == 1 and audio.size > tts.sample_rate // 10


def test_sentence_gives_plausible_audio(tts: EspeakTTS) -> None:
    text = "The quick brown fox jumps over the lazy dog, and then it runs away."
    audio = tts.synthesize(text)
    assert audio.dtype == np.int16 and audio.ndim == 1
    seconds = audio.size / tts.sample_rate
    # 14 words at ~165 words per minute ≈ 5 s; allow a wide margin for voice differences.
    assert 2.0 < seconds < 10.0
    assert np.abs(audio.astype(np.int32)).max() > 3000  # actual speech, not silence


def test_longer_text_gives_longer_audio(tts: EspeakTTS) -> None:
    short = tts.synthesize("Hello.")
    long = tts.synthesize("Hello. This sentence is quite a lot longer than the first one.")
    assert long.size > 2 * short.size


def test_other_voice(tts: EspeakTTS) -> None:
    assert tts.synthesize("Guten Tag", voice="de").size > 0


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_an_error(tts: EspeakTTS, text: str) -> None:
    with pytest.raises(TTSError, match="empty"):
        tts.synthesize(text)


def test_unknown_voice_is_an_error(tts: EspeakTTS) -> None:
    with pytest.raises(TTSError, match="voice"):
        tts.synthesize("hello", voice="no-such-voice-xyz")


def test_threads_do_not_mix_audio(tts: EspeakTTS) -> None:
    expected = tts.synthesize("One two three four five.")
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(tts.synthesize("One two three four five."))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # espeak-ng adds random noise, so compare lengths: interleaved synthesis would merge or split audio.
    assert len(results) == 4
    assert all(abs(r.size - expected.size) < 0.1 * expected.size for r in results)


def test_timed_speech_reports_every_phone_in_order(tts: EspeakTTS) -> None:
    speech = tts.synthesize_timed("My mother baked a pie. Bye!")
    phones = speech.phones
    assert phones and speech.sample_rate == tts.sample_rate
    starts = [p.start for p in phones]
    assert starts == sorted(starts)
    assert all(p.end > p.start for p in phones)
    for a, b in itertools.pairwise(phones):
        assert b.start == pytest.approx(a.end)  # contiguous: each phone lasts until the next
    assert phones[-1].end == pytest.approx(len(speech.audio) / speech.sample_rate)
    spoken = [p.phone for p in phones if p.phone != "SIL"]
    assert spoken[:2] == ["M", "AY"]  # "my"
    assert spoken.count("B") >= 2 and "SIL" in [p.phone for p in phones]  # "baked", "bye"; the full stop


def test_timed_speech_reports_every_word_with_the_span_of_its_phones(tts: EspeakTTS) -> None:
    text = "My mother baked a pie, twenty-one times. Bye! 42 cats."
    speech = tts.synthesize_timed(text)
    # A hyphenated word and a number read as two words each stay one word of the text.
    assert [w.text for w in speech.words] == text.split()
    spoken = [p for p in speech.phones if p.phone != "SIL"]
    for word, nxt in itertools.pairwise(speech.words):
        assert word.start < word.end <= nxt.start
    for word in speech.words:  # each starts on a phone and ends on one: no pause inside its span
        assert any(p.start == word.start for p in spoken) and any(p.end == word.end for p in spoken)
    first, second = speech.words[:2]
    assert [p.phone for p in spoken if first.start <= p.start < first.end] == ["M", "AY"]
    assert [p.phone for p in spoken if second.start <= p.start < second.end] == ["M", "AH", "DH", "ER"]
    bye = speech.words[7]
    pause = [p for p in speech.phones if p.phone == "SIL" and speech.words[6].end <= p.start < bye.start]
    assert pause  # the full stop's pause lies between "times." and "Bye!", in neither


@pytest.mark.parametrize(
    ("mnemonic", "arpabet"),
    [
        ("'oU", "OW"),
        (",A@", "AA"),
        ("m", "M"),
        ("_:", "SIL"),
        ("_", "SIL"),
        ("tS", "CH"),
        ("D", "DH"),
        ("a#", "AH"),
        (";", "Y"),  # the linking glide of "the oboe"
        ("aI2", "AY"),  # en-gb-scotland's "my": a variant of aI
        ("O2", "AO"),
    ],
)
def test_espeak_phonemes_map_to_arpabet(mnemonic: str, arpabet: str) -> None:
    assert espeak_phone_to_arpabet(mnemonic) == arpabet
