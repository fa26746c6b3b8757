"""FULL sessions on the server: what `/v1/sessions/token` checks and stores for them, and the live
session that runs the conversation (facecast.conversation) next to the avatar's WebRTC peer, or with the
avatar in a LiveKit room (facecast.server.sessions.full_room).

The LLM is the token's `llm_configuration_id` (POST /v1/llm_configurations), else the server's default:
FACECAST_LLM_BASE_URL (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 for Ollama),
FACECAST_LLM_MODEL and, if the endpoint wants one, FACECAST_LLM_API_KEY. A token for a FULL session
with neither is refused, saying what to configure."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facecast import protocol as p
from facecast import settings
from facecast.conversation.events import TOPIC_RESPONSE
from facecast.server.auth import default_data_dir
from facecast.server.errors import ApiError
from facecast.server.pool import AvatarSpec, build_engine, new_live_avatar
from facecast.server.routes.resources import check_base_url, secret_missing
from facecast.server.schemas import SttServiceChoice, TokenRequest, TtsServiceChoice
from facecast.server.secret_box import SecretBox, SecretBoxError
from facecast.server.session_settings import (
    DEFAULT_STT,
    DEFAULT_TTS,
    FullPersona,
    FullSettings,
    LlmSettings,
    SpeechServiceSettings,
)
from facecast.server.session_stats import SessionStats
from facecast.server.sessions import EventSink, LiveSession, SpeechTarget
from facecast.server.sessions.livekit import livekit_extra_missing
from facecast.server.store import ApiKey, ContextRecord, LlmConfigRecord, SecretRecord, SessionRecord
from facecast.tts.espeak import DEFAULT_VOICE

if TYPE_CHECKING:
    from facecast.conversation.conversation import Conversation
    from facecast.server.sessions import SessionManager

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "You are a friendly assistant who talks with the user through a talking avatar. Answer in one or two "
    "short spoken sentences, without lists or markup."
)
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
_NO_LLM = (
    "mode FULL needs a language model and none is configured: create one with POST /v1/llm_configurations "
    '{"display_name", "model_name", "base_url" (any OpenAI-compatible endpoint), "secret_id" (its key, from '
    "POST /v1/secrets)} and pass its id as llm_configuration_id, or start the server with "
    f"{settings.LLM_BASE_URL.name} and {settings.LLM_MODEL.name} (and {settings.LLM_API_KEY.name} if the "
    "endpoint needs a key)"
)


@dataclass(frozen=True)
class SpeechProvider:
    """What a FULL session's STT or TTS provider needs: the module its Pipecat service imports (and the
    pip extra that brings it), a key, a voice."""

    module: str
    extra: str
    needs_key: bool  # False: only with a base_url (a local OpenAI-compatible server may take none)
    needs_voice: bool = False


SPEECH_PROVIDERS: dict[str, SpeechProvider] = {
    "openai": SpeechProvider("openai", "pipecat-ai[openai]", needs_key=False),
    "deepgram": SpeechProvider("deepgram", "pipecat-ai[deepgram]", needs_key=True),
    "cartesia": SpeechProvider("websockets", "pipecat-ai[cartesia]", needs_key=True, needs_voice=True),
    "elevenlabs": SpeechProvider("websockets", "pipecat-ai[elevenlabs]", needs_key=True, needs_voice=True),
}


def substitute(text: str, variables: dict[str, str], where: str) -> str:
    """`text` with every `${name}` replaced by its value; 400 naming the first undefined one."""
    missing = sorted({name for name in _VARIABLE.findall(text) if name not in variables})
    if missing:
        names = ", ".join("${" + name + "}" for name in missing)
        example = ", ".join(f'"{name}": "..."' for name in missing)
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            f"{where} uses {names}, which dynamic_variables does not define; pass dynamic_variables "
            f"{{{example}}}",
        )
    return _VARIABLE.sub(lambda match: variables[match.group(1)], text)


def _check_extra() -> None:
    # Only looked up, not imported: importing Pipecat takes seconds, which /token must not block for.
    missing = [
        name for name in ("pipecat", "openai", "onnxruntime") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ApiError(
            501,
            p.CODE_NOT_IMPLEMENTED,
            "mode FULL needs the conversation extra: pip install 'facecast[full]' (missing: "
            f"{', '.join(missing)})",
        )


def full_settings(manager: SessionManager, key: ApiKey, body: TokenRequest) -> FullSettings:
    """What a FULL session runs with, checked now so that /start cannot fail on it: the persona (prompt
    and opening text with the variables substituted, the language) and where its LLM is. No secret
    values: the settings are stored and listed; the LLM's key is decrypted only at /start."""
    if body.audio_source is not None:
        raise ApiError(  # a valid body, but a FULL session has no agent whose audio it could take
            409,
            p.CODE_CONFLICT,
            "audio_source says where a LITE session's agent audio comes from; in mode FULL the server "
            "speaks itself (the user's microphone in the room is its input): drop audio_source",
        )
    _check_extra()
    store = manager.store
    persona = body.avatar_persona
    variables = body.dynamic_variables or {}
    language = persona.language if persona is not None else "en"
    if language.split("-")[0].lower() != "en":
        raise ApiError(
            501,
            p.CODE_NOT_IMPLEMENTED,
            f"language {language!r}: FULL mode's speech recognition (PocketSphinx) understands English "
            "only so far; use language 'en'",
        )
    prompt, opening_text, context_id = DEFAULT_PROMPT, "", None
    if persona is not None and persona.context_id is not None:
        context = store.get_owned(ContextRecord, key.id, persona.context_id)
        if not isinstance(context, ContextRecord):
            raise ApiError(
                404,
                p.CODE_NOT_FOUND,
                f"no context {persona.context_id!r} for this API key; create one with POST /v1/contexts",
            )
        context_id = context.id
        prompt = substitute(context.prompt, variables, f"context {context.id}'s prompt")
        opening_text = substitute(context.opening_text, variables, f"context {context.id}'s opening_text")
    tts = body.tts_service
    if tts is not None and tts.provider != DEFAULT_TTS.provider and persona and persona.voice_id is not None:
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            f"avatar_persona.voice_id is an espeak-ng voice; tts_service {tts.provider!r} "
            "takes its own voice: give it as tts_service.voice and drop avatar_persona.voice_id",
        )
    return FullSettings(
        persona=FullPersona(context_id=context_id, prompt=prompt, opening_text=opening_text),
        llm=_llm_settings(manager, key, body.llm_configuration_id),
        stt=_speech_service(manager, key, body.stt_service, "stt_service", DEFAULT_STT),
        tts=_speech_service(manager, key, body.tts_service, "tts_service", DEFAULT_TTS),
    )


