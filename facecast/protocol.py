"""Every name on the wire, in one place: API paths, session states, end reasons, LITE WebSocket events.

The shapes follow HeyGen LiveAvatar's public API so that a user of it feels at home: JSON responses are
`{code, data, message}`, WebSocket messages are `{type, event_id, ...}`."""

from __future__ import annotations

from typing import Final, Literal

API_PREFIX: Final = "/v1"

# -- response codes (the `code` field; HTTP statuses carry the same meaning) --------------------------
CODE_OK: Final = 1000
CODE_BAD_REQUEST: Final = 4000
CODE_UNAUTHORIZED: Final = 4001
CODE_FORBIDDEN: Final = 4003
CODE_NOT_FOUND: Final = 4004
CODE_CONFLICT: Final = 4009
CODE_GONE: Final = 4010
CODE_LIMIT: Final = 4029
CODE_NOT_IMPLEMENTED: Final = 5001
CODE_INTERNAL: Final = 5000

# -- sessions -----------------------------------------------------------------------------------------
Mode = Literal["LITE", "FULL"]
Transport = Literal["webrtc", "livekit"]
Encoding = Literal["VP8", "H264"]
InteractivityType = Literal["CONVERSATIONAL", "PUSH_TO_TALK"]

# -- a session's look: the values it takes on the wire and the frame sizes they give ------------------
# Defined here so that a client validates a request without loading the avatars or the engine; the
# avatars' presets are these, and the engine's frame rates are tested equal (tests/test_client.py).
ASPECTS: Final[tuple[str, ...]] = ("4:3", "3:4", "1:1")
QUALITIES: Final[tuple[str, ...]] = ("low", "medium", "high", "very_high")
BACKGROUNDS: Final[tuple[str, ...]] = ("scene", "green", "transparent")
FPS_CHOICES: Final = (25, 30)
# A session's lip-sync (the engine's, tested equal): its trackers and how much future speech it may use.
TRACKERS: Final[tuple[str, ...]] = ("auto", "phones", "energy")
DEFAULT_LOOKAHEAD_MS: Final = 100
MAX_LOOKAHEAD_MS: Final = 200
# FULL mode's speech services, by Pipecat service (token fields stt_service / tts_service); the first of
# each is the default, which needs no key (docs/full-mode.md § Other STT and TTS services).
STT_PROVIDERS: Final[tuple[str, ...]] = ("pocketsphinx", "openai", "deepgram")
TTS_PROVIDERS: Final[tuple[str, ...]] = ("espeak", "openai", "cartesia", "elevenlabs")
DEFAULT_AVATAR: Final = "ava"

# Landscape sizes; 3:4 is the transpose of 4:3.
_SQUARE = {"low": 256, "medium": 384, "high": 512, "very_high": 768}
_LANDSCAPE = {"low": (320, 240), "medium": (480, 360), "high": (640, 480), "very_high": (960, 720)}


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the unknown value and the choices."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def frame_size(aspect: str, quality: str) -> tuple[int, int]:
    """(width, height) in pixels for an aspect ratio and a quality preset."""
    check_choice(aspect, ASPECTS, "aspect")
    check_choice(quality, QUALITIES, "quality")
    if aspect == "1:1":
        side = _SQUARE[quality]
        return side, side
    w, h = _LANDSCAPE[quality]
    return (w, h) if aspect == "4:3" else (h, w)


# A session's lifecycle as stored: created (token minted) -> started -> ended.
STATE_CREATED: Final = "created"
STATE_STARTED: Final = "started"
STATE_ENDED: Final = "ended"

