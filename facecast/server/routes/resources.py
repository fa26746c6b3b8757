"""FULL mode's resources in LiveAvatar's shape, each owned by the API key that made it: contexts (the
persona's prompt and opening text), secrets (credentials, encrypted at rest, never returned), LLM
configurations (an OpenAI-compatible endpoint) and voices (espeak-ng's, read-only).

Responses are `{code, data, message}` like the rest of the API; another key's records are 404."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' annotations at runtime.

import functools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from facecast import protocol as p
from facecast.server.auth import default_data_dir
from facecast.server.errors import ApiError
from facecast.server.secret_box import SecretBox
from facecast.server.store import ApiKey, ContextRecord, LlmConfigRecord, SecretRecord, Store

router = APIRouter(prefix="/v1")
R = TypeVar("R", ContextRecord, SecretRecord, LlmConfigRecord)

MAX_PROMPT_CHARS = 20_000
MAX_OPENING_CHARS = 2_000
BASE_URL_PATTERN = r"^https?://[^\s/]+"  # the endpoint's root, e.g. http://127.0.0.1:11434/v1
SECRET_TYPES = ("LLM_API_KEY", "STT_API_KEY", "TTS_API_KEY", "OTHER")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    opening_text: str = Field(default="", max_length=MAX_OPENING_CHARS)


class ContextUpdate(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    opening_text: str | None = Field(default=None, max_length=MAX_OPENING_CHARS)


class SecretCreate(_Body):
    secret_type: str = Field(default="LLM_API_KEY", pattern="^(" + "|".join(SECRET_TYPES) + ")$")
    secret_value: str = Field(min_length=1, max_length=8192)
    secret_name: str = Field(default="", max_length=200)


class SecretUpdate(_Body):
    secret_value: str | None = Field(default=None, min_length=1, max_length=8192)
    secret_name: str | None = Field(default=None, max_length=200)


class LlmConfigCreate(_Body):
    display_name: str = Field(min_length=1, max_length=200)
    model_name: str = Field(min_length=1, max_length=200)
    secret_id: str | None = None  # None: an endpoint without a key (a local Ollama, vLLM, llama.cpp)
    base_url: str | None = Field(default=None, max_length=2048, pattern=BASE_URL_PATTERN)  # None: OpenAI's


class LlmConfigUpdate(_Body):
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    model_name: str | None = Field(default=None, min_length=1, max_length=200)
    secret_id: str | None = None
    base_url: str | None = Field(default=None, max_length=2048, pattern=BASE_URL_PATTERN)


def _ok(data: Any = None, message: str = "success") -> dict[str, Any]:
    return {"code": p.CODE_OK, "data": data, "message": message}


def _store(request: Request) -> Store:
    return request.app.state.store


def _api_key(request: Request, x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None) -> ApiKey:
    if not x_api_key:
        raise ApiError(401, p.CODE_UNAUTHORIZED, "missing API key: send it in the X-API-KEY header")
    key = _store(request).authenticate_key(x_api_key)
    if key is None:
        raise ApiError(401, p.CODE_UNAUTHORIZED, "invalid or revoked API key")
    return key


def secret_box(request: Request) -> SecretBox:
    """The server's secret box, made once per app (the key file is read or created on first use)."""
    box = getattr(request.app.state, "secret_box", None)
    if box is None:
        config = request.app.state.config
        data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
        box = request.app.state.secret_box = SecretBox.for_data_dir(data_dir)
    return box


Key = Annotated[ApiKey, Depends(_api_key)]
StoreDep = Annotated[Store, Depends(_store)]


class OwnedResource(Generic[R]):
    """One kind of record that an API key owns, and what every kind's routes share: ids, the 404 that
    names the listing, and the `{code, data, message}` answers for create, list, get, update and delete."""

    def __init__(
        self,
        record_type: type[R],
        kind: str,
        listing: str,
        id_prefix: str,
        item: Callable[[R], dict[str, Any]],
    ) -> None:
        self.record_type = record_type
        self.kind = kind  # in messages: "context", "LLM configuration"
        self.listing = listing  # its collection's path, e.g. /v1/contexts
        self.collection = listing.rsplit("/", 1)[1]  # the list's key in GET answers
        self.id_field = self.collection.removesuffix("s") + "_id"  # the id's name in DELETE answers
        self.id_prefix = id_prefix
        self.item = item  # what a client sees of a record

    def new_id(self) -> str:
        return self.id_prefix + secrets.token_hex(8)

    def not_found(self, record_id: str) -> ApiError:
        return ApiError(
            404,
            p.CODE_NOT_FOUND,
            f"no {self.kind} {record_id!r} for this API key (GET {self.listing} lists them)",
        )

    def get(self, store: Store, key: ApiKey, record_id: str) -> R:
        record = store.get_owned(self.record_type, key.id, record_id)
        if not isinstance(record, self.record_type):
            raise self.not_found(record_id)
        return record

    def created(self, store: Store, record: R, message: str | None = None) -> dict[str, Any]:
        store.insert_owned(record)
        return _ok(self.item(record), message or f"{self.kind} created")

    def listed(self, store: Store, key: ApiKey) -> dict[str, Any]:
        return _ok({self.collection: [self.item(r) for r in store.list_owned(self.record_type, key.id)]})

    def one(self, store: Store, key: ApiKey, record_id: str) -> dict[str, Any]:
        return _ok(self.item(self.get(store, key, record_id)))

    def updated(
        self, store: Store, key: ApiKey, record_id: str, changes: dict[str, Any], message: str = "success"
    ) -> dict[str, Any]:
        """Apply `changes` (none: only checked to exist) and answer with the record as it is now."""
        if changes and not store.update_owned(self.record_type, key.id, record_id, **changes):
            raise self.not_found(record_id)
        return _ok(self.item(self.get(store, key, record_id)), message)

    def deleted(self, store: Store, key: ApiKey, record_id: str) -> dict[str, Any]:
        if not store.delete_owned(self.record_type, key.id, record_id):
            raise self.not_found(record_id)
        return _ok({self.id_field: record_id, "deleted": True}, f"{self.kind} deleted")


