"""PocketSphinx's decoder process finishes an utterance at the user's pause, before the VAD's stop: the
words are the same as decoding to the stop, and a user who goes on after the pause is heard whole."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("pocketsphinx")

from facecast.conversation import sphinx_worker

PIECE = 1600  # 0.1 s at 16 kHz, as the service sends them


@pytest.fixture(scope="module")
def decoder() -> Iterator[None]:
    sphinx_worker.load()  # the worker process's initializer, here in the test's process
    yield


def speech(text: str, tmp: Path) -> np.ndarray:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (scripts/test installs it)")
    path = tmp / "q.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == sphinx_worker.STT_RATE
    return pcm


def feed_all(pcm: np.ndarray) -> None:
    for i in range(0, len(pcm), PIECE):
        sphinx_worker.feed(pcm[i : i + PIECE].tobytes())


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * sphinx_worker.STT_RATE), np.int16)


def test_words_decoded_at_the_pause_are_those_decoded_at_the_stop(decoder: None, tmp_path: Path) -> None:
    pcm = np.concatenate([speech("where can i buy some bread", tmp_path), silence(0.1)])
    sphinx_worker.begin(silence(0.3).tobytes())
    feed_all(pcm)
    at_stop = sphinx_worker.finish(silence(0.1).tobytes())

    sphinx_worker.begin(silence(0.3).tobytes())
    feed_all(pcm)
    sphinx_worker.pause()
    feed_all(silence(0.1))  # the rest of the VAD's wait: held, not decoded
    at_pause = sphinx_worker.finish(b"")
    assert at_stop == at_pause
    assert "bread" in at_pause.split()


def test_speech_after_a_pause_is_decoded_with_what_came_before(decoder: None, tmp_path: Path) -> None:
    first = speech("please tell me", tmp_path)
    second = speech("a story about the moon", tmp_path)
    sphinx_worker.begin(silence(0.3).tobytes())
    feed_all(np.concatenate([first, silence(0.15)]))
    sphinx_worker.pause()
    feed_all(silence(0.05))
    sphinx_worker.resume()  # the user goes on before the VAD's stop
    feed_all(np.concatenate([second, silence(0.2)]))
    words = sphinx_worker.finish(b"").split()
    assert "please" in words and "moon" in words, words
