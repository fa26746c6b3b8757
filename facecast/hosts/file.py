"""Offline file host: an audio file in, a lip-synced MP4 (H.264 + AAC) and optional per-frame params out.

Thin by design: it decodes, pushes the whole utterance into the engine, and muxes the frame pairs the
engine returns. Audio is the clock: video frame i has pts i in time base 1/fps and its audio samples
start at sample i * out_rate / fps, so the file is in sync by construction.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import av
import cv2
import numpy as np

from facecast.engine.mouth_track import mouth_track_record
from facecast.engine.types import PhoneTiming, Renderer
from facecast.hosts.native_threads import one_blas_thread
from facecast.hosts.progress import Progress

if TYPE_CHECKING:
    from facecast.avatars.look import Look
    from facecast.hosts.render_pool import RenderPipeline

# ultrafast encodes a 512² avatar frame in about 1 ms of CPU (veryfast: 2 ms, but 8x smaller files);
# offline rendering speed matters more than file size here, and crf 23 looks clean on flat shading.
X264_PRESET = "ultrafast"
X264_CRF = 23
AAC_FRAME = 1024  # samples per AAC frame (fixed by the codec)
AAC_BITRATE = 96_000
# FFmpeg's "fast" AAC coder costs about 0.6x the default two-loop search (0.30 against 0.48 ms per
# video frame on the bench file) at 35 dB SNR instead of 51 dB on speech; offline speed wins here.
AAC_CODER = "fast"
_QUEUE_FRAMES = 8  # frames buffered between the render loop and the encoder thread


class MediaError(ValueError):
    """A user-facing problem with an input or output file (missing, undecodable, unsupported)."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any file FFmpeg understands (WAV, MP3, OGG, FLAC, M4A, video…).

    Returns int16 samples, shape (n,) for mono or (n, channels) interleaved, and the sample rate.
    """
    p = Path(path)
    if not p.exists():
        raise MediaError(f"audio file not found: {p}")
    if p.is_dir():
        raise MediaError(f"{p} is a directory, not an audio file")
    try:
        container = av.open(str(p))
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode {p}: not a readable audio file ({exc.strerror or exc})") from exc
    with container:
        if not container.streams.audio:
            raise MediaError(f"{p} has no audio stream")
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        resampler: av.AudioResampler | None = None
        rate = channels = 0
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    # Packed s16 at the file's own rate and layout: the engine resamples, we don't.
                    rate, channels = frame.sample_rate, frame.layout.nb_channels
                    resampler = av.AudioResampler(format="s16", layout=frame.layout, rate=rate)
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode the audio in {p}: {exc.strerror or exc}") from exc
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if samples.size == 0 or rate <= 0:
        raise MediaError(f"{p} contains no audio samples")
    if channels > 1:
        samples = samples[: samples.size - samples.size % channels].reshape(-1, channels)
    return samples.astype(np.int16, copy=False), rate


def rgb_to_i420(rgb: np.ndarray, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """An RGB(A) picture as planar YUV 4:2:0 (`height * 3 // 2` rows of `width`), edge-padded to the
    even `width` × `height` the encoder needs; written into `out` when given."""
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[:, :, :3]
    h, w = rgb.shape[:2]
    if (w, h) != (width, height):
        rgb = cv2.copyMakeBorder(rgb, 0, height - h, 0, width - w, cv2.BORDER_REPLICATE)
    # OpenCV's I420 conversion is several times faster than going through swscale from rgb24.
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420, dst=out)


class Mp4Encoder:
    """H.264 (yuv420p) + AAC mono MP4 with explicit timestamps: video pts = frame number (1/fps),
    audio pts = output sample number (1/sample_rate). Synchronous: `encode` returns once the frame
    is encoded and muxed. Pictures come in already as I420 (`rgb_to_i420`)."""

    def __init__(self, path: str | Path, *, width: int, height: int, fps: int, sample_rate: int) -> None:
        # yuv420p needs even dimensions; odd ones are padded by one edge pixel.
        self.width, self.height = width + width % 2, height + height % 2
        self.fps, self.sample_rate = fps, sample_rate
        try:
            self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        except av.FFmpegError as exc:
            raise MediaError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.video = self.container.add_stream(
            "libx264", rate=fps, options={"preset": X264_PRESET, "crf": str(X264_CRF)}
        )
        self.video.width, self.video.height = self.width, self.height
        self.video.pix_fmt = "yuv420p"
        self.video.codec_context.time_base = Fraction(1, fps)
        self.audio = self.container.add_stream(
            "aac", rate=sample_rate, layout="mono", options={"aac_coder": AAC_CODER}
        )
        self.audio.codec_context.bit_rate = AAC_BITRATE
        self.audio.codec_context.time_base = Fraction(1, sample_rate)
        try:
            # PyAV opens the file at the first mux; opening it here reports a bad path before any work.
            self.container.start_encoding()
        except av.FFmpegError as exc:
            self.abort()
            raise MediaError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.frames = 0
        self.samples_written = 0
        self._pending = np.zeros(0, dtype=np.float32)

    def encode(self, yuv: np.ndarray, audio: np.ndarray) -> None:
        """One I420 picture (its buffer may be reused once this returns) and its frame's int16 audio."""
        if self.height % 4 == 0 and yuv.flags.c_contiguous:
            # Wrapped, not copied (0.07 against 0.23 ms per 512² frame): x264 copies the picture in
            # while encoding, here and now. With an odd chroma height PyAV reads the wrapped planes
            # differently from its copy, so those sizes (and strided views) keep the copy.
            frame = av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
        else:
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.frames
        frame.time_base = Fraction(1, self.fps)
        self.container.mux(self.video.encode(frame))
        self.frames += 1
        self._pending = np.concatenate([self._pending, audio.astype(np.float32) / 32768.0])
        self._encode_audio(final=False)

    def _encode_audio(self, *, final: bool) -> None:
        while self._pending.size >= AAC_FRAME or (final and self._pending.size):
            chunk, self._pending = self._pending[:AAC_FRAME], self._pending[AAC_FRAME:]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self.samples_written
            frame.time_base = Fraction(1, self.sample_rate)
            self.samples_written += chunk.size
            self.container.mux(self.audio.encode(frame))

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        try:
            self._encode_audio(final=True)
            self.container.mux(self.video.encode(None))
            self.container.mux(self.audio.encode(None))
        except BaseException:
            self.abort()
            raise
        self.container.close()

    def abort(self) -> None:
        # The partial file is deleted by the caller, so a failing close changes nothing.
        with contextlib.suppress(av.FFmpegError):
            self.container.close()


