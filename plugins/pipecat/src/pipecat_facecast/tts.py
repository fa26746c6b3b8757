"""Offline text-to-speech with espeak-ng (bundled with Facecast): a voice for demos that need no API key.

The service is Facecast's own (facecast.tts.espeak_service), the one FULL mode speaks with; every
utterance's first ``TTSAudioRawFrame`` carries the phones espeak-ng spoke (`PHONES_METADATA_KEY`), so a
following `FacecastVideoService` moves the mouth to them exactly.
"""

from facecast.tts.espeak_service import EspeakTTSService, EspeakTTSSettings

__all__ = ["EspeakTTSService", "EspeakTTSSettings"]
