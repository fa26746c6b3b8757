"""A session's settings, typed: made once from the token body when the session is minted, stored with its
record (as JSON, `to_json`) and read back (`from_json`) by every part that runs it: the engine's look and
lip-sync, the transport, the LiveKit room, FULL mode's persona and LLM."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from facecast.avatars.look import Look
from facecast.engine.config import DEFAULT_LOOKAHEAD_MS, EngineConfig, TrackerMode

VideoEncoding = Literal["VP8", "H264"]
AudioSource = Literal["websocket", "data_stream"]
Interactivity = Literal["CONVERSATIONAL", "PUSH_TO_TALK"]
TRACKERS: tuple[str, ...] = get_args(TrackerMode)


@dataclass(frozen=True, slots=True)
class LipSync:
    """How the engine follows the speech: `tracker` "auto" recognises phones for English `language`s and
    follows the energy of the voice otherwise; `lookahead_ms` of future speech decide each mouth shape."""

    language: str = "en"
    tracker: TrackerMode = "auto"
    lookahead_ms: int = DEFAULT_LOOKAHEAD_MS

    def engine_config(self, look: Look, out_rate: int) -> EngineConfig:
        return EngineConfig(
            fps=look.fps,
            out_rate=out_rate,
            lookahead_ms=self.lookahead_ms,
            tracker=self.tracker,
            language=self.language,
        )


DEFAULT_LIP_SYNC = LipSync()
DEFAULT_LOOK = Look()


@dataclass(frozen=True, slots=True)
class LiveKitRoom:
    """Where a livekit session's avatar joins, with which token, and where the agent's audio comes from:
    the LITE WebSocket (`websocket`) or LiveKit's avatar protocol in the room (`data_stream`). `owned`:
    the room is this server's, made at /start and deleted at the end."""

    url: str
    room: str
    worker_token: str
    agent_identity: str | None
    avatar_identity: str
    audio_source: AudioSource
    owned: bool


@dataclass(frozen=True, slots=True)
class FullPersona:
    """A FULL session's persona, its context's variables substituted (voice and language: the
    session's)."""

    context_id: str | None
    prompt: str
    opening_text: str


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """Where a FULL session's LLM is: a key's configuration, or the server's default (no id). No secret
    values: the settings are stored and listed; the key is decrypted only at /start."""

    llm_configuration_id: str | None
    model: str
    base_url: str | None
    secret_id: str | None


@dataclass(frozen=True, slots=True)
class SpeechServiceSettings:
    """A FULL session's STT or TTS service (a provider of protocol.STT_PROVIDERS / TTS_PROVIDERS) and
    the id of its key's secret, never its value."""

    provider: str
    secret_id: str | None = None
    model: str | None = None
    base_url: str | None = None
    voice: str | None = None  # TTS: the provider's voice


DEFAULT_STT = SpeechServiceSettings("pocketsphinx")
DEFAULT_TTS = SpeechServiceSettings("espeak")


@dataclass(frozen=True, slots=True)
class FullSettings:
    persona: FullPersona
    llm: LlmSettings
    stt: SpeechServiceSettings = DEFAULT_STT
    tts: SpeechServiceSettings = DEFAULT_TTS


@dataclass(frozen=True, slots=True)
class SessionSettings:
    look: Look
    encoding: VideoEncoding
    max_session_duration: int  # seconds
    interactivity_type: Interactivity
    lip_sync: LipSync = DEFAULT_LIP_SYNC
    voice_id: str | None = None  # the espeak-ng voice of the server's speech; None: its default
    livekit: LiveKitRoom | None = None  # transport livekit
    full: FullSettings | None = None  # mode FULL
    mouth_track: bool = False  # each frame's mouth-track record goes to the clients (docs/mouth-track.md)
    video: bool = True  # False: track-only, no picture drawn or encoded (needs mouth_track)

    @property
    def language(self) -> str:
        return self.lip_sync.language

    # -- the stored shape ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The settings as the store keeps them and the API lists them (`public_json`): LiveAvatar's names
        where it has them. The avatar is not repeated: it is the record's own column."""
        out: dict[str, Any] = {
            "video_settings": {"quality": self.look.quality, "encoding": self.encoding},
            "aspect_ratio": self.look.aspect,
            "fps": self.look.fps,
            "background": self.look.background,
            "max_session_duration": self.max_session_duration,
            "interactivity_type": self.interactivity_type,
            "language": self.lip_sync.language,
            "tracker": self.lip_sync.tracker,
            "lookahead_ms": self.lip_sync.lookahead_ms,
            "voice_id": self.voice_id,
            "mouth_track": self.mouth_track,
            "video": self.video,
        }
        if self.livekit is not None:
            out["livekit"] = asdict(self.livekit)
        if self.full is not None:
            out["full"] = asdict(self.full)
        return out

    def public_json(self) -> dict[str, Any]:
        """`to_json` without secrets (the LiveKit worker token)."""
        out = self.to_json()
        if "livekit" in out:
            out["livekit"] = {k: v for k, v in out["livekit"].items() if k != "worker_token"}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, avatar: str) -> SessionSettings:
        """The settings `to_json` wrote for a session of `avatar`. Records written before the look-ahead,
        tracker, language, mouth track and video flag were kept get the defaults they ran with; FULL ones
        kept the voice and the language in their persona."""
        video = data["video_settings"]
        look = Look(
            avatar=avatar,
            aspect=data["aspect_ratio"],
            quality=video["quality"],
            background=data.get("background", DEFAULT_LOOK.background),
            fps=int(data["fps"]),
        )
        full = data.get("full")
        persona = full["persona"] if full is not None else {}
        lip_sync = LipSync(
            language=data.get("language", persona.get("language", DEFAULT_LIP_SYNC.language)),
            tracker=data.get("tracker", DEFAULT_LIP_SYNC.tracker),
            lookahead_ms=int(data.get("lookahead_ms", DEFAULT_LIP_SYNC.lookahead_ms)),
        )
        livekit = data.get("livekit")
        return cls(
            look=look,
            encoding=video["encoding"],
            max_session_duration=int(data["max_session_duration"]),
            interactivity_type=data["interactivity_type"],
            lip_sync=lip_sync,
            voice_id=data.get("voice_id", persona.get("voice_id")),
            livekit=LiveKitRoom(**livekit) if livekit is not None else None,
            full=(
                FullSettings(
                    persona=FullPersona(
                        **{k: v for k, v in persona.items() if k not in ("language", "voice_id")}
                    ),
                    llm=LlmSettings(**full["llm"]),
                    # Records from before the choice ran with the defaults.
                    stt=SpeechServiceSettings(**full["stt"]) if "stt" in full else DEFAULT_STT,
                    tts=SpeechServiceSettings(**full["tts"]) if "tts" in full else DEFAULT_TTS,
                )
                if full is not None
                else None
            ),
            mouth_track=bool(data.get("mouth_track", False)),
            video=bool(data.get("video", True)),
        )
