"""Offline file host: decoding, MP4 muxing and A/V sync, the --params JSONL, and error messages."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from facecast.engine.mouth_track import BLENDSHAPE_NAMES
from facecast.engine.types import VISEMES, FaceState
from facecast.hosts.file import MediaError, Mp4Encoder, Mp4Writer, RenderOptions, read_audio, render_file
from facecast.hosts.progress import Progress
from facecast.hosts.render_pool import RenderPipeline, RenderPipelineError

RATE = 16000
FPS = 30
# A silence–burst–silence test signal: the burst is a steady voiced vowel-like tone.
BURST_START_S, BURST_END_S, TOTAL_S = 1.0, 1.6, 2.6


def vowel(seconds: float, rate: int, f0: float = 140.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    # Harmonics with a ~1/k roll-off and formant-like boosts near 700 and 1200 Hz, like an open "ah".
    wave = np.zeros_like(t)
    for k in range(1, 25):
        f = k * f0
        gain = 1 / k + 0.8 * math.exp(-(((f - 700) / 150) ** 2)) + 0.5 * math.exp(-(((f - 1200) / 200) ** 2))
        wave += gain * np.sin(2 * np.pi * f * t)
    return wave / np.abs(wave).max()


def burst_signal(rate: int = RATE) -> np.ndarray:
    sig = np.zeros(int(TOTAL_S * rate))
    start = int(BURST_START_S * rate)
    burst = vowel(BURST_END_S - BURST_START_S, rate)
    sig[start : start + burst.size] = 0.6 * burst
    return (sig * 32767).astype(np.int16)


def speechlike(seconds: float = 1.0, rate: int = RATE, channels: int = 1) -> np.ndarray:
    mono = (0.5 * vowel(seconds, rate) * 32767).astype(np.int16)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def write_with_pyav(path: Path, pcm: np.ndarray, rate: int, codec: str) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def streams_of(path: Path) -> dict[str, str]:
    with av.open(str(path)) as c:
        return {s.type: s.codec_context.name for s in c.streams}


def video_frame_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def first_loud(pcm: np.ndarray, rate: int, threshold: int = 3000) -> tuple[float, float]:
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > threshold)[0]
    return loud[0] / rate, loud[-1] / rate


# --- decoding -------------------------------------------------------------------------------------


def test_read_wav_exact(tmp_path: Path) -> None:
    pcm = speechlike()
    sf.write(tmp_path / "a.wav", pcm, RATE, subtype="PCM_16")
    got, rate = read_audio(tmp_path / "a.wav")
    assert rate == RATE and got.dtype == np.int16
    assert np.array_equal(got, pcm)


def test_read_stereo_keeps_channels(tmp_path: Path) -> None:
    pcm = speechlike(channels=2)
    sf.write(tmp_path / "s.wav", pcm, 44100, subtype="PCM_16")
    got, rate = read_audio(tmp_path / "s.wav")
    assert rate == 44100 and got.shape == pcm.shape
    assert np.array_equal(got, pcm)


def test_read_flac_exact(tmp_path: Path) -> None:
    pcm = speechlike()
    sf.write(tmp_path / "a.flac", pcm, RATE)
    got, rate = read_audio(tmp_path / "a.flac")
    assert rate == RATE and np.array_equal(got, pcm)


def test_read_ogg(tmp_path: Path) -> None:
    pcm = speechlike(rate=22050)
    sf.write(tmp_path / "a.ogg", pcm, 22050, format="OGG", subtype="VORBIS")
    got, rate = read_audio(tmp_path / "a.ogg")
    assert rate == 22050 and got.ndim == 1
    assert abs(got.size - pcm.size) < 2048  # at most one Vorbis block of padding
    assert np.abs(got.astype(np.int32)).max() > 8000


def test_read_mp3(tmp_path: Path) -> None:
    pcm = speechlike(rate=24000)
    write_with_pyav(tmp_path / "a.mp3", pcm, 24000, "libmp3lame")
    got, rate = read_audio(tmp_path / "a.mp3")
    assert rate == 24000 and got.ndim == 1
    assert abs(got.size - pcm.size) < 2 * 1152  # MP3 encoder delay and padding
    assert np.abs(got.astype(np.int32)).max() > 8000


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not found"):
        read_audio(tmp_path / "nope.wav")


def test_directory_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="directory"):
        read_audio(tmp_path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(MediaError, match="cannot decode"):
        read_audio(path)


def test_empty_audio(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), RATE, subtype="PCM_16")
    with pytest.raises(MediaError, match="no audio samples"):
        read_audio(tmp_path / "empty.wav")


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(path)


# --- muxing (no engine): timestamps put audio and video on one clock ------------------------------


def test_mp4_writer_sync(tmp_path: Path) -> None:
    out_rate, n_frames, burst = 24000, 60, range(30, 40)
    path = tmp_path / "syn.mp4"
    writer = Mp4Writer(path, width=95, height=63, fps=FPS, sample_rate=out_rate)  # odd sizes get padded
    rng = np.random.default_rng(0)
    for i in range(n_frames):
        n = (i + 1) * out_rate // FPS - i * out_rate // FPS
        picture = np.zeros((63, 95, 3), np.uint8)
        audio = np.zeros(n, np.int16)
        if i in burst:
            picture[:] = 255
            audio = (rng.standard_normal(n) * 6000).astype(np.int16)
        writer.write(picture, audio)
    writer.close()

    assert streams_of(path) == {"video": "h264", "audio": "aac"}
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (96, 64)
        white = [
            round(float(f.pts * stream.time_base) * FPS)
            for f in c.decode(stream)
            if f.to_ndarray(format="gray")[32, 48] > 200
        ]
    assert white == list(burst)
    pcm, rate = read_audio(path)
    start, end = first_loud(pcm, rate, threshold=2000)
    assert start == pytest.approx(burst.start / FPS, abs=0.005)  # AAC smears an onset by a few ms
    assert end == pytest.approx(burst.stop / FPS, abs=0.005)  # AAC smears an onset by a few ms


@pytest.mark.parametrize(("width", "height"), [(96, 64), (94, 62)])  # even and odd chroma heights
def test_mp4_encoder_may_reuse_a_picture_buffer_at_once(tmp_path: Path, width: int, height: int) -> None:
    """The encoder wraps an I420 picture instead of copying it where it can: overwriting the buffer
    as soon as encode returns (as the render pipeline's ring does) must give the file that a fresh
    buffer per frame gives."""
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (height * 3 // 2, width), dtype=np.uint8) for _ in range(12)]
    audio = np.zeros(24000 // FPS, np.int16)
    files = []
    for name in ("fresh", "reused"):
        path = tmp_path / f"{name}.mp4"
        encoder = Mp4Encoder(path, width=width, height=height, fps=FPS, sample_rate=24000)
        shared = np.zeros_like(pictures[0])
        for picture in pictures:
            if name == "fresh":
                encoder.encode(picture.copy(), audio)
            else:
                shared[:] = picture
                encoder.encode(shared, audio)
                shared[:] = 0  # what a render worker writing the next frame into the slot does
        encoder.close()
        files.append(path.read_bytes())
    assert files[0] == files[1]
    with av.open(str(tmp_path / "reused.mp4")) as c:
        luma = [f.to_ndarray(format="yuv420p")[:height] for f in c.decode(video=0)]
    assert len(luma) == len(pictures)
    # ultrafast at crf 23 keeps random noise only roughly: the frames still match their own source best
    for i, y in enumerate(luma):
        errors = [np.abs(y.astype(int) - p[:height].astype(int)).mean() for p in pictures]
        assert int(np.argmin(errors)) == i


# --- rendering through the engine ----------------------------------------------------------------


@pytest.fixture(scope="module")
def burst_render(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    d = tmp_path_factory.mktemp("burst")
    sf.write(d / "burst.wav", burst_signal(), RATE, subtype="PCM_16")
    options = RenderOptions(fps=FPS, tracker="energy", params_path=d / "burst.jsonl", progress=False)
    report = render_file(d / "burst.wav", d / "burst.mp4", options)
    return d / "burst.mp4", d / "burst.jsonl", report


def load_params(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_render_streams_and_counts(burst_render: tuple[Path, Path, object]) -> None:
    mp4, _, report = burst_render
    expected = math.ceil(TOTAL_S * FPS)
    assert abs(report.frames - expected) <= 1
    assert report.out_path == mp4 and report.realtime_factor > 0
    assert streams_of(mp4) == {"video": "h264", "audio": "aac"}
    assert abs(video_frame_count(mp4) - expected) <= 1
    with av.open(str(mp4)) as c:
        v = c.streams.video[0]
        assert v.codec_context.pix_fmt == "yuv420p"
        assert v.average_rate == Fraction(FPS)
    pcm, rate = read_audio(mp4)
    assert pcm.size / rate == pytest.approx(TOTAL_S, abs=2 / FPS)


def test_params_jsonl(burst_render: tuple[Path, Path, object]) -> None:
    _, params, report = burst_render
    rows = load_params(params)
    assert len(rows) == report.frames
    keys = {
        "v",
        "t",
        "frame",
        "viseme",
        "open",
        "width",
        "round",
        "closed",
        "teeth",
        "tongue",
        "bite",
        "source",
        "speaking",
        "blink",
        "head_yaw",
        "head_pitch",
        "head_roll",
        "segment_id",
        "gaze_x",
        "gaze_y",
        "brow",
        "smile",
        "blendshapes",
    }
    for i, row in enumerate(rows):
        assert set(row) == keys
        assert list(row["blendshapes"]) == list(BLENDSHAPE_NAMES)
        assert all(0.0 <= w <= 1.0 for w in row["blendshapes"].values()), row
        assert row["v"] == 1 and row["frame"] == i
        assert row["t"] == pytest.approx(i / FPS, abs=1e-6)
        assert row["viseme"] in VISEMES
        assert row["source"] in {"phones", "alignment", "energy", "rest"}
        assert isinstance(row["speaking"], bool)
        for k in ("open", "width", "round", "closed", "teeth", "tongue", "bite", "blink"):
            assert 0.0 <= row[k] <= 1.0, (k, row)


def test_mouth_opens_only_during_burst(burst_render: tuple[Path, Path, object]) -> None:
    _, params, _ = burst_render
    rows = load_params(params)
    open_frames = [r["frame"] for r in rows if r["open"] > 0.2]
    first, last = round(BURST_START_S * FPS), round(BURST_END_S * FPS)
    assert open_frames, "the mouth never opened during the burst"
    assert all(first - 2 <= f <= last + 2 for f in open_frames), open_frames
    # The burst is a steady vowel: the mouth is open for most of it.
    assert len(open_frames) >= 0.6 * (last - first)


def test_burst_audio_at_same_time_in_mp4(burst_render: tuple[Path, Path, object]) -> None:
    mp4, _, _ = burst_render
    pcm, rate = read_audio(mp4)
    start, end = first_loud(pcm, rate)
    assert start == pytest.approx(BURST_START_S, abs=1 / FPS)
    assert end == pytest.approx(BURST_END_S, abs=1 / FPS)


def test_render_stereo_48k_mp3(tmp_path: Path) -> None:
    pcm = np.concatenate([np.zeros((4800, 2), np.int16), speechlike(0.5, 48000, channels=2)])
    sf.write(tmp_path / "st.wav", pcm, 48000, subtype="PCM_16")
    report = render_file(
        tmp_path / "st.wav", tmp_path / "st.mp4", RenderOptions(tracker="energy", progress=False)
    )
    assert abs(report.frames - math.ceil(0.6 * FPS)) <= 1
    out, rate = read_audio(tmp_path / "st.mp4")
    assert out.ndim == 1 and rate == 48000


def test_transparent_background_refused(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", speechlike(), RATE, subtype="PCM_16")
    with pytest.raises(MediaError, match="green"):
        render_file(
            tmp_path / "a.wav", tmp_path / "a.mp4", RenderOptions(background="transparent", progress=False)
        )
    assert not (tmp_path / "a.mp4").exists()


def test_missing_output_directory(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", speechlike(), RATE, subtype="PCM_16")
    with pytest.raises(MediaError, match="does not exist"):
        render_file(tmp_path / "a.wav", tmp_path / "no" / "a.mp4", RenderOptions(progress=False))


# --- progress display -------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_stream_prints_quarters() -> None:
    out = io.StringIO()
    bar = Progress(100, enabled=True, stream=out)
    for i in range(1, 101):
        bar.update(i)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["25.0%", "50.0%", "75.0%", "100.0%"]
    assert all("x realtime" in line and "frames" in line for line in lines)


def test_progress_tty_redraws_one_line() -> None:
    out = _Tty()
    bar = Progress(10, enabled=True, stream=out)
    bar.update(5)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "100.0%" in text.rsplit("\r", 1)[1]


def test_progress_disabled_is_silent() -> None:
    out = _Tty()
    bar = Progress(10, enabled=False, stream=out)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""


# --- rendering on several cores -------------------------------------------------------------------


def decoded(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every decoded picture (I420) and the whole decoded audio track of an MP4."""
    with av.open(str(path)) as c:
        pictures = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return pictures, audio


def test_parallel_render_equals_one_process(tmp_path: Path) -> None:
    # Speech-like bursts between pauses: the recogniser, blinks and head motion all change the frames.
    pause = np.zeros(int(0.4 * RATE), np.int16)
    pcm = np.concatenate([pause, speechlike(0.7), pause, speechlike(0.5), pause])
    sf.write(tmp_path / "speech.wav", pcm, RATE, subtype="PCM_16")
    outputs = {}
    # 1: everything in this process; 3: one render worker; 4: two, so frames alternate between them.
    for jobs in (1, 3, 4):
        options = RenderOptions(
            tracker="phones", jobs=jobs, params_path=tmp_path / f"{jobs}.jsonl", progress=False
        )
        report = render_file(tmp_path / "speech.wav", tmp_path / f"{jobs}.mp4", options)
        pictures, audio = decoded(tmp_path / f"{jobs}.mp4")
        assert len(pictures) == report.frames
        outputs[jobs] = (pictures, audio, (tmp_path / f"{jobs}.jsonl").read_text())
    pictures, audio, params = outputs[1]
    distinct = {p.tobytes() for p in pictures}
    assert len(distinct) > len(pictures) // 2, "frames barely change: the comparison would prove little"
    for jobs in (3, 4):
        other_pictures, other_audio, other_params = outputs[jobs]
        assert len(other_pictures) == len(pictures)
        mismatched = [
            i
            for i, (a, b) in enumerate(zip(pictures, other_pictures, strict=True))
            if not np.array_equal(a, b)
        ]
        assert mismatched == [], f"jobs={jobs}: frames {mismatched[:10]} differ"
        assert np.array_equal(other_audio, audio)
        assert other_params == params


class FailingRenderer:
    """A real (tiny) renderer that fails on the first frame whose eyes are half closed."""

    width, height, channels = 32, 24, 3

    def render(self, state: FaceState) -> np.ndarray:
        if state.blink > 0.5:
            raise ValueError("cannot draw a blink")
        return np.full((self.height, self.width, 3), int(state.mouth.open * 255), np.uint8)


def test_pipeline_reports_a_render_worker_error(tmp_path: Path) -> None:
    pipeline = RenderPipeline(FailingRenderer(), tmp_path / "x.mp4", fps=FPS, sample_rate=24000, workers=2)
    silence = np.zeros(800, np.int16)
    with pytest.raises(RenderPipelineError, match="cannot draw a blink"):
        for i in range(200):
            pipeline.write(FaceState(blink=1.0 if i == 5 else 0.0), silence)
        pipeline.close()
    pipeline.abort()


def test_pipeline_reports_a_killed_worker(tmp_path: Path) -> None:
    pipeline = RenderPipeline(FailingRenderer(), tmp_path / "x.mp4", fps=FPS, sample_rate=24000, workers=1)
    silence = np.zeros(800, np.int16)
    pipeline.write(FaceState(), silence)
    os.kill(pipeline.helper_pids["facecast-render-0"], signal.SIGKILL)
    with pytest.raises(RenderPipelineError, match=r"facecast-render-0 \(pid \d+\) exited with code -9"):
        for _ in range(200):
            pipeline.write(FaceState(), silence)
        pipeline.close()
    pipeline.abort()


def test_pipeline_output_error_reaches_the_caller(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot write"):
        RenderPipeline(FailingRenderer(), tmp_path / "no" / "x.mp4", fps=FPS, sample_rate=24000, workers=1)


def test_parallel_render_progress_counts_encoded_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sf.write(tmp_path / "a.wav", speechlike(1.0), RATE, subtype="PCM_16")
    report = render_file(tmp_path / "a.wav", tmp_path / "a.mp4", RenderOptions(tracker="energy", jobs=2))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("render 100.0%")
    assert f" {report.frames}/{report.frames} frames" in lines[-1]
    counts = [int(line.split("] ")[1].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == report.frames


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        RenderOptions(jobs=0).check_outputs(tmp_path / "a.mp4")


def test_cli_render_on_all_cores_finishes(tmp_path: Path) -> None:
    # The command as users run it, OpenCV threads at their default: a fork that inherits OpenCV's
    # thread pool must not leave a helper waiting for threads that do not exist in it.
    sf.write(tmp_path / "a.wav", speechlike(1.0), RATE, subtype="PCM_16")
    cmd = [sys.executable, "-m", "facecast", "render", str(tmp_path / "a.wav"), "-o", str(tmp_path / "a.mp4")]
    done = subprocess.run([*cmd, "--jobs", "3", "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert video_frame_count(tmp_path / "a.mp4") == math.ceil(1.0 * FPS)
