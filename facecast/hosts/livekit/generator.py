"""The engine as a LiveKit `VideoGenerator`: agent audio in, (video, audio) frames out.

The generator builds the avatar (off the event loop) and drives it through the live core
(facecast.hosts.live.LiveCore), which owns the worker thread, the pacing and the interrupt epoch.
`FacecastAvatarRunner` uses the core directly; the VideoGenerator methods serve livekit-agents' stock
`AvatarRunner`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

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
from facecast.engine import AudioFormatError, Engine, EngineConfig, SegmentEnded
from facecast.engine.config import DEFAULT_LOOKAHEAD_MS, TrackerMode
from facecast.hosts.live import AvatarClosed, LiveCore

logger = logging.getLogger("facecast.livekit")


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
    """Builds one avatar and its live core. Works under the stock `AvatarRunner` (push_audio /
    clear_buffer / async iteration) and under `FacecastAvatarRunner`, which uses `core` directly."""

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
        # Validate on the caller's thread so mistakes raise here; the costly build runs on a thread.
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
        self._core: LiveCore | None = None
        self._closed = False
        self._iter_out: deque[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd] = deque()

        def build() -> Engine:
            renderer = load_renderer(
                avatar, aspect=aspect, quality=quality, background=background, library=library
            )
            return Engine(renderer, self.config)

        # The build (reading the bundle, loading models) runs on a thread of its own, which ends with it.
        builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facecast-build")
        self._built: Future[Engine] = builder.submit(build)
        builder.shutdown(wait=False)

    async def wait_ready(self) -> LiveCore:
        """Wait until the renderer and engine are built (reading the avatar's bundle) and return the live
        core; raises what the build raised (BundleError for a damaged bundle, ...)."""
        engine = await asyncio.wrap_future(self._built)
        if self._core is None:
            # One frame made ahead, not two: LiveKit's runner keeps its own playout lead. Speech does
            # not wait behind that frame when it is an idle one: LiveKit's audio queue has no timestamps.
            self._core = LiveCore(engine, queue_frames=1, idle_yields_to_speech=True)
        return self._core

    # -- properties ------------------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return self.config.fps

    @property
    def sample_rate(self) -> int:
        return self.config.out_rate

    @property
    def core(self) -> LiveCore:
        """The live core (after wait_ready())."""
        if self._core is None:
            raise RuntimeError("the avatar is not built yet: await wait_ready() first")
        return self._core

    def options(self) -> AvatarOptions:
        return AvatarOptions(
            video_width=self.width,
            video_height=self.height,
            video_fps=self.fps,
            audio_sample_rate=self.sample_rate,
            audio_channels=1,
        )

    def set_listening(self, listening: bool) -> None:
        """Attentive pose while the user speaks."""
        if self._core is not None:
            self._core.set_listening_now(listening)

    # -- VideoGenerator --------------------------------------------------------------------------------
    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        core = await self.wait_ready()
        if isinstance(frame, AudioSegmentEnd):
            await core.end_segment()
            return
        if frame.samples_per_channel == 0:
            return  # an empty frame would open a segment with nothing to play
        try:
            await core.push_audio(bytes(frame.data), frame.sample_rate, channels=frame.num_channels)
        except AudioFormatError:
            logger.exception("dropping audio the engine cannot take")

    def clear_buffer(self) -> None:
        """Interrupt: nothing pushed before this call plays; the mouth is at rest within two frames."""
        self._iter_out.clear()
        if self._core is not None and not self._core.closed:
            self._core.clear_now()

    def __aiter__(self) -> FacecastVideoGenerator:
        return self

    async def __anext__(self) -> rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd:
        while not self._iter_out:
            if self._closed:
                raise StopAsyncIteration
            core = await self.wait_ready()
            if not core.started:
                await core.start()
            try:
                frame = await core.next_frame()
            except AvatarClosed:
                raise StopAsyncIteration from None
            if frame.video is not None:
                self._iter_out.append(video_frame(frame.video))
            if frame.audio is not None:
                self._iter_out.append(audio_frame(frame.audio, self.sample_rate))
            # A normal end marks the segment's last audio; interrupted ends were answered by the clear.
            if any(isinstance(e, SegmentEnded) and not e.interrupted for e in frame.meta.events):
                self._iter_out.append(AudioSegmentEnd())
        return self._iter_out.popleft()

    async def aclose(self) -> None:
        self._closed = True
        if self._core is not None:
            await self._core.aclose()
        else:
            self._built.cancel()


def video_frame(image: np.ndarray) -> rtc.VideoFrame:
    image = np.ascontiguousarray(image)
    kind = rtc.VideoBufferType.RGBA if image.shape[2] == 4 else rtc.VideoBufferType.RGB24
    return rtc.VideoFrame(image.shape[1], image.shape[0], kind, image.tobytes())


def audio_frame(samples: np.ndarray, sample_rate: int) -> rtc.AudioFrame:
    return rtc.AudioFrame(samples.tobytes(), sample_rate, 1, len(samples))
