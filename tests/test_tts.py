"""espeak-ng TTS through the bundled library: real audio out, clear errors in."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from facecast.tts import TTS, EspeakTTS, TTSError


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


def test_implements_protocol(tts: EspeakTTS) -> None:
    assert isinstance(tts, TTS)
    assert tts.sample_rate == 22050


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
