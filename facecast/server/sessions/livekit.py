"""Sessions whose avatar plays in a LiveKit room: the room this server makes for one (and deletes at its
end), the avatar worker that joins it, and `RoomSession`, a session whose agent streams audio over
LiveKit's avatar protocol. LITE sessions into a room are in facecast.server.sessions.lite_room."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from facecast import protocol as p
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.server.session_stats import LIVE_STAT_NAMES, SessionStats
from facecast.server.store import SessionRecord
from facecast.settings import LIVEKIT_SDK_API_KEY, LIVEKIT_SDK_API_SECRET

if TYPE_CHECKING:
    from facecast.server.sessions.lite import LiveSession
    from facecast.server.sessions.manager import SessionManager

log = logging.getLogger(__name__)

# Participants of a room this server makes for a session (LiveAvatar's shape): the avatar, the holder of
# `livekit_agent_token` (the agent's pipeline) and the holder of `livekit_client_token` (the user).
OWNED_ROOM_AVATAR = "facecast-avatar"
OWNED_ROOM_AGENT = "facecast-agent"
OWNED_ROOM_USER = "user"
OWNED_ROOM_MAX_PARTICIPANTS = 8


def livekit_extra_missing(exc: ImportError) -> ApiError:
    return ApiError(
        501,
        p.CODE_NOT_IMPLEMENTED,
        f"transport livekit needs the LiveKit extra: pip install 'facecast[livekit]' ({exc})",
    )


def livekit_keys(config: ServerConfig) -> tuple[str, str] | None:
    """Credentials to mint tokens with: this server's LiveKit server (FACECAST_LIVEKIT_*), else
    LIVEKIT_API_KEY / LIVEKIT_API_SECRET."""
    lk = config.livekit
    if lk.configured:
        assert lk.api_key is not None and lk.api_secret is not None
        return lk.api_key, lk.api_secret
    key, secret = LIVEKIT_SDK_API_KEY.get(), LIVEKIT_SDK_API_SECRET.get()
    return (key, secret) if key and secret else None


class RoomSession:
    """A started session with transport `livekit`: a worker in the user's LiveKit room plays the agent's
    speech; audio arrives over LiveKit's avatar protocol, so there is no WebRTC peer and no LITE socket."""

    def __init__(self, record: SessionRecord, worker: Any, *, started_mono: float) -> None:
        self.record = record
        self.id = record.id
        self.worker = worker  # facecast.hosts.livekit.worker.RoomAvatar (imported only when used)
        self.started_mono = started_mono
        self.deadline = time.monotonic() + record.settings.max_session_duration
        self.connected_at: float | None = started_mono  # connected before start() returned
        self._kept_alive = started_mono
        self.ending = False

    @property
    def last_activity(self) -> float:
        """Latest of a keep-alive and the last audio the agent streamed."""
        idle_s = self.worker.stats().get("idle_s")
        heard = time.monotonic() - idle_s if idle_s is not None else self.started_mono
        return max(self._kept_alive, heard)

    def touch(self) -> None:
        self._kept_alive = time.monotonic()

    async def stats(self) -> SessionStats:
        return room_stats(self.worker, self.started_mono)

    async def close(self, reason: str) -> SessionStats:
        self.ending = True
        stats = await self.stats()
        await self.worker.aclose(reason)
        return stats


def room_stats(worker: Any, started_mono: float) -> SessionStats:
    """A session's stats from its avatar worker in a LiveKit room (a RoomAvatar)."""
    stats = worker.stats()
    room = ("room", "agent_identity")
    return SessionStats(
        time.monotonic() - started_mono,
        worker.live_stats,
        transport={k: v for k, v in stats.items() if k not in LIVE_STAT_NAMES and k not in room},
        livekit={k: stats.get(k) for k in room},
    )


def new_room_avatar(manager: SessionManager, record: SessionRecord, **options: Any) -> Any:
    """The avatar worker for `record`'s LiveKit room, from its settings; `options` go to RoomAvatar
    (a LITE room's audio receiver and rate). Ending it ends the session."""
    try:
        from facecast.hosts.livekit.worker import RoomAvatar
    except ImportError as exc:
        raise livekit_extra_missing(exc) from None
    settings = record.settings
    lk = settings.livekit
    assert lk is not None

    def on_end(reason: str) -> None:
        manager.spawn(manager.end(record.id, reason))

    return RoomAvatar(
        lk.url,
        lk.worker_token,
        avatar=settings.look.avatar,
        aspect=settings.look.aspect,
        quality=settings.look.quality,
        fps=settings.look.fps,
        tracker=settings.lip_sync.tracker,
        language=settings.lip_sync.language,
        lookahead_ms=settings.lip_sync.lookahead_ms,
        mouth_track=settings.mouth_track,  # on the room's data topic (docs/mouth-track.md)
        max_duration_s=None,  # the manager enforces the duration, like every other limit
        agent_identity=lk.agent_identity,
        on_end=on_end,
        room=manager.livekit_room_factory() if manager.livekit_room_factory is not None else None,
        library=manager.avatars.library,
        **options,
    )


