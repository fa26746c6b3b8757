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


def transcribe(decoder: Any, pcm: bytes) -> str:
    """One utterance of 16 kHz int16 mono PCM → its words ('' when nothing was recognised)."""
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""


def load() -> None:
    """The worker process's initializer: load the decoder once."""
    global _decoder
    _decoder = new_decoder()


def transcribe_here(pcm: bytes) -> str:
    """Decode with the worker process's decoder."""
    return transcribe(_decoder, pcm)
