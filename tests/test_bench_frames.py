"""`facecast bench frames` (the per-stage cost of one live stream) and the encoder-side changes it measures:
the WebRTC host's Opus encoder, the VP8 static-block threshold, and the zero-copy I420 frame."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from facecast.avatars import load_renderer
from facecast.bench import frames as bench_frames
from facecast.engine.animator import FaceAnimator
from facecast.hosts import webrtc

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


def test_bench_times_every_stage_of_a_speaking_and_an_idle_stream(
    speech: tuple[np.ndarray, int, str],
) -> None:
    pcm, rate, _ = speech
    frames = 45
    speaking = bench_frames.measure_stream("ava", frames, [(pcm, rate)])
    idle = bench_frames.measure_stream("ava", frames, None)
    for times in (speaking, idle):
        assert set(times.stages) == set(bench_frames.STAGE_NAMES)
        assert all(len(v) == frames for v in times.stages.values())
        for stage in ("render", "colour", "encode", "opus", "rtp", "animation"):
            assert sum(times.stages[stage]) > 0, stage
        assert len(times.video_bytes) == frames and min(times.video_bytes) > 0  # every frame was sent
    # Idle frames never run the tracker (nor the intake).
    assert speaking.speech_frames > 0
    assert sum(speaking.stages["tracking"]) > 0 and sum(speaking.stages["intake"]) > 0
    assert idle.speech_frames == 0 and sum(idle.stages["tracking"]) == 0
    table = bench_frames.stage_table("ava", {"speaking": speaking, "idle": idle}).text()
    assert "tracking" in table and "total" in table and "% core" in table


def test_two_trees_are_measured_in_their_own_processes_taking_turns(
    speech: tuple[np.ndarray, int, str], tmp_path: Path
) -> None:
    pcm, rate, _ = speech
    np.save(tmp_path / "speech.npy", pcm)
    root = Path(bench_frames.__file__).resolve().parents[2]
    logged: list[str] = []
    frames = bench_frames.BLOCK_FRAMES + 5  # two blocks: both orders
    runs = bench_frames.compare_trees(
        {"new": root, "old": root}, "ava", frames, [(str(tmp_path / "speech.npy"), rate)], logged.append
    )
    for label in ("new", "old"):
        assert set(runs[label]) == {"speaking", "idle"}
        assert runs[label]["speaking"].frames == runs[label]["idle"].frames == frames
        assert runs[label]["speaking"].speech_frames > 0 and runs[label]["idle"].speech_frames == 0
    assert logged
    table = bench_frames.compare_table("ava", runs["new"], runs["old"]).text()
    assert "new/old" in table and "bytes/frame" in table


def test_bench_command_rejects_a_tree_that_is_not_facecast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    assert bench_frames.main(["--against", str(tmp_path), "--frames", "3", "--quiet"]) == 2
    assert "is not a facecast source tree" in capsys.readouterr().err


def _audio_frames(pcm: np.ndarray, rate: int) -> list[av.AudioFrame]:
    n = rate // 50
    out = []
    for i in range(len(pcm) // n):
        f = av.AudioFrame.from_ndarray(pcm[i * n : (i + 1) * n].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = rate, i * n, Fraction(1, rate)
        out.append(f)
    return out


@pytest.mark.parametrize("rate", [48000, 24000, 16000, 44100, 22050])
def test_opus_encoder_sends_mono_at_the_frames_rate_on_a_48k_clock(rate: int) -> None:
    webrtc.tune_encoders()
    encoder = webrtc._tuned_get_encoder(OPUS)
    t = np.arange(rate) / rate  # one second: a 440 Hz tone, then the decoder's view of it
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    decoder = OpusDecoder()
    stamps, decoded = [], []
    for frame in _audio_frames(pcm, rate):
        payloads, stamp = encoder.encode(frame)
        if not payloads:  # only while a resampler (rates libopus does not take) fills its window
            assert rate not in webrtc.OPUS_INPUT_RATES and not stamps
            continue
        assert len(payloads) == 1  # one 20 ms packet per 20 ms frame: each gets its own RTP timestamp
        stamps.append(stamp)
        for out in decoder.decode(JitterFrame(payloads[0], stamp)):
            decoded.append(out.to_ndarray().reshape(-1, 2)[:, 0])
    assert stamps == [960 * i for i in range(len(stamps))] and len(stamps) >= 48
    audio = np.concatenate(decoded).astype(np.float64)
    # The tone comes out at 48 kHz: its spectrum peaks at 440 Hz and it is as loud as it went in.
    spectrum = np.abs(np.fft.rfft(audio[4800:]))
    peak_hz = np.argmax(spectrum) * 48000 / len(audio[4800:])
    assert abs(peak_hz - 440) < 5
    assert 0.8 < np.sqrt(np.mean(audio[4800:] ** 2)) / (8000 / np.sqrt(2)) < 1.2


def _opus_round_trip(pcm: np.ndarray, rate: int) -> tuple[list[int], list[int], np.ndarray]:
    """(packet sizes, RTP timestamps, decoded left channel at 48 kHz) through the host's Opus encoder."""
    encoder = webrtc._tuned_get_encoder(OPUS)
    decoder = OpusDecoder()
    sizes, stamps, decoded = [], [], []
    for frame in _audio_frames(pcm, rate):
        payloads, stamp = encoder.encode(frame)
        assert len(payloads) == 1
        sizes.append(len(payloads[0]))
        stamps.append(stamp)
        for out in decoder.decode(JitterFrame(payloads[0], stamp)):
            decoded.append(out.to_ndarray().reshape(-1, 2)[:, 0])
    return sizes, stamps, np.concatenate(decoded).astype(np.float64)


