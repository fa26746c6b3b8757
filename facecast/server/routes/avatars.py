"""Avatars: the built-in ones and those a key makes by uploading a photo or a .facecast bundle, or by
giving an image URL; their build status, deletion and preview images."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime.

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from facecast import protocol as p
from facecast.avatars.refs import is_builtin
from facecast.server.avatars import AvatarService, avatar_item, clean_consent, clean_display_name
from facecast.server.errors import ApiError
from facecast.server.previews import preview_png
from facecast.server.routes.common import api_key, avatar_service, ok, optional_api_key
from facecast.server.schemas import AvatarUrlRequest
from facecast.server.store import ApiKey

router = APIRouter()

MAX_JSON_BODY_BYTES = 64 * 1024  # POST /v1/avatars as JSON: a URL and two short texts
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the text fields around an upload
MAX_FORM_FIELD_BYTES = 48 * 1024  # one text field of an upload form (consent is at most 10,000 chars)
AVATAR_FORM_FIELDS = ("image", "bundle", "name", "consent")


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


@router.get("/v1/avatars", tags=["avatars"], summary="The built-in avatars, and with a key its own")
async def list_avatars_route(
    key: Annotated[ApiKey | None, Depends(optional_api_key)],
    avatars: Annotated[AvatarService, Depends(avatar_service)],
) -> dict[str, Any]:
    return ok({"avatars": avatars.list_items(key)})


@router.post(
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
    limit = request.app.state.config.avatars.max_upload_bytes
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


@router.get("/v1/avatars/{avatar_id}", tags=["avatars"], summary="One avatar, with its build status")
async def get_avatar(
    avatar_id: str,
    key: Annotated[ApiKey, Depends(api_key)],
    avatars: Annotated[AvatarService, Depends(avatar_service)],
) -> dict[str, Any]:
    return ok(avatars.item(key, avatar_id))


@router.delete("/v1/avatars/{avatar_id}", tags=["avatars"], summary="Delete one of this key's avatars")
async def delete_avatar(
    avatar_id: str,
    key: Annotated[ApiKey, Depends(api_key)],
    avatars: Annotated[AvatarService, Depends(avatar_service)],
) -> dict[str, Any]:
    await asyncio.to_thread(avatars.delete, key, avatar_id)
    return ok({"avatar_id": avatar_id, "deleted": True}, "avatar deleted")


@router.get("/v1/avatars/{avatar_id}/preview.png", tags=["avatars"], include_in_schema=False)
async def avatar_preview(
    request: Request,
    avatar_id: str,
    avatars: Annotated[AvatarService, Depends(avatar_service)],
    x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None,
) -> Response:
    if is_builtin(avatar_id):
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