def _speech_service(
    manager: SessionManager,
    key: ApiKey,
    choice: SttServiceChoice | TtsServiceChoice | None,
    field: str,
    default: SpeechServiceSettings,
) -> SpeechServiceSettings:
    """The token's STT or TTS choice, checked: its fields, its key's secret, its module installed."""
    if choice is None:
        return default
    voice = choice.voice if isinstance(choice, TtsServiceChoice) else None
    given = {
        "secret_id": choice.secret_id,
        "model": choice.model,
        "base_url": choice.base_url,
        "voice": voice,
    }
    if choice.provider == default.provider:
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                f"{field} {choice.provider!r} is built in and takes no {', '.join(extra)}"
                + ("; its voice is avatar_persona.voice_id" if "voice" in extra else ""),
            )
        return default
    provider = SPEECH_PROVIDERS[choice.provider]
    if choice.base_url is not None:
        if choice.provider != "openai":
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                f"{field}.base_url is for provider 'openai' (any OpenAI-compatible server); "
                f"{choice.provider!r} has its own endpoint: drop base_url",
            )
        check_base_url(choice.base_url)
    if choice.secret_id is None and (provider.needs_key or choice.base_url is None):
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            f"{field} {choice.provider!r} needs its API key: store it with POST /v1/secrets "
            f'{{"secret_type": "{field[:3].upper()}_API_KEY", "secret_value": "..."}} and pass the id as '
            f"{field}.secret_id",
        )
    if secret_missing(manager.store, key, choice.secret_id):
        raise ApiError(
            404,
            p.CODE_NOT_FOUND,
            f"no secret {choice.secret_id!r} for this API key; GET /v1/secrets lists them",
        )
    if provider.needs_voice and voice is None:
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            f"{field} {choice.provider!r} needs a voice: give the provider's voice id as {field}.voice",
        )
    if importlib.util.find_spec(provider.module) is None:
        raise ApiError(
            501,
            p.CODE_NOT_IMPLEMENTED,
            f"{field} {choice.provider!r} needs its Pipecat service's dependencies on this server: "
            f"pip install '{provider.extra}'",
        )
    return SpeechServiceSettings(choice.provider, **given)