class Mp4Writer:
    """An Mp4Encoder on a worker thread, fed RGB pictures.

    Encoding and muxing overlap with the caller's work only while the caller's thread leaves the GIL
    free (x264 releases it); `write` only converts to YUV, which also copies the picture in case the
    renderer reuses its buffer."""

    def __init__(self, path: str | Path, *, width: int, height: int, fps: int, sample_rate: int) -> None:
        self._encoder = Mp4Encoder(path, width=width, height=height, fps=fps, sample_rate=sample_rate)
        self.width, self.height = self._encoder.width, self._encoder.height
        self.frames = 0
        self._last_yuv: np.ndarray | None = None
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="facecast-mp4-encoder", daemon=True)
        self._worker.start()

    @property
    def encoded(self) -> int:
        """Frames encoded so far."""
        return self._encoder.frames

    def write(self, video: np.ndarray | None, audio: np.ndarray) -> None:
        """Append one frame and the int16 audio that plays during it. A None video repeats the
        previous picture (black before the first), so the video timeline never has holes."""
        if self._error is not None:
            raise self._error
        if video is not None:
            self._last_yuv = rgb_to_i420(video, self.width, self.height)
        elif self._last_yuv is None:
            self._last_yuv = rgb_to_i420(
                np.zeros((self.height, self.width, 3), np.uint8), self.width, self.height
            )
        self._queue.put((self._last_yuv, audio))
        self.frames += 1

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                self._encoder.encode(*item)
        except BaseException as exc:
            self._error = exc
            # Keep consuming so a producer blocked on the full queue wakes up and sees the error.
            while self._queue.get() is not None:
                pass

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join()

    def close(self) -> None:
        """Flush the encoders and finish the file; re-raises an error from the encoder thread."""
        self._stop()
        if self._error is not None:
            self._encoder.abort()
            raise self._error
        self._encoder.close()

    def abort(self) -> None:
        self._stop()
        self._encoder.abort()


