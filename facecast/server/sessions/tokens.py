"""Minting a session: its token body checked and turned into the record the store keeps (transport,
video, LiveKit room and join token, FULL mode's parts, duration) and the bearer token the client holds."""

from __future__ import annotations

import base64
import binascii
import time
from typing import TYPE_CHECKING, Any

from facecast import protocol as p
from facecast.avatars.look import Look
from facecast.avatars.refs import AvatarRefError, LibraryAvatar, parse_avatar_id
from facecast.bounded_json import MessageRefused, parse_message
from facecast.server.auth import hash_secret, new_session_token
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.server.routes.resources import known_voice
from facecast.server.schemas import TokenRequest
from facecast.server.session_settings import LipSync, LiveKitRoom, SessionSettings
from facecast.server.sessions.livekit import (
    OWNED_ROOM_AGENT,
    OWNED_ROOM_AVATAR,
    livekit_extra_missing,
    livekit_keys,
)
from facecast.server.store import ApiKey, SessionRecord, new_session_id

if TYPE_CHECKING:
    from facecast.server.sessions.manager import SessionManager


def mint_session(manager: SessionManager, key: ApiKey, body: TokenRequest) -> tuple[SessionRecord, str]:
    """A new session's record, stored, and its bearer token; refused (429) past the key's cap."""
    config = manager.config
    limits = config.limits
    session_id = new_session_id()
    # FULL sessions run over this server's WebRTC peer unless the body names a room or a transport.
    full_default = body.mode == "FULL" and body.transport is None and body.livekit_config is None
    transport = "webrtc" if full_default else _transport(config, body)
    _check_track_only(body, transport)
    full = None
    if body.mode == "FULL":
        from facecast.server.full_mode import full_settings

        full = full_settings(manager, key, body)
    elif body.stt_service is not None or body.tts_service is not None:
        raise ApiError(  # 409 as for avatar_persona.context_id: a valid body a LITE session cannot use
            409,
            p.CODE_CONFLICT,
            "stt_service and tts_service choose a FULL session's speech services; a LITE session's agent "
            "brings its own: drop them or mint mode FULL",
        )
    quality = _quality(body)
    livekit = _livekit_settings(config, body, session_id) if transport == "livekit" else None
    voice_id = _voice(body, livekit)
    if body.avatar_image_url is not None:
        if body.avatar_id is not None:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                "give avatar_id or avatar_image_url, not both: avatar_image_url builds a new avatar",
            )
        if body.is_sandbox:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                "sandbox sessions use the sandbox avatar; drop avatar_image_url or is_sandbox",
            )
    avatar_id = limits.sandbox_avatar if body.is_sandbox else (body.avatar_id or limits.sandbox_avatar)
    try:
        avatar = parse_avatar_id(avatar_id)
    except AvatarRefError as exc:
        # The schema takes any string, so this is an avatar the server does not have, not a bad request.
        raise ApiError(
            404, p.CODE_NOT_FOUND, f"unknown avatar_id: {exc}; GET /v1/avatars lists the available ones"
        ) from None
    if isinstance(avatar, LibraryAvatar) and body.avatar_image_url is None:
        manager.avatars.check_usable(key.id, avatar_id)  # 404 for unknown ids, 400 for failed builds
    if body.is_sandbox:
        duration = limits.sandbox_duration
    else:
        duration = body.max_session_duration or limits.default_session_duration
        if duration > limits.max_session_duration:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                f"max_session_duration {duration} s is over this server's limit of "
                f"{limits.max_session_duration} s",
            )
    cap = key.max_concurrent if key.max_concurrent is not None else limits.max_concurrent_per_key
    built = None
    if body.avatar_image_url is not None:
        # Built like POST /v1/avatars {image_url}; /start waits for it.
        built = manager.avatars.create_from_url(key, body.avatar_image_url, display_name=None, consent=None)
        avatar_id = built.avatar_id
    now = time.time()
    token = new_session_token()
    record = SessionRecord(
        id=session_id,
        key_id=key.id,
        mode=body.mode,
        avatar_id=avatar_id,
        is_sandbox=body.is_sandbox,
        transport=transport,
        settings=SessionSettings(
            look=Look(avatar=avatar_id, aspect=body.aspect_ratio, quality=quality, fps=body.fps),
            encoding=body.video_settings.encoding,
            max_session_duration=duration,
            interactivity_type=body.interactivity_type,
            lip_sync=LipSync(
                language=body.avatar_persona.language if body.avatar_persona is not None else "en",
                tracker=body.tracker,
                lookahead_ms=body.lookahead_ms,
            ),
            voice_id=voice_id,
            livekit=livekit,
            full=full,
            mouth_track=body.mouth_track,
            video=body.video,
        ),
        state=p.STATE_CREATED,
        token_hash=hash_secret(token),
        token_expires_at=now + limits.token_ttl,
        created_at=now,
        owner=manager.server_id,
    )
    if not manager.store.insert_session(record, max_active=cap):
        if built is not None:  # no session will use it
            manager.avatars.delete(key, built.avatar_id)
        raise ApiError(
            429,
            p.CODE_LIMIT,
            f"this API key already has {cap} active session(s), its limit is {cap}; stop one "
            "(POST /v1/sessions/stop) or wait for it to end",
        )
    return record, token