def check_base_url(base_url: str | None) -> None:
    if base_url is not None and not re.match(BASE_URL_PATTERN, base_url):
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            f"base_url {base_url!r} is not an http(s) URL; give the endpoint's root, e.g. "
            "http://127.0.0.1:11434/v1 (Ollama) or https://api.openai.com/v1",
        )


def _owned_fields(record: Any) -> dict[str, Any]:
    item = asdict(record)
    item.pop("owner")
    return item


# -- contexts ---------------------------------------------------------------------------------------------
CONTEXTS = OwnedResource(ContextRecord, "context", "/v1/contexts", "ctx_", _owned_fields)


@router.post("/contexts", tags=["full mode"], summary="Create a context (prompt, opening_text)")
async def create_context(body: ContextCreate, key: Key, store: StoreDep) -> dict[str, Any]:
    now = time.time()
    record = ContextRecord(CONTEXTS.new_id(), key.id, body.name, body.prompt, body.opening_text, now, now)
    return CONTEXTS.created(store, record)


@router.get("/contexts", tags=["full mode"], summary="This key's contexts")
async def list_contexts(key: Key, store: StoreDep) -> dict[str, Any]:
    return CONTEXTS.listed(store, key)


@router.get("/contexts/{context_id}", tags=["full mode"], summary="One context")
async def get_context(context_id: str, key: Key, store: StoreDep) -> dict[str, Any]:
    return CONTEXTS.one(store, key, context_id)


@router.patch("/contexts/{context_id}", tags=["full mode"], summary="Change a context")
async def update_context(context_id: str, body: ContextUpdate, key: Key, store: StoreDep) -> dict[str, Any]:
    return CONTEXTS.updated(store, key, context_id, body.model_dump(exclude_none=True))


@router.delete("/contexts/{context_id}", tags=["full mode"], summary="Delete a context")
async def delete_context(context_id: str, key: Key, store: StoreDep) -> dict[str, Any]:
    return CONTEXTS.deleted(store, key, context_id)


