"""Live sessions and their owner, one module per job: the manager (.manager), a LITE session (.lite),
sessions in LiveKit rooms (.livekit), minting (.tokens) and the reaper that enforces the limits
(.reaper)."""

from facecast.server.errors import ApiError
from facecast.server.sessions.lite import EventSink, LiveSession, SpeechTarget
from facecast.server.sessions.livekit import RoomSession, room_stats
from facecast.server.sessions.manager import Session, SessionManager

__all__ = [
    "ApiError",
    "EventSink",
    "LiveSession",
    "RoomSession",
    "Session",
    "SessionManager",
    "SpeechTarget",
    "room_stats",
]
