"""The ASGI app: the routers of facecast.server.routes (one per resource), the error responses every route
shares, and the lifespan that opens and closes the store, the avatar service and the session manager."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from facecast import __version__
from facecast import protocol as p
from facecast.avatars import AvatarLibrary
from facecast.server.auth import default_data_dir
from facecast.server.avatars import AvatarService
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.server.openapi import allowed_methods, install_openapi, refuse_unknown_query
from facecast.server.routes import avatars, health, resources, sessions, web
from facecast.server.routes.common import error_response
from facecast.server.sessions import SessionManager
from facecast.server.store import UNREACHABLE_ERRORS, Store, open_store

log = logging.getLogger(__name__)


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
        return error_response(exc.status, exc.code, exc.message)

    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: the database is unreachable: %s", request.method, request.url.path, exc)
        return error_response(
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
        return error_response(400, p.CODE_BAD_REQUEST, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: p.CODE_NOT_FOUND, 405: p.CODE_BAD_REQUEST}.get(exc.status_code, p.CODE_BAD_REQUEST)
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # every method of the path: starlette names only its first route's
            response.headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return response

    app.include_router(sessions.router)  # the session API, WebRTC signalling, the LITE WebSocket
    app.include_router(avatars.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.include_router(resources.router)  # FULL mode's contexts, secrets, LLM configurations, voices
    app.mount("/static", StaticFiles(directory=str(web.WEB_DIR)), name="static")
    return app
