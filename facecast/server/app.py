"""The HTTP face of the server: the session API in LiveAvatar's shape, the LITE WebSocket, WebRTC signalling,
health, Prometheus metrics and the browser test client. Routes are thin: sessions.py holds the behaviour."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime,
# and the dependencies they name are local to create_app().

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from facecast import __version__
from facecast import protocol as p
from facecast.avatars import AvatarLibrary, frame_size
from facecast.avatars.style import style_names
from facecast.bounded_json import MAX_MESSAGE_CHARS, MessageRefused, parse_message
from facecast.server.auth import default_data_dir, parse_bearer
from facecast.server.avatars import AvatarService, avatar_item, clean_consent, clean_display_name
from facecast.server.config import ServerConfig
from facecast.server.metrics import render_metrics
from facecast.server.openapi import allowed_methods, install_openapi, refuse_unknown_query
from facecast.server.previews import preview_png
from facecast.server.resources import router as resources_router
from facecast.server.schemas import AvatarUrlRequest, OfferRequest, SessionRef, StopRequest, TokenRequest
from facecast.server.sessions import ApiError, LiveSession, RoomSession, Session, SessionManager
from facecast.server.store import UNREACHABLE_ERRORS, ApiKey, SessionRecord, Store, open_store

log = logging.getLogger(__name__)

WEB_DIR = resources.files("facecast.server") / "web"
MAX_WS_MESSAGE_CHARS = MAX_MESSAGE_CHARS
MAX_JSON_BODY_BYTES = 64 * 1024  # POST /v1/avatars as JSON: a URL and two short texts
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the text fields around an upload
MAX_FORM_FIELD_BYTES = 48 * 1024  # one text field of an upload form (consent is at most 10,000 chars)
AVATAR_FORM_FIELDS = ("image", "bundle", "name", "consent")
MAX_LIST_PAGE = 1_000_000  # 100 million sessions at the largest page size


class _BodyTooLarge(Exception):
    pass


async def _limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, refused as soon as it passes `limit` bytes, whatever Content-Length said."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _BodyTooLarge
        yield chunk


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        p.CODE_BAD_REQUEST,
        f"the upload is larger than this server's limit of {limit} bytes (FACECAST_MAX_UPLOAD_BYTES); "
        "send a smaller file",
    )


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
        server_id = default_server_id(config)
        try:
            # Bundles of the avatars made through the API; servers sharing a database share this folder.
            library = AvatarLibrary(data_dir / "avatars")
            app.state.avatars = AvatarService(app.state.store, library, config.avatars, server_id)
        except BaseException:
            if owns_store:
                app.state.store.close()
            raise
        app.state.manager = SessionManager(
            app.state.store,
            config,
            server_id,
            avatars=app.state.avatars,
            livekit_room_factory=livekit_room_factory,
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
        dependencies=[Depends(refuse_unknown_query)],
    )
    app.state.config = config
    install_openapi(app, config)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: the database is unreachable: %s", request.method, request.url.path, exc)
        return _error(
            503, p.CODE_INTERNAL, "the session database is unreachable right now; retry in a few seconds"
        )

    for unreachable in UNREACHABLE_ERRORS:
        app.add_exception_handler(unreachable, _store_down)

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
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method of the path: starlette names only its first route's
            response.headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return response

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

    def optional_api_key(
        request: Request, x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None
    ) -> ApiKey | None:
        return api_key(request, x_api_key) if x_api_key else None

    def avatar_service(request: Request) -> AvatarService:
        return request.app.state.avatars

    def session_token(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> SessionRecord:
        return request.app.state.manager.authenticate_token(parse_bearer(authorization))

    def stop_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> SessionRecord:
        # An expired token still stops its session: otherwise an unstarted one would hold a key's slot.
        return request.app.state.manager.authenticate_token(parse_bearer(authorization), allow_expired=True)

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
        base = public_base(request)
        token = parse_bearer(request.headers.get("authorization"))
        ws_base = "ws" + base[4:] if base.startswith("http") else base
        ws_url = f"{ws_base}/v1/sessions/{record.id}/ws?token={token}"
        width, height = frame_size(settings["aspect_ratio"], settings["video_settings"]["quality"])
        video = {
            "width": width,
            "height": height,
            "fps": settings["fps"],
            "encoding": settings["video_settings"]["encoding"],
        }
        if isinstance(session, RoomSession) or session.room is not None:
            # LiveAvatar's answer (pipecat parses it as LiveAvatarSessionResponse), and Facecast's fields.
            data: dict[str, Any] = {
                "session_id": record.id,
                "transport": "livekit",
                **mgr.livekit_start_details(record),
                "max_session_duration": settings["max_session_duration"],
                "idle_timeout": config.limits.idle_timeout,
                "audio_source": settings["livekit"].get("audio_source", "data_stream"),
                "video": video,
            }
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
                "max_session_duration": settings["max_session_duration"],
                "idle_timeout": config.limits.idle_timeout,
                "video": video,
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

    # -- avatars -----------------------------------------------------------------------------------------
    @app.get("/v1/avatars", tags=["avatars"], summary="The built-in avatars, and with a key its own")
    async def list_avatars_route(
        key: Annotated[ApiKey | None, Depends(optional_api_key)],
        avatars: Annotated[AvatarService, Depends(avatar_service)],
    ) -> dict[str, Any]:
        return ok({"avatars": avatars.list_items(key)})

    @app.post(
        "/v1/avatars",
        tags=["avatars"],
        summary="Make an avatar: upload a photo or a .facecast bundle, or give an image_url",
        status_code=202,
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "bundle": {"type": "string", "format": "binary"},
                                "name": {"type": "string"},
                                "consent": {"type": "string"},
                            },
                        }
                    },
                    "application/json": {"schema": AvatarUrlRequest.model_json_schema()},
                }
            }
        },
    )
    async def create_avatar(
        request: Request,
        key: Annotated[ApiKey, Depends(api_key)],
        avatars: Annotated[AvatarService, Depends(avatar_service)],
    ) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type == "multipart/form-data":
            kind, data, name, consent = await _read_avatar_form(request)
            if kind == "bundle":
                record, created = await asyncio.to_thread(
                    avatars.create_from_bundle, key, data, display_name=name, consent=consent
                )
                status = 201 if created else 200
            else:
                record, created = await asyncio.to_thread(
                    avatars.create_from_image, key, data, display_name=name, consent=consent
                )
                status = 202 if created else 200
        elif media_type == "application/json":
            body = await _read_url_request(request)
            record = await asyncio.to_thread(
                avatars.create_from_url,
                key,
                body.image_url,
                display_name=clean_display_name(body.name),
                consent=clean_consent(body.consent),
            )
            status, created = 202, True
        else:
            raise ApiError(
                415,
                p.CODE_BAD_REQUEST,
                "send multipart/form-data with a file field 'image' (a photo) or 'bundle' (a .facecast "
                'file), or JSON {"image_url": "https://..."}',
            )
        message = "avatar created" if created else "this key already has an avatar made from these bytes"
        return JSONResponse(ok(avatar_item(record), message), status_code=status)

    async def _read_avatar_form(request: Request) -> tuple[str, bytes, str | None, str | None]:
        """(kind "image" | "bundle", the file's bytes, display name, consent) of an upload form, its size
        enforced while it streams in."""
        limit = config.avatars.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
            raise _too_large(limit)
        parser = MultiPartParser(
            request.headers,
            _limited_stream(request, limit + MULTIPART_OVERHEAD_BYTES),
            max_files=2,
            max_fields=8,
            max_part_size=MAX_FORM_FIELD_BYTES,
        )
        try:
            form = await parser.parse()
        except _BodyTooLarge:
            raise _too_large(limit) from None
        except MultiPartException as exc:
            raise ApiError(400, p.CODE_BAD_REQUEST, f"malformed upload form: {exc.message}") from None
        try:
            unknown = sorted({field for field in form if field not in AVATAR_FORM_FIELDS})
            if unknown:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    f"unknown form field(s) {', '.join(map(repr, unknown))}; expected image or bundle, "
                    "and optionally name and consent",
                )
            files = [field for field in ("image", "bundle") if field in form]
            if len(files) != 1 or len(form.getlist(files[0])) != 1:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    "send exactly one file: field 'image' (a PNG, JPEG or WebP photo) or 'bundle' "
                    "(a .facecast file)",
                )
            upload = form[files[0]]
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    f"'{files[0]}' must be a file part (curl -F {files[0]}=@FILE), not a text field",
                )
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise _too_large(limit)
            if not data:
                raise ApiError(400, p.CODE_BAD_REQUEST, f"the '{files[0]}' file is empty")
            texts: dict[str, str | None] = {}
            for field in ("name", "consent"):
                value = form.get(field)
                if isinstance(value, UploadFile):
                    raise ApiError(400, p.CODE_BAD_REQUEST, f"'{field}' must be a text field, not a file")
                texts[field] = value
            return files[0], data, clean_display_name(texts["name"]), clean_consent(texts["consent"])
        finally:
            await form.close()

    async def _read_url_request(request: Request) -> AvatarUrlRequest:
        raw = bytearray()
        try:
            async for chunk in _limited_stream(request, MAX_JSON_BODY_BYTES):
                raw += chunk
        except _BodyTooLarge:
            raise ApiError(
                413, p.CODE_BAD_REQUEST, f"a JSON body is at most {MAX_JSON_BODY_BYTES} bytes"
            ) from None
        try:
            return AvatarUrlRequest.model_validate_json(bytes(raw))
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(part) for part in err.get("loc", ())) or "body"
                problems.append(f"{where}: {err.get('msg', 'invalid')}")
            raise ApiError(400, p.CODE_BAD_REQUEST, "invalid request: " + "; ".join(problems)) from None

    @app.get("/v1/avatars/{avatar_id}", tags=["avatars"], summary="One avatar, with its build status")
    async def get_avatar(
        avatar_id: str,
        key: Annotated[ApiKey, Depends(api_key)],
        avatars: Annotated[AvatarService, Depends(avatar_service)],
    ) -> dict[str, Any]:
        return ok(avatars.item(key, avatar_id))

    @app.delete("/v1/avatars/{avatar_id}", tags=["avatars"], summary="Delete one of this key's avatars")
    async def delete_avatar(
        avatar_id: str,
        key: Annotated[ApiKey, Depends(api_key)],
        avatars: Annotated[AvatarService, Depends(avatar_service)],
    ) -> dict[str, Any]:
        await asyncio.to_thread(avatars.delete, key, avatar_id)
        return ok({"avatar_id": avatar_id, "deleted": True}, "avatar deleted")

    @app.get("/v1/avatars/{avatar_id}/preview.png", tags=["avatars"], include_in_schema=False)
    async def avatar_preview(
        request: Request,
        avatar_id: str,
        avatars: Annotated[AvatarService, Depends(avatar_service)],
        x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None,
    ) -> Response:
        if avatar_id in style_names():
            png = await asyncio.to_thread(preview_png, avatar_id)
            return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})
        if not x_api_key:
            raise ApiError(
                404,
                p.CODE_NOT_FOUND,
                f"unknown avatar_id {avatar_id!r}; previews of avatars made through /v1/avatars need the "
                "owner's X-API-KEY header",
            )
        record = avatars.own(api_key(request, x_api_key).id, avatar_id)
        if record.status != p.AVATAR_READY:
            raise ApiError(409, p.CODE_CONFLICT, f"avatar {avatar_id} is {record.status}: it has no preview")
        try:
            png = await asyncio.to_thread(preview_png, avatar_id, avatars.library)
        except ValueError as exc:  # its bundle is gone or cannot be rendered
            raise ApiError(500, p.CODE_INTERNAL, f"could not render avatar {avatar_id}: {exc}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    # -- health, metrics ------------------------------------------------------------------------------
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

    app.include_router(resources_router)  # FULL mode's contexts, secrets, LLM configurations, voices
    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")
    return app
