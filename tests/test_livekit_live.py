"""The worker, `say_file` and the plugin's local mode against a real LiveKit server (the
`livekit_server` fixture: tests/livekit_server.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
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
from livekit_speech import AVATAR_QUALITY, mouth_box

from facecast.client.livekit_viewer import RoomViewer
from facecast.engine.mouth_track import BLENDSHAPE_NAMES
from facecast.hosts.livekit.names import MOUTH_TRACK_TOPIC
from facecast.hosts.livekit.tokens import mint_worker_token
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


async def test_worker_plays_and_interrupts_in_a_real_room(
    live_room: LiveRoom, viewer: RoomViewer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="livekit.agents")
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
    # cleared 0.8 s into 3 s of speech: some of it played, not all (a busy host delays the clear)
    assert finished[-1][1] is True and 0.3 < finished[-1][0] < 2.9
    # This agent, as stock agents do, did not register lk.playback_started: noted, never an ERROR.
    started_notes = [r for r in caplog.records if "lk.playback_started" in r.getMessage()]
    assert started_notes and all(r.levelno < logging.WARNING for r in started_notes)

    await viewer.wait_for(lambda: viewer.tracks_of(AVATAR) >= {"avatar_audio", "avatar_video"})
    assert viewer.room.remote_participants[AVATAR].attributes.get("lk.publish_on_behalf") == "agent"
    await agent.disconnect()
    assert await asyncio.wait_for(avatar.ended, HANG_S) == "client_gone"
    await viewer.wait_for(
        lambda: viewer.state_values()[-1:] == [{"state": "disconnected", "reason": "client_gone"}]
    )
    assert viewer.state_values()[0] == {"state": "connected", "reason": ""}


async def test_facecast_say_streams_a_file_in_a_real_room(
    live_room: LiveRoom, tmp_path: Path, speech: tuple[np.ndarray, int, str]
) -> None:
    """The external-audio pattern: no AgentSession; `facecast say --room` streams a WAV to the avatar."""
    viewer = RoomViewer(mouth_box=mouth_box())
    await viewer.connect(live_room.url, live_room.token("viewer"))
    worker_token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity=AVATAR, name="Avatar", agent_identity="facecast-say"
    )
    avatar = RoomAvatar(live_room.url, worker_token, quality=AVATAR_QUALITY)
    try:
        await avatar.start()
        samples, rate, _ = speech
        path = tmp_path / "speech.wav"
        sf.write(path, samples, rate)
        key, secret = live_room.keys
        sent = time.monotonic()
        command = [sys.executable, "-m", "facecast", "say", str(path), "--room", live_room.name]
        command += ["--url", live_room.url, "--api-key", key, "--api-secret", secret]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), HANG_S)
        assert proc.returncode == 0, err.decode()
        duration = len(samples) / rate
        assert out.decode().strip() == f"played {duration:.2f} s of {duration:.2f} s"
        assert viewer.speech_after(sent) > 0.5 * duration
        heard_from, heard_to = viewer.first_speech_at(sent), viewer.last_speech_at()
        assert heard_from is not None and heard_to is not None
        assert viewer.mouth_motion(heard_from, heard_to) > 2 * viewer.mouth_motion(sent - 1.0, heard_from)
        assert avatar.stats()["playback_finished_sent"] == 1
        # `facecast say` leaves once its file has played; the avatar then ends: its sender is gone.
        assert await asyncio.wait_for(asyncio.shield(avatar.ended), HANG_S) == "client_gone"
    finally:
        await avatar.aclose()
        await viewer.aclose()


async def test_worker_ends_at_its_max_duration(live_room: LiveRoom, viewer: RoomViewer) -> None:
    agent = rtc.Room()
    await agent.connect(live_room.url, live_room.token("agent", kind="agent"))
    worker_token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity=AVATAR, name="Avatar", agent_identity="agent"
    )
    avatar = RoomAvatar(live_room.url, worker_token, quality=AVATAR_QUALITY, max_duration_s=1.5)
    try:
        await avatar.start()
        assert await asyncio.wait_for(asyncio.shield(avatar.ended), HANG_S) == "max_duration"
        await viewer.wait_for(
            lambda: viewer.state_values()[-1:] == [{"state": "disconnected", "reason": "max_duration"}],
            what="the max_duration state",
        )
        await viewer.wait_for(
            lambda: AVATAR not in viewer.room.remote_participants, what="the avatar leaving"
        )
    finally:
        await avatar.aclose()
        await agent.disconnect()


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


async def test_worker_streams_the_mouth_track_in_a_real_room(live_room: LiveRoom) -> None:
    """`mouth_track=True`: every frame's record (docs/mouth-track.md) reaches a participant on the
    data topic, in frame order, with the jaw open while the avatar speaks and at rest before."""
    records: list[dict[str, Any]] = []
    viewer = rtc.Room()

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == MOUTH_TRACK_TOPIC:
            records.append(json.loads(packet.data))

    viewer.on("data_received", on_data)
    await viewer.connect(live_room.url, live_room.token("viewer"))
    agent = rtc.Room()
    await agent.connect(live_room.url, live_room.token("agent", kind="agent"))
    token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity=AVATAR, name="A", agent_identity="agent"
    )
    avatar = RoomAvatar(live_room.url, token, quality=AVATAR_QUALITY, mouth_track=True)
    try:
        await avatar.start()
        out = DataStreamAudioOutput(
            agent, destination_identity=AVATAR, sample_rate=24000, wait_remote_track=rtc.TrackKind.KIND_VIDEO
        )
        await asyncio.sleep(0.5)  # idle frames first
        pcm = speech(1.5)
        for i in range(0, len(pcm), 480):
            await out.capture_frame(rtc.AudioFrame(pcm[i : i + 480].tobytes(), 24000, 1, 480))
        out.flush()
        await asyncio.wait_for(out.wait_for_playout(), HANG_S)
        await asyncio.sleep(0.3)
    finally:
        await avatar.aclose()
        await agent.disconnect()
        await viewer.disconnect()
    assert records, "no mouth-track record arrived"
    frames = [r["frame"] for r in records]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert len(records) >= 0.8 * (frames[-1] - frames[0] + 1)  # lossy, but a loopback loses little
    assert all(r["v"] == 1 and list(r["blendshapes"]) == list(BLENDSHAPE_NAMES) for r in records)
    speaking = [r["blendshapes"]["jawOpen"] for r in records if r["speaking"]]
    idle = [r["blendshapes"]["jawOpen"] for r in records if not r["speaking"]]
    assert len(speaking) > 20 and idle, (len(speaking), len(idle))
    assert max(speaking) > 0.3 and max(idle) < 0.05