async def start_in_room(manager: SessionManager, record: SessionRecord) -> RoomSession:
    started_mono = time.monotonic()
    worker = new_room_avatar(manager, record)
    now = time.time()
    session = RoomSession(record, worker, started_mono=started_mono)
    manager.mark_started(record, session, now)
    try:
        await worker.start()
    except Exception as exc:
        await manager.end(record.id, p.END_ERROR)
        raise ApiError(
            502, p.CODE_INTERNAL, f"the avatar worker could not join the LiveKit room: {exc}"
        ) from None
    return session


async def start_lite_in_room(manager: SessionManager, record: SessionRecord) -> LiveSession:
    """A LITE session whose avatar plays in a LiveKit room: the agent's audio arrives over the LITE
    WebSocket and the avatar worker publishes the face and voice in the room."""
    try:
        from facecast.server.sessions.lite_room import start_lite_room
    except ImportError as exc:
        raise livekit_extra_missing(exc) from None
    return await start_lite_room(manager, record)


def livekit_start_details(config: ServerConfig, record: SessionRecord) -> dict[str, Any]:
    """The LiveKit part of a /start answer, in LiveAvatar's names: for a room this server made,
    fresh tokens for the user's frontend (`livekit_client_token`) and the agent
    (`livekit_agent_token`, LITE only); for the caller's own room, empty strings (the caller mints its
    own)."""
    lk = record.settings.livekit
    assert lk is not None
    client_token = agent_token = ""
    if lk.owned:
        from facecast.server.sessions.lite_room import participant_token

        keys = livekit_keys(config)
        assert keys is not None
        # A LiveKit server cannot revoke a token: these die with the session's longest life.
        ttl = timedelta(seconds=record.settings.max_session_duration + config.limits.token_ttl)
        client_token = participant_token(*keys, room=lk.room, identity=OWNED_ROOM_USER, ttl=ttl)
        if record.mode == "LITE":  # in FULL mode the server is the agent: no one else needs to be
            agent_token = participant_token(
                *keys, room=lk.room, identity=OWNED_ROOM_AGENT, kind="agent", ttl=ttl
            )
    return {
        "livekit_url": lk.url,
        "livekit_room": lk.room,
        "livekit_client_token": client_token,
        "livekit_agent_token": agent_token,
        "avatar_identity": lk.avatar_identity,
    }


async def create_owned_room(manager: SessionManager, record: SessionRecord) -> None:
    """Make the room for a session that asked this server for one (its avatar then joins it)."""
    from livekit import api

    settings = manager.config.livekit
    lk = record.settings.livekit
    assert lk is not None
    try:
        async with api.LiveKitAPI(settings.url, settings.api_key, settings.api_secret) as client:
            await client.room.create_room(
                api.CreateRoomRequest(
                    name=lk.room,
                    empty_timeout=60,
                    max_participants=OWNED_ROOM_MAX_PARTICIPANTS,
                    # the avatar's two tracks reach subscribers as one stream, so browsers lip-sync them
                    sync_streams=True,
                )
            )
    except Exception as exc:
        await manager.end(record.id, p.END_ERROR)
        raise ApiError(
            502,
            p.CODE_INTERNAL,
            f"could not create the session's room on the LiveKit server {settings.url}: {exc}; check "
            "FACECAST_LIVEKIT_URL / _API_KEY / _API_SECRET and that the server is reachable",
        ) from None


async def delete_owned_room(config: ServerConfig, record: SessionRecord) -> None:
    """Delete the room this server made for a session: everyone in it is disconnected."""
    lk = record.settings.livekit
    if lk is None or not lk.owned or not config.livekit.configured:
        return
    from livekit import api

    settings = config.livekit
    try:
        async with api.LiveKitAPI(settings.url, settings.api_key, settings.api_secret) as client:
            await client.room.delete_room(api.DeleteRoomRequest(room=lk.room))
    except Exception as exc:  # gone already, or the LiveKit server is unreachable: it empties itself
        log.warning("could not delete LiveKit room %s of session %s: %s", lk.room, record.id, exc)
