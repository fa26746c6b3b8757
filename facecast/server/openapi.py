"""The OpenAPI document as the server really behaves: FastAPI's own lists 422 for every operation (the
server answers 400), no other error, and the credentials as plain header parameters. Here each operation
gets the statuses it answers with the `{code, data, message}` error shape, the credentials become
security schemes, and request bodies say what the server requires beyond their types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import HTTPConnection
from starlette.routing import Match, Route
from starlette.types import Scope

from facecast import protocol as p
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.settings import LIVEKIT_SDK_API_KEY, LIVEKIT_SDK_API_SECRET

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error: `code` is the HTTP status's meaning (4000 bad request, 4001 unauthorized, "
    "4003 forbidden, 4004 not found, 4009 conflict, 4010 gone, 4029 limit, 5000 internal, 5001 not "
    "implemented), `message` says what went wrong and what to do.",
    "required": ["code", "data", "message"],
    "properties": {
        "code": {"type": "integer"},
        "data": {"type": "null"},
        "message": {"type": "string"},
    },
}

ERROR_MEANINGS = {
    400: "The request is malformed or names something impossible; the message says which field and why",
    401: "Missing, invalid, revoked or expired credentials",
    403: "The credentials belong to another session or key",
    404: "No such resource for this key",
    405: "Method not allowed (the Allow header lists the allowed ones)",
    409: "The resource is not in a state that allows this (not started, running elsewhere, building...)",
    410: "The session has ended",
    413: "The body or one of its parts is over this server's limit",
    415: "The body's Content-Type is not one this operation takes",
    429: "A limit of this key or this server is reached; the message says which",
    500: "The server failed; the message says what",
    501: "Not supported by this server (a missing extra, or mode FULL)",
    502: "An upstream service (the LiveKit server) failed",
    503: "The server is shutting down or out of capacity",
}

API_KEY = {"ApiKey": []}
SESSION_TOKEN = {"SessionToken": []}

# (method, path) -> (security, error statuses it answers). Every operation answers 400 for bad bodies or
# query parameters (unknown ones included), every authenticated one 401.
OPERATIONS: dict[tuple[str, str], tuple[dict[str, list[str]] | None, tuple[int, ...]]] = {
    ("post", "/v1/sessions/token"): (API_KEY, (400, 401, 403, 404, 409, 415, 429, 501)),
    ("post", "/v1/sessions/start"): (SESSION_TOKEN, (400, 401, 403, 409, 410, 415, 429, 500, 501, 502, 503)),
    ("post", "/v1/sessions/{session_id}/offer"): (SESSION_TOKEN, (400, 401, 403, 409, 410, 415)),
    ("post", "/v1/sessions/stop"): (SESSION_TOKEN, (400, 401, 403, 415)),
    ("post", "/v1/sessions/keep-alive"): (SESSION_TOKEN, (400, 401, 403, 409, 410, 415)),
    ("get", "/v1/sessions"): (API_KEY, (400, 401)),
    ("get", "/v1/sessions/{session_id}"): (API_KEY, (400, 401, 404)),
    ("get", "/v1/avatars"): (None, (400, 401)),
    ("post", "/v1/avatars"): (API_KEY, (400, 401, 403, 404, 409, 413, 415, 429, 503)),
    ("get", "/v1/avatars/{avatar_id}"): (API_KEY, (400, 401, 403, 404)),
    ("delete", "/v1/avatars/{avatar_id}"): (API_KEY, (400, 401, 403, 404, 409)),
    # FULL mode's resources (facecast.server.routes.resources)
    ("post", "/v1/contexts"): (API_KEY, (400, 401, 415)),
    ("get", "/v1/contexts"): (API_KEY, (400, 401)),
    ("get", "/v1/contexts/{context_id}"): (API_KEY, (400, 401, 404)),
    ("patch", "/v1/contexts/{context_id}"): (API_KEY, (400, 401, 404, 415)),
    ("delete", "/v1/contexts/{context_id}"): (API_KEY, (400, 401, 404)),
    ("post", "/v1/secrets"): (API_KEY, (400, 401, 415, 500)),
    ("get", "/v1/secrets"): (API_KEY, (400, 401)),
    ("patch", "/v1/secrets/{secret_id}"): (API_KEY, (400, 401, 404, 415, 500)),
    ("delete", "/v1/secrets/{secret_id}"): (API_KEY, (400, 401, 404, 409)),
    ("post", "/v1/llm_configurations"): (API_KEY, (400, 401, 404, 415)),
    ("get", "/v1/llm_configurations"): (API_KEY, (400, 401)),
    ("get", "/v1/llm_configurations/{config_id}"): (API_KEY, (400, 401, 404)),
    ("patch", "/v1/llm_configurations/{config_id}"): (API_KEY, (400, 401, 404, 415)),
    ("delete", "/v1/llm_configurations/{config_id}"): (API_KEY, (400, 401, 404)),
    ("get", "/v1/voices"): (API_KEY, (400, 401)),
    ("get", "/healthz"): (None, (400,)),
    ("get", "/metrics"): (None, (400,)),
}
CREDENTIAL_HEADERS = {"x-api-key", "authorization"}


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods the routes of this request's path take (for a 405's Allow header). A path some route
    names literally is that route's (`/v1/sessions/token` is not a session id for `/v1/sessions/{id}`)."""
    # FastAPI keeps included routers nested: walk the routes with their prefixes applied.
    matching = [
        route
        for route in iter_route_contexts(app.router.routes)
        if isinstance(route.original_route, Route) and route.methods and route.matches(scope)[0] != Match.NONE
    ]
    literal = [route for route in matching if not route.param_convertors]
    methods: set[str] = set()
    for route in literal or matching:
        methods |= route.methods or set()
    return sorted(methods)


