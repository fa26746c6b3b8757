"""PocketSphinx decoding in a process of its own: the decoder holds the GIL while it runs (seconds for an
utterance on a busy machine), which would stall the event loop that paces the avatar. This module imports
nothing but pocketsphinx, so the spawned process starts quickly."""

from __future__ import annotations

from typing import Any

STT_RATE = 16000  # PocketSphinx's en-us acoustic model is trained on 16 kHz audio

_decoder: Any = None
_utterance = bytearray()  # the open utterance's audio, to decode again if the user resumes after a pause
_paused_words: str | None = None  # the words decoded at a pause, while it lasts


def new_decoder() -> Any:
    """PocketSphinx's large-vocabulary US English decoder: the acoustic model, language model and
    dictionary inside the wheel. Fewer active HMMs and word exits per frame than its defaults (30000, no
    limit): a third less CPU while the user speaks, so a busy machine's decoder keeps up with the speech
    and has less left at the VAD's stop, with the same words on the test speech (docs/full-mode.md §
    Latency)."""
    from pocketsphinx import Config, Decoder, get_model_path

    config = Config(
        hmm=get_model_path("en-us/en-us"),
        lm=get_model_path("en-us/en-us.lm.bin"),
        dict=get_model_path("en-us/cmudict-en-us.dict"),
        samprate=STT_RATE,
        maxhmmpf=3000,
        maxwpf=10,
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
    global _paused_words
    _utterance[:] = pcm
    _paused_words = None
    _decoder.start_utt()
    if pcm:
        _decoder.process_raw(pcm, no_search=False, full_utt=False)


def feed(pcm: bytes) -> None:
    """More of the utterance, decoded as it arrives (held while the utterance is paused)."""
    _utterance.extend(pcm)
    if _paused_words is None:
        _decoder.process_raw(pcm, no_search=False, full_utt=False)


def pause() -> None:
    """The user went quiet: decode to the end now, while the VAD waits to be sure, so the words are
    ready at its stop. The final passes (fwdflat, bestpath) run over the whole utterance and are the
    most of what is left to decode then."""
    global _paused_words
    if _paused_words is None:
        _decoder.end_utt()
        hypothesis = _decoder.hyp()
        _paused_words = hypothesis.hypstr.strip() if hypothesis is not None else ""


def resume() -> None:
    """The user spoke again before the VAD's stop: decode the utterance again from its start (the
    decoder cannot go on after ending one), the audio held since the pause included."""
    global _paused_words
    if _paused_words is not None:
        _paused_words = None
        _decoder.start_utt()
        _decoder.process_raw(bytes(_utterance), no_search=False, full_utt=False)


def finish(pcm: bytes) -> str:
    """The utterance's last audio (the end of the silence the VAD waited for); its words."""
    global _paused_words
    words, _paused_words = _paused_words, None
    _utterance.clear()
    if words is not None:
        return words  # decoded at the pause; what came since is the VAD's silence
    if pcm:
        _decoder.process_raw(pcm, no_search=False, full_utt=False)
    _decoder.end_utt()
    hypothesis = _decoder.hyp()
    return hypothesis.hypstr.strip() if hypothesis is not None else ""
