"""The HTTP face of the server: the session API in LiveAvatar's shape, the LITE WebSocket, WebRTC signalling,
health, Prometheus metrics and the browser test client. Routes are thin: sessions.py holds the behaviour."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime,
# and the dependencies they name are local to create_app().

import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from facecast import __version__
from facecast.avatars import ASPECTS, QUALITIES, frame_size, list_avatars
from facecast.server import protocol as p
from facecast.server.auth import default_data_dir, parse_bearer
from facecast.server.config import ServerConfig
from facecast.server.metrics import render_metrics
from facecast.server.previews import preview_png
from facecast.server.schemas import OfferRequest, SessionRef, StopRequest, TokenRequest
from facecast.server.sessions import ApiError, LiveSession, RoomSession, Session, SessionManager
from facecast.server.store import ApiKey, SessionRecord, Store, open_store

log = logging.getLogger(__name__)

WEB_DIR = resources.files("facecast.server") / "web"
MAX_WS_MESSAGE_BYTES = 2 * 1024 * 1024  # 10 s of 24 kHz PCM16 in base64 is ~640 KB


def ok(data: Any = None, message: str = "success") -> dict[str, Any]:
    return {"code": p.CODE_OK, "data": data, "message": message}


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "data": None, "message": message}, status_code=status)


def default_server_id(config: ServerConfig) -> str:
    # Stable across restarts of the same server, distinct between servers sharing one database.
    return config.server_id or f"{socket.gethostname()}:{config.port}"


def create_app(
    config: ServerConfig | None = None,
    *,
    store: Store | None = None,
    livekit_room_factory: Callable[[], Any] | None = None,
) -> FastAPI:
    """Build the ASGI app. The store is opened at start-up (or the one given is used and not closed).
    `livekit_room_factory` makes the rooms livekit sessions join (default: real `rtc.Room`s)."""
    config = config or ServerConfig()
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    owns_store = store is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = store if store is not None else open_store(config.database_url, data_dir)
        app.state.manager = SessionManager(
            app.state.store, config, default_server_id(config), livekit_room_factory=livekit_room_factory
        )
        app.state.started_at = time.time()
        await app.state.manager.open()
        try:
            yield
        finally:
            await app.state.manager.close()
            if owns_store:
                app.state.store.close()

    app = FastAPI(
        title="Facecast",
        version=__version__,
        summary="Self-hosted real-time talking avatars: session API, WebRTC and the LITE WebSocket.",
        lifespan=lifespan,
    )
    app.state.config = config

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(400, p.CODE_BAD_REQUEST, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: p.CODE_NOT_FOUND, 405: p.CODE_BAD_REQUEST}.get(exc.status_code, p.CODE_BAD_REQUEST)
        return _error(exc.status_code, code, str(exc.detail))

    def manager(request: Request) -> SessionManager:
        return request.app.state.manager

    def api_key(
        request: Request, x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None
    ) -> ApiKey:
        if not x_api_key:
            raise ApiError(401, p.CODE_UNAUTHORIZED, "missing API key: send it in the X-API-KEY header")
        key = request.app.state.store.authenticate_key(x_api_key)
        if key is None:
            raise ApiError(401, p.CODE_UNAUTHORIZED, "invalid or revoked API key")
        return key

    def session_token(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> SessionRecord:
        return request.app.state.manager.authenticate_token(parse_bearer(authorization))

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
            raise ApiError(
                409, p.CODE_CONFLICT, f"session {record.id} runs on another server ({record.owner})"
            )
        return session

    def webrtc_session(session: Session) -> LiveSession:
        if not isinstance(session, LiveSession):
            raise ApiError(
                409,
                p.CODE_CONFLICT,
                f"session {session.id} uses transport livekit: its media travels through the LiveKit room",
            )
        return session

    def public_base(request: Request) -> str:
        return (config.public_url or str(request.base_url)).rstrip("/")

    # -- sessions -------------------------------------------------------------------------------------
    @app.post("/v1/sessions/token", tags=["sessions"], summary="Mint a session token (backend only)")
    async def create_token(
        body: TokenRequest,
        key: Annotated[ApiKey, Depends(api_key)],
        mgr: Annotated[SessionManager, Depends(manager)],
    ) -> dict[str, Any]:
        record, token = mgr.mint(key, body)
        return ok({"session_id": record.id, "session_token": token})

    @app.post("/v1/sessions/start", tags=["sessions"], summary="Start the session the bearer token names")
    async def start_session(
        request: Request,
        record: Annotated[SessionRecord, Depends(session_token)],
        mgr: Annotated[SessionManager, Depends(manager)],
        body: SessionRef | None = None,
    ) -> dict[str, Any]:
        check_ref(record, body)
        session = await mgr.start(record)
        settings = record.settings
        if isinstance(session, RoomSession):
            lk = settings["livekit"]
            return ok(
                {
                    "session_id": record.id,
                    "transport": "livekit",
                    "livekit_url": lk["url"],
                    "livekit_room": lk["room"],
                    "avatar_identity": lk["avatar_identity"],
                    "max_session_duration": settings["max_session_duration"],
                    "idle_timeout": config.limits.idle_timeout,
                }
            )
        base = public_base(request)
        token = parse_bearer(request.headers.get("authorization"))
        ws_base = "ws" + base[4:] if base.startswith("http") else base
        width, height = frame_size(settings["aspect_ratio"], settings["video_settings"]["quality"])
        return ok(
            {
                "session_id": record.id,
                "ws_url": f"{ws_base}/v1/sessions/{record.id}/ws?token={token}",
                "webrtc": {
                    "offer_url": f"{base}/v1/sessions/{record.id}/offer",
                    "ice_servers": list(config.ice_servers),
                    "data_channel": {"label": p.DATA_CHANNEL_LABEL, "negotiated": True, "id": 0},
                },
                "max_session_duration": settings["max_session_duration"],
                "idle_timeout": config.limits.idle_timeout,
                "video": {
                    "width": width,
                    "height": height,
                    "fps": settings["fps"],
                    "encoding": settings["video_settings"]["encoding"],
                },
                "audio": {"codec": "opus", "sample_rate": 48000, "input_sample_rate": p.LITE_AUDIO_RATE},
            }
        )

    @app.post("/v1/sessions/{session_id}/offer", tags=["sessions"], summary="WebRTC offer → answer")
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

    @app.post("/v1/sessions/stop", tags=["sessions"], summary="Stop a session (idempotent)")
    async def stop_session(
        record: Annotated[SessionRecord, Depends(session_token)],
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

    @app.post("/v1/sessions/keep-alive", tags=["sessions"], summary="Reset the idle timer")
    async def keep_alive(
        record: Annotated[SessionRecord, Depends(session_token)],
        mgr: Annotated[SessionManager, Depends(manager)],
        body: SessionRef | None = None,
    ) -> dict[str, Any]:
        check_ref(record, body)
        live_session(mgr, record).touch()
        return ok({"session_id": record.id})

    @app.get("/v1/sessions", tags=["sessions"], summary="This key's sessions, active or history")
    async def list_sessions(
        key: Annotated[ApiKey, Depends(api_key)],
        mgr: Annotated[SessionManager, Depends(manager)],
        status: Annotated[str, Query(pattern="^(active|history)$")] = "active",
        page: Annotated[int, Query(ge=1)] = 1,
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

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], summary="One session, with its stats")
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
    @app.websocket("/v1/sessions/{session_id}/ws")
    async def lite_socket(websocket: WebSocket, session_id: str, token: str | None = None) -> None:
        mgr: SessionManager = websocket.app.state.manager
        await websocket.accept()
        try:
            record = mgr.authenticate_token(token)
            if record.id != session_id:
                raise ApiError(403, p.CODE_FORBIDDEN, "this session token belongs to another session")
            session = webrtc_session(live_session(mgr, record))
        except ApiError as exc:
            await websocket.send_json({"type": p.ERROR, "code": exc.code, "message": exc.message})
            await websocket.close(code=4000 + exc.status % 1000)
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
                if len(raw) > MAX_WS_MESSAGE_BYTES:
                    await session.reply_error(
                        send,
                        p.CODE_BAD_REQUEST,
                        f"message of {len(raw)} bytes is over the {MAX_WS_MESSAGE_BYTES} byte limit",
                    )
                    continue
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError as exc:
                    await session.reply_error(send, p.CODE_BAD_REQUEST, f"message is not JSON: {exc}")
                    continue
                await session.handle(message, reply=send)
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the session closed the socket first
            pass
        finally:
            session.remove_sink(send)

    # -- catalogue, health, metrics -------------------------------------------------------------------
    @app.get("/v1/avatars", tags=["avatars"], summary="Avatars this server can render")
    async def avatars() -> dict[str, Any]:
        items = []
        for info in list_avatars():
            items.append(
                {
                    "avatar_id": info.name,
                    "name": info.display_name,
                    "description": info.description,
                    "kind": info.kind,
                    "aspect_ratios": list(ASPECTS),
                    "qualities": list(QUALITIES),
                    "preview_url": f"/v1/avatars/{info.name}/preview.png",
                }
            )
        return ok({"avatars": items})

    @app.get("/v1/avatars/{avatar_id}/preview.png", tags=["avatars"], include_in_schema=False)
    async def avatar_preview(avatar_id: str) -> Response:
        if avatar_id not in {info.name for info in list_avatars()}:
            raise ApiError(404, p.CODE_NOT_FOUND, f"unknown avatar_id {avatar_id!r}")
        return Response(
            preview_png(avatar_id), media_type="image/png", headers={"Cache-Control": "public, max-age=3600"}
        )

    @app.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> dict[str, Any]:
        mgr: SessionManager = request.app.state.manager
        return ok(
            {
                "status": "ok",
                "version": __version__,
                "live_sessions": len(mgr.live),
                "uptime_s": round(time.time() - request.app.state.started_at, 1),
            }
        )

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(request: Request) -> Response:
        text = await render_metrics(request.app.state.manager)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- browser client -------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")
    return app
