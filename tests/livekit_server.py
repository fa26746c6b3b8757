"""A real LiveKit server for the tests: the `livekit-server` binary, started on loopback with free ports
(the start/stop logic is facecast.hosts.livekit.server_process, shared with `facecast bench livekit`).

`scripts/livekit-server` builds the pinned release from its Go module into a cache and prints the
binary's path; `scripts/test` exports it as FACECAST_LIVEKIT_SERVER. The `livekit_server` fixture
(tests/conftest.py) starts one server for the whole test session. Without the binary the real-server
tests are skipped with the command to run, except in CI (CI=true), where they fail instead: CI must
never pass by skipping them. LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET point the tests at an
external server instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

from livekit import api

from facecast.hosts.livekit.server_process import (
    API_KEY,
    API_SECRET,
    BUILD_HINT,
    LIVEKIT_SERVER_VERSION,
    LiveKitServer,
    LiveKitServerMissing,
    find_binary,
    run_livekit_server,
)

__all__ = [
    "API_KEY",
    "API_SECRET",
    "BUILD_HINT",
    "LIVEKIT_SERVER_VERSION",
    "LiveKitServer",
    "LiveKitServerMissing",
    "LiveRoom",
    "find_binary",
    "run_livekit_server",
]


@dataclass(frozen=True)
class LiveRoom:
    """A fresh room name on a real server, with tokens for the participants a test brings."""

    server: LiveKitServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def keys(self) -> tuple[str, str]:
        return self.server.api_key, self.server.api_secret

    def token(self, identity: str, *, kind: Literal["standard", "agent"] = "standard") -> str:
        grants = api.VideoGrants(
            room_join=True, room=self.name, can_publish=True, can_subscribe=True, can_publish_data=True
        )
        return (
            api.AccessToken(self.server.api_key, self.server.api_secret)
            .with_identity(identity)
            .with_name(identity)
            .with_kind(kind)
            .with_grants(grants)
            .to_jwt()
        )

    async def delete(self) -> None:
        async with api.LiveKitAPI(self.server.http_url, self.server.api_key, self.server.api_secret) as lk:
            with contextlib.suppress(api.TwirpError):
                await lk.room.delete_room(api.DeleteRoomRequest(room=self.name))
