"""The worker, `say_file` and the plugin's local mode against a real LiveKit server (the
`livekit_server` fixture: tests/livekit_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit_server import LiveRoom

from facecast.hosts.livekit.say import say_file
from facecast.hosts.livekit.tokens import mint_sender_token, mint_worker_token
from facecast.hosts.livekit.viewer import RoomViewer
from facecast.hosts.livekit.worker import RoomAvatar

AVATAR = "facecast-avatar"
HANG_S = 30.0


@pytest.fixture
async def viewer(live_room: LiveRoom) -> AsyncIterator[RoomViewer]:
    v = RoomViewer()
    await v.connect(live_room.url, live_room.token("viewer"))
    yield v
    await v.aclose()


def speech(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.int16)


async def test_worker_plays_and_interrupts_in_a_real_room(live_room: LiveRoom, viewer: RoomViewer) -> None:
    agent = rtc.Room()
    await agent.connect(live_room.url, live_room.token("agent", kind="agent"))
    worker_token = mint_worker_token(
        live_room.server.api_key,
        live_room.server.api_secret,
        room=live_room.name,
        identity=AVATAR,
        name="Avatar",
        agent_identity="agent",
    )
    avatar = RoomAvatar(live_room.url, worker_token, quality="low", max_duration_s=120)
    await avatar.start()
    out = DataStreamAudioOutput(
        agent, destination_identity=AVATAR, sample_rate=24000, wait_remote_track=rtc.TrackKind.KIND_VIDEO
    )
    finished: list[tuple[float, bool]] = []
    out.on("playback_finished", lambda ev: finished.append((ev.playback_position, ev.interrupted)))

    pcm = speech(1.0)
    for i in range(0, len(pcm), 480):
        await out.capture_frame(rtc.AudioFrame(pcm[i : i + 480].tobytes(), 24000, 1, 480))
    out.flush()
    await asyncio.wait_for(out.wait_for_playout(), HANG_S)
    assert finished[-1][1] is False and finished[-1][0] == pytest.approx(1.0, abs=0.05)

    pcm = speech(3.0)
    for i in range(0, len(pcm), 480):
        await out.capture_frame(rtc.AudioFrame(pcm[i : i + 480].tobytes(), 24000, 1, 480))
    await asyncio.sleep(0.8)
    out.clear_buffer()
    out.flush()
    await asyncio.wait_for(out.wait_for_playout(), HANG_S)
    assert finished[-1][1] is True and 0.3 < finished[-1][0] < 2.0

    await viewer.wait_for(lambda: viewer.tracks_of(AVATAR) >= {"avatar_audio", "avatar_video"})
    assert viewer.room.remote_participants[AVATAR].attributes.get("lk.publish_on_behalf") == "agent"
    await agent.disconnect()
    assert await asyncio.wait_for(avatar.ended, HANG_S) == "client_gone"
    await viewer.wait_for(
        lambda: viewer.state_values()[-1:] == [{"state": "disconnected", "reason": "client_gone"}]
    )
    assert viewer.state_values()[0] == {"state": "connected", "reason": ""}


async def test_say_file_in_a_real_room(live_room: LiveRoom, viewer: RoomViewer, tmp_path: Path) -> None:
    worker_token = mint_worker_token(
        live_room.server.api_key,
        live_room.server.api_secret,
        room=live_room.name,
        identity=AVATAR,
        name="Avatar",
        agent_identity="facecast-say",
    )
    avatar = RoomAvatar(live_room.url, worker_token, quality="low")
    await avatar.start()
    path = tmp_path / "speech.wav"
    sf.write(path, speech(1.0, 16000), 16000)
    sender = mint_sender_token(*live_room.keys, room=live_room.name, identity="facecast-say")
    result = await asyncio.wait_for(say_file(live_room.url, sender, path, AVATAR), HANG_S)
    assert result["interrupted"] is False and result["playback_position"] == pytest.approx(1.0, abs=0.05)
    await avatar.aclose()
    assert avatar.ended.result() == "stopped"


async def test_plugin_local_mode_in_a_real_room(live_room: LiveRoom, viewer: RoomViewer) -> None:
    from livekit.plugins import facecast

    agent = rtc.Room()
    await agent.connect(live_room.url, live_room.token("agent", kind="agent"))
    with fake_job_context(room=agent, agent_identity="agent"):
        session: AgentSession[Any] = AgentSession()
        avatar = facecast.AvatarSession(mode="local", video_quality="low")
        await avatar.start(session, room=agent)
        await session.start(agent=Agent(instructions="Speak when told."))

        async def frames() -> AsyncIterator[rtc.AudioFrame]:
            pcm = speech(1.0)
            for i in range(0, len(pcm), 480):
                yield rtc.AudioFrame(pcm[i : i + 480].tobytes(), 24000, 1, 480)

        handle = session.say("Hello.", audio=frames())
        await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
        assert handle.interrupted is False
        await viewer.wait_for(lambda: viewer.tracks_of("agent") >= {"avatar_audio", "avatar_video"})
        await avatar.aclose()
        await session.aclose()
    assert "agent" in viewer.room.remote_participants  # local mode never removes the agent
    await agent.disconnect()
