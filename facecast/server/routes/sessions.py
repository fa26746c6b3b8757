"""The session API in LiveAvatar's shape (token, start, stop, keep-alive, listing), WebRTC signalling and
the LITE WebSocket. Routes are thin: facecast.server.sessions holds the behaviour."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime.

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect

from facecast import protocol as p
from facecast.bounded_json import MAX_MESSAGE_CHARS, MessageRefused, parse_message
from facecast.server.auth import parse_bearer
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.server.routes.common import api_key, manager, ok, session_token, stop_token
from facecast.server.schemas import OfferRequest, SessionRef, StopRequest, TokenRequest
from facecast.server.sessions import LiveSession, RoomSession, Session, SessionManager
from facecast.server.sessions.livekit import livekit_start_details
from facecast.server.store import UNREACHABLE_ERRORS, ApiKey, SessionRecord

log = logging.getLogger(__name__)

router = APIRouter()

MAX_WS_MESSAGE_CHARS = MAX_MESSAGE_CHARS
MAX_LIST_PAGE = 1_000_000  # 100 million sessions at the largest page size


def check_ref(record: SessionRecord, ref: SessionRef | None) -> None:
    if ref is not None and ref.session_id is not None and ref.session_id != record.id:
        raise ApiError(403, p.CODE_FORBIDDEN, "this session token belongs to another session")


def live_session(mgr: SessionManager, record: SessionRecord) -> Session:
    if record.state == p.STATE_ENDED:
        raise ApiError(410, p.CODE_GONE, f"session {record.id} has ended ({record.end_reason})")
    session = mgr.live.get(record.id)
    if session is None:
        if record.state == p.STATE_CREATED:
            raise ApiError(
                409, p.CODE_CONFLICT, f"session {record.id} is not started; call /v1/sessions/start"
            )
        raise ApiError(409, p.CODE_CONFLICT, f"session {record.id} runs on another server ({record.owner})")
    return session


def lite_session(session: Session) -> LiveSession:
    """A session that takes LITE commands (WebRTC, or LITE into a LiveKit room)."""
    if not isinstance(session, LiveSession):
        raise ApiError(
            409,
            p.CODE_CONFLICT,
            f"session {session.id} uses transport livekit with audio_source data_stream: the agent's "
            "audio and commands travel through the LiveKit room, not the LITE WebSocket",
        )
    return session


def webrtc_session(session: Session) -> LiveSession:
    live = lite_session(session)
    if live.room is not None:
        raise ApiError(
            409,
            p.CODE_CONFLICT,
            f"session {session.id} plays in the LiveKit room {live.room!r}: join that room to see it "
            "(livekit_client_token from /v1/sessions/start); WebRTC offers are for transport webrtc",
        )
    return live


def public_base(request: Request) -> str:
    return (request.app.state.config.public_url or str(request.base_url)).rstrip("/")


@router.post("/v1/sessions/token", tags=["sessions"], summary="Mint a session token (backend only)")
async def create_token(
    body: TokenRequest,
    key: Annotated[ApiKey, Depends(api_key)],
    mgr: Annotated[SessionManager, Depends(manager)],
) -> dict[str, Any]:
    record, token = mgr.mint(key, body)
    return ok({"session_id": record.id, "session_token": token})


@router.post("/v1/sessions/start", tags=["sessions"], summary="Start the session the bearer token names")
async def start_session(
    request: Request,
    record: Annotated[SessionRecord, Depends(session_token)],
    mgr: Annotated[SessionManager, Depends(manager)],
    body: SessionRef | None = None,
) -> dict[str, Any]:
    check_ref(record, body)
    session = await mgr.start(record)
    config: ServerConfig = request.app.state.config
    settings = record.settings
    base = public_base(request)
    token = parse_bearer(request.headers.get("authorization"))
    ws_base = "ws" + base[4:] if base.startswith("http") else base
    ws_url = f"{ws_base}/v1/sessions/{record.id}/ws?token={token}"
    width, height = settings.look.frame_size
    video = {"width": width, "height": height, "fps": settings.look.fps, "encoding": settings.encoding}
    if settings.livekit is not None:
        # LiveAvatar's answer (pipecat parses it as LiveAvatarSessionResponse), and Facecast's fields.
        data: dict[str, Any] = {
            "session_id": record.id,
            "transport": "livekit",
            **livekit_start_details(config, record),
            "max_session_duration": settings.max_session_duration,
            "idle_timeout": config.limits.idle_timeout,
            "video": video,
        }
        if record.mode == "LITE":  # a FULL session speaks itself: no agent audio to source
            data["audio_source"] = settings.livekit.audio_source
        if not isinstance(session, RoomSession):
            data["ws_url"] = ws_url
            data["audio"] = {"input_sample_rate": p.LITE_AUDIO_RATE}
        return ok(data)
    return ok(
        {
            "session_id": record.id,
            "ws_url": ws_url,
            "webrtc": {
                "offer_url": f"{base}/v1/sessions/{record.id}/offer",
                "ice_servers": list(config.ice_servers),
                "data_channel": {"label": p.DATA_CHANNEL_LABEL, "negotiated": True, "id": 0},
            },
            "max_session_duration": settings.max_session_duration,
            "idle_timeout": config.limits.idle_timeout,
            "video": video,
            "audio": {"codec": "opus", "sample_rate": 48000, "input_sample_rate": p.LITE_AUDIO_RATE},
        }
    )


@router.post("/v1/sessions/{session_id}/offer", tags=["sessions"], summary="WebRTC offer → answer")
async def webrtc_offer(
    session_id: str,
    body: OfferRequest,
    record: Annotated[SessionRecord, Depends(session_token)],
    mgr: Annotated[SessionManager, Depends(manager)],
) -> dict[str, Any]:
    check_ref(record, SessionRef(session_id=session_id))
    session = webrtc_session(live_session(mgr, record))
    sdp, sdp_type = await mgr.connect_peer(session, body.sdp, body.type)
    return ok({"sdp": sdp, "type": sdp_type})


@router.post("/v1/sessions/stop", tags=["sessions"], summary="Stop a session (idempotent)")
async def stop_session(
    record: Annotated[SessionRecord, Depends(stop_token)],
    mgr: Annotated[SessionManager, Depends(manager)],
    body: StopRequest | None = None,
) -> dict[str, Any]:
    check_ref(record, body)
    if record.state == p.STATE_ENDED:
        return ok({"session_id": record.id, "end_reason": record.end_reason}, "session had already ended")
    await mgr.end(record.id, p.END_STOPPED)
    ended = mgr.store.get_session(record.id)
    reason = ended.end_reason if ended is not None else p.END_STOPPED
    return ok({"session_id": record.id, "end_reason": reason}, "session stopped")


@router.post("/v1/sessions/keep-alive", tags=["sessions"], summary="Reset the idle timer")
async def keep_alive(
    record: Annotated[SessionRecord, Depends(session_token)],
    mgr: Annotated[SessionManager, Depends(manager)],
    body: SessionRef | None = None,
) -> dict[str, Any]:
    check_ref(record, body)
    live_session(mgr, record).touch()
    return ok({"session_id": record.id})


@router.get("/v1/sessions", tags=["sessions"], summary="This key's sessions, active or history")
async def list_sessions(
    key: Annotated[ApiKey, Depends(api_key)],
    mgr: Annotated[SessionManager, Depends(manager)],
    status: Annotated[str, Query(pattern="^(active|history)$")] = "active",
    page: Annotated[int, Query(ge=1, le=MAX_LIST_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    records, total = mgr.store.list_sessions(
        key.id, active=status == "active", page=page, page_size=page_size
    )
    return ok(
        {
            "sessions": [await mgr.describe(r) for r in records],
            "page": page,
            "page_size": page_size,
            "total": total,
        }
    )


@router.get("/v1/sessions/{session_id}", tags=["sessions"], summary="One session, with its stats")
async def get_session(
    session_id: str,
    key: Annotated[ApiKey, Depends(api_key)],
    mgr: Annotated[SessionManager, Depends(manager)],
) -> dict[str, Any]:
    record = mgr.store.get_session(session_id)
    if record is None or record.key_id != key.id:
        raise ApiError(404, p.CODE_NOT_FOUND, f"no session {session_id!r} for this API key")
    return ok(await mgr.describe(record))


# -- LITE WebSocket -------------------------------------------------------------------------------
@router.websocket("/v1/sessions/{session_id}/ws")
async def lite_socket(websocket: WebSocket, session_id: str, token: str | None = None) -> None:
    mgr: SessionManager = websocket.app.state.manager
    await websocket.accept()
    try:
        record = mgr.authenticate_token(token)
        if record.id != session_id:
            raise ApiError(403, p.CODE_FORBIDDEN, "this session token belongs to another session")
        session = lite_session(live_session(mgr, record))
    except ApiError as exc:
        await websocket.send_json({"type": p.ERROR, "code": exc.code, "message": exc.message})
        await websocket.close(code=4000 + exc.status % 1000)
        return
    except UNREACHABLE_ERRORS:
        message = "the session database is unreachable right now; reconnect in a few seconds"
        await websocket.send_json({"type": p.ERROR, "code": p.CODE_INTERNAL, "message": message})
        await websocket.close(code=1013)  # try again later
        return

    async def send(event: dict[str, Any]) -> None:
        await websocket.send_json(event)

    session.add_sink(send, close=websocket.close)
    await send(
        {
            "type": p.SESSION_STATE_UPDATED,
            "event_id": "",
            "session_id": session.id,
            "state": session.ws_state,
        }
    )
    try:
        while not session.ending:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                break
            raw = frame.get("text")
            if raw is None:
                await session.reply_error(
                    send, p.CODE_BAD_REQUEST, "binary frames are not accepted: send JSON text"
                )
                continue
            try:
                message = parse_message(raw, max_chars=MAX_WS_MESSAGE_CHARS)
            except MessageRefused as exc:
                log.warning("session %s: refused a LITE WebSocket message: %s", session.id, exc)
                await session.reply_error(send, p.CODE_BAD_REQUEST, str(exc))
                continue
            await session.handle(message, reply=send)
    except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the session closed the socket first
        pass
    finally:
        session.remove_sink(send)
