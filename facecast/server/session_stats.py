"""What a session did: the live core's `LiveStats` (the same names in every host, docs/engine.md § Live
stats) and what its transport and process add. GET /v1/sessions/{id}, /metrics and the stored record all
show `as_dict()`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from facecast.hosts.live import LiveStats

LIVE_STAT_NAMES = frozenset(LiveStats().as_dict())


@dataclass(frozen=True)
class SessionStats:
    duration_s: float  # since the start request
    live: LiveStats | None  # None: a LiveKit room's avatar that never started
    worker_pid: int | None = None  # the worker process that runs it; None: the server's own process
    # The transport's counters: the WebRTC peer's (bytes, packets, encode times) or the LiveKit worker's
    # (state, segments received, idle time).
    transport: Mapping[str, Any] = field(default_factory=dict)
    livekit: Mapping[str, Any] | None = None  # the room and the agent a LiveKit session serves
    conversation: Mapping[str, Any] | None = None  # a FULL session's per-stage latencies

    def with_conversation(self, conversation: Mapping[str, Any]) -> SessionStats:
        return replace(self, conversation=conversation)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"duration_s": round(self.duration_s, 3), "worker_pid": self.worker_pid}
        if self.live is not None:
            out.update(self.live.as_dict())
        out.update(self.transport)
        if self.livekit is not None:
            out["livekit"] = dict(self.livekit)
        if self.conversation is not None:
            out["conversation"] = dict(self.conversation)
        return out
