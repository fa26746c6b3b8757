"""Opt-in: the worker, `say_file` and the plugin's local mode against a real LiveKit server.

Skipped unless LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET are set, e.g. with a local dev server:

    livekit-server --dev     # ws://localhost:7880, key devkey, secret secret
    LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \\
        python -m pytest -q tests/test_livekit_live.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import soundfile as sf
from livekit import api, rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput

from facecast.hosts.livekit.say import say_file
from facecast.hosts.livekit.tokens import mint_sender_token, mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar

URL = os.environ.get("LIVEKIT_URL", "")
KEY = os.environ.get("LIVEKIT_API_KEY", "")
SECRET = os.environ.get("LIVEKIT_API_SECRET", "")
pytestmark = pytest.mark.skipif(
    not (URL and KEY and SECRET), reason="needs LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
)
AVATAR = "facecast-avatar"
HANG_S = 30.0


def token(identity: str, room: str, *, kind: Literal["standard", "agent"] = "standard") -> str:
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return api.AccessToken(KEY, SECRET).with_identity(identity).with_kind(kind).with_grants(grants).to_jwt()


class Viewer:
    """A frontend in the room: subscribes to everything, collects session.state packets."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.states: list[dict[str, str]] = []
        self.tracks: list[tuple[str, str]] = []  # (participant, track name)
        self.room.on("data_received", self._on_data)
        self.room.on("track_subscribed", self._on_track)

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == "session.state":
            self.states.append(json.loads(packet.data))

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
        self.tracks.append((p.identity, track.name))

    async def wait(self, predicate: object) -> None:
        async with asyncio.timeout(HANG_S):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.05)


@pytest.fixture
async def room_name() -> AsyncIterator[str]:
    name = f"facecast-test-{uuid.uuid4().hex[:8]}"
    yield name
    async with api.LiveKitAPI(URL, KEY, SECRET) as lk:
        with contextlib.suppress(api.TwirpError):
            await lk.room.delete_room(api.DeleteRoomRequest(room=name))


@pytest.fixture
async def viewer(room_name: str) -> AsyncIterator[Viewer]:
    v = Viewer()
    await v.room.connect(URL, token("viewer", room_name))
    yield v
    await v.room.disconnect()


def speech(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.int16)


async def test_worker_plays_and_interrupts_in_a_real_room(room_name: str, viewer: Viewer) -> None:
    agent = rtc.Room()
    await agent.connect(URL, token("agent", room_name, kind="agent"))
    worker_token = mint_worker_token(
        KEY, SECRET, room=room_name, identity=AVATAR, name="Avatar", agent_identity="agent"
    )
    avatar = RoomAvatar(URL, worker_token, quality="low", max_duration_s=120)
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

    await viewer.wait(
        lambda: {name for who, name in viewer.tracks if who == AVATAR} >= {"avatar_audio", "avatar_video"}
    )
    assert viewer.room.remote_participants[AVATAR].attributes.get("lk.publish_on_behalf") == "agent"
    await agent.disconnect()
    assert await asyncio.wait_for(avatar.ended, HANG_S) == "client_gone"
    await viewer.wait(lambda: viewer.states[-1:] == [{"state": "disconnected", "reason": "client_gone"}])
    assert viewer.states[0] == {"state": "connected", "reason": ""}


async def test_say_file_in_a_real_room(room_name: str, viewer: Viewer, tmp_path: Path) -> None:
    worker_token = mint_worker_token(
        KEY, SECRET, room=room_name, identity=AVATAR, name="Avatar", agent_identity="facecast-say"
    )
    avatar = RoomAvatar(URL, worker_token, quality="low")
    await avatar.start()
    path = tmp_path / "speech.wav"
    sf.write(path, speech(1.0, 16000), 16000)
    sender = mint_sender_token(KEY, SECRET, room=room_name, identity="facecast-say")
    result = await asyncio.wait_for(say_file(URL, sender, path, AVATAR), HANG_S)
    assert result["interrupted"] is False and result["playback_position"] == pytest.approx(1.0, abs=0.05)
    await avatar.aclose()
    assert avatar.ended.result() == "stopped"


async def test_plugin_local_mode_in_a_real_room(room_name: str, viewer: Viewer) -> None:
    from livekit.plugins import facecast

    agent = rtc.Room()
    await agent.connect(URL, token("agent", room_name, kind="agent"))
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
        await viewer.wait(
            lambda: {n for who, n in viewer.tracks if who == "agent"} >= {"avatar_audio", "avatar_video"}
        )
        await avatar.aclose()
        await session.aclose()
    assert "agent" in viewer.room.remote_participants  # local mode never removes the agent
    await agent.disconnect()