def _transport(config: ServerConfig, body: TokenRequest) -> str:
    """The body's transport; left out: `livekit` when it brings a room (LiveAvatar's clients never
    name a transport) or this server knows a LiveKit server to make one on, else `webrtc`."""
    if body.transport is not None:
        if body.transport == "webrtc" and body.livekit_config is not None:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                "livekit_config needs transport livekit; drop transport or livekit_config",
            )
        return body.transport
    if body.livekit_config is not None or config.livekit.configured:
        return "livekit"
    return "webrtc"


def _check_track_only(body: TokenRequest, transport: str) -> None:
    """The mouth track and track-only sessions (docs/mouth-track.md): LITE only; no video only with the
    track, and only over this server's WebRTC peer (a LiveKit room's avatar always publishes video)."""
    if body.mode == "FULL" and (body.mouth_track or not body.video):
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            "mouth_track and video false are for LITE sessions; drop them or mint mode LITE",
        )
    if body.video:
        return
    if not body.mouth_track:
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            "video false leaves a session nothing to show: a track-only session sends the mouth track "
            "instead, so set mouth_track true (or drop video false)",
        )
    if transport != "webrtc":
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            "video false (a track-only session) runs over this server's WebRTC peer: set transport webrtc "
            "and drop livekit_config, or drop video false",
        )


def _quality(body: TokenRequest) -> str:
    quality: str = body.video_settings.quality
    if body.video_quality is not None:
        quality_given = "quality" in body.video_settings.model_fields_set
        if quality_given and quality != body.video_quality:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                f"video_quality {body.video_quality!r} and video_settings.quality "
                f"{quality!r} disagree; give one of them",
            )
        quality = body.video_quality
    return quality


def _voice(body: TokenRequest, livekit: LiveKitRoom | None) -> str | None:
    """The voice of the server's speech: FULL's replies, LITE's agent.speak_text. A persona's fields that
    a session could not use are refused rather than dropped."""
    persona = body.avatar_persona
    if persona is None:
        return None
    if body.mode == "LITE" and persona.context_id is not None:
        # 409, not 400: the schema cannot say it (schemathesis cannot generate from a rule across fields
        # of a nullable object), and a valid body this session cannot serve is a conflict here.
        raise ApiError(
            409,
            p.CODE_CONFLICT,
            "avatar_persona.context_id gives a FULL session's LLM its prompt; a LITE session's agent brings "
            "its own: drop context_id or mint mode FULL",
        )
    if persona.voice_id is None:
        return None
    if livekit is not None and livekit.audio_source == "data_stream":
        raise ApiError(  # a valid body, but this session would have no server speech to give a voice
            409,
            p.CODE_CONFLICT,
            "avatar_persona.voice_id is the voice of agent.speak_text on the LITE WebSocket; this session "
            "takes its speech from the agent's audio in the LiveKit room (audio_source data_stream): drop "
            "voice_id or use audio_source websocket",
        )
    if not known_voice(persona.voice_id):
        raise ApiError(
            404, p.CODE_NOT_FOUND, f"unknown voice_id {persona.voice_id!r}; GET /v1/voices lists the voices"
        )
    return persona.voice_id.lower()


