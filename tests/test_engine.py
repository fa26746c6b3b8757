from __future__ import annotations

import itertools

import numpy as np
import pytest

from facecast.engine import (
    AudioFormatError,
    Engine,
    EngineConfig,
    FramePair,
    MouthParams,
    PhoneTiming,
    SegmentEnded,
    SegmentStarted,
)
from facecast.engine.types import REST_MOUTH


def _drain(engine: Engine, limit: int = 100_000) -> list[FramePair]:
    frames = []
    while engine.pending_speech and len(frames) < limit:
        frames.append(engine.next_frame())
    return frames


def _speech_frames(frames: list[FramePair]) -> list[FramePair]:
    return [f for f in frames if f.audio is not None]


def _events(frames: list[FramePair]) -> list[object]:
    return [e for f in frames for e in f.meta.events]


def _tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllable-like loudness
    return (0.4 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _stream(
    engine: Engine, pcm: np.ndarray, rate: int, chunk: int, text: str | None = None
) -> list[FramePair]:
    """A live host: push a chunk, pull a frame, repeat; then end the segment and drain."""
    frames = []
    for i in range(0, len(pcm), chunk):
        engine.push_audio(pcm[i : i + chunk], rate, text=text if i == 0 else None)
        frames.append(engine.next_frame())
    engine.end_segment()
    return frames + _drain(engine)


# -- clock -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "fps"), [(16000, 25), (16000, 30), (24000, 30), (48000, 25), (48000, 30)])
def test_every_frame_holds_exactly_its_slot_of_output_samples(rate: int, fps: int) -> None:
    cfg = EngineConfig(out_rate=rate, fps=fps, tracker="energy")
    engine = Engine(None, cfg)
    engine.push_audio(_tone(1.3, 22050), 22050)
    engine.end_segment()
    frames = _drain(engine)
    for f in frames:
        assert f.meta.out_sample_start == f.meta.index * rate // fps
        assert f.audio is not None and len(f.audio) == cfg.frame_samples(f.meta.index)
        assert f.meta.t == pytest.approx(f.meta.out_sample_start / rate)
    # Over one second the slots add up to exactly one second of audio: the clock cannot drift.
    assert sum(cfg.frame_samples(i) for i in range(fps)) == rate
    assert {len(f.audio) for f in frames} <= {rate // fps, rate // fps + 1}


def test_idle_frames_from_the_very_first_frame() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    frames = [engine.next_frame() for _ in range(10)]
    assert all(f.audio is None and not f.is_speech for f in frames)
    assert [f.meta.index for f in frames] == list(range(10))
    assert all(f.meta.mouth == REST_MOUTH for f in frames)
    assert not engine.pending_speech


def test_output_audio_is_the_input_resampled() -> None:
    rate_in, rate_out = 44100, 24000
    tone = _tone(1.01, rate_in, freq=300.0)
    engine = Engine(None, EngineConfig(out_rate=rate_out, tracker="energy"))
    engine.push_audio(tone, rate_in)
    engine.end_segment()
    audio = np.concatenate([f.audio for f in _speech_frames(_drain(engine))]).astype(np.float32) / 32767
    assert len(audio) >= rate_out  # padded to whole frames
    expected = np.interp(np.arange(rate_out) / rate_out, np.arange(len(tone)) / rate_in, tone)
    assert np.abs(audio[:rate_out] - expected)[100:-100].max() < 0.01
    assert len(audio) % 800 == 0 and len(audio) > 24240
    assert np.abs(audio[24240:]).max() == 0  # end-of-segment padding is silence


def test_lookahead_delays_the_first_speech_frame_in_a_live_stream() -> None:
    cfg = EngineConfig(out_rate=24000, fps=25, lookahead_ms=120, tracker="energy")
    engine = Engine(None, cfg)
    tone = _tone(1.0, 24000)
    frames = _stream(engine, tone, 24000, chunk=960)  # one frame of audio per pull
    first_speech = next(i for i, f in enumerate(frames) if f.is_speech)
    # Speech starts once frame + look-ahead (40 + 120 ms) are buffered: after the 4th push.
    assert first_speech == 3
    # ...and every input sample is still played, in order, exactly once.
    speech = _speech_frames(frames)
    assert speech[0].meta.input_start == 0
    for a, b in itertools.pairwise(speech):
        assert b.meta.input_start == a.meta.input_end
    assert speech[-1].meta.input_end == len(tone)


# -- determinism ---------------------------------------------------------------------------------------


def _fingerprint(frames: list[FramePair]) -> list[tuple]:
    return [
        (
            f.meta.index,
            f.audio.tobytes() if f.audio is not None else None,
            f.meta.mouth,
            f.meta.state,
            f.meta.events,
        )
        for f in frames
    ]


def test_same_output_whatever_the_chunk_sizes(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, _ = speech
    cfg = EngineConfig(out_rate=24000, fps=30, lookahead_ms=100)
    whole = Engine(None, cfg)
    whole.push_audio(pcm, rate)
    whole.end_segment()
    reference = _speech_frames(_drain(whole))

    rng = np.random.default_rng(7)
    chunked = Engine(None, cfg)
    data, i, pulled = pcm.tobytes(), 0, []
    while i < len(data):
        n = int(rng.integers(1, 3000))  # odd byte counts split samples
        chunked.push_audio(data[i : i + n], rate)
        i += n
        if rng.random() < 0.5:
            pulled.append(chunked.next_frame())
    chunked.end_segment()
    pulled += _drain(chunked)
    streamed = _speech_frames(pulled)

    key = [(f.audio.tobytes(), f.meta.mouth, f.meta.input_start) for f in reference]
    assert key == [(f.audio.tobytes(), f.meta.mouth, f.meta.input_start) for f in streamed]


@pytest.mark.parametrize("tracker", ["phones", "energy"])
def test_an_ended_segment_reads_features_computed_ahead_exactly_as_frame_by_frame(
    speech: tuple[np.ndarray, int, str], tracker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file (all audio pushed, then end_segment) has its energy features computed in blocks ahead of
    the frames that read them; every frame must be the one computing them frame by frame gives."""
    from facecast.engine import tracker as tracker_module
    from facecast.engine.mouth_track import mouth_track_record

    pcm, rate, _ = speech
    cfg = EngineConfig(out_rate=24000, fps=30, tracker=tracker)

    def render_offline() -> list[dict]:
        engine = Engine(None, cfg)
        engine.push_audio(pcm, rate)
        engine.end_segment()
        return [mouth_track_record(f.meta) for f in _drain(engine)]

    ahead = render_offline()
    assert len(pcm) * 16000 // rate > tracker_module.FEATURE_BLOCK * tracker_module.HOP  # more than one block
    monkeypatch.setattr(tracker_module, "FEATURE_BLOCK", 0)  # no look-ahead: the streaming computation
    assert render_offline() == ahead


def test_same_input_and_seed_give_the_same_face(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, _ = speech
    runs = []
    for _ in range(2):
        engine = Engine(None, EngineConfig(seed=3))
        idle = [engine.next_frame() for _ in range(20)]
        runs.append(_fingerprint(idle + _stream(engine, pcm, rate, chunk=480)))
    assert runs[0] == runs[1]
    other = Engine(None, EngineConfig(seed=4))
    assert _fingerprint([other.next_frame() for _ in range(200)]) != runs[0][:200]


# -- segments and clear ------------------------------------------------------------------------------


def test_one_start_and_one_end_marker_per_segment() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    for seconds in (0.5, 0.3):
        engine.push_audio(_tone(seconds, 16000), 16000)
        engine.end_segment()
    engine.end_segment()  # an empty segment
    frames = _drain(engine)
    events = _events(frames)
    assert events == [
        SegmentStarted(0),
        SegmentEnded(0, pytest.approx(0.5), interrupted=False),
        SegmentStarted(1),
        SegmentEnded(1, pytest.approx(0.3), interrupted=False),
        SegmentEnded(2, 0.0, interrupted=False),
    ]
    # The end marker rides on the segment's last speech frame.
    last0 = max(i for i, f in enumerate(frames) if f.meta.segment_id == 0)
    assert SegmentEnded(0, pytest.approx(0.5), interrupted=False) in frames[last0].meta.events
    assert not engine.pending_speech


def test_clear_stops_speech_at_once_and_the_mouth_rests_within_two_frames() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    engine.push_audio(_tone(2.0, 16000), 16000)
    engine.push_audio(_tone(1.0, 16000), 16000)
    engine.end_segment()
    engine.push_audio(_tone(1.0, 16000), 16000)  # queued second segment, not started
    frames = [engine.next_frame() for _ in range(20)]
    assert max(f.meta.mouth.open for f in frames[-5:]) > 0.1
    engine.clear()
    after = [engine.next_frame() for _ in range(5)]
    assert all(f.audio is None for f in after)
    assert after[1].meta.mouth == REST_MOUTH
    assert after[0].meta.mouth.open <= frames[-1].meta.mouth.open
    ended = _events(after)
    assert ended[0] == SegmentEnded(0, pytest.approx(20 / 30), interrupted=True)
    assert ended[1] == SegmentEnded(1, 0.0, interrupted=True)
    assert not engine.pending_speech
    # The engine speaks again after an interrupt.
    engine.push_audio(_tone(0.4, 16000), 16000)
    engine.end_segment()
    again = _drain(engine)
    assert SegmentStarted(2) in _events(again)
    assert _speech_frames(again)


def test_playback_position_and_input_ranges_follow_the_audio() -> None:
    engine = Engine(None, EngineConfig(out_rate=24000, fps=25, tracker="energy"))
    engine.push_audio(_tone(1.0, 8000), 8000)
    engine.end_segment()
    speech = _speech_frames(_drain(engine))
    positions = [f.meta.playback_position for f in speech]
    assert positions == sorted(positions)
    assert positions[0] == pytest.approx(0.04)
    assert positions[-1] == pytest.approx(1.0)
    assert speech[0].meta.input_start == 0 and speech[0].meta.input_end == 320


# -- malformed input ---------------------------------------------------------------------------------


def test_malformed_input_is_rejected_or_made_safe() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    with pytest.raises(AudioFormatError, match="sample_rate"):
        engine.push_audio(np.zeros(100, np.int16), 1_000_000)
    with pytest.raises(AudioFormatError, match="channels"):
        engine.push_audio(np.zeros(100, np.int16), 16000, channels=0)
    engine.push_audio(b"", 16000)  # empty chunks are fine
    engine.push_audio(np.zeros(0, np.float32), 16000)
    engine.push_audio(b"\x01", 16000)  # half a sample waits for its other half
    bad = _tone(0.3, 16000)
    bad[::50] = np.nan
    bad[1::50] = np.inf
    engine.push_audio(bad, 16000)
    with pytest.raises(AudioFormatError, match="end_segment"):
        engine.push_audio(np.zeros(100, np.int16), 24000)  # format change inside a segment
    engine.end_segment()
    frames = _drain(engine)
    for f in _speech_frames(frames):
        assert f.audio is not None and np.isfinite(f.audio.astype(np.float32)).all()
        assert np.isfinite(list(f.meta.mouth.as_dict().values())[:-1]).all()


def test_a_rejected_first_push_leaves_nothing_pending() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    with pytest.raises(AudioFormatError, match="int16 PCM or float32"):
        engine.push_audio(np.zeros(100, np.int32), 16000)
    with pytest.raises(AudioFormatError, match="bytes"):
        engine.push_audio([0, 1, 2], 16000)  # type: ignore[arg-type]
    assert not engine.pending_speech
    assert not engine.next_frame().meta.events


def test_a_ten_minute_chunk_is_accepted_and_can_be_interrupted() -> None:
    engine = Engine(None, EngineConfig(out_rate=16000, tracker="energy"))
    engine.push_audio(np.zeros(10 * 60 * 16000, np.int16), 16000)
    frames = [engine.next_frame() for _ in range(10)]
    assert all(f.is_speech for f in frames)
    engine.clear()
    assert not engine.next_frame().is_speech
    assert not engine.pending_speech


@pytest.mark.parametrize(
    "kwargs",
    [{"fps": 24}, {"out_rate": 44100}, {"lookahead_ms": 500}, {"lookahead_ms": -1}, {"tracker": "x"}],
)
def test_bad_configuration_names_the_valid_choices(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        EngineConfig(**kwargs)


# -- mouth tracking -----------------------------------------------------------------------------------


def test_silence_keeps_the_mouth_at_rest() -> None:
    for tracker in ("phones", "energy"):
        engine = Engine(None, EngineConfig(tracker=tracker))
        engine.push_audio(np.zeros(16000, np.int16), 16000)
        engine.end_segment()
        speech = _speech_frames(_drain(engine))
        assert speech and all(f.meta.mouth.open < 0.02 for f in speech)


def test_speech_moves_the_mouth_and_closes_it_for_m_b_p(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, _ = speech
    engine = Engine(None, EngineConfig())
    frames = _speech_frames(_stream(engine, pcm, rate, chunk=320))
    opens = np.array([f.meta.mouth.open for f in frames])
    assert opens.max() > 0.5 and opens.std() > 0.1
    visemes = {f.meta.mouth.viseme for f in frames}
    assert {"A", "B", "C", "D"} <= visemes  # "my", "Bob", "maps" close the lips
    closed = [f for f in frames if f.meta.mouth.viseme == "A"]
    assert all(f.meta.mouth.closed > 0.9 and f.meta.mouth.open < 0.05 for f in closed)
    assert {f.meta.mouth_source for f in frames} <= {"phones", "energy"}


def test_known_text_switches_to_forced_alignment(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, text = speech
    engine = Engine(None, EngineConfig())
    engine.push_audio(pcm, rate, text=text)
    engine.end_segment()
    sources = {f.meta.mouth_source for f in _speech_frames(_drain(engine))}
    assert sources == {"alignment"}


def test_unknown_words_fall_back_to_recognition(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, _ = speech
    engine = Engine(None, EngineConfig())
    engine.push_audio(pcm, rate, text="Zxqvbnm glorptastic wuzzlefrump")
    engine.end_segment()
    sources = {f.meta.mouth_source for f in _speech_frames(_drain(engine))}
    assert "alignment" not in sources and "phones" in sources


def test_non_english_uses_the_energy_tracker(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, text = speech
    engine = Engine(None, EngineConfig(language="de"))
    engine.push_audio(pcm, rate, text=text)
    engine.end_segment()
    frames = _speech_frames(_drain(engine))
    assert {f.meta.mouth_source for f in frames} == {"energy"}
    assert max(f.meta.mouth.open for f in frames) > 0.4


# -- life -----------------------------------------------------------------------------------------------


def test_idle_face_blinks_breathes_and_moves() -> None:
    engine = Engine(None, EngineConfig(fps=30, seed=11))
    states = [engine.next_frame().meta.state for _ in range(30 * 20)]
    blinks = np.array([s.blink for s in states])
    closures = np.flatnonzero((blinks[1:] >= 0.99) & (blinks[:-1] < 0.99))
    assert 3 <= len(closures) <= 12  # every 2-5.5 s, some doubled
    assert np.ptp([s.breath for s in states]) > 1.5
    assert np.ptp([s.head_yaw for s in states]) > 1.0
    assert np.ptp([s.gaze_x for s in states]) > 0.05
    assert all(s.mouth == REST_MOUTH for s in states)


def test_double_blinks_happen() -> None:
    engine = Engine(None, EngineConfig(fps=30, seed=5))
    blinks = np.array([engine.next_frame().meta.state.blink for _ in range(30 * 120)])
    starts = np.flatnonzero((blinks[1:] > 0) & (blinks[:-1] == 0))
    assert (np.diff(starts) < 15).any()  # two blinks within half a second


def test_listening_pose_differs_from_idle() -> None:
    idle = Engine(None, EngineConfig(seed=2))
    listening = Engine(None, EngineConfig(seed=2))
    listening.set_listening(True)
    a = [idle.next_frame().meta.state for _ in range(60)][-1]
    b = [listening.next_frame().meta.state for _ in range(60)][-1]
    assert b.listening and not a.listening
    assert b.head_roll - a.head_roll > 1.5  # attentive tilt
    assert b.brow > a.brow


# -- reported phone timings ---------------------------------------------------------------------------


def test_reported_phone_timings_drive_the_mouth() -> None:
    engine = Engine(None, EngineConfig())
    engine.push_audio(_tone(1.0, 16000), 16000)
    timings = [("SIL", 0.0, 0.1), ("AA", 0.1, 0.4), ("M", 0.4, 0.6), ("IY", 0.6, 0.9), ("SIL", 0.9, 1.0)]
    engine.push_phones([PhoneTiming(*t) for t in timings])
    engine.end_segment()
    speech = _speech_frames(_drain(engine))
    assert {f.meta.mouth_source for f in speech} == {"timings"}

    def at(t: float) -> MouthParams:
        return next(f.meta.mouth for f in speech if f.meta.input_start <= t * 16000 < f.meta.input_end)

    assert at(0.25).viseme == "D" and at(0.25).open > 0.6
    assert at(0.5).viseme == "A" and at(0.5).closed == 1.0
    assert at(0.75).viseme == "B"
    assert at(0.95).viseme == "X"


def test_partial_timings_hand_over_to_recognition(speech: tuple[np.ndarray, int, str]) -> None:
    pcm, rate, _ = speech
    engine = Engine(None, EngineConfig())
    engine.push_audio(pcm, rate)
    engine.push_phones([PhoneTiming("HH", 0.0, 0.5), PhoneTiming("AH", 0.5, 1.0)])
    engine.end_segment()
    frames = _speech_frames(_drain(engine))
    sources = [f.meta.mouth_source for f in frames]
    assert sources[0] == "timings" and sources[-10] == "phones"
    # Recognition that starts mid-segment still places its phones on the segment's timeline.
    late = [f for f in frames if f.meta.mouth_source == "phones"]
    assert {"A", "D"} & {f.meta.mouth.viseme for f in late}


@pytest.mark.parametrize("timing", [("M", -0.1, 0.2), ("M", 0.5, 0.2), ("M", float("nan"), 0.2)])
def test_invalid_phone_timings_are_rejected(timing: tuple[str, float, float]) -> None:
    engine = Engine(None, EngineConfig())
    with pytest.raises(ValueError, match="not a valid interval"):
        engine.push_phones([PhoneTiming(*timing)])


def test_push_returns_the_segment_id_its_events_carry() -> None:
    engine = Engine(None, EngineConfig(fps=25, out_rate=16000, tracker="energy"))
    tone = (np.sin(np.arange(3200) / 5.0) * 8000).astype(np.int16)
    first = engine.push_audio(tone, 16000)
    assert engine.push_audio(tone, 16000) == first
    engine.end_segment()
    second = engine.push_audio(tone, 16000)
    assert second == first + 1
    engine.end_segment()
    events = [e for _ in range(40) for e in engine.next_frame().meta.events]
    assert [e.segment_id for e in events] == [first, first, second, second]


def test_unrendered_frame_still_advances_audio() -> None:
    from facecast.avatars import load_renderer

    engine = Engine(load_renderer("ava", quality="low"), EngineConfig(fps=25, out_rate=16000))
    engine.push_audio(np.zeros(1600, np.int16), 16000)
    engine.end_segment()
    skipped = engine.next_frame(render=False)
    drawn = engine.next_frame()
    assert skipped.video is None and skipped.audio is not None and len(skipped.audio) == 640
    assert drawn.video is not None and drawn.meta.index == 1


def test_open_segment_names_the_utterance_before_its_audio() -> None:
    engine = Engine(None, EngineConfig(fps=25, out_rate=16000, tracker="energy"))
    opened = engine.open_segment()
    assert engine.open_segment() == opened  # still the same open segment
    tone = (np.sin(np.arange(3200) / 5.0) * 8000).astype(np.int16)
    assert engine.push_audio(tone, 16000) == opened
    engine.end_segment()
    assert engine.open_segment() == opened + 1


def test_segments_carry_the_tag_the_host_gave_them() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    engine.push_audio(np.full(1600, 3000, np.int16), 16000, tag="first")
    engine.end_segment()
    engine.open_segment(7)
    engine.open_segment(7)  # naming the open segment again is fine
    with pytest.raises(ValueError, match="open as 7"):
        engine.open_segment(8)
    with pytest.raises(AudioFormatError):
        engine.push_audio(np.zeros(10, np.int64), 16000)  # int64: refused, segment 7 stays open
    engine.push_audio(np.full(800, 3000, np.int16), 16000)
    engine.end_segment()
    frames = _drain(engine)
    events = [(type(e).__name__, e.tag) for f in frames for e in f.meta.events]
    assert events == [
        ("SegmentStarted", "first"), ("SegmentEnded", "first"), ("SegmentStarted", 7), ("SegmentEnded", 7),
    ]  # fmt: skip
    assert {f.meta.segment_tag for f in frames if f.is_speech} == {"first", 7}
    assert all(f.meta.segment_tag is None for f in frames if not f.is_speech)


def test_a_refused_first_push_leaves_no_named_segment_behind() -> None:
    engine = Engine(None, EngineConfig(tracker="energy"))
    with pytest.raises(AudioFormatError):
        engine.push_audio(np.zeros(10, np.int64), 16000, tag="bad")
    assert not engine.pending_speech
    engine.push_audio(np.full(800, 3000, np.int16), 16000, tag="good")  # no clash with "bad"
    engine.end_segment()
    assert {e.tag for f in _drain(engine) for e in f.meta.events} == {"good"}


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 48000), (44100, 48000), (48000, 16000)])
@pytest.mark.parametrize("chunk", [1, 533, 4096])
def test_streamed_resampling_is_the_polyphase_sum_exactly(in_rate: int, out_rate: int, chunk: int) -> None:
    """Every output sample, wherever the chunks fall, is its polyphase sum over the zero-padded input,
    bit for bit: the steady-state gather and the edge path compute the same thing."""
    from facecast.engine.intake import StreamResampler

    x = (np.random.default_rng(3).standard_normal(in_rate // 4) * 0.2).astype(np.float32)
    r = StreamResampler(in_rate, out_rate)
    out = np.concatenate([r.process(x[i : i + chunk]) for i in range(0, len(x), chunk)] + [r.flush()])
    ref = StreamResampler(in_rate, out_rate)
    m = np.arange(len(out), dtype=np.int64)
    k = m * ref._down + ref._delay
    idx = (k // ref._up)[:, None] - np.arange(ref._taps)[None, :]
    padded = np.concatenate([x, np.zeros(ref._taps, np.float32)])
    vals = np.where(idx >= 0, padded[np.clip(idx, 0, len(padded) - 1)], np.float32(0.0))
    vals[idx >= len(x)] = 0.0
    expected = (vals * ref._bank[k % ref._up]).sum(axis=1, dtype=np.float32)
    assert len(out) == -(-len(x) * out_rate // in_rate)
    np.testing.assert_array_equal(out, expected)


def test_speech_ready_says_whether_the_next_frame_carries_speech() -> None:
    engine = Engine(None, EngineConfig(fps=30, out_rate=16000, tracker="energy"))
    assert not engine.speech_ready
    engine.push_audio(_tone(0.05, 16000), 16000)  # less than a frame plus the look-ahead
    assert not engine.speech_ready
    assert engine.next_frame().audio is None
    engine.push_audio(_tone(0.5, 16000), 16000)
    assert engine.speech_ready
    assert engine.next_frame().audio is not None
    engine.end_segment()
    while engine.speech_ready:
        assert engine.next_frame().audio is not None
    assert engine.next_frame().audio is None and not engine.pending_speech
