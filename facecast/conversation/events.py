"""FULL mode's wire names, as LiveAvatar's FULL mode has them: commands the client sends on the
`agent-control` topic, events the server sends on `agent-response`.

On the WebRTC data channel a message is one JSON object `{event_type, event_id, session_id, topic,
payload?}`; a LiveKit room carries the same JSON as data packets on those topics."""

from __future__ import annotations

from typing import Final

TOPIC_CONTROL: Final = "agent-control"
TOPIC_RESPONSE: Final = "agent-response"

# -- commands (client -> server, agent-control) -----------------------------------------------------------
AVATAR_SPEAK_TEXT: Final = "avatar.speak_text"  # {text}: say exactly this
AVATAR_SPEAK_RESPONSE: Final = "avatar.speak_response"  # {text}: answer it through the LLM, then say that
AVATAR_INTERRUPT: Final = "avatar.interrupt"
AVATAR_START_LISTENING: Final = "avatar.start_listening"
AVATAR_STOP_LISTENING: Final = "avatar.stop_listening"
USER_START_PUSH_TO_TALK: Final = "user.start_push_to_talk"
USER_STOP_PUSH_TO_TALK: Final = "user.stop_push_to_talk"
COMMANDS: Final = frozenset(
    {
        AVATAR_SPEAK_TEXT,
        AVATAR_SPEAK_RESPONSE,
        AVATAR_INTERRUPT,
        AVATAR_START_LISTENING,
        AVATAR_STOP_LISTENING,
        USER_START_PUSH_TO_TALK,
        USER_STOP_PUSH_TO_TALK,
    }
)

# -- events (server -> client, agent-response) ------------------------------------------------------------
USER_SPEAK_STARTED: Final = "user.speak_started"
USER_SPEAK_ENDED: Final = "user.speak_ended"
USER_TRANSCRIPTION: Final = "user.transcription"  # {text}
AVATAR_SPEAK_STARTED: Final = "avatar.speak_started"
AVATAR_SPEAK_ENDED: Final = "avatar.speak_ended"  # {interrupted}
AVATAR_TRANSCRIPTION: Final = "avatar.transcription"  # {text}: what the avatar says, as it starts saying it
USER_PUSH_TO_TALK_STARTED: Final = "user.push_to_talk_started"
USER_PUSH_TO_TALK_START_FAILED: Final = "user.push_to_talk_start_failed"  # {reason}
USER_PUSH_TO_TALK_STOPPED: Final = "user.push_to_talk_stopped"
USER_PUSH_TO_TALK_STOP_FAILED: Final = "user.push_to_talk_stop_failed"  # {reason}

CONVERSATIONAL: Final = "CONVERSATIONAL"
PUSH_TO_TALK: Final = "PUSH_TO_TALK"
