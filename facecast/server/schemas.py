"""Request bodies of the session API, validated with pydantic so a bad body gets a 400 naming the field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

# The wire's value sets, not the avatars' or the engine's: a client validates with these models without them.
from facecast.protocol import (
    ASPECTS,
    DEFAULT_LOOKAHEAD_MS,
    FPS_CHOICES,
    MAX_LOOKAHEAD_MS,
    QUALITIES,
    STT_PROVIDERS,
    TTS_PROVIDERS,
)


def _integral(value: object) -> object:
    """JSON has one number type: 600.0 is the integer 600 (JSON Schema agrees); 600.5 stays refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _Body(BaseModel):
    # Unknown fields are refused: a typo like `avatar` for `avatar_id` must not be silently ignored. Strict:
    # a value of the wrong JSON type (0 for false, "30" for 30) is refused too, as the OpenAPI schema says.
    model_config = ConfigDict(extra="forbid", strict=True)


class VideoSettings(_Body):
    quality: Literal[tuple(QUALITIES)] = "high"  # type: ignore[valid-type]
    encoding: Literal["VP8", "H264"] = "VP8"


class AvatarPersona(_Body):
    # The espeak-ng voice of the server's speech (GET /v1/voices): FULL's replies, LITE's agent.speak_text.
    voice_id: str | None = None
    context_id: str | None = None  # FULL only: the LLM's prompt and opening text (POST /v1/contexts)
    # The speech's language (BCP 47, e.g. "en", "en-GB", "fr"): with tracker auto, English is followed by
    # phone recognition and any other language by the energy of the voice.
    language: str = Field(default="en", pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$", max_length=35)


ServiceText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _ServiceChoice(_Body):
    # The service's key is a secret of the API key's (POST /v1/secrets); `base_url` points `openai` at any
    # OpenAI-compatible server.
    secret_id: str | None = None
    model: ServiceText | None = None
    base_url: str | None = Field(default=None, min_length=1, max_length=2048)


class SttServiceChoice(_ServiceChoice):
    """FULL mode's speech recognition, a Pipecat STT service (docs/full-mode.md)."""

    provider: Literal[tuple(STT_PROVIDERS)]  # type: ignore[valid-type]


class TtsServiceChoice(_ServiceChoice):
    """FULL mode's speech synthesis, a Pipecat TTS service; `voice` is the provider's voice id."""

    provider: Literal[tuple(TTS_PROVIDERS)]  # type: ignore[valid-type]
    voice: ServiceText | None = None


class LiveKitConfig(_Body):
    """The user's own LiveKit room for the avatar (docs/liveavatar.md has the field table)."""

    livekit_url: str
    livekit_room: str
    # LiveAvatar's name: the avatar's join token; the agent's audio then comes over the LITE WebSocket.
    livekit_client_token: str | None = None
    # Facecast's name: the avatar's join token; the agent's audio then comes over `lk.audio_stream`.
    livekit_worker_token: str | None = None
    agent_identity: str | None = None
    avatar_identity: str | None = None
    avatar_name: str | None = None


AudioSource = Literal["websocket", "data_stream"]
# `${name}` placeholders of a FULL session's context: LiveAvatar's limits.
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")]
VariableValue = Annotated[str, StringConstraints(max_length=1000)]


class TokenRequest(_Body):
    mode: Literal["LITE", "FULL"] = "LITE"
    avatar_id: str | None = None  # a built-in, or one of this key's avatars (GET /v1/avatars)
    # A photo to build the session's avatar from, like POST /v1/avatars {image_url}; /start waits for it.
    avatar_image_url: str | None = Field(default=None, min_length=1, max_length=2048)
    avatar_persona: AvatarPersona | None = None
    # pipecat's models serialise unset optional fields as null: null means the default here.
    is_sandbox: bool = False
    video_settings: VideoSettings = Field(default_factory=VideoSettings)
    # LiveAvatar's LiveKit plugin sends the quality at the top level; same meaning as video_settings.quality.
    video_quality: Literal[tuple(QUALITIES)] | None = None  # type: ignore[valid-type]
    aspect_ratio: Literal[tuple(ASPECTS)] = "1:1"  # type: ignore[valid-type]
    fps: Literal[tuple(FPS_CHOICES)] = 30  # type: ignore[valid-type]
    max_session_duration: Annotated[int | None, BeforeValidator(_integral)] = Field(default=None, gt=0)
    interactivity_type: Literal["CONVERSATIONAL", "PUSH_TO_TALK"] = "CONVERSATIONAL"
    # Facecast's lip-sync: how the mouth follows the speech (auto: phones for English, else energy) and how
    # much future speech decides each mouth shape (it delays the avatar's audio and video alike).
    tracker: Literal["auto", "phones", "energy"] = "auto"
    lookahead_ms: Annotated[int, BeforeValidator(_integral)] = Field(
        default=DEFAULT_LOOKAHEAD_MS, ge=0, le=MAX_LOOKAHEAD_MS
    )
    mouth_track: bool = Field(
        default=False,
        description="Send each frame's mouth-track record (docs/mouth-track.md) as an avatar.mouth_track "
        "event on the LITE WebSocket and the WebRTC data channel (transport livekit: on the room's data "
        "topic facecast.mouth_track) as the frame's audio plays. LITE only.",
    )
    video: bool = Field(
        default=True,
        description="false: a track-only session for client-side avatars: no video is drawn or encoded "
        "(the WebRTC answer carries audio only); needs mouth_track true, mode LITE and transport webrtc.",
    )
    # None: `livekit` when livekit_config is given or this server knows a LiveKit server (it makes a room
    # for the session), else `webrtc`.
    transport: Literal["webrtc", "livekit"] | None = None
    livekit_config: LiveKitConfig | None = None
    # Where a livekit session takes the agent's audio from. None: `data_stream` (LiveKit's avatar protocol)
    # when livekit_config names the avatar by Facecast's fields (livekit_worker_token or agent_identity),
    # else `websocket` (the LITE WebSocket, as LiveAvatar does).
    audio_source: AudioSource | None = None
    # FULL mode: the OpenAI-compatible endpoint (POST /v1/llm_configurations; None: the server's default,
    # FACECAST_LLM_*) and values for the context's `${name}` placeholders (LiveAvatar's limits).
    llm_configuration_id: str | None = None
    # FULL mode: the speech services (None: PocketSphinx and espeak-ng, no key needed).
    stt_service: SttServiceChoice | None = None
    tts_service: TtsServiceChoice | None = None
    dynamic_variables: dict[VariableName, VariableValue] | None = Field(default=None, max_length=50)

    @field_validator("is_sandbox", "video_settings", mode="before")
    @classmethod
    def _null_is_default(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return False if info.field_name == "is_sandbox" else VideoSettings()
        return value


class SessionRef(_Body):
    session_id: str | None = None  # optional: the bearer token already names the session


class StopRequest(SessionRef):
    reason: str | None = None  # the caller's note; the record's end_reason is always `stopped`


class OfferRequest(_Body):
    sdp: str = Field(min_length=1)
    type: Literal["offer"] = "offer"


class AvatarUrlRequest(_Body):
    """`POST /v1/avatars` as JSON: build a portrait avatar from the photo at a URL."""

    image_url: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(default=None, max_length=200)  # display name; default: the avatar id
    consent: str | None = Field(default=None, max_length=10_000)  # the likeness owner's consent, kept
