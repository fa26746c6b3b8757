"""Facecast avatars for LiveKit Agents: `AvatarSession`, in one of two modes, each in its own module.

Remote mode (default, `remote.py`): a Facecast server sends an avatar worker into the agent's room; the
agent's speech goes to it over LiveKit data streams, and it publishes the talking face as its own
participant. Local mode (`_local.py`): the face is rendered inside the agent's process and published by the
agent participant itself; no server, no second participant (needs the `local` extra: the facecast engine).

The avatar is an id (a built-in such as "ava", or an avatar created on the server / in the local library),
a photo (a local PNG/JPEG/WebP path or an http(s) URL), or a local `.facecast` bundle. A photo is turned into
an avatar once, before the session starts: remote mode uploads it to the server (`POST /v1/avatars`) and
waits for the build; local mode builds it into the local avatar library (the first build on a machine also
installs the face analysis tools, about half a minute). The same photo again reuses that avatar.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    AgentSession,
    APIConnectOptions,
    NotGivenOr,
    utils,
)
from livekit.agents.voice.avatar import AvatarSession as BaseAvatarSession

from .api import FacecastAPI, FacecastException
from .refs import AvatarSource, classify_avatar
from .remote import RemoteAvatar

if TYPE_CHECKING:
    from ._local import LocalAvatar

DEFAULT_API_URL = "http://localhost:8080"
DEFAULT_AVATAR = "ava"  # facecast.avatars.DEFAULT_AVATAR, without importing facecast
DEFAULT_AVATAR_IDENTITY = "facecast-avatar"
DEFAULT_AVATAR_NAME = "Facecast avatar"
SAMPLE_RATE = 24000
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
        mouth_track: bool = False,
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
            mouth_track: also send each video frame's mouth-track record (visemes, mouth parameters,
                ARKit-style blendshapes; Facecast's docs/mouth-track.md) as a lossy data packet on topic
                `facecast.mouth_track`, as the frame plays, for clients that drive their own avatar.

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
        self._aspect_ratio = aspect_ratio
        self._video_quality = video_quality
        self._max_duration_seconds = max_duration_seconds if utils.is_given(max_duration_seconds) else None
        self._avatar_identity = (
            _given_or_env(avatar_participant_identity, None, DEFAULT_AVATAR_IDENTITY) or ""
        )
        self._avatar_name = _given_or_env(avatar_participant_name, None, DEFAULT_AVATAR_NAME) or ""
        self._mouth_track = mouth_track
        self._remote: RemoteAvatar | None = None
        self._local: LocalAvatar | None = None  # made in start(): it needs the facecast engine
        if mode == "remote":
            key = _given_or_env(api_key, "FACECAST_API_KEY")
            if not key:
                raise FacecastException("api_key is required in remote mode (or set FACECAST_API_KEY)")
            url = _given_or_env(api_url, "FACECAST_API_URL", DEFAULT_API_URL) or DEFAULT_API_URL
            self._remote = RemoteAvatar(
                FacecastAPI(api_url=url, api_key=key, conn_options=conn_options),
                avatar=self._avatar,
                source=self._avatar_source,
                aspect_ratio=aspect_ratio,
                video_quality=video_quality,
                max_duration_seconds=self._max_duration_seconds,
                avatar_identity=self._avatar_identity,
                avatar_name=self._avatar_name,
                sample_rate=SAMPLE_RATE,
                build_timeout=avatar_build_timeout,
                mouth_track=mouth_track,
            )
        self._started = False

    @property
    def avatar_identity(self) -> str:
        """The avatar's participant identity: the worker's in remote mode, the agent's in local mode."""
        local_room = self._local.room if self._local is not None else None
        if local_room is not None and local_room.local_participant.identity:
            return local_room.local_participant.identity
        return self._avatar_identity

    @property
    def provider(self) -> str:
        return "facecast"

    @property
    def session_id(self) -> str | None:
        """The Facecast session id once `start()` has succeeded (local mode: a local id)."""
        mode = self._local if self._mode == "local" else self._remote
        return mode.session_id if mode is not None else None

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def avatar_id(self) -> str | None:
        """The avatar the session renders, once `start()` has resolved it: the id given, the server's id
        for an uploaded photo or bundle (remote), the library id of a built photo or the bundle path
        (local)."""
        mode = self._local if self._mode == "local" else self._remote
        return mode.avatar_id if mode is not None else None

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
        assert self._remote is not None
        try:
            await self._remote.stop_session()
        finally:
            await super().aclose()  # removes the worker participant through the job's API
            await self._remote.aclose()

    async def _start_remote(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        livekit_url: NotGivenOr[str | None],
        livekit_api_key: NotGivenOr[str | None],
        livekit_api_secret: NotGivenOr[str | None],
    ) -> None:
        assert self._remote is not None
        url = _given_or_env(livekit_url, "LIVEKIT_URL")
        key = _given_or_env(livekit_api_key, "LIVEKIT_API_KEY")
        secret = _given_or_env(livekit_api_secret, "LIVEKIT_API_SECRET")
        if not url or not key or not secret:
            raise FacecastException(
                "livekit_url, livekit_api_key and livekit_api_secret must be set "
                "by arguments or the LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET environment variables"
            )
        await self._remote.resolve_avatar()
        await super().start(agent_session, room)
        await self._remote.start_session(
            agent_session, room, livekit_url=url, livekit_api_key=key, livekit_api_secret=secret
        )

    async def _start_local(self, agent_session: AgentSession, room: rtc.Room) -> None:
        try:
            from ._local import LocalAvatar
        except ImportError as exc:
            raise FacecastException(
                "local mode renders in this process and needs the facecast engine: "
                "pip install 'livekit-plugins-facecast[local]'"
            ) from exc
        self._local = LocalAvatar(
            avatar=self._avatar,
            source=self._avatar_source,
            aspect_ratio=self._aspect_ratio,
            video_quality=self._video_quality,
            sample_rate=SAMPLE_RATE,
            build_timeout=self._avatar_build_timeout,
            mouth_track=self._mouth_track,
        )
        await self._local.prepare(agent_session, room)
        await super().start(agent_session, room)
        await self._local.run()

    async def _aclose_local(self) -> None:
        if self._local is not None:
            await self._local.aclose()
        # The base class would remove the avatar participant from the room, and here that is the agent.
        room, self._room = self._room, None
        if room is not None:
            room.off("connection_state_changed", self._on_connection_state_changed)
        await super().aclose()
