"""espeak-ng TTS through ctypes, using the library and voice data bundled in the `espeakng-loader` wheel.

libespeak-ng keeps global state (one voice, one callback, one output mode per process), so every call
into it holds `_LOCK`, and the library is initialised once per process.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth blocks and delivers audio through the callback
ESPEAK_CHARS_UTF8 = 1
POS_CHARACTER = 1
ESPEAK_RATE = 1  # espeak_PARAMETER espeakRATE, words per minute
EE_OK = 0
DEFAULT_VOICE = "en-us"

# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_rate: int = 0
_chunks: list[np.ndarray] = []


class TTSError(RuntimeError):
    """Synthesis failed: empty text, unknown voice, or the speech library is unusable."""


@_SYNTH_CALLBACK
def _on_audio(wav: ctypes._Pointer, numsamples: int, _events: int) -> int:
    # Called from inside espeak_Synth on the calling thread (synchronous mode), with _LOCK held.
    if numsamples > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).astype(np.int16, copy=True))
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
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
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
        if not text or not text.strip():
            raise TTSError("cannot synthesize empty text")
        name = voice or self.voice
        data = text.encode("utf-8") + b"\0"
        with _LOCK:
            lib, _ = _library()
            if lib.espeak_SetVoiceByName(name.encode()) != EE_OK:
                raise TTSError(f"unknown espeak-ng voice {name!r}")
            lib.espeak_SetParameter(ESPEAK_RATE, int(self.rate), 0)
            _chunks.clear()
            try:
                err = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
                lib.espeak_Synchronize()
                if err != EE_OK:
                    raise TTSError(f"espeak_Synth failed with code {err}")
                audio = np.concatenate(_chunks) if _chunks else np.zeros(0, dtype=np.int16)
            finally:
                _chunks.clear()
        if audio.size == 0:
            raise TTSError(f"espeak-ng produced no audio for {text!r}")
        return audio