@dataclass(frozen=True, slots=True)
class RenderReport:
    frames: int
    duration_s: float  # seconds of video written
    wall_s: float  # wall-clock time of the whole job (decode, analysis, render, encode)
    realtime_factor: float  # duration_s / wall_s
    out_path: Path
    width: int
    height: int
    params_path: Path | None = None
    # Frames of speech whose transcript (--text) did not fit the audio: recognised instead.
    transcript_mismatch_frames: int = 0
    speech_frames: int = 0


def _out_rate(in_rate: int) -> int:
    # Keep full bandwidth for 32–48 kHz sources; 24 kHz covers speech from TTS and telephony.
    return 48000 if in_rate > 24000 else 24000


def _check_output(path: Path, what: str) -> None:
    if not path.parent.exists():
        raise MediaError(f"cannot write {what} {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise MediaError(f"cannot write {what} {path}: it is a directory")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to render: the avatar's look, the clock, the tracker, and what to write besides the MP4."""

    avatar: str = "ava"  # a built-in name, an id in the avatar library, or a .facecast path
    fps: int = 30
    aspect: str = "1:1"
    quality: str = "high"
    background: str = "scene"
    text: str | None = None  # the transcript: enables forced alignment
    params_path: str | Path | None = None  # per-frame parameters as JSONL (docs/mouth-track.md)
    tracker: str = "auto"
    lookahead_ms: int | None = None  # None: the engine's default
    progress: bool = True
    avatars_dir: str | Path | None = None  # the avatar library (None: $FACECAST_AVATARS_DIR or the default)
    jobs: int | None = None  # cores to use (None: all); 1 draws and encodes in this process

    @property
    def look(self) -> Look:
        """The avatar, aspect, quality, background and fps as one checked value (ValueError names a bad
        field)."""
        from facecast.avatars.look import Look

        return Look(self.avatar, self.aspect, self.quality, self.background, self.fps)

    def check_outputs(self, out_path: str | Path) -> None:
        """Fail on bad options before any expensive work."""
        if self.look.background == "transparent":  # the look's fields are checked on the way
            raise MediaError("MP4 (H.264) cannot store transparency; use --background green and key it out")
        _check_output(Path(out_path), "video")
        if self.params_path is not None:
            _check_output(Path(self.params_path), "params")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")


def _frame_writer(
    renderer: Renderer, out: Path, *, fps: int, sample_rate: int, jobs: int | None
) -> Mp4Writer | RenderPipeline:
    """Where frames go: helper processes that draw and encode them while this one tracks, or (one job,
    or no fork on this platform) a writer that encodes on a thread while this process draws."""
    from facecast.hosts.render_pool import RenderPipeline, default_jobs, fork_available, render_workers

    jobs = default_jobs() if jobs is None else jobs
    if jobs >= 2 and fork_available():
        return RenderPipeline(renderer, out, fps=fps, sample_rate=sample_rate, workers=render_workers(jobs))
    return Mp4Writer(out, width=renderer.width, height=renderer.height, fps=fps, sample_rate=sample_rate)


def render_file(
    audio_path: str | Path, out_path: str | Path, options: RenderOptions | None = None
) -> RenderReport:
    """Render `audio_path` into an MP4 at `out_path` (and optionally per-frame parameters)."""
    started = time.perf_counter()
    options = options or RenderOptions()
    options.check_outputs(out_path)  # before spending time decoding a long file
    pcm, rate = read_audio(audio_path)
    return render_pcm(pcm, rate, out_path, options, started=started)


@one_blas_thread()  # the engine runs here while the render and encode helpers use the other cores
def render_pcm(
    pcm: np.ndarray,
    rate: int,
    out_path: str | Path,
    options: RenderOptions | None = None,
    *,
    phones: Sequence[PhoneTiming] | None = None,
    started: float | None = None,
) -> RenderReport:
    """`render_file` for audio already in memory: int16 (n,) or (n, channels) at `rate` Hz.
    `phones` are the speech's phone timings when its source knows them (a TTS engine); `started`
    (a perf_counter value) lets the caller include its own synthesis or decoding in the reported time."""
    from facecast.avatars import AvatarLibrary, load_look
    from facecast.engine import Engine, EngineConfig
    from facecast.hosts.render_pool import RenderPipeline

    opts = options or RenderOptions()
    started = time.perf_counter() if started is None else started
    opts.check_outputs(out_path)
    out = Path(out_path)
    params_file = Path(opts.params_path) if opts.params_path is not None else None
    if pcm.shape[0] == 0:
        raise MediaError("no audio to render")
    text = opts.text if opts.text is not None and opts.text.strip() else None
    fps = opts.fps

    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    config_args: dict[str, Any] = {"fps": fps, "out_rate": _out_rate(rate), "tracker": opts.tracker}
    if opts.lookahead_ms is not None:
        config_args["lookahead_ms"] = opts.lookahead_ms
    config = EngineConfig(**config_args)
    renderer = load_look(opts.look, AvatarLibrary(opts.avatars_dir))
    # The helpers are forked before the engine loads its recogniser and before any thread starts.
    writer = _frame_writer(renderer, out, fps=fps, sample_rate=config.out_rate, jobs=opts.jobs)
    try:
        engine = Engine(renderer, config)
    except BaseException:
        writer.abort()
        raise
    drawn_elsewhere = isinstance(writer, RenderPipeline)

    expected = math.ceil(pcm.shape[0] / rate * fps)
    bar = Progress(expected, fps=fps, enabled=opts.progress)
    params_out: IO[str] | None = None
    frames = speech_frames = mismatch_frames = 0
    try:
        params_out = params_file.open("w", encoding="utf-8") if params_file is not None else None
        if text is not None and config.uses_phones and not phones:
            bar.note(f"aligning the transcript to {pcm.shape[0] / rate:.1f} s of audio")
        engine.push_audio(pcm, rate, channels=channels, text=text)
        if phones:
            engine.push_phones(phones)
        engine.end_segment()
        # A guard against a clock that never drains: the engine must finish within a second of slack.
        limit = expected + fps
        while engine.pending_speech:
            if frames > limit:
                raise RuntimeError(f"engine produced more than {limit} frames for {expected} expected")
            pair = engine.next_frame(render=not drawn_elsewhere)
            meta = pair.meta
            audio = pair.audio
            if audio is None:
                audio = np.zeros(config.frame_samples(meta.index), dtype=np.int16)
            if isinstance(writer, RenderPipeline):
                writer.write(meta.state, audio)
            else:
                writer.write(pair.video, audio)
            if params_out is not None:
                params_out.write(json.dumps(mouth_track_record(meta), separators=(",", ":")) + "\n")
            frames += 1
            if pair.audio is not None:
                speech_frames += 1
                mismatch_frames += int(meta.transcript_mismatch)
            bar.update(writer.encoded)
        writer.close()
        bar.update(frames)
    except BaseException:
        writer.abort()
        out.unlink(missing_ok=True)
        if params_out is not None and params_file is not None:
            params_out.close()
            params_file.unlink(missing_ok=True)
        raise
    if params_out is not None:
        params_out.close()
    bar.close()
    wall = time.perf_counter() - started
    duration = frames / fps
    return RenderReport(
        frames=frames,
        duration_s=duration,
        wall_s=wall,
        realtime_factor=duration / wall if wall > 0 else math.inf,
        out_path=out,
        width=writer.width,
        height=writer.height,
        params_path=params_file,
        transcript_mismatch_frames=mismatch_frames,
        speech_frames=speech_frames,
    )
