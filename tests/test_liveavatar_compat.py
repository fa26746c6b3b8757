"""LiveAvatar's own clients, unchanged, against a real Facecast server and a real LiveKit server.

- `livekit-plugins-liveavatar`'s `AvatarSession(api_url=<facecast>)` in a real `AgentSession`: it mints the
  avatar's token for the agent's room, creates and starts a LITE session, streams the agent's speech over
  the LITE WebSocket; the avatar joins the room and plays it; a viewer checks what arrives.
- pipecat's `HeyGenVideoService` (service type LIVE_AVATAR) with its LiveAvatar client pointed at
  Facecast: the server makes the room, the service joins it and gets the avatar's audio and video.
- pipecat's request and response models round-trip through the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.utils import http_context
from livekit_server import LiveKitServer, LiveRoom

from facecast.avatars import load_renderer
from facecast.hosts.livekit.viewer import RoomViewer
from facecast.server import protocol as p
from facecast.server.config import LiveKitSettings
from tests.server_harness import RunningServer, running_server

liveavatar = pytest.importorskip("livekit.plugins.liveavatar")
api_liveavatar = pytest.importorskip("pipecat.services.heygen.api_liveavatar")

PLUGIN_AVATAR = "liveavatar-avatar-agent"  # the identity livekit-plugins-liveavatar gives the avatar
RATE = 24000
HANG_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, livekit_server: LiveKitServer) -> Iterator[RunningServer]:
    """A Facecast server that knows the test LiveKit server (so it can make rooms for sessions)."""
    settings = LiveKitSettings(livekit_server.url, livekit_server.api_key, livekit_server.api_secret)
    with running_server(Path(tmp_path_factory.mktemp("facecast-liveavatar")), livekit=settings) as running:
        yield running


@pytest.fixture(scope="module")
def mouth_box() -> tuple[int, int, int, int]:
    return load_renderer("ava", quality="low").mouth_box()


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    """Speech-like: a 180 Hz tone whose loudness swings 3 times a second."""
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.int16)


async def frames(seconds: float) -> AsyncIterator[rtc.AudioFrame]:
    pcm = tone(seconds)
    for i in range(0, len(pcm), 480):
        yield rtc.AudioFrame(pcm[i : i + 480].tobytes(), RATE, 1, len(pcm[i : i + 480]))


def only_session(server: RunningServer, key_id: str, *, active: bool) -> Any:
    records, _ = server.store.list_sessions(key_id, active=active, page=1, page_size=5)
    assert len(records) == 1, records
    return records[0]


async def test_liveavatar_livekit_plugin_unchanged(
    server: RunningServer, live_room: LiveRoom, mouth_box: tuple[int, int, int, int], monkeypatch: Any
) -> None:
    lk_key, lk_secret = live_room.keys
    # The base AvatarSession removes the avatar through the job's API client, which reads these.
    monkeypatch.setenv("LIVEKIT_URL", live_room.url)
    monkeypatch.setenv("LIVEKIT_API_KEY", lk_key)
    monkeypatch.setenv("LIVEKIT_API_SECRET", lk_secret)
    key, secret = server.store.create_key("liveavatar-plugin")
    viewer = RoomViewer(mouth_box=mouth_box, publisher=PLUGIN_AVATAR)
    await viewer.connect(live_room.url, live_room.token("viewer"))
    agent = rtc.Room()
    agent_token = live_room.token("agent", kind="agent")
    await agent.connect(live_room.url, agent_token)
    try:
        async with http_context.open():
            with fake_job_context(room=agent, agent_identity="agent") as job:
                # A real job carries the agent's token; the plugin reads the agent's identity from it.
                job._info.token = agent_token
                session: AgentSession[Any] = AgentSession()
                avatar = liveavatar.AvatarSession(
                    api_url=f"{server.url}/v1/sessions", api_key=secret, avatar_id="ava", video_quality="low"
                )
                await avatar.start(
                    session,
                    room=agent,
                    livekit_url=live_room.url,
                    livekit_api_key=lk_key,
                    livekit_api_secret=lk_secret,
                )
                await session.start(agent=Agent(instructions="Speak when told."))
                await avatar.wait_for_join(timeout=HANG_S)

                record = only_session(server, key.id, active=True)
                assert record.transport == "livekit" and record.avatar_id == "ava"
                lk = record.settings["livekit"]
                assert lk["audio_source"] == "websocket" and lk["room"] == live_room.name
                assert record.settings["video_settings"]["quality"] == "low"  # top-level video_quality

                # Speaks: the whole utterance plays and the agent hears it finish.
                t0 = time.monotonic()
                handle = session.say("Hello there.", audio=frames(2.0))
                await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
                t1 = time.monotonic()
                assert handle.interrupted is False
                await viewer.wait_for(
                    lambda: viewer.tracks_of(PLUGIN_AVATAR) >= {"avatar_audio", "avatar_video"}, HANG_S
                )
                assert {pub.on_behalf_of for pub in viewer.published} == {"agent"}
                assert viewer.speech_after(t0, t1) > 1.0
                speaking = viewer.mouth_motion(t0, t1)
                await asyncio.sleep(1.0)
                assert speaking > 2 * viewer.mouth_motion(t1 + 0.3, time.monotonic())

                # Interrupts: the speech stops at the viewer and the agent's turn ends interrupted.
                t2 = time.monotonic()
                handle = session.say("This one is long.", audio=frames(8.0))
                await viewer.wait_for(lambda: viewer.speech_after(t2) > 0.5, HANG_S, "the long speech")
                session.interrupt()
                await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
                cut = time.monotonic()
                assert handle.interrupted is True
                await asyncio.sleep(1.5)
                assert viewer.speech_after(cut + 0.5) == 0.0

                # A turn after the interrupt plays in full again.
                t3 = time.monotonic()
                handle = session.say("Back again.", audio=frames(1.0))
                await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
                assert handle.interrupted is False
                assert viewer.speech_after(t3) > 0.5

                # Stops: closing the agent session ends the plugin's socket, which stops the session.
                await session.aclose()
                await avatar.aclose()
        ended = await asyncio.to_thread(server.wait_ended, record.id, HANG_S)
        print("DEBUG", ended.end_reason, ended.stats, viewer.speech_after(0), len(viewer.video))
        assert ended.end_reason in (p.END_STOPPED, p.END_CLIENT_GONE)
        await viewer.wait_for(lambda: PLUGIN_AVATAR not in viewer.room.remote_participants, HANG_S)
    finally:
        await agent.disconnect()
        await viewer.aclose()
