"""Facecast avatars for LiveKit Agents.

Remote mode (default): a Facecast server sends an avatar worker into the agent's room; the agent's speech
goes to it over LiveKit data streams, and it publishes the talking face as its own participant.
Local mode: the face is rendered inside the agent's process and published by the agent participant
itself; no server, no second participant (needs the `local` extra: the facecast engine).

The avatar is an id (a built-in such as "ava", or an avatar created on the server / in the local library),
a photo (a local PNG/JPEG/WebP path or an http(s) URL), or a local `.facecast` bundle. A photo is turned into
an avatar once, before the session starts: remote mode uploads it to the server (`POST /v1/avatars`) and
waits for the build; local mode builds it into the local avatar library (the first build on a machine also
installs the face analysis tools, about half a minute). The same photo again reuses that avatar.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from livekit import api, rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    AgentSession,
    AgentStateChangedEvent,
    APIConnectOptions,
    APITimeoutError,
    NotGivenOr,
    get_job_context,
    utils,
)
from livekit.agents.voice.avatar import AvatarSession as BaseAvatarSession
from livekit.agents.voice.avatar import DataStreamAudioOutput, QueueAudioOutput

from .api import END_STOPPED, FacecastAPI, FacecastException
from .log import logger
from .refs import AvatarSource, classify_avatar

if TYPE_CHECKING:
    from facecast.avatars import AvatarLibrary
    from facecast.hosts.livekit.runner import FacecastAvatarRunner

DEFAULT_API_URL = "http://localhost:8080"
DEFAULT_AVATAR = "ava"  # facecast.avatars.DEFAULT_AVATAR, without importing facecast
DEFAULT_AVATAR_IDENTITY = "facecast-avatar"
DEFAULT_AVATAR_NAME = "Facecast avatar"
ATTRIBUTE_PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
SAMPLE_RATE = 24000
WORKER_TOKEN_TTL = timedelta(hours=6)
# Seconds to wait for an avatar built from a photo (a server's first build also installs its tools).
DEFAULT_AVATAR_BUILD_TIMEOUT = 180.0

AspectRatio = Literal["4:3", "3:4", "1:1"]
VideoQuality = Literal["low", "medium", "high", "very_high"]
Mode = Literal["remote", "local"]
_ASPECTS = ("4:3", "3:4", "1:1")
_QUALITIES = ("low", "medium", "high", "very_high")


def _given_or_env(value: NotGivenOr[str | None], env: str | None, default: str | None = None) -> str | None:
    """The argument if given, else the environment variable `env`, else `default`."""
    if utils.is_given(value) and value:
        return value
    return (os.environ.get(env) if env else None) or default


def avatar_source(avatar: str) -> AvatarSource:
    """What an `avatar=` value is (see refs.classify_avatar): an http(s) photo URL, a local `.facecast`
    bundle, a local PNG/JPEG/WebP photo, or an avatar id. A file that does not exist, or a value that is
    none of these, raises FacecastException."""
    kind = classify_avatar(avatar)
    if kind in ("id", "url"):
        return kind
    if not Path(avatar).expanduser().is_file():
        raise FacecastException(f"avatar {avatar!r} looks like a file path, but there is no such file")
    return kind


def photo_avatar_id(image: bytes) -> str:
    """The id local mode gives the avatar built from a photo: the same photo always maps to the same id."""
    return f"photo-{hashlib.sha256(image).hexdigest()[:12]}"


def mint_worker_token(
    api_key: str, api_secret: str, *, room: str, identity: str, name: str, agent_identity: str
) -> str:
    """The avatar worker's LiveKit token: the same claims as `facecast.hosts.livekit.mint_worker_token`
    (kind agent, `lk.publish_on_behalf` present at join), minted here so remote mode needs no facecast."""
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_kind("agent")
        .with_identity(identity)
        .with_name(name)
        .with_grants(grants)
        .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity})
        .with_ttl(WORKER_TOKEN_TTL)
        .to_jwt()
    )


class AvatarSession(BaseAvatarSession):
    """A Facecast talking avatar for an `AgentSession`.

    Call `await avatar.start(session, room=ctx.room)` before `await session.start(...)`. Pausing is not
    supported by the avatar audio path: create the AgentSession with
    `turn_handling={"interruption": {"resume_false_interruption": False}}`.
    """

    def __init__(
        self,
        *,
        avatar: NotGivenOr[str | None] = NOT_GIVEN,
        aspect_ratio: AspectRatio = "4:3",
        mode: Mode = "remote",
        api_url: NotGivenOr[str | None] = NOT_GIVEN,
        api_key: NotGivenOr[str | None] = NOT_GIVEN,
        max_duration_seconds: NotGivenOr[int | None] = NOT_GIVEN,
        video_quality: VideoQuality = "high",
        avatar_participant_identity: NotGivenOr[str | None] = NOT_GIVEN,
        avatar_participant_name: NotGivenOr[str | None] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        avatar_build_timeout: float = DEFAULT_AVATAR_BUILD_TIMEOUT,
    ) -> None:
        """Create a Facecast avatar session.

        Args:
            avatar: which face. An avatar id: a built-in ("ava", "leo", "mira", "noah") or one created
                on the server (remote) or in the local avatar library (local, `facecast avatar create`);
                a photo of one person facing the camera: a local PNG/JPEG/WebP path or an http(s) URL;
                or a local `.facecast` bundle file. Photos and bundles become an avatar in `start()`:
                remote mode uploads them to the server (a URL is fetched by the server), local mode
                builds the photo into the local library as `photo-<hash>`; both reuse the avatar of a
                photo seen before. Defaults to `FACECAST_AVATAR`, then "ava".
            aspect_ratio: "4:3", "3:4" or "1:1".
            mode: "remote" (a Facecast server renders; default) or "local" (this process renders).
            api_url: Facecast server URL. Defaults to `FACECAST_API_URL`, then http://localhost:8080.
            api_key: Facecast API key. Defaults to `FACECAST_API_KEY`; required in remote mode.
            max_duration_seconds: ask the server to end the session after this long (it applies the
                lower of this and its own limit).
            video_quality: "low", "medium", "high" or "very_high" (frame size).
            avatar_participant_identity: LiveKit identity of the avatar worker (remote mode).
            avatar_participant_name: display name of the avatar worker (remote mode).
            conn_options: timeout and retries for the Facecast API.
            avatar_build_timeout: how long `start()` may wait, in seconds, for an avatar to be built
                from a photo or bundle (upload and build; default 180).

        Raises:
            FacecastException: an invalid option, an avatar path that does not exist, or no API key in
                remote mode.
        """
        super().__init__()
        if mode not in ("remote", "local"):
            raise FacecastException(f"mode must be 'remote' or 'local', got {mode!r}")
        if aspect_ratio not in _ASPECTS:
            raise FacecastException(
                f"aspect_ratio must be one of {', '.join(_ASPECTS)}, got {aspect_ratio!r}"
            )
        if video_quality not in _QUALITIES:
            raise FacecastException(
                f"video_quality must be one of {', '.join(_QUALITIES)}, got {video_quality!r}"
            )
        if not avatar_build_timeout > 0:
            raise FacecastException(f"avatar_build_timeout must be positive, got {avatar_build_timeout!r}")
        self._mode: Mode = mode
        self._avatar = _given_or_env(avatar, "FACECAST_AVATAR", DEFAULT_AVATAR) or DEFAULT_AVATAR
        self._avatar_source = avatar_source(self._avatar)
        self._avatar_build_timeout = avatar_build_timeout
        self._avatar_id: str | None = None  # what the avatar resolved to in start()
        self._aspect_ratio = aspect_ratio
        self._video_quality = video_quality
        self._max_duration_seconds = max_duration_seconds if utils.is_given(max_duration_seconds) else None
        self._avatar_identity = (
            _given_or_env(avatar_participant_identity, None, DEFAULT_AVATAR_IDENTITY) or ""
        )
        self._avatar_name = _given_or_env(avatar_participant_name, None, DEFAULT_AVATAR_NAME) or ""
        self._api: FacecastAPI | None = None
        if mode == "remote":
            key = _given_or_env(api_key, "FACECAST_API_KEY")
            if not key:
                raise FacecastException("api_key is required in remote mode (or set FACECAST_API_KEY)")
            url = _given_or_env(api_url, "FACECAST_API_URL", DEFAULT_API_URL) or DEFAULT_API_URL
            self._api = FacecastAPI(api_url=url, api_key=key, conn_options=conn_options)
        self._started = False
        self._session_id: str | None = None
        self._session_token: str | None = None
        self._runner: FacecastAvatarRunner | None = None
        self._local_room: rtc.Room | None = None
        self._local_session: AgentSession | None = None
        self._local_start_task: asyncio.Task[None] | None = None

    @property
    def avatar_identity(self) -> str:
        """The avatar's participant identity: the worker's in remote mode, the agent's in local mode."""
        if self._local_room is not None and self._local_room.local_participant.identity:
            return self._local_room.local_participant.identity
        return self._avatar_identity

    @property
    def provider(self) -> str:
        return "facecast"

    @property
    def session_id(self) -> str | None:
        """The Facecast session id once `start()` has succeeded (local mode: a local id)."""
        return self._session_id

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def avatar_id(self) -> str | None:
        """The avatar the session renders, once `start()` has resolved it: the id given, the server's id
        for an uploaded photo or bundle (remote), the library id of a built photo or the bundle path
        (local)."""
        return self._avatar_id

    async def start(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        *,
        livekit_url: NotGivenOr[str | None] = NOT_GIVEN,
        livekit_api_key: NotGivenOr[str | None] = NOT_GIVEN,
        livekit_api_secret: NotGivenOr[str | None] = NOT_GIVEN,
    ) -> None:
        """Route the agent's speech through the avatar. Call before `AgentSession.start()`.

        Args:
            agent_session: the session whose audio the avatar speaks.
            room: the job's room (`ctx.room`).
            livekit_url: LiveKit URL for the worker (remote mode). Defaults to `LIVEKIT_URL`.
            livekit_api_key: for minting the worker token. Defaults to `LIVEKIT_API_KEY`.
            livekit_api_secret: for minting the worker token. Defaults to `LIVEKIT_API_SECRET`.

        Raises:
            RuntimeError: start() was already called on this AvatarSession.
            FacecastException: missing LiveKit credentials, an unknown avatar, a photo without a usable
                face (the server's or the local build's reason), or an unexpected server response.
            APIStatusError / APIConnectionError: the Facecast server refused or could not be reached.
            APITimeoutError: the avatar was not built within `avatar_build_timeout`.
        """
        if self._started:
            raise RuntimeError("AvatarSession.start() called twice; create a new AvatarSession")
        self._started = True
        if self._mode == "local":
            await self._start_local(agent_session, room)
        else:
            await self._start_remote(agent_session, room, livekit_url, livekit_api_key, livekit_api_secret)

    async def aclose(self) -> None:
        """End the avatar: stop the server session (a failure is logged, not raised) and remove the worker
        from the room; in local mode stop rendering and unpublish, leaving the agent in the room."""
        if self._mode == "local":
            await self._aclose_local()
            return
        session_id, token = self._session_id, self._session_token
        self._session_id = self._session_token = None
        try:
            if session_id is not None and token is not None and self._api is not None:
                try:
                    await self._api.stop_session(token, session_id, reason=END_STOPPED)
                except Exception:
                    logger.warning(
                        "failed to stop facecast session", extra={"session_id": session_id}, exc_info=True
                    )
        finally:
            await super().aclose()  # removes the worker participant through the job's API
            if self._api is not None:
                await self._api.aclose()

    # -- remote ----------------------------------------------------------------------------------------
    async def _start_remote(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        livekit_url: NotGivenOr[str | None],
        livekit_api_key: NotGivenOr[str | None],
        livekit_api_secret: NotGivenOr[str | None],
    ) -> None:
        assert self._api is not None
        url = _given_or_env(livekit_url, "LIVEKIT_URL")
        key = _given_or_env(livekit_api_key, "LIVEKIT_API_KEY")
        secret = _given_or_env(livekit_api_secret, "LIVEKIT_API_SECRET")
        if not url or not key or not secret:
            raise FacecastException(
                "livekit_url, livekit_api_key and livekit_api_secret must be set "
                "by arguments or the LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET environment variables"
            )
        avatar_id = await self._remote_avatar_id()
        await super().start(agent_session, room)
        agent_identity = self._agent_identity(room)
        room_name = self._room_name(room)
        worker_token = mint_worker_token(
            key,
            secret,
            room=room_name,
            identity=self._avatar_identity,
            name=self._avatar_name,
            agent_identity=agent_identity,
        )
        body: dict[str, Any] = {
            "mode": "LITE",
            "avatar_id": avatar_id,
            "aspect_ratio": self._aspect_ratio,
            "video_settings": {"quality": self._video_quality},
            "transport": "livekit",
            "livekit_config": {
                "livekit_url": url,
                "livekit_room": room_name,
                "livekit_worker_token": worker_token,
                "agent_identity": agent_identity,
                "avatar_identity": self._avatar_identity,
                "avatar_name": self._avatar_name,
            },
        }
        if self._max_duration_seconds is not None:
            body["max_session_duration"] = self._max_duration_seconds
        created = await self._api.create_session_token(body)
        started = await self._api.start_session(created["session_token"])
        self._session_id = started["session_id"]
        self._session_token = created["session_token"]
        logger.debug("facecast session started", extra={"session_id": self._session_id, "avatar": avatar_id})

        agent_session.output.replace_audio_tail(
            DataStreamAudioOutput(
                room,
                destination_identity=self._avatar_identity,
                sample_rate=SAMPLE_RATE,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                # the worker reports when each utterance starts playing, after its ~100 ms queue
                wait_playback_start=True,
            )
        )

    async def _remote_avatar_id(self) -> str:
        """The server's id for the avatar: as given, or the id of the photo/bundle uploaded and built."""
        assert self._api is not None
        source = self._avatar_source
        if source == "id":
            self._avatar_id = self._avatar
            return self._avatar
        started = time.monotonic()
        timeout = self._avatar_build_timeout
        what = {"url": "photo URL", "image": "photo", "bundle": "bundle"}[source]
        logger.info("facecast: sending the avatar %s %s to the server", what, self._avatar)
        if source == "url":
            status = await self._api.create_avatar(image_url=self._avatar, timeout=timeout)
        elif source == "image":
            status = await self._api.create_avatar(image=Path(self._avatar).expanduser(), timeout=timeout)
        else:
            status = await self._api.create_avatar(bundle=Path(self._avatar).expanduser(), timeout=timeout)
        stages: list[str] = []

        def on_progress(st: dict[str, Any]) -> None:
            stage = str(st.get("stage") or st["status"])
            if not stages or stages[-1] != stage:
                stages.append(stage)
                progress = st.get("progress")
                pct = f" {progress * 100:.0f}%" if isinstance(progress, int | float) else ""
                logger.info("facecast: avatar %s%s: %s", st["avatar_id"], pct, stage)

        remaining = max(0.0, timeout - (time.monotonic() - started))
        self._avatar_id = await self._api.wait_avatar_ready(
            status, timeout=remaining, on_progress=on_progress
        )
        return self._avatar_id

    @staticmethod
    def _agent_identity(room: rtc.Room) -> str:
        if room.isconnected() and room.local_participant.identity:
            return room.local_participant.identity
        # Inside a job the room is usually connected later, by AgentSession.start(); the job knows.
        job_ctx = get_job_context(required=False)
        if job_ctx is not None and (identity := job_ctx.local_participant_identity):
            return identity
        raise FacecastException("cannot tell the agent's identity: connect the room or start inside a job")

    @staticmethod
    def _room_name(room: rtc.Room) -> str:
        if room.name:
            return room.name
        job_ctx = get_job_context(required=False)
        if job_ctx is not None and job_ctx.job.room.name:
            return job_ctx.job.room.name
        raise FacecastException("cannot tell the room's name: connect the room or start inside a job")

    # -- local -----------------------------------------------------------------------------------------
    async def _start_local(self, agent_session: AgentSession, room: rtc.Room) -> None:
        try:
            from facecast.avatars import AvatarLibrary
            from facecast.hosts.livekit.generator import FacecastVideoGenerator
            from facecast.hosts.livekit.runner import FacecastAvatarRunner
        except ImportError as exc:
            raise FacecastException(
                "local mode renders in this process and needs the facecast engine: "
                "pip install 'livekit-plugins-facecast[local]'"
            ) from exc
        library = AvatarLibrary()  # $FACECAST_AVATARS_DIR, else ~/.local/share/facecast/avatars
        if self._avatar_source in ("url", "image"):
            self._avatar_id = await self._build_local_avatar(library)
        else:
            self._avatar_id = self._avatar
        try:
            generator = FacecastVideoGenerator(
                avatar=self._avatar_id,
                aspect=self._aspect_ratio,
                quality=self._video_quality,
                sample_rate=SAMPLE_RATE,
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
        output = QueueAudioOutput(sample_rate=SAMPLE_RATE, wait_playback_start=True)
        self._runner = FacecastAvatarRunner(room, audio_recv=output, generator=generator)
        self._local_room = room
        self._local_session = agent_session
        agent_session.output.replace_audio_tail(output)
        agent_session.on("agent_state_changed", self._on_agent_state_changed)
        self._session_id = f"local-{uuid.uuid4().hex[:12]}"
        await super().start(agent_session, room)
        if room.isconnected():
            await self._runner.start()
        else:
            # the avatar is the agent participant itself, which can publish only once connected
            self._local_start_task = asyncio.create_task(self._start_runner_when_connected(room))

    async def _build_local_avatar(self, library: AvatarLibrary) -> str:
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
            return await asyncio.wait_for(asyncio.to_thread(build), self._avatar_build_timeout)
        except TimeoutError:
            raise APITimeoutError(
                f"facecast: building the avatar from {self._avatar} took over "
                f"{self._avatar_build_timeout:.0f} s; raise avatar_build_timeout (the build goes on in the "
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

    async def _aclose_local(self) -> None:
        if self._local_start_task is not None:
            await utils.aio.cancel_and_wait(self._local_start_task)
        if self._local_session is not None:
            self._local_session.off("agent_state_changed", self._on_agent_state_changed)
            self._local_session = None
        if self._runner is not None:
            await self._runner.aclose()
            self._runner = None
        # The base class would remove the avatar participant from the room, and here that is the agent.
        room, self._room = self._room, None
        if room is not None:
            room.off("connection_state_changed", self._on_connection_state_changed)
        await super().aclose()
