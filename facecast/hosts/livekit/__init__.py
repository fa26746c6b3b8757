"""LiveKit hosts: the avatar worker (`RoomAvatar`), the worker fleet behind LiveKit dispatch
(`run_agent_server`), external audio (`say_file`), and the engine as a livekit-agents `VideoGenerator`
for in-process use (`FacecastVideoGenerator` + `FacecastAvatarRunner`).

Names resolve on first use, so `facecast --help` does not pay for importing livekit-agents."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facecast.hosts.livekit.dispatch import AvatarJob, build_agent_server, run_agent_server
    from facecast.hosts.livekit.generator import FacecastVideoGenerator
    from facecast.hosts.livekit.runner import FacecastAvatarRunner
    from facecast.hosts.livekit.say import say_file
    from facecast.hosts.livekit.tokens import mint_sender_token, mint_worker_token
    from facecast.hosts.livekit.worker import RoomAvatar

_EXPORTS = {
    "AvatarJob": "dispatch",
    "build_agent_server": "dispatch",
    "run_agent_server": "dispatch",
    "FacecastVideoGenerator": "generator",
    "FacecastAvatarRunner": "runner",
    "say_file": "say",
    "mint_sender_token": "tokens",
    "mint_worker_token": "tokens",
    "RoomAvatar": "worker",
}

__all__ = [
    "AvatarJob",
    "FacecastAvatarRunner",
    "FacecastVideoGenerator",
    "RoomAvatar",
    "build_agent_server",
    "mint_sender_token",
    "mint_worker_token",
    "run_agent_server",
    "say_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
