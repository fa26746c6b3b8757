"""The Facecast engine: audio intake → mouth tracker → face animator → renderer → A/V clock.

Pure and synchronous; hosts (server, LiveKit, Pipecat, files) drive it."""

from facecast.engine.config import EngineConfig
from facecast.engine.engine import Engine
from facecast.engine.intake import AudioFormatError
from facecast.engine.types import (
    VISEMES,
    FaceState,
    FrameMeta,
    FramePair,
    MouthParams,
    PhoneTiming,
    Renderer,
    SegmentEnded,
    SegmentStarted,
)

__all__ = [
    "VISEMES",
    "AudioFormatError",
    "Engine",
    "EngineConfig",
    "FaceState",
    "FrameMeta",
    "FramePair",
    "MouthParams",
    "PhoneTiming",
    "Renderer",
    "SegmentEnded",
    "SegmentStarted",
]