def refuse_unknown_query(connection: HTTPConnection) -> None:
    """A dependency of every route: query parameters the operation does not take are refused, as unknown
    body fields are (a typo like `page-size` must not be silently ignored)."""
    route = connection.scope.get("route")
    if connection.scope["type"] != "http" or not isinstance(route, APIRoute):
        return
    declared = _query_names(route.dependant)
    unknown = sorted(set(connection.query_params) - declared)
    if unknown:
        takes = f"it takes {', '.join(sorted(declared))}" if declared else "it takes none"
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            f"unknown query parameter(s) {', '.join(map(repr, unknown))} for {route.path}; {takes}",
        )


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def install_openapi(app: FastAPI, config: ServerConfig) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""
    app.openapi = _document_builder(app, config)  # type: ignore[method-assign]


def _document_builder(app: FastAPI, config: ServerConfig) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            app.openapi_schema = corrected(document, config)
        return app.openapi_schema

    return build


def corrected(document: dict[str, Any], config: ServerConfig) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for fastapi_only in ("HTTPValidationError", "ValidationError"):
        schemas.pop(fastapi_only, None)
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY", "description": "An API key"},
        "SessionToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The session token from POST /v1/sessions/token",
        },
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            security, statuses = OPERATIONS[(method, path)]
            params = [
                p for p in operation.get("parameters", []) if p["name"].lower() not in CREDENTIAL_HEADERS
            ]
            if params:
                operation["parameters"] = params
            else:
                operation.pop("parameters", None)
            if security is not None:
                operation["security"] = [security]
            elif (method, path) == ("get", "/v1/avatars"):
                operation["security"] = [{}, API_KEY]  # a key adds its own avatars to the built-ins
            responses = operation["responses"]
            responses.pop("422", None)
            for status in statuses:
                responses[str(status)] = {
                    "description": ERROR_MEANINGS[status],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
    _require_body_rules(document, config)
    return document


# An http(s) URL with a host, no credentials, no spaces or control characters (check_image_url).
IMAGE_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~-]+(:[0-9]{1,4})?([/?#][!-~]*)?$"
ONE_LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # a display name: one line, no control characters
LIVEKIT_URL_PATTERN = r"^(wss?|https?)://"


def _both(first: str, second: str) -> dict[str, Any]:
    """A schema matching bodies where `first` and `second` are both strings (given, not null)."""
    return {
        "properties": {first: {"type": "string"}, second: {"type": "string"}},
        "required": [first, second],
    }


def _require_body_rules(document: dict[str, Any], config: ServerConfig) -> None:
    """What the server requires of request bodies beyond their fields' types (server.sessions.tokens)."""
    schemas = document["components"]["schemas"]
    token = schemas["TokenRequest"]
    props = token["properties"]
    for nullable in ("is_sandbox", "video_settings"):  # pipecat sends null for unset fields: the default
        props[nullable] = {"anyOf": [props[nullable], {"type": "null"}]}
    props["max_session_duration"]["anyOf"][0]["maximum"] = config.limits.max_session_duration
    props["avatar_image_url"]["anyOf"][0]["pattern"] = IMAGE_URL_PATTERN
    # Variable names must match the pattern: other keys are refused, not free-form.
    props["dynamic_variables"]["anyOf"][0]["additionalProperties"] = False
    qualities = props["video_quality"]["anyOf"][0]["enum"]
    rules: list[dict[str, Any]] = [
        {"not": _both("avatar_id", "avatar_image_url")},
        {
            "not": {
                "properties": {"is_sandbox": {"const": True}, "avatar_image_url": {"type": "string"}},
                "required": ["is_sandbox", "avatar_image_url"],
            }
        },
        {
            "not": {
                "properties": {"transport": {"const": "webrtc"}, "livekit_config": {"type": "object"}},
                "required": ["transport", "livekit_config"],
            }
        },
        # video_quality and video_settings.quality, when both given, agree.
        {
            "anyOf": [
                {
                    "not": {
                        "properties": {
                            "video_quality": {"type": "string"},
                            "video_settings": {"required": ["quality"]},
                        },
                        "required": ["video_quality", "video_settings"],
                    }
                },
                *(
                    {
                        "properties": {
                            "video_quality": {"const": q},
                            "video_settings": {"properties": {"quality": {"const": q}}},
                        }
                    }
                    for q in qualities
                ),
            ]
        },
    ]
    # The mouth track and track-only sessions (server.sessions.tokens._check_track_only).
    track_only = {"properties": {"video": {"const": False}}, "required": ["video"]}
    rules += [
        {
            "anyOf": [
                {"not": track_only},
                {"properties": {"mouth_track": {"const": True}}, "required": ["mouth_track"]},
            ]
        },
        *(
            {
                "not": {
                    "properties": {"mode": {"const": "FULL"}, name: {"const": value}},
                    "required": ["mode", name],
                }
            }
            for name, value in (("mouth_track", True), ("video", False))
        ),
        {
            "not": {
                "allOf": [
                    track_only,
                    {"properties": {"livekit_config": {"type": "object"}}, "required": ["livekit_config"]},
                ]
            }
        },
        {
            "not": {
                "allOf": [
                    track_only,
                    {"properties": {"transport": {"const": "livekit"}}, "required": ["transport"]},
                ]
            }
        },
    ]
    if config.livekit.configured:  # transport livekit is then the default: track-only names webrtc
        rules.append(
            {
                "anyOf": [
                    {"not": track_only},
                    {"properties": {"transport": {"const": "webrtc"}}, "required": ["transport"]},
                ]
            }
        )
    if not config.livekit.configured:
        # Without a LiveKit server of its own the server makes no rooms: transport livekit names the caller's.
        rules.append(
            {
                "not": {
                    "properties": {"transport": {"const": "livekit"}, "livekit_config": {"type": "null"}},
                    "required": ["transport"],
                }
            }
        )
    token["allOf"] = rules
    livekit = schemas["LiveKitConfig"]
    livekit["properties"]["livekit_url"]["pattern"] = LIVEKIT_URL_PATTERN
    given = {"type": "string", "minLength": 1}
    # The avatar's join token: one of the two names; without one the server mints it for agent_identity.
    livekit["oneOf"] = [
        {
            "properties": {"livekit_client_token": given},
            "required": ["livekit_client_token"],
            "not": {"properties": {"livekit_worker_token": given}, "required": ["livekit_worker_token"]},
        },
        {
            "properties": {"livekit_worker_token": given},
            "required": ["livekit_worker_token"],
            "not": {"properties": {"livekit_client_token": given}, "required": ["livekit_client_token"]},
        },
    ]
    if config.livekit.configured or _env_livekit_keys():
        livekit["oneOf"].append(
            {
                "properties": {"agent_identity": given},
                "required": ["agent_identity"],
                "not": {
                    "anyOf": [
                        {"properties": {name: given}, "required": [name]}
                        for name in ("livekit_client_token", "livekit_worker_token")
                    ]
                },
            }
        )
    create_avatar = document["paths"]["/v1/avatars"]["post"]
    accepted = create_avatar["responses"]["202"]
    create_avatar["responses"]["200"] = {
        **accepted,
        "description": "This key already has an avatar of these bytes",
    }
    create_avatar["responses"]["201"] = {**accepted, "description": "A bundle was added: the avatar is ready"}
    accepted["description"] = "A photo is accepted: its avatar is building"
    body = create_avatar["requestBody"]
    url_request = body["content"]["application/json"]["schema"]
    url_request["properties"]["image_url"]["pattern"] = IMAGE_URL_PATTERN
    url_request["properties"]["name"]["anyOf"][0]["pattern"] = ONE_LINE_PATTERN
    body["required"] = True
    form = body["content"]["multipart/form-data"]["schema"]
    form["additionalProperties"] = False
    form["properties"]["name"]["pattern"] = ONE_LINE_PATTERN
    form["properties"]["name"]["maxLength"] = 200
    form["properties"]["consent"]["maxLength"] = 10_000
    # Exactly one file part, image or bundle: said in words, as schemathesis cannot generate binary parts
    # under oneOf/not; the server answers 400 naming the rule.
    form["description"] = (
        "Exactly one file: 'image' (a PNG, JPEG or WebP photo) or 'bundle' (a .facecast file)"
    )
    for part in ("image", "bundle"):
        form["properties"][part]["minLength"] = 1
    body["content"]["multipart/form-data"]["encoding"] = {
        "image": {"contentType": "image/png, image/jpeg, image/webp"},
        "bundle": {"contentType": "application/octet-stream"},
    }


def _env_livekit_keys() -> bool:
    return bool(LIVEKIT_SDK_API_KEY.get() and LIVEKIT_SDK_API_SECRET.get())