# Why a session ended; every ended record carries exactly one.
END_STOPPED: Final = "stopped"
END_MAX_DURATION: Final = "max_duration"
END_IDLE: Final = "idle"
END_CLIENT_GONE: Final = "client_gone"
END_ERROR: Final = "error"
END_SERVER_SHUTDOWN: Final = "server_shutdown"
END_TOKEN_EXPIRED: Final = "token_expired"  # minted but never started before its token expired
END_SERVER_LOST: Final = "server_lost"  # its server stopped renewing its lease (killed, partitioned)
END_KEY_REVOKED: Final = "key_revoked"  # the API key that minted it was revoked
END_REASONS: Final = (
    END_STOPPED,
    END_MAX_DURATION,
    END_IDLE,
    END_CLIENT_GONE,
    END_ERROR,
    END_SERVER_SHUTDOWN,
    END_TOKEN_EXPIRED,
    END_SERVER_LOST,
    END_KEY_REVOKED,
)

# -- LITE WebSocket: client -> server ----------------------------------------------------------------
AGENT_SPEAK: Final = "agent.speak"  # {audio: base64 PCM16 mono 24 kHz, event_id}
AGENT_SPEAK_END: Final = "agent.speak_end"  # {event_id}
AGENT_SPEAK_TEXT: Final = "agent.speak_text"  # {text, event_id}: server-side TTS
AGENT_INTERRUPT: Final = "agent.interrupt"
AGENT_START_LISTENING: Final = "agent.start_listening"
AGENT_STOP_LISTENING: Final = "agent.stop_listening"
SESSION_KEEP_ALIVE: Final = "session.keep_alive"
CLIENT_EVENTS: Final = frozenset(
    {
        AGENT_SPEAK,
        AGENT_SPEAK_END,
        AGENT_SPEAK_TEXT,
        AGENT_INTERRUPT,
        AGENT_START_LISTENING,
        AGENT_STOP_LISTENING,
        SESSION_KEEP_ALIVE,
    }
)
LITE_AUDIO_RATE: Final = 24000  # agent.speak audio: PCM16 little-endian, mono, this rate

# -- LITE WebSocket / data channel: server -> client --------------------------------------------------
SESSION_STATE_UPDATED: Final = "session.state_updated"  # {state: connecting|connected|closing|closed}
AGENT_SPEAK_STARTED: Final = "agent.speak_started"
AGENT_SPEAK_ENDED: Final = "agent.speak_ended"
AGENT_SPEAK_INTERRUPTED: Final = "agent.speak_interrupted"
# {previous_state, new_state}: talking while an utterance plays, else listening (after
# agent.start_listening) or idle. LiveAvatar's clients end a turn on it, the interrupted ones included.
AGENT_STATE_UPDATED: Final = "agent.state_updated"
SESSION_STOPPED: Final = "session.stopped"  # {end_reason}
SESSION_STATS: Final = "session.stats"
# {event_id: the utterance's, null on idle frames; track: one mouth-track record, docs/mouth-track.md}: one
# per frame, sent as the frame's audio starts playing, to sessions minted with mouth_track true.
AVATAR_MOUTH_TRACK: Final = "avatar.mouth_track"
ERROR: Final = "error"  # {code, message, event_id?}

AGENT_TALKING: Final = "talking"
AGENT_LISTENING: Final = "listening"
AGENT_IDLE: Final = "idle"

WS_STATE_CONNECTING: Final = "connecting"
WS_STATE_CONNECTED: Final = "connected"
WS_STATE_CLOSING: Final = "closing"
WS_STATE_CLOSED: Final = "closed"

DATA_CHANNEL_LABEL: Final = "events"

# -- avatars ------------------------------------------------------------------------------------------
# An avatar made through the API: building (queued or running) -> ready, or failed with an error.
AVATAR_BUILDING: Final = "building"
AVATAR_READY: Final = "ready"
AVATAR_FAILED: Final = "failed"
AVATAR_STATUSES: Final = (AVATAR_BUILDING, AVATAR_READY, AVATAR_FAILED)

# Where its bundle came from: a photo uploaded, a photo fetched from a URL, or a ready-made bundle.
AVATAR_SOURCE_UPLOAD: Final = "upload"
AVATAR_SOURCE_URL: Final = "url"
AVATAR_SOURCE_BUNDLE: Final = "bundle"