def _livekit_settings(config: ServerConfig, body: TokenRequest, session_id: str) -> LiveKitRoom:
    """Where the avatar joins and with which token, and where the agent's audio comes from: the LITE
    WebSocket (`websocket`) or LiveKit's avatar protocol in the room (`data_stream`)."""
    cfg = body.livekit_config
    if cfg is None:
        return _owned_room_settings(config, body, session_id)
    if not cfg.livekit_url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ApiError(
            400, p.CODE_BAD_REQUEST, f"livekit_config.livekit_url {cfg.livekit_url!r} is not a URL"
        )
    tokens = [t for t in (cfg.livekit_worker_token, cfg.livekit_client_token) if t]
    if len(tokens) > 1:
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            "livekit_config.livekit_client_token and livekit_worker_token both name the avatar's join "
            "token; give one of them",
        )
    facecast_shape = cfg.livekit_worker_token is not None or cfg.agent_identity is not None
    # A FULL session's speech is the server's own: it feeds the avatar as the LITE socket's audio does.
    lite_agent_in_room = facecast_shape and body.mode == "LITE"
    audio_source = body.audio_source or ("data_stream" if lite_agent_in_room else "websocket")
    token = tokens.pop() if tokens else None
    # A token given decides who the avatar is in the room (LiveAvatar's plugin names it itself).
    identity = (token and _token_identity(token)) or cfg.avatar_identity or "facecast-avatar"
    if token is None:
        keys = livekit_keys(config)
        if not (keys and cfg.agent_identity):
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                "livekit_config has no avatar token; pass livekit_client_token (or "
                "livekit_worker_token), or give agent_identity and run the server with "
                "FACECAST_LIVEKIT_API_KEY / _API_SECRET (or LIVEKIT_API_KEY / LIVEKIT_API_SECRET) set "
                "so it can mint one",
            )
        token = _mint_worker_token(
            *keys,
            room=cfg.livekit_room,
            identity=identity,
            name=cfg.avatar_name or identity,
            agent_identity=cfg.agent_identity,
        )
    return LiveKitRoom(
        url=cfg.livekit_url,
        room=cfg.livekit_room,
        worker_token=token,
        agent_identity=cfg.agent_identity,
        avatar_identity=identity,
        audio_source=audio_source,
        owned=False,
    )


def _owned_room_settings(config: ServerConfig, body: TokenRequest, session_id: str) -> LiveKitRoom:
    """A room on this server's LiveKit server, made for the session at /start and deleted at its
    end, as LiveAvatar does: the answer to /start carries tokens for the user and the agent."""
    lk = config.livekit
    if not lk.configured:
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            "transport livekit needs livekit_config {livekit_url, livekit_room, livekit_client_token} "
            "naming your room, or a LiveKit server known to this server (facecast serve --livekit-url "
            "with FACECAST_LIVEKIT_API_KEY / FACECAST_LIVEKIT_API_SECRET) to make one",
        )
    assert lk.api_key is not None and lk.api_secret is not None
    room = f"facecast-{session_id}"
    token = _mint_worker_token(
        lk.api_key,
        lk.api_secret,
        room=room,
        identity=OWNED_ROOM_AVATAR,
        name=OWNED_ROOM_AVATAR,
        agent_identity=OWNED_ROOM_AGENT,
    )
    return LiveKitRoom(
        url=lk.ws_url,
        room=room,
        worker_token=token,
        agent_identity=OWNED_ROOM_AGENT,
        avatar_identity=OWNED_ROOM_AVATAR,
        audio_source=body.audio_source or "websocket",
        owned=True,
    )


def _token_identity(token: str) -> str | None:
    """The participant identity (`sub`) a LiveKit token was minted for; None if it is not a JWT. Read
    without verifying: the LiveKit server verifies it when the avatar joins."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = parse_message(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (MessageRefused, binascii.Error):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) and sub else None


def _livekit_tokens() -> Any:
    """facecast.hosts.livekit.tokens, or a 501 that says which extra to install."""
    try:
        from facecast.hosts.livekit import tokens
    except ImportError as exc:
        raise livekit_extra_missing(exc) from None
    return tokens


def _mint_worker_token(api_key: str, api_secret: str, **claims: Any) -> str:
    return str(_livekit_tokens().mint_worker_token(api_key, api_secret, **claims))
