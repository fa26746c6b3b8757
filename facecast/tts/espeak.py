"""espeak-ng TTS through ctypes, using the library and voice data bundled in the `espeakng-loader` wheel.

libespeak-ng keeps global state (one voice, one callback, one output mode per process), so every call
into it holds `_LOCK`, and the library is initialised once per process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from facecast.phone_timing import PhoneTiming

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth blocks and delivers audio through the callback
INITIALIZE_PHONEME_EVENTS = 0x0001  # report every phoneme with its position in the audio
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1  # start of a word: its character position and length in the text
EVENT_PHONEME = 7
EVENT_END = 5  # end of a sentence
EVENT_MSG_TERMINATED = 6
ESPEAK_CHARS_UTF8 = 1
POS_CHARACTER = 1
ESPEAK_RATE = 1  # espeak_PARAMETER espeakRATE, words per minute
EE_OK = 0
DEFAULT_VOICE = "en-us"


class _EventId(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    """espeak_EVENT from speak_lib.h."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # samples since the start of the synthesis
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)

# espeak-ng's English phoneme mnemonics → ARPAbet. Stress and syllable marks are stripped first.
_ESPEAK_TO_ARPABET: dict[str, str] = {
    "@": "AH",
    "@2": "AH",
    "@5": "AH",
    "a#": "AH",
    "V": "AH",
    "3": "ER",
    "3:": "ER",
    "@r": "ER",
    "@L": "L",
    "a": "AE",
    "aa": "AA",
    "A:": "AA",
    "A@": "AA",
    "0": "AA",
    "aI": "AY",
    "aI@": "AY",
    "aI3": "AY",
    "aU": "AW",
    "aU@": "AW",
    "e": "EH",
    "E": "EH",
    "e@": "EH",
    "eI": "EY",
    "i": "IY",
    "i:": "IY",
    "i@": "IY",
    "i@3": "IY",
    "I": "IH",
    "I#": "IH",
    "I2": "IH",
    "O:": "AO",
    "O@": "AO",
    "o@": "AO",
    "O": "AO",
    "OI": "OY",
    "oU": "OW",
    "u:": "UW",
    "U": "UH",
    "U@": "UH",
    "p": "P",
    "b": "B",
    "t": "T",
    "d": "D",
    "t#": "DX",
    "k": "K",
    "g": "G",
    "f": "F",
    "v": "V",
    "T": "TH",
    "D": "DH",
    "s": "S",
    "z": "Z",
    "S": "SH",
    "Z": "ZH",
    "tS": "CH",
    "dZ": "JH",
    "m": "M",
    "n": "N",
    "n-": "N",
    "N": "NG",
    "l": "L",
    "l/": "L",
    "r": "R",
    "r-": "R",
    "w": "W",
    "j": "Y",
    "h": "HH",
    "?": "T",
    ";": "Y",  # the glide espeak-ng links two vowels with ("the_oboe", "city_orchestra")
}
_STRESS_MARKS = "',%=!"


def espeak_phone_to_arpabet(mnemonic: str) -> str:
    """ARPAbet for an espeak-ng phoneme mnemonic; pauses ("_", "_:") become SIL. Unknown symbols keep
    their first letter's sound where that is unambiguous, else they count as a generic consonant."""
    name = mnemonic.strip().lstrip(_STRESS_MARKS)
    if not name or name.startswith("_"):
        return "SIL"
    # A trailing digit marks an accent's or a position's variant of the same phoneme ("aI2", "O2", "t2").
    for candidate in (name, name.rstrip("0123456789")):
        if candidate in _ESPEAK_TO_ARPABET:
            return _ESPEAK_TO_ARPABET[candidate]
    return _ESPEAK_TO_ARPABET.get(name[0], "N")


_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_rate: int = 0
_chunks: list[np.ndarray] = []
_phones: list[tuple[str, int]] = []  # (mnemonic, start sample) of the synthesis in progress
_words: list[tuple[int, int, int]] = []  # (1-based character position, length, start sample) of its words
_end_samples: list[int] = []


class TTSError(RuntimeError):
    """Synthesis failed: empty text, unknown voice, or the speech library is unusable."""


@_SYNTH_CALLBACK
def _on_audio(wav: ctypes._Pointer, numsamples: int, events: ctypes._Pointer) -> int:
    # Called from inside espeak_Synth on the calling thread (synchronous mode), with _LOCK held.
    if numsamples > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).astype(np.int16, copy=True))
    i = 0
    while events and events[i].type != EVENT_LIST_TERMINATED:
        event = events[i]
        if event.type == EVENT_PHONEME:
            _phones.append((event.id.string.decode("ascii", "replace"), event.sample))
        elif event.type == EVENT_WORD:
            _words.append((event.text_position, event.length, event.sample))
        elif event.type in (EVENT_END, EVENT_MSG_TERMINATED):
            _end_samples.append(event.sample)
        i += 1
    return 0  # 0 = continue synthesis