def _llm_settings(manager: SessionManager, key: ApiKey, config_id: str | None) -> LlmSettings:
    if config_id is not None:
        config = manager.store.get_owned(LlmConfigRecord, key.id, config_id)
        if not isinstance(config, LlmConfigRecord):
            raise ApiError(
                404,
                p.CODE_NOT_FOUND,
                f"no LLM configuration {config_id!r} for this API key; GET /v1/llm_configurations lists them",
            )
        if secret_missing(manager.store, key, config.secret_id):
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                f"LLM configuration {config.id} names secret {config.secret_id}, which is gone; store the "
                "key again (POST /v1/secrets) and PATCH the configuration's secret_id",
            )
        return LlmSettings(
            llm_configuration_id=config.id,
            model=config.model_name,
            base_url=config.base_url,
            secret_id=config.secret_id,
        )
    base_url, model = settings.LLM_BASE_URL.get(), settings.LLM_MODEL.get()
    if not (base_url and model):
        raise ApiError(409, p.CODE_CONFLICT, _NO_LLM)  # a valid request this server is not set up for
    check_base_url(base_url)
    return LlmSettings(llm_configuration_id=None, model=model, base_url=base_url, secret_id=None)


def _llm_api_key(manager: SessionManager, record: SessionRecord) -> str | None:
    assert record.settings.full is not None
    llm = record.settings.full.llm
    if llm.secret_id is None:
        # The server's default endpoint takes the server's key; a configuration without a secret has none.
        return settings.LLM_API_KEY.get() if llm.llm_configuration_id is None else None
    return _open_secret(manager, record, llm.secret_id, "the LLM")


def _open_secret(manager: SessionManager, record: SessionRecord, secret_id: str, whose: str) -> str:
    """The decrypted value of one of the session's key's secrets (never logged)."""
    secret = manager.store.get_owned(SecretRecord, record.key_id, secret_id)
    if not isinstance(secret, SecretRecord):
        raise ApiError(400, p.CODE_BAD_REQUEST, f"{whose}'s secret {secret_id} was deleted; store it again")
    data_dir = Path(manager.config.data_dir) if manager.config.data_dir else default_data_dir()
    try:
        return SecretBox.for_data_dir(data_dir).open(secret.ciphertext)
    except SecretBoxError as exc:
        raise ApiError(500, p.CODE_INTERNAL, str(exc)) from None


class FullAgent:
    """What a FULL session does whatever carries it (mixed into a LiveSession subclass): the conversation's
    speech reports, its agent-response events to the transport's clients and the session's sinks, and the
    agent-control commands, from whichever client sends them."""

    conversation: Conversation | None = None

    if TYPE_CHECKING:  # what the LiveSession this is mixed into provides
        id: str
        _sinks: set[EventSink]
        _manager: SessionManager

        def touch(self) -> None: ...
        def send_on_transport(self, event: dict[str, Any]) -> None: ...
        async def emit(self, event_type: str, event_id: str | None = None, **fields: Any) -> None: ...
        async def reply_error(
            self, reply: EventSink, code: int, message: str, event_id: str | None = None
        ) -> None: ...

    def on_segment_event(self, event: Any) -> None:
        if self.conversation is not None:
            self.conversation.on_segment_event(event)

    def emit_agent(self, event_type: str, **payload: Any) -> None:
        """One agent-response event to the client (the data channel, or the room's `agent-response`
        packets) and the session's other sinks."""
        event: dict[str, Any] = {
            "event_type": event_type,
            "event_id": uuid.uuid4().hex,
            "session_id": self.id,
            "topic": TOPIC_RESPONSE,
        }
        if payload:
            event["payload"] = payload
        log.debug("session %s: %s", self.id, event_type)
        self.send_on_transport(event)
        for sink in list(self._sinks):
            self._manager.spawn(sink(event))

    def report_error(self, message: str) -> None:
        """A failure inside the conversation (the LLM unreachable, ...) as an `error` event."""
        log.warning("session %s: %s", self.id, message)
        self._manager.spawn(self.emit(p.ERROR, code=p.CODE_INTERNAL, message=message))

    async def handle(self, message: Any, reply: EventSink) -> None:
        from facecast.conversation.conversation import CommandError

        if isinstance(message, dict) and isinstance(message.get("event_type"), str):
            self.touch()
            payload = message.get("payload")
            if payload is None:  # LiveAvatar's clients put text at the top level too
                payload = {k: v for k, v in message.items() if k not in ("event_type", "event_id", "topic")}
            if self.conversation is None or not isinstance(payload, dict):
                await self.reply_error(reply, p.CODE_BAD_REQUEST, "a command's payload must be a JSON object")
                return
            try:
                await self.conversation.command(message["event_type"], payload)
            except CommandError as exc:
                event_id = message.get("event_id")
                await self.reply_error(
                    reply, p.CODE_BAD_REQUEST, str(exc), event_id if isinstance(event_id, str) else None
                )
            return
        if isinstance(message, dict) and message.get("type") == p.SESSION_KEEP_ALIVE:
            self.touch()
            return
        await self.reply_error(
            reply,
            p.CODE_BAD_REQUEST,
            'a FULL session takes agent-control commands {"event_type": "avatar.speak_text", "payload": '
            '{"text": "..."}} (and session.keep_alive); the audio comes from the microphone track',
        )

    async def stats(self) -> SessionStats:
        """The live session's stats, and the conversation's: per stage, the median time from the end of
        the user's speech to the avatar's first speech frame."""
        stats: SessionStats = await super().stats()  # type: ignore[misc]
        if self.conversation is None:
            return stats
        return stats.with_conversation(self.conversation.timer.stats())

    async def close(self, reason: str) -> SessionStats | None:
        if self.conversation is not None:
            await self.conversation.aclose()
        return await super().close(reason)  # type: ignore[misc]