# -- secrets ----------------------------------------------------------------------------------------------
def _secret_item(record: SecretRecord) -> dict[str, Any]:
    # Never the value, nor its ciphertext.
    return {
        "id": record.id,
        "secret_name": record.secret_name,
        "secret_type": record.secret_type,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


SECRETS = OwnedResource(SecretRecord, "secret", "/v1/secrets", "sec_", _secret_item)
BoxDep = Annotated[SecretBox, Depends(secret_box)]


@router.post("/secrets", tags=["full mode"], summary="Store a secret (encrypted; never returned)")
async def create_secret(body: SecretCreate, key: Key, store: StoreDep, box: BoxDep) -> dict[str, Any]:
    now = time.time()
    record = SecretRecord(
        SECRETS.new_id(), key.id, body.secret_name, body.secret_type, box.seal(body.secret_value), now, now
    )
    return SECRETS.created(store, record, "secret stored")


@router.get("/secrets", tags=["full mode"], summary="This key's secrets (names only)")
async def list_secrets(key: Key, store: StoreDep) -> dict[str, Any]:
    return SECRETS.listed(store, key)


@router.patch("/secrets/{secret_id}", tags=["full mode"], summary="Replace a secret's value or name")
async def update_secret(
    secret_id: str, body: SecretUpdate, key: Key, store: StoreDep, box: BoxDep
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if body.secret_name is not None:
        changes["secret_name"] = body.secret_name
    if body.secret_value is not None:
        changes["ciphertext"] = box.seal(body.secret_value)
    return SECRETS.updated(store, key, secret_id, changes, "secret updated")


@router.delete("/secrets/{secret_id}", tags=["full mode"], summary="Delete a secret")
async def delete_secret(secret_id: str, key: Key, store: StoreDep) -> dict[str, Any]:
    users = [
        c.id for c in store.list_owned(LlmConfigRecord, key.id) if getattr(c, "secret_id", None) == secret_id
    ]
    if users:
        raise ApiError(
            409,
            p.CODE_CONFLICT,
            f"secret {secret_id} is used by LLM configuration(s) {', '.join(users)}; delete them or point "
            "them at another secret first",
        )
    return SECRETS.deleted(store, key, secret_id)


# -- LLM configurations -----------------------------------------------------------------------------------
LLM_CONFIGURATIONS = OwnedResource(
    LlmConfigRecord, "LLM configuration", "/v1/llm_configurations", "llm_", _owned_fields
)


def secret_missing(store: Store, key: ApiKey, secret_id: str | None) -> bool:
    """A secret is named, and this API key has no such secret."""
    return secret_id is not None and store.get_owned(SecretRecord, key.id, secret_id) is None


def _check_secret(store: Store, key: ApiKey, secret_id: str | None) -> None:
    if secret_missing(store, key, secret_id):
        raise ApiError(
            404,
            p.CODE_NOT_FOUND,
            f"secret_id {secret_id!r} names no secret of this API key; store the endpoint's key with "
            "POST /v1/secrets first",
        )


@router.post("/llm_configurations", tags=["full mode"], summary="Configure an OpenAI-compatible LLM")
async def create_llm_configuration(body: LlmConfigCreate, key: Key, store: StoreDep) -> dict[str, Any]:
    check_base_url(body.base_url)
    _check_secret(store, key, body.secret_id)
    now = time.time()
    record = LlmConfigRecord(
        LLM_CONFIGURATIONS.new_id(),
        key.id,
        body.display_name,
        body.model_name,
        body.secret_id,
        body.base_url,
        now,
        now,
    )
    return LLM_CONFIGURATIONS.created(store, record)


@router.get("/llm_configurations", tags=["full mode"], summary="This key's LLM configurations")
async def list_llm_configurations(key: Key, store: StoreDep) -> dict[str, Any]:
    return LLM_CONFIGURATIONS.listed(store, key)


@router.get("/llm_configurations/{config_id}", tags=["full mode"], summary="One LLM configuration")
async def get_llm_configuration(config_id: str, key: Key, store: StoreDep) -> dict[str, Any]:
    return LLM_CONFIGURATIONS.one(store, key, config_id)


@router.patch("/llm_configurations/{config_id}", tags=["full mode"], summary="Change an LLM configuration")
async def update_llm_configuration(
    config_id: str, body: LlmConfigUpdate, key: Key, store: StoreDep
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    for required in ("display_name", "model_name"):  # null: unchanged (secret_id, base_url: null clears)
        if changes.get(required, "") is None:
            del changes[required]
    check_base_url(changes.get("base_url"))
    _check_secret(store, key, changes.get("secret_id"))
    return LLM_CONFIGURATIONS.updated(store, key, config_id, changes)


@router.delete("/llm_configurations/{config_id}", tags=["full mode"], summary="Delete an LLM configuration")
async def delete_llm_configuration(config_id: str, key: Key, store: StoreDep) -> dict[str, Any]:
    return LLM_CONFIGURATIONS.deleted(store, key, config_id)


# -- voices -----------------------------------------------------------------------------------------------
@functools.cache
def espeak_voices() -> tuple[dict[str, str], ...]:
    """espeak-ng's voices, read from its data folder: `voice_id` (what avatar_persona.voice_id takes, an
    espeak-ng voice name), display name and language. Voices whose dictionary is not installed are left
    out: espeak-ng cannot speak them."""
    import espeakng_loader

    voices = []
    data = Path(espeakng_loader.get_data_path())
    for path in sorted((data / "lang").rglob("*")):
        if not path.is_file():
            continue
        name = language = None
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "name" and name is None:
                name = " ".join(parts[1:])
            elif len(parts) >= 2 and parts[0] == "language" and language is None:
                language = parts[1]
        if language and (data / f"{language.split('-')[0]}_dict").exists():
            # espeak-ng finds a voice by its file's name (the language code may name another voice).
            voices.append({"voice_id": path.name.lower(), "name": name or path.name, "language": language})
    return tuple({v["voice_id"]: v for v in voices}.values())


def known_voice(voice_id: str) -> bool:
    return any(v["voice_id"] == voice_id.lower() for v in espeak_voices())


@router.get("/voices", tags=["full mode"], summary="The voices FULL sessions can speak with (espeak-ng)")
async def list_voices(key: Key) -> dict[str, Any]:  # a key, as for every LiveAvatar resource
    return _ok({"voices": [{**v, "provider": "espeak-ng"} for v in espeak_voices()]})
