"""PocketSphinx decoding in a process of its own: the decoder holds the GIL while it runs (seconds for an
utterance on a busy machine), which would stall the event loop that paces the avatar. This module imports
nothing but pocketsphinx, so the spawned process starts quickly."""

from __future__ import annotations

from typing import Any

STT_RATE = 16000  # PocketSphinx's en-us acoustic model is trained on 16 kHz audio

_decoder: Any = None


def new_decoder() -> Any:
    """PocketSphinx's large-vocabulary US English decoder: the acoustic model, language model and
    dictionary inside the wheel."""
    from pocketsphinx import Config, Decoder, get_model_path

    config = Config(
        hmm=get_model_path("en-us/en-us"),
        lm=get_model_path("en-us/en-us.lm.bin"),
        dict=get_model_path("en-us/cmudict-en-us.dict"),
        samprate=STT_RATE,
        loglevel="FATAL",
    )
    return Decoder(config)


def load() -> None:
    """The worker process's initializer: load the decoder once."""
    global _decoder
    _decoder = new_decoder()


def ready() -> bool:
    """Answers once the initializer has loaded the decoder. (Decoding silence to warm it up would not
    do: pure digital silence skews its running cepstral mean for the utterances after it.)"""
    return _decoder is not None


def begin(pcm: bytes) -> None:
    """Start an utterance with the audio heard just before the VAD's start."""
    _decoder.start_utt()
    if pcm:
        _decoder.process_raw(pcm, no_search=False, full_utt=False)


def feed(pcm: bytes) -> None:
    """More of the utterance, decoded as it arrives."""
    _decoder.process_raw(pcm, no_search=False, full_utt=False)


def finish(pcm: bytes) -> str:
    """The utterance's last audio; its words."""
    if pcm:
        _decoder.process_raw(pcm, no_search=False, full_utt=False)
    _decoder.end_utt()
    hypothesis = _decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""
