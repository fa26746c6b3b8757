"""The engine as a LiveKit `VideoGenerator`: agent audio in, (video, audio) frame pairs out.

The engine is synchronous, not thread-safe, and a frame costs a few milliseconds, so every engine call
runs on one worker thread owned by this generator (a single-worker executor keeps the calls in order).
A clear bumps an epoch on the event loop at once; work queued or computed before it is then discarded,
so no audio from before an interrupt can reach the tracks after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator

from facecast.avatars import (
    DEFAULT_AVATAR,
    AvatarLibrary,
    AvatarNotFoundError,
    frame_size,
    load_bundle,
    load_renderer,
)
from facecast.avatars.library import is_bundle_path
from facecast.avatars.presets import check_background
from facecast.avatars.style import style_names
from facecast.engine import AudioFormatError, Engine, EngineConfig, FrameMeta, SegmentEnded
from facecast.engine.config import DEFAULT_LOOKAHEAD_MS, TrackerMode

logger = logging.getLogger("facecast.livekit")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tick:
    """One step of the engine clock, converted for LiveKit. `epoch` is the clear count when it was
    computed: a tick from an older epoch belongs to speech that was interrupted."""

    video: rtc.VideoFrame | None
    audio: rtc.AudioFrame | None
    meta: FrameMeta
    epoch: int


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_avatar(avatar: str, library: AvatarLibrary | None = None) -> None:
    """A built-in name, the id of a bundle in `library` (default: the default library) or a `.facecast`
    path that exists; anything else raises ValueError (AvatarNotFoundError) listing what exists. Cheap: the
    bundle itself is read and validated when the renderer is built. Photos must be built into a bundle
    first (`facecast avatar create`)."""
    if avatar in style_names():
        return
    library = library if library is not None else AvatarLibrary()
    lowered = avatar.lower()
    if lowered.startswith(("http://", "https://")) or lowered.endswith(_IMAGE_SUFFIXES):
        raise ValueError(
            f"avatar {avatar!r} is a photo, not an avatar: build it first with "
            f"`facecast avatar create --image {avatar} --name ID` (library {library.root}) and use the id"
        )
    if is_bundle_path(avatar):
        if not Path(avatar).expanduser().is_file():
            raise AvatarNotFoundError(f"no avatar bundle at {avatar}")
        return
    if avatar not in library:
        load_bundle(avatar, library)  # raises AvatarNotFoundError listing the available avatars


class FacecastVideoGenerator(VideoGenerator):
    """Drives one Engine. Works under the stock `AvatarRunner` (push_audio / clear_buffer / async
    iteration) and under `FacecastAvatarRunner`, which uses the richer `push_pcm` / `next_tick`."""

    def __init__(
        self,
        *,
        avatar: str = DEFAULT_AVATAR,
        aspect: str = "1:1",
        quality: str = "high",
        background: str = "scene",
        fps: int = 30,
        sample_rate: int = 24000,
        tracker: TrackerMode = "auto",
        language: str = "en",
        lookahead_ms: int = DEFAULT_LOOKAHEAD_MS,
        seed: int = 0,
        library: AvatarLibrary | None = None,
    ) -> None:
        """`avatar` is a built-in name, an id in `library` (default: `AvatarLibrary()`, the folder
        $FACECAST_AVATARS_DIR or ~/.local/share/facecast/avatars) or a `.facecast` path."""
        # Validate on the caller's thread so mistakes raise here; the costly build runs on the worker.
        library = library if library is not None else AvatarLibrary()
        check_avatar(avatar, library)
        check_background(background)
        self.width, self.height = frame_size(aspect, quality)
        self.config = EngineConfig(
            fps=fps,
            out_rate=sample_rate,
            lookahead_ms=lookahead_ms,
            tracker=tracker,
            language=language,
            seed=seed,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facecast-engine")
        self._engine: Engine | None = None
        self._build_error: BaseException | None = None
        self._open_id: int | None = None  # engine segment receiving audio now (worker thread only)
        self._epoch = 0
        self._cpu_s = 0.0
        self._closed = False
        self._iter_out: deque[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd] = deque()

        def build() -> None:
            try:
                renderer = load_renderer(
                    avatar, aspect=aspect, quality=quality, background=background, library=library
                )
                self._engine = Engine(renderer, self.config)
            except BaseException as exc:
                self._build_error = exc
                raise

        self._built = self._executor.submit(self._timed, build)

    async def wait_ready(self) -> None:
        """Wait until the renderer and engine are built (reading the avatar's bundle); raises what the
        build raised (BundleError for a damaged bundle, ...)."""
        await asyncio.wrap_future(self._built)

    # -- properties ------------------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return self.config.fps

    @property
    def sample_rate(self) -> int:
        return self.config.out_rate

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def cpu_s(self) -> float:
        """CPU seconds the engine thread has spent (tracking, animation, rendering, conversion)."""
        return self._cpu_s

    def options(self) -> AvatarOptions:
        return AvatarOptions(
            video_width=self.width,
            video_height=self.height,
            video_fps=self.fps,
            audio_sample_rate=self.sample_rate,
            audio_channels=1,
        )

    # -- the richer interface FacecastAvatarRunner uses --------------------------------------------------
    async def push_pcm(self, pcm: bytes, sample_rate: int, channels: int = 1) -> int | None:
        """Append int16 PCM to the open segment. Returns the engine segment id, or None when a clear
        overtook it. Raises AudioFormatError for audio the engine cannot take."""
        epoch = self._epoch

        def job() -> int | None:
            if epoch != self._epoch:
                return None
            self._open_id = self._get_engine().push_audio(pcm, sample_rate, channels=channels)
            return self._open_id

        return await self._run(job)

    async def end_segment(self) -> int | None:
        """Close the open segment; returns its id, or None when no segment had audio."""
        epoch = self._epoch

        def job() -> int | None:
            if epoch != self._epoch or self._open_id is None:
                return None
            self._get_engine().end_segment()
            ended, self._open_id = self._open_id, None
            return ended

        return await self._run(job)

    async def next_tick(self, *, render: bool = True) -> Tick:
        """Advance the engine clock by one frame. `render=False` skips drawing (video is None)."""
        epoch = self._epoch

        def job() -> Tick:
            pair = self._get_engine().next_frame(render=render)
            video = None
            if pair.video is not None:
                rgb = np.ascontiguousarray(pair.video)
                kind = rtc.VideoBufferType.RGBA if rgb.shape[2] == 4 else rtc.VideoBufferType.RGB24
                video = rtc.VideoFrame(rgb.shape[1], rgb.shape[0], kind, rgb.tobytes())
            audio = None
            if pair.audio is not None:
                audio = rtc.AudioFrame(pair.audio.tobytes(), self.sample_rate, 1, len(pair.audio))
            return Tick(video=video, audio=audio, meta=pair.meta, epoch=epoch)

        return await self._run(job)

    def set_listening(self, listening: bool) -> None:
        """Attentive pose while the user speaks."""

        def job() -> None:
            self._get_engine().set_listening(listening)

        if not self._closed:
            self._executor.submit(self._timed, job)

    # -- VideoGenerator --------------------------------------------------------------------------------
    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            await self.end_segment()
            return
        if frame.samples_per_channel == 0:
            return  # an empty frame would open a segment with nothing to play
        try:
            await self.push_pcm(bytes(frame.data), frame.sample_rate, frame.num_channels)
        except AudioFormatError:
            logger.exception("dropping audio the engine cannot take")

    def clear_buffer(self) -> None:
        """Interrupt: nothing pushed before this call plays; the mouth is at rest within two frames."""
        self._epoch += 1
        self._iter_out.clear()

        def job() -> None:
            self._get_engine().clear()
            self._open_id = None

        if not self._closed:
            self._executor.submit(self._timed, job)

    def __aiter__(self) -> FacecastVideoGenerator:
        return self

    async def __anext__(self) -> rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd:
        # Unpaced: the consumer's AVSynchronizer applies backpressure.
        while not self._iter_out:
            if self._closed:
                raise StopAsyncIteration
            tick = await self.next_tick()
            if tick.epoch != self._epoch:
                continue
            if tick.video is not None:
                self._iter_out.append(tick.video)
            if tick.audio is not None:
                self._iter_out.append(tick.audio)
            # A normal end marks the segment's last audio; interrupted ends were answered by the clear.
            if any(isinstance(e, SegmentEnded) and not e.interrupted for e in tick.meta.events):
                self._iter_out.append(AudioSegmentEnd())
        return self._iter_out.popleft()

    async def aclose(self) -> None:
        self._closed = True
        self._epoch += 1
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals -------------------------------------------------------------------------------------
    def _get_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError(f"the avatar engine could not be built: {self._build_error!r}")
        return self._engine

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, fn)

    def _timed(self, fn: Callable[[], T]) -> T:
        started = time.thread_time()
        try:
            return fn()
        finally:
            self._cpu_s += time.thread_time() - started
