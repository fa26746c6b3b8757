"""EspeakTTSService, and phone timings from a TTS driving the avatar's mouth."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    OutputTransportReadyFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test
from pipecat_facecast import PHONES_METADATA_KEY, FacecastVideoService
from pipecat_facecast.tts import EspeakTTSService
from pipecat_pairs import assert_pairs

from facecast.engine import Engine, PhoneTiming
from facecast.tts import espeak_service
from facecast.tts.espeak_service import TEXT_METADATA_KEY


@pytest.fixture
def pushed_phones(monkeypatch: pytest.MonkeyPatch) -> list[list[PhoneTiming]]:
    calls: list[list[PhoneTiming]] = []
    original = Engine.push_phones

    def spy(self: Engine, timings) -> int:
        calls.append(list(timings))
        return original(self, timings)

    monkeypatch.setattr(Engine, "push_phones", spy)
    return calls


async def test_espeak_speaks_at_the_pipeline_rate_with_its_phones() -> None:
    down, _ = await run_test(
        EspeakTTSService(),
        frames_to_send=[TTSSpeakFrame("Hello there, nice to meet you.")],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),
    )
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and {f.sample_rate for f in audio} == {16000}
    seconds = sum(f.num_frames for f in audio) / 16000
    assert 1.0 < seconds < 4.0
    phones = audio[0].metadata[PHONES_METADATA_KEY]
    assert all(PHONES_METADATA_KEY not in f.metadata for f in audio[1:])
    assert [p.start for p in phones] == sorted(p.start for p in phones)
    assert phones[0].start >= 0 and phones[-1].end <= seconds + 0.01
    assert {"M", "T"} <= {p.phone for p in phones}  # "meet", "to": ARPAbet, as the engine takes them
    names = [type(f).__name__ for f in down]
    assert names.index("TTSStartedFrame") < names.index("TTSAudioRawFrame")
    assert names.index("TTSStoppedFrame") > max(i for i, n in enumerate(names) if n == "TTSAudioRawFrame")


def test_the_plugin_reads_the_phones_under_the_key_the_service_writes() -> None:
    """pipecat_facecast.video keeps its own copy, so that remote mode imports no TTS (nor the engine)."""
    assert PHONES_METADATA_KEY == espeak_service.PHONES_METADATA_KEY


async def _first_audio_frame(service: EspeakTTSService, text: str) -> TTSAudioRawFrame:
    down, _ = await run_test(
        service,
        frames_to_send=[TTSSpeakFrame(text)],
        pipeline_params=PipelineParams(audio_out_sample_rate=16000),
    )
    return next(f for f in down if isinstance(f, TTSAudioRawFrame))


async def test_the_voice_comes_from_the_settings_and_the_text_rides_with_the_phones() -> None:
    """The service FULL mode speaks with (a persona's voice, as settings) is the plugin's: same frames."""
    text = "Guten Morgen, wie geht es dir?"
    default = await _first_audio_frame(EspeakTTSService(), text)
    german = await _first_audio_frame(EspeakTTSService(settings=EspeakTTSService.Settings(voice="de")), text)
    assert default.metadata[TEXT_METADATA_KEY] == german.metadata[TEXT_METADATA_KEY] == text
    phones = {
        name: [p.phone for p in f.metadata[PHONES_METADATA_KEY]]
        for name, f in (("en-us", default), ("de", german))
    }
    assert phones["en-us"] != phones["de"]  # German rules read the same letters differently


async def test_typed_text_becomes_a_speaking_avatar(pushed_phones: list[list[PhoneTiming]]) -> None:
    pipeline = Pipeline([EspeakTTSService(), FacecastVideoService()])
    frames = [OutputTransportReadyFrame(), SleepFrame(0.2), TTSSpeakFrame("Good morning."), SleepFrame(0.5)]
    down, _ = await run_test(pipeline, frames_to_send=frames)

    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(len(f.audio) == 2 * 800 for f in audio)  # the avatar's pairs, 24 kHz at 30 fps
    assert_pairs(down)
    stop = max(i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame))
    assert stop > max(i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame))
    assert len(pushed_phones) == 1 and pushed_phones[0]  # the mouth follows espeak-ng's phones


async def test_phones_of_later_chunks_move_to_the_utterance_timeline(
    pushed_phones: list[list[PhoneTiming]],
) -> None:
    rate = 24000
    first = TTSAudioRawFrame(np.zeros(rate // 2, np.int16).tobytes(), rate, 1)
    first.metadata[PHONES_METADATA_KEY] = [PhoneTiming("HH", 0.0, 0.1), PhoneTiming("AY", 0.1, 0.4)]
    second = TTSAudioRawFrame(np.zeros(rate // 2, np.int16).tobytes(), rate, 1)
    second.metadata[PHONES_METADATA_KEY] = [PhoneTiming("B", 0.05, 0.1)]
    frames = [OutputTransportReadyFrame(), TTSStartedFrame(), first, second, TTSStoppedFrame()]
    await run_test(FacecastVideoService(tracker="energy"), frames_to_send=frames)
    assert pushed_phones == [
        [PhoneTiming("HH", 0.0, 0.1), PhoneTiming("AY", 0.1, 0.4)],
        [PhoneTiming("B", 0.55, 0.6)],
    ]
