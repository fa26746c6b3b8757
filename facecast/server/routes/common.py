"""What every router of the API shares: the `{code, data, message}` envelope and the dependencies that
find the request's manager, API key, avatar service and session token."""

# No `from __future__ import annotations`: FastAPI reads the dependencies' annotations at runtime.

from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import JSONResponse

from facecast import protocol as p
from facecast.server.auth import parse_bearer
from facecast.server.avatars import AvatarService
from facecast.server.errors import ApiError
from facecast.server.sessions import SessionManager
from facecast.server.store import ApiKey, SessionRecord


def ok(data: Any = None, message: str = "success") -> dict[str, Any]:
    return {"code": p.CODE_OK, "data": data, "message": message}


def error_response(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "data": None, "message": message}, status_code=status)


def manager(request: Request) -> SessionManager:
    return request.app.state.manager


def api_key(request: Request, x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None) -> ApiKey:
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


def session_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> SessionRecord:
    return request.app.state.manager.authenticate_token(parse_bearer(authorization))


def stop_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> SessionRecord:
    # An expired token still stops its session: otherwise an unstarted one would hold a key's slot.
    return request.app.state.manager.authenticate_token(parse_bearer(authorization), allow_expired=True)
