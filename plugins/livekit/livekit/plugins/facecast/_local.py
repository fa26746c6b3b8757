"""Local mode: the face is rendered inside the agent's process and published by the agent participant
itself; no server, no second participant. Needs the `local` extra (the facecast engine), which is why
`AvatarSession` imports this module only when a local session starts.

A photo is built into the local avatar library once, as `photo-<hash>` (the first build on a machine also
installs the face analysis tools, about half a minute); the same photo again reuses that avatar.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import TYPE_CHECKING

from livekit import rtc
from livekit.agents import AgentSession, AgentStateChangedEvent, APITimeoutError, utils
from livekit.agents.voice.avatar import QueueAudioOutput

from facecast.avatars import AvatarLibrary
from facecast.hosts.livekit.generator import FacecastVideoGenerator
from facecast.hosts.livekit.runner import FacecastAvatarRunner

from .api import FacecastException
from .log import logger

if TYPE_CHECKING:
    from .avatar import AspectRatio, AvatarSource, VideoQuality


def photo_avatar_id(image: bytes) -> str:
    """The id local mode gives the avatar built from a photo: the same photo always maps to the same id."""
    return f"photo-{hashlib.sha256(image).hexdigest()[:12]}"


class LocalAvatar:
    """The avatar rendered in this process. `AvatarSession` calls `prepare()`, then starts its base class,
    then `run()`; `aclose()` when it closes."""

    def __init__(
        self,
        *,
        avatar: str,
        source: AvatarSource,
        aspect_ratio: AspectRatio,
        video_quality: VideoQuality,
        sample_rate: int,
        build_timeout: float,
        mouth_track: bool = False,
    ) -> None:
        self._avatar = avatar
        self._source = source
        self._aspect_ratio = aspect_ratio
        self._video_quality = video_quality
        self._sample_rate = sample_rate
        self._build_timeout = build_timeout
        self._mouth_track = mouth_track
        self.avatar_id: str | None = None  # the library id of a built photo, else the avatar given
        self.session_id: str | None = None
        self.room: rtc.Room | None = None
        self._runner: FacecastAvatarRunner | None = None
        self._agent_session: AgentSession | None = None
        self._start_task: asyncio.Task[None] | None = None

    async def prepare(self, agent_session: AgentSession, room: rtc.Room) -> None:
        """Resolve and load the avatar, and route the agent's audio to the renderer."""
        library = AvatarLibrary()  # $FACECAST_AVATARS_DIR, else ~/.local/share/facecast/avatars
        if self._source in ("url", "image"):
            self.avatar_id = await self._build_avatar(library)
        else:
            self.avatar_id = self._avatar
        try:
            generator = FacecastVideoGenerator(
                avatar=self.avatar_id,
                aspect=self._aspect_ratio,
                quality=self._video_quality,
                sample_rate=self._sample_rate,
                library=library,
            )
        except ValueError as exc:
            raise FacecastException(f"local mode cannot render avatar {self._avatar!r}: {exc}") from None
        try:
            await generator.wait_ready()  # reads and checks the bundle, off the event loop
        except Exception as exc:
            await generator.aclose()
            raise FacecastException(f"local mode cannot render avatar {self._avatar!r}: {exc}") from None
        # The agent's audio goes to the renderer, which publishes it with the video, in sync.
        output = QueueAudioOutput(sample_rate=self._sample_rate, wait_playback_start=True)
        self._runner = FacecastAvatarRunner(
            room, audio_recv=output, generator=generator, mouth_track=self._mouth_track
        )
        self.room = room
        self._agent_session = agent_session
        agent_session.output.replace_audio_tail(output)
        agent_session.on("agent_state_changed", self._on_agent_state_changed)
        self.session_id = f"local-{uuid.uuid4().hex[:12]}"

    async def run(self) -> None:
        """Start publishing: now if the room is connected, else once it is."""
        assert self._runner is not None and self.room is not None, "prepare() first"
        if self.room.isconnected():
            await self._runner.start()
        else:
            # the avatar is the agent participant itself, which can publish only once connected
            self._start_task = asyncio.create_task(self._start_runner_when_connected(self.room))

    async def aclose(self) -> None:
        """Stop rendering and unpublish, leaving the agent in the room."""
        if self._start_task is not None:
            await utils.aio.cancel_and_wait(self._start_task)
        if self._agent_session is not None:
            self._agent_session.off("agent_state_changed", self._on_agent_state_changed)
            self._agent_session = None
        if self._runner is not None:
            await self._runner.aclose()
            self._runner = None

    async def _build_avatar(self, library: AvatarLibrary) -> str:
        """Build the photo into `library` as `photo-<sha256 of its bytes>`, unless that avatar exists."""
        from facecast.avatars.build import build_avatar
        from facecast.avatars.faces import FaceAnalysisError
        from facecast.avatars.fetch import FetchPolicy, load_image_source
        from facecast.avatars.library import AvatarExistsError

        def build() -> str:
            image = load_image_source(self._avatar, FetchPolicy.from_env())
            avatar_id = photo_avatar_id(image.data)
            if avatar_id in library:
                return avatar_id
            logger.info("facecast: building avatar %s from %s into %s", avatar_id, self._avatar, library.root)
            stages: list[str] = []

            def progress(stage: str, fraction: float) -> None:
                if not stages or stages[-1] != stage:
                    stages.append(stage)
                    logger.info("facecast: avatar %s %.0f%%: %s", avatar_id, fraction * 100, stage)

            try:
                build_avatar(image.data, name=avatar_id, library=library, progress=progress)
            except AvatarExistsError:
                if avatar_id not in library:  # built meanwhile by another session: use it
                    raise
            return avatar_id

        try:
            return await asyncio.wait_for(asyncio.to_thread(build), self._build_timeout)
        except TimeoutError:
            raise APITimeoutError(
                f"facecast: building the avatar from {self._avatar} took over "
                f"{self._build_timeout:.0f} s; raise avatar_build_timeout (the build goes on in the "
                "background and its avatar is reused once done)"
            ) from None
        except (ValueError, FaceAnalysisError) as exc:
            raise FacecastException(f"cannot build an avatar from {self._avatar}: {exc}") from None

    async def _start_runner_when_connected(self, room: rtc.Room) -> None:
        connected = asyncio.Event()

        def on_state(_state: rtc.ConnectionState.ValueType) -> None:
            if room.isconnected():
                connected.set()

        room.on("connection_state_changed", on_state)
        try:
            if not room.isconnected():
                await connected.wait()
        finally:
            room.off("connection_state_changed", on_state)
        assert self._runner is not None
        await self._runner.start()

    def _on_agent_state_changed(self, ev: AgentStateChangedEvent) -> None:
        if self._runner is not None:
            self._runner.generator.set_listening(ev.new_state == "listening")