def _library() -> tuple[ctypes.CDLL, int]:
    """Load and initialise libespeak-ng once; caller holds _LOCK."""
    global _lib, _rate
    if _lib is not None:
        return _lib, _rate
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise TTSError("espeak-ng TTS needs the 'espeakng-loader' package") from exc
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
    except (OSError, RuntimeError) as exc:
        raise TTSError(f"cannot load libespeak-ng from espeakng-loader: {exc}") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INITIALIZE_PHONEME_EVENTS)
    if rate <= 0:
        raise TTSError(f"espeak_Initialize failed (data path {data_path})")
    lib.espeak_SetSynthCallback(_on_audio)
    _lib, _rate = lib, rate
    return lib, rate


class EspeakTTS:
    """espeak-ng formant synthesis: robotic but instant, offline and installed by pip.

    `voice` is an espeak-ng voice name such as "en-us", "en", "de", "fr"; `rate` is words per minute.
    """

    def __init__(self, voice: str = DEFAULT_VOICE, rate: int = 165) -> None:
        self.voice = voice
        self.rate = rate
        with _LOCK:
            _, self._sample_rate = _library()

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        """Speak `text`; returns int16 mono PCM at `sample_rate` (22050 Hz)."""
        return self.synthesize_timed(text, voice).audio

    def synthesize_timed(self, text: str, voice: str | None = None) -> TimedSpeech:
        """Speak `text`, with the time of every phone spoken (what the engine's `push_phones` takes)
        and of every word (what its `push_words` takes)."""
        if not text or not text.strip():
            raise TTSError("cannot synthesize empty text")
        name = voice or self.voice
        data = text.encode("utf-8") + b"\0"
        with _LOCK:
            lib, rate = _library()
            if lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
                raise TTSError(f"unknown espeak-ng voice {name!r}")
            lib.espeak_SetParameter(ESPEAK_RATE, int(self.rate), 0)
            _chunks.clear()
            _phones.clear()
            _words.clear()
            _end_samples.clear()
            try:
                err = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
                lib.espeak_Synchronize()
                if err != EE_OK:
                    raise TTSError(f"espeak_Synth failed with code {err}")
                audio = np.concatenate(_chunks) if _chunks else np.zeros(0, dtype=np.int16)
                events = list(_phones)
                word_events = list(_words)
            finally:
                _chunks.clear()
                _phones.clear()
                _words.clear()
                _end_samples.clear()
        if audio.size == 0:
            raise TTSError(f"espeak-ng produced no audio for {text!r}")
        phones = _timings(events, len(audio), rate)
        return TimedSpeech(audio, rate, phones, _word_timings(text, word_events, phones, rate))


def _timings(events: list[tuple[str, int]], n_samples: int, rate: int) -> list[PhoneTiming]:
    """Phone events mark where each phone starts; it lasts until the next one (or the audio's end)."""
    out = []
    for k, (mnemonic, start) in enumerate(events):
        end = events[k + 1][1] if k + 1 < len(events) else n_samples
        if end > start:
            out.append(
                PhoneTiming(espeak_phone_to_arpabet(mnemonic), start / rate, min(end, n_samples) / rate)
            )
    return out


def _word_timings(
    text: str, events: list[tuple[int, int, int]], phones: list[PhoneTiming], rate: int
) -> list[WordTiming]:
    """Words with the span of their spoken phones (the pauses around them left out, as word timestamps
    from TTS services are). A word event comes shortly before its first phone. espeak-ng gives a number
    one event per spoken word ("42": forty, two) within the number's characters, and a hyphenated word
    or a function word with the next ("on the") one event: a word's text runs to the next event outside
    it, so one timing may hold more than one word of the text."""
    groups: list[list[int]] = []  # [start index, end index, start sample] into text
    for position, length, sample in events:
        first = position - 1
        if groups and first < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], first + length)
        else:
            groups.append([first, first + length, sample])
    spoken = [p for p in phones if p.phone != "SIL"]  # in order of their starts
    out = []
    i = 0
    for k, (first, _, start_sample) in enumerate(groups):
        last = groups[k + 1][0] if k + 1 < len(groups) else len(text)
        next_sample = groups[k + 1][2] if k + 1 < len(groups) else None
        while i < len(spoken) and spoken[i].start * rate < start_sample - 1:
            i += 1  # phones before this word's event (none, unless events and phones disagree)
        j = i
        while j < len(spoken) and (next_sample is None or spoken[j].start * rate < next_sample - 1):
            j += 1
        word = text[first:last].strip()
        if word and j > i:
            out.append(WordTiming(word, spoken[i].start, spoken[j - 1].end))
        i = j
    return out


@dataclass(frozen=True, slots=True)
class WordTiming:
    text: str
    start: float  # segment-relative seconds
    end: float


@dataclass(frozen=True, slots=True)
class TimedSpeech:
    audio: np.ndarray  # int16 mono
    sample_rate: int
    phones: list[PhoneTiming]  # segment-relative seconds
    words: list[WordTiming]
