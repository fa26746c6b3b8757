"""FacecastVideoService frame flow through Pipecat's run_test: pairs, order, interruption, rates, settings."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    OutputTransportReadyFrame,
    ServiceUpdateSettingsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.tests.utils import SleepFrame, run_test
from pipecat_facecast import FacecastVideoService
from pipecat_pairs import StallingAvatar, assert_pairs, pictureless

from facecast.engine import Engine

AMPLITUDE = 10000


def sine(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.rint(AMPLITUDE * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def tts_frames(
    pcm: np.ndarray, rate: int, chunk_s: float = 0.1, context_id: str | None = "c1"
) -> list[Frame]:
    step = round(chunk_s * rate)
    return [
        TTSAudioRawFrame(pcm[i : i + step].tobytes(), rate, 1, context_id=context_id)
        for i in range(0, len(pcm), step)
    ]


def utterance(pcm: np.ndarray, rate: int, context_id: str = "c1") -> list[Frame]:
    return [
        TTSStartedFrame(context_id=context_id),
        *tts_frames(pcm, rate),
        TTSStoppedFrame(context_id=context_id),
    ]


def kinds(frames: list[Frame]) -> list[str]:
    return [type(f).__name__ for f in frames]


def speech(frames: list[Frame]) -> list[TTSAudioRawFrame]:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def joined(frames: list[Frame]) -> np.ndarray:
    return np.concatenate([np.frombuffer(f.audio, np.int16) for f in speech(frames)])


def index_of(frames: list[Frame], cls: type) -> int:
    return next(i for i, f in enumerate(frames) if isinstance(f, cls))


def last_index_of(frames: list[Frame], cls: type) -> int:
    return max(i for i, f in enumerate(frames) if isinstance(f, cls))


async def run(avatar: FrameProcessor, frames: list[Frame], rate: int = 24000, **kwargs):
    return await run_test(
        avatar, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=rate), **kwargs
    )


@pytest.fixture
def avatar() -> FacecastVideoService:
    # The energy tracker keeps these flow tests independent of speech recognition.
    return FacecastVideoService(tracker="energy")


async def test_pairs_follow_the_speech_in_order(avatar: FacecastVideoService) -> None:
    pcm = sine(1.0, 24000)
    frames = [
        OutputTransportReadyFrame(),
        SleepFrame(0.3),
        TTSStartedFrame(context_id="c1"),
        *tts_frames(pcm, 24000),
        TTSTextFrame("A tone.", text_type="sentence"),
        TTSStoppedFrame(context_id="c1"),
        SleepFrame(1.6),
    ]
    down, _ = await run(avatar, frames)

    audio = speech(down)
    assert len(audio) == 30  # 1 s at 30 fps, one frame's worth each
    assert all(f.sample_rate == 24000 and f.num_channels == 1 and len(f.audio) == 2 * 800 for f in audio)
    assert all(f.context_id == "c1" for f in audio)
    assert_pairs(down)
    # Nothing dropped or added: the input, then the last frame's padding.
    out = joined(down)
    assert np.array_equal(out[: len(pcm)], pcm) and not out[len(pcm) :].any()

    first_audio, last_audio = index_of(down, TTSAudioRawFrame), last_index_of(down, TTSAudioRawFrame)
    assert index_of(down, OutputImageRawFrame) < index_of(down, TTSStartedFrame) < first_audio  # idle video
    assert last_audio + 1 < index_of(down, TTSTextFrame) < index_of(down, TTSStoppedFrame)
    assert set(kinds(down[index_of(down, TTSStoppedFrame) + 1 :])) == {"OutputImageRawFrame"}  # idle again

    width, height = avatar.video_size
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    assert all(f.size == (width, height) and f.format == "RGB" for f in images)
    assert all(len(f.image) == width * height * 3 for f in images)


async def test_a_held_up_clock_catches_up_on_audio_without_queuing_pictures() -> None:
    # Images pushed in the catch-up burst would wait in the output transport's live video queue, which
    # draws one per period and drops none: the picture would trail the sound by the hold-up for good.
    # 0.2 s is 6 periods, under the live core's MAX_LAG_S (0.25 s): caught up, not moved on.
    avatar = StallingAvatar(stall_s=0.2, tracker="energy")
    pcm = sine(1.0, 24000)
    frames = [OutputTransportReadyFrame(), SleepFrame(0.3), *utterance(pcm, 24000), SleepFrame(1.6)]
    down, _ = await run(avatar, frames)

    out = joined(down)
    assert np.array_equal(out[: len(pcm)], pcm) and not out[len(pcm) :].any()  # no speech lost
    assert_pairs(down)
    # The periods the loop was held up for went out as sound only, but for the frames the core had drawn
    # ahead (queue_frames) before the hold-up.
    assert pictureless(down) >= 6 - 2
    last_audio = max(i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame))
    assert isinstance(down[last_audio + 1], OutputImageRawFrame)  # then pairs again


async def test_no_video_before_the_transport_is_ready(avatar: FacecastVideoService) -> None:
    down, _ = await run(avatar, [SleepFrame(0.3)])
    assert down == []


async def test_idle_means_video_and_no_audio(avatar: FacecastVideoService) -> None:
    down, _ = await run(
        avatar,
        [
            OutputTransportReadyFrame(),
            UserStartedSpeakingFrame(),
            SleepFrame(0.4),
            UserStoppedSpeakingFrame(),
        ],
    )
    assert kinds(down).count("OutputImageRawFrame") >= 2
    assert speech(down) == []
    assert "UserStartedSpeakingFrame" in kinds(down) and "UserStoppedSpeakingFrame" in kinds(down)


async def test_interruption_stops_speech_at_once(avatar: FacecastVideoService) -> None:
    frames = [
        OutputTransportReadyFrame(),
        *utterance(sine(3.0, 24000), 24000, "first"),
        SleepFrame(0.6),
        InterruptionFrame(),
        SleepFrame(0.2),
        *utterance(sine(0.5, 24000), 24000, "second"),
        SleepFrame(1.2),
    ]
    down, _ = await run(avatar, frames)

    cut = index_of(down, InterruptionFrame)
    before, after = down[:cut], down[cut + 1 :]
    assert 0 < len(speech(before)) < 90  # some of the 3 s were played, not all
    # Not one frame of the interrupted speech comes after the interruption.
    assert all(f.context_id == "second" for f in speech(after))
    assert len(speech(after)) == 15
    # The interrupted utterance's TTSStoppedFrame was dropped with it (as the output transport does);
    # the next utterance's comes after its audio.
    stops = [i for i, f in enumerate(down) if isinstance(f, TTSStoppedFrame)]
    assert len(stops) == 1 and stops[0] > last_index_of(down, TTSAudioRawFrame)
    assert "OutputImageRawFrame" in kinds(after[: index_of(after, TTSStartedFrame)])  # video went on


@pytest.mark.parametrize(
    ("tts_rate", "pipeline_rate"), [(16000, 24000), (24000, 44100), (22050, 16000), (48000, 48000)]
)
async def test_any_tts_rate_comes_out_at_the_pipeline_rate_without_drops(
    avatar: FacecastVideoService, tts_rate: int, pipeline_rate: int
) -> None:
    pcm = sine(0.8, tts_rate)
    half = len(pcm) // 2
    frames = [
        OutputTransportReadyFrame(),
        TTSStartedFrame(),
        *tts_frames(pcm[:half], tts_rate, chunk_s=0.02),
        SleepFrame(0.4),  # the TTS pauses mid-word: the avatar runs dry and waits
        *tts_frames(pcm[half:], tts_rate, chunk_s=0.02),
        TTSStoppedFrame(),
        SleepFrame(1.2),
    ]
    down, _ = await run(avatar, frames, rate=pipeline_rate)

    assert {f.sample_rate for f in speech(down)} == {pipeline_rate}
    out = joined(down).astype(np.float64)
    n = round(0.8 * pipeline_rate)
    assert n - 2 <= len(out) < n + math.ceil(pipeline_rate / 30) + 2  # all of it, padded to whole frames
    # The played audio is the whole sine, phase-continuous: a dropped sample anywhere would show as a
    # large error against the ideal signal (2π·440/16000 of the amplitude, ~17 %, for one sample).
    t = np.arange(n) / pipeline_rate
    ideal = AMPLITUDE * np.sin(2 * np.pi * 440.0 * t)
    edge = pipeline_rate // 100  # the filters' ramps at the very start and end
    error = np.abs(out[edge : n - edge] - ideal[edge : n - edge])
    assert error.max() < 0.03 * AMPLITUDE
    assert np.abs(out[n + edge :]).max(initial=0) < 0.03 * AMPLITUDE  # then only the last frame's padding


async def test_audio_without_tts_start_and_stop_still_plays_to_the_end(avatar: FacecastVideoService) -> None:
    pcm = sine(0.5, 24000)
    down, _ = await run(
        avatar, [OutputTransportReadyFrame(), *tts_frames(pcm, 24000, context_id=None), SleepFrame(1.3)]
    )
    out = joined(down)
    assert len(speech(down)) == 15
    assert np.array_equal(out[: len(pcm)], pcm)


async def test_end_frame_lets_the_speech_play_out(avatar: FacecastVideoService) -> None:
    down, _ = await run(avatar, [OutputTransportReadyFrame(), *utterance(sine(0.6, 24000), 24000)])
    assert len(speech(down)) == 18
    assert kinds(down).count("TTSStoppedFrame") == 1


async def test_tts_text_is_passed_on_word_by_word_for_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    texts: list[str] = []
    original = Engine.push_text

    def spy(self: Engine, text: str) -> int | None:
        texts.append(text)
        return original(self, text)

    monkeypatch.setattr(Engine, "push_text", spy)
    tokens = []
    for token in ["Hel", "lo", " world"]:
        frame = TTSTextFrame(token, text_type="word")
        frame.includes_inter_frame_spaces = True
        tokens.append(frame)
    frames = [
        OutputTransportReadyFrame(),
        TTSStartedFrame(),
        *tts_frames(sine(0.3, 24000), 24000),
        TTSTextFrame("Good", text_type="word"),
        TTSTextFrame("morning.", text_type="word"),
        TTSStoppedFrame(),
        TTSStartedFrame(),
        *tts_frames(sine(0.3, 24000), 24000),
        *tokens,
        TTSStoppedFrame(),
        SleepFrame(1.0),
    ]
    await run(FacecastVideoService(tracker="energy"), frames)
    # Complete words go to the engine as they arrive (aligned while the audio streams), word pieces
    # wait for the rest of their word, and the last word comes with the end of the utterance.
    assert texts == ["Good", "morning.", "Hello", "world"]


class WordTimestampTTS(TTSService):
    """A TTS that reports word timestamps the way ElevenLabs' and Cartesia's services do: pipecat's own
    machinery turns them into `TTSTextFrame.pts` on its clock. It speaks a tone of `seconds`, the text's
    words starting at `times`."""

    def __init__(self, times: list[float], seconds: float) -> None:
        super().__init__(
            push_text_frames=False,
            push_stop_frames=True,
            push_start_frame=True,
            sample_rate=24000,
            settings=TTSSettings(model=None, voice=None, language=None),
        )
        self._times = times
        self._seconds = seconds

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        audio = tts_frames(sine(self._seconds, 24000, 200.0), 24000, context_id=context_id)
        for i, frame in enumerate(audio):
            yield frame
            if i == 0:
                words = list(zip(text.split(), self._times, strict=True))
                await self.add_word_timestamps(words, context_id)


async def test_words_the_tts_timed_reach_the_engine_with_their_times(
    word_spans: list[tuple[str, float, float | None, bool]],
) -> None:
    times = [0.05, 0.4, 0.9]
    tts = WordTimestampTTS(times, seconds=1.4)
    # Two replies at once: the TTS times the second one's words from the first one's last word, not
    # from its own first audio, and the service must map them back onto the second utterance.
    replies = [TTSSpeakFrame("Good morning world"), TTSSpeakFrame("Bananas are yellow")]
    frames = [OutputTransportReadyFrame(), *replies, SleepFrame(4.0)]
    down, _ = await run(Pipeline([tts, FacecastVideoService(tracker="energy")]), frames)
    assert len(speech(down)) == round(2 * 1.4 * 30)
    assert [text for text, _, _, _ in word_spans] == ["Good", "morning", "world", "Bananas", "are", "yellow"]
    ends = [0.4, 0.9, None]
    for (text, start, duration, pause_after), at, end in zip(word_spans, times * 2, ends * 2, strict=True):
        # The TTS reads pipecat's clock as it sends the first audio, the service as it receives it.
        assert start == pytest.approx(at, abs=0.03), text
        assert duration is None if end is None else duration == pytest.approx(end - at, abs=1e-6)
        assert pause_after  # pipecat times when words start: a span runs on to the next one's start


async def test_settings_change_the_look_and_frame_rate_at_runtime(avatar: FacecastVideoService) -> None:
    frames = [
        OutputTransportReadyFrame(),
        SleepFrame(0.2),
        ServiceUpdateSettingsFrame(delta=FacecastVideoService.Settings(quality="low", fps=25)),
        SleepFrame(0.3),
        *utterance(sine(0.4, 24000), 24000),
        SleepFrame(1.0),
    ]
    down, _ = await run(avatar, frames)
    sizes = [f.size for f in down if isinstance(f, OutputImageRawFrame)]
    assert sizes[0] == (512, 512) and sizes[-1] == (256, 256)
    assert {len(f.audio) for f in speech(down)} == {2 * 960}  # 24 kHz at 25 fps
    assert avatar.video_size == (256, 256)


async def test_bad_settings_are_reported_and_not_applied(avatar: FacecastVideoService) -> None:
    frames = [
        OutputTransportReadyFrame(),
        ServiceUpdateSettingsFrame(delta=FacecastVideoService.Settings(avatar="nobody")),
        SleepFrame(0.2),
    ]
    _, up = await run(avatar, frames)
    assert any(isinstance(f, ErrorFrame) and "nobody" in f.error for f in up)
    assert avatar.settings.avatar == "ava"


def test_constructor_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="fps"):
        FacecastVideoService(settings=FacecastVideoService.Settings(fps=60))
    with pytest.raises(ValueError, match="quality"):
        FacecastVideoService(settings=FacecastVideoService.Settings(quality="ultra"))
    with pytest.raises(ValueError, match="api_key"):
        FacecastVideoService(server_url="http://127.0.0.1:1")
