"""Remote mode: a Facecast server sends an avatar worker into the agent's room; the agent's speech goes to it
over LiveKit data streams, and it publishes the talking face as its own participant. Needs no facecast
install: only the server's HTTP API and a LiveKit token minted here.

A photo or bundle is uploaded to the server (`POST /v1/avatars`) once, before the session starts, and the
session waits for its build; the server reuses the avatar of a photo it has seen before.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import api, rtc
from livekit.agents import AgentSession, get_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput

from .api import END_STOPPED, FacecastAPI, FacecastException
from .log import logger

if TYPE_CHECKING:
    from .avatar import AspectRatio, AvatarSource, VideoQuality

ATTRIBUTE_PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
WORKER_TOKEN_TTL = timedelta(hours=6)


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


class RemoteAvatar:
    """One server session whose avatar worker joins the agent's room. `AvatarSession` calls
    `resolve_avatar()`, then starts its base class, then `start_session()`; `stop_session()` and `aclose()`
    when it closes."""

    def __init__(
        self,
        facecast_api: FacecastAPI,
        *,
        avatar: str,
        source: AvatarSource,
        aspect_ratio: AspectRatio,
        video_quality: VideoQuality,
        max_duration_seconds: int | None,
        avatar_identity: str,
        avatar_name: str,
        sample_rate: int,
        build_timeout: float,
        mouth_track: bool = False,
    ) -> None:
        self._api = facecast_api
        self._avatar = avatar
        self._source = source
        self._aspect_ratio = aspect_ratio
        self._video_quality = video_quality
        self._max_duration_seconds = max_duration_seconds
        self._avatar_identity = avatar_identity
        self._avatar_name = avatar_name
        self._sample_rate = sample_rate
        self._build_timeout = build_timeout
        self._mouth_track = mouth_track
        self.avatar_id: str | None = None  # the server's id, once resolve_avatar() has returned
        self.session_id: str | None = None
        self._session_token: str | None = None

    async def resolve_avatar(self) -> str:
        """The server's id for the avatar: as given, or the id of the photo/bundle uploaded and built."""
        source = self._source
        if source == "id":
            self.avatar_id = self._avatar
            return self._avatar
        started = time.monotonic()
        timeout = self._build_timeout
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
        self.avatar_id = await self._api.wait_avatar_ready(status, timeout=remaining, on_progress=on_progress)
        return self.avatar_id

    async def start_session(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        *,
        livekit_url: str,
        livekit_api_key: str,
        livekit_api_secret: str,
    ) -> None:
        """Start the server session (its worker joins `room`) and send the agent's speech to the worker."""
        assert self.avatar_id is not None, "resolve_avatar() first"
        agent_identity = _agent_identity(room)
        room_name = _room_name(room)
        worker_token = mint_worker_token(
            livekit_api_key,
            livekit_api_secret,
            room=room_name,
            identity=self._avatar_identity,
            name=self._avatar_name,
            agent_identity=agent_identity,
        )
        body: dict[str, Any] = {
            "mode": "LITE",
            "avatar_id": self.avatar_id,
            "aspect_ratio": self._aspect_ratio,
            "video_settings": {"quality": self._video_quality},
            "transport": "livekit",
            "livekit_config": {
                "livekit_url": livekit_url,
                "livekit_room": room_name,
                "livekit_worker_token": worker_token,
                "agent_identity": agent_identity,
                "avatar_identity": self._avatar_identity,
                "avatar_name": self._avatar_name,
            },
        }
        if self._max_duration_seconds is not None:
            body["max_session_duration"] = self._max_duration_seconds
        if self._mouth_track:  # the server's worker sends it on topic facecast.mouth_track
            body["mouth_track"] = True
        created = await self._api.create_session_token(body)
        started = await self._api.start_session(created["session_token"])
        self.session_id = started["session_id"]
        self._session_token = created["session_token"]
        logger.debug(
            "facecast session started", extra={"session_id": self.session_id, "avatar": self.avatar_id}
        )

        agent_session.output.replace_audio_tail(
            DataStreamAudioOutput(
                room,
                destination_identity=self._avatar_identity,
                sample_rate=self._sample_rate,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                # the worker reports when each utterance starts playing, after its ~100 ms queue
                wait_playback_start=True,
            )
        )

    async def stop_session(self) -> None:
        """Stop the server session, once; a failure is logged, not raised."""
        session_id, token = self.session_id, self._session_token
        self.session_id = self._session_token = None
        if session_id is None or token is None:
            return
        try:
            await self._api.stop_session(token, session_id, reason=END_STOPPED)
        except Exception:
            logger.warning("failed to stop facecast session", extra={"session_id": session_id}, exc_info=True)

    async def aclose(self) -> None:
        """Close the API client."""
        await self._api.aclose()


def _agent_identity(room: rtc.Room) -> str:
    if room.isconnected() and room.local_participant.identity:
        return room.local_participant.identity
    # Inside a job the room is usually connected later, by AgentSession.start(); the job knows.
    job_ctx = get_job_context(required=False)
    if job_ctx is not None and (identity := job_ctx.local_participant_identity):
        return identity
    raise FacecastException("cannot tell the agent's identity: connect the room or start inside a job")


def _room_name(room: rtc.Room) -> str:
    if room.name:
        return room.name
    job_ctx = get_job_context(required=False)
    if job_ctx is not None and job_ctx.job.room.name:
        return job_ctx.job.room.name
    raise FacecastException("cannot tell the room's name: connect the room or start inside a job")