class FullSession(FullAgent, LiveSession):
    """A WebRTC session whose conversation the server holds: the client's microphone in, the avatar out,
    LiveAvatar's FULL commands and events on the data channel."""

    def on_audio_track(self, track: Any) -> None:  # type: ignore[override]
        if self.conversation is not None:
            self.conversation.attach_microphone(track)

    def on_peer_connected(self) -> None:
        first = self.connected_at is None
        super().on_peer_connected()
        if first and self.conversation is not None:
            self._manager.spawn(self.conversation.greet())


# Makes a FULL session's conversation, speaking through the given target.
NewConversation = Callable[[SpeechTarget, FullAgent], "Conversation"]


async def start_full_session(manager: SessionManager, record: SessionRecord) -> LiveSession:
    """Start a FULL session in this process: the avatar (its engine and live core here, or a worker in
    the session's LiveKit room) and the conversation pipeline, loaded before the answer so that the
    user's first words are heard."""
    started_mono = time.monotonic()
    # The first FULL session imports Pipecat (seconds): off the event loop that paces other sessions.
    module = await asyncio.to_thread(importlib.import_module, "facecast.conversation.conversation")
    Conversation, LlmEndpoint, Persona = module.Conversation, module.LlmEndpoint, module.Persona
    from facecast.conversation.services import SpeechChoice

    full = record.settings.full
    assert full is not None
    api_key = _llm_api_key(manager, record)
    stt, tts = (
        SpeechChoice(
            service.provider,
            api_key=_open_secret(manager, record, service.secret_id, f"the {service.provider} service")
            if service.secret_id is not None
            else None,
            model=service.model,
            base_url=service.base_url,
            voice=service.voice,
        )
        for service in (full.stt, full.tts)
    )

    def new_conversation(speech: SpeechTarget, session: FullAgent) -> Conversation:
        """The session's conversation, speaking through `speech`."""
        return Conversation(
            speech,
            Persona(
                prompt=full.persona.prompt,
                opening_text=full.persona.opening_text,
                voice=record.settings.voice_id or DEFAULT_VOICE,
                language=record.settings.language,
                interactivity=record.settings.interactivity_type,
            ),
            LlmEndpoint(model=full.llm.model, base_url=full.llm.base_url, api_key=api_key),
            session.emit_agent,
            on_activity=session.touch,
            on_error=session.report_error,
            stt=stt,
            tts=tts,
        )

    if record.transport == "livekit":
        try:
            from facecast.server.sessions.full_room import start_full_room
        except ImportError as exc:
            raise livekit_extra_missing(exc) from None
        return await start_full_room(manager, record, new_conversation, started_mono=started_mono)

    spec = AvatarSpec.from_settings(record.settings, manager.avatars.library)
    try:
        engine = await asyncio.to_thread(build_engine, spec)
    except ValueError as exc:
        await manager.end(record.id, p.END_ERROR)
        raise ApiError(500, p.CODE_INTERNAL, f"could not load avatar {record.avatar_id!r}: {exc}") from None
    session: FullSession | None = None

    def on_event(event: Any) -> None:
        if session is not None:
            session.on_segment_event(event)

    def on_frame(meta: Any) -> None:  # the mouth track, as in a LITE session
        if session is not None:
            session.on_frame(meta)

    avatar = new_live_avatar(engine, on_event, on_frame if record.settings.mouth_track else None)
    session = FullSession(record, avatar, manager=manager, started_mono=started_mono)
    session.conversation = new_conversation(avatar, session)
    try:
        manager.mark_started(record, session, time.time())
    except ApiError:
        await avatar.aclose()
        raise
    try:
        await avatar.start(started_at=started_mono)
        await session.conversation.start()
    except Exception as exc:
        raise await conversation_failed(manager, record, exc) from None
    return session


async def conversation_failed(manager: SessionManager, record: SessionRecord, exc: Exception) -> ApiError:
    """End a session whose conversation could not start; the error to answer /start with."""
    log.error("session %s: the conversation could not start", record.id, exc_info=exc)
    await manager.end(record.id, p.END_ERROR)
    return ApiError(500, p.CODE_INTERNAL, f"the conversation pipeline could not start: {exc}")