def test_opus_silence_is_sent_without_encoding_it_again_and_speech_after_it_is_unchanged(
    monkeypatch: pytest.MonkeyPatch, speech: tuple[np.ndarray, int, str]
) -> None:
    """Speech, a second of silence, speech: with the silence packet reused, what the receiver decodes
    matches encoding every frame (the codec saw only silence in between either way)."""
    pcm, rate, _ = speech
    pcm48 = np.repeat(pcm, 48000 // rate) if 48000 % rate == 0 else pytest.skip("speech rate")
    clip = pcm48[: 48000 // 2]
    audio = np.concatenate([clip, np.zeros(48000, np.int16), clip, np.zeros(9600, np.int16)])
    encodes = 0
    real_encode = av.AudioCodecContext.encode

    def counting_encode(self: av.AudioCodecContext, frame: av.AudioFrame | None = None) -> list[av.Packet]:
        nonlocal encodes
        encodes += 1
        return real_encode(self, frame)

    monkeypatch.setattr(av.AudioCodecContext, "encode", counting_encode)
    sizes, stamps, reused = _opus_round_trip(audio, 48000)
    frames = len(audio) // 960
    assert stamps == [960 * i for i in range(frames)]
    assert encodes <= frames - 40  # most of the second of silence was not encoded
    assert max(sizes[25 + 10 : 75]) <= 8  # and went out as silence packets
    monkeypatch.setattr(webrtc, "OPUS_SILENCE_SETTLE", 10**9)
    encodes = 0
    _, stamps_every, every = _opus_round_trip(audio, 48000)
    assert encodes == frames and stamps_every == stamps
    second = slice(75 * 960, 100 * 960)  # the speech after the silence, as decoded
    err = every[second] - reused[second]
    snr = 10 * np.log10(np.sum(every[second] ** 2) / max(np.sum(err**2), 1e-9))
    assert snr > 30, snr


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-9))


def _vp8_round_trip(frames: int) -> tuple[list[float], list[float]]:
    """Luma PSNR (whole frame, mouth box) of an idle avatar (breathing, swaying, blinking) through the
    tuned VP8 encoder and back, frame by frame."""
    renderer = load_renderer("ava", aspect="1:1", quality="high")
    animator = FaceAnimator(30, 0)
    encoder = webrtc._tuned_get_encoder(VP8)
    decoder = av.CodecContext.create("vp8", "r")
    x0, y0, x1, y1 = renderer.mouth_box()
    whole, mouth = [], []
    for i in range(frames):
        image = renderer.render(animator.step(None, listening=False))
        frame = webrtc.i420_frame(image)
        frame.pts, frame.time_base = i * 3000, webrtc.VIDEO_TIME_BASE
        payloads, _ = encoder.encode(frame)
        data = b"".join(vp8_depayload(p) for p in payloads)
        for out in decoder.decode(av.Packet(data)):
            got = out.to_ndarray()[:512]
            sent = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)[:512]
            whole.append(_psnr(got, sent))
            mouth.append(_psnr(got[y0:y1, x0:x1], sent[y0:y1, x0:x1]))
    assert len(whole) >= frames - 2
    return whole, mouth


def test_vp8_skipping_static_blocks_keeps_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against aiortc's threshold (1: nothing skipped), the decoded picture loses at most 2 dB on average,
    and stays above 45 dB (40 dB in the mouth box) once the rate control has settled."""
    whole, mouth = _vp8_round_trip(90)
    monkeypatch.setattr(webrtc, "VP8_STATIC_THRESHOLD", "1")
    ref_whole, ref_mouth = _vp8_round_trip(90)
    settled = slice(30, None)
    assert min(whole[settled]) > 45 and min(mouth[settled]) > 40
    assert np.mean(whole[settled]) > np.mean(ref_whole[settled]) - 2
    assert np.mean(mouth[settled]) > np.mean(ref_mouth[settled]) - 2


@pytest.mark.parametrize(
    ("size", "channels"),
    [((512, 512), 3), ((384, 512), 4), ((720, 1280), 3), ((200, 150), 3), ((202, 100), 4)],
)
def test_i420_frame_holds_exactly_what_the_copying_conversion_holds(
    size: tuple[int, int], channels: int
) -> None:
    w, h = size
    image = np.random.default_rng(1).integers(0, 256, (h, w, channels), dtype=np.uint8)
    code = cv2.COLOR_RGBA2YUV_I420 if channels == 4 else cv2.COLOR_RGB2YUV_I420
    expected = av.VideoFrame.from_ndarray(cv2.cvtColor(image, code), format="yuv420p")
    frame = webrtc.i420_frame(image)
    assert (frame.width, frame.height, frame.format.name) == (w, h, "yuv420p")
    np.testing.assert_array_equal(frame.to_ndarray(), expected.to_ndarray())
