"""End to end over a real LiveKit server: a real AgentSession speaks through `facecast.AvatarSession`,
and a viewer in the room receives the avatar the way a browser frontend does.

Remote mode runs against a real Facecast server (transport `livekit`); local mode renders in the agent's
process. The viewer checks what a user would see: the tracks published on behalf of the agent, the first
video frame, the frame rate, the mouth moving with the speech, the A/V offset, silence after an
interrupt, and the `session.state` packets. The agent side checks exactly one `playback_finished` per
segment, with a plausible position. Figures are printed (`pytest -s`); `facecast bench livekit` is where
they are measured at full size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.utils import http_context
from livekit.agents.voice.io import PlaybackFinishedEvent
from livekit.plugins import facecast
from livekit_server import LiveRoom
from livekit_speech import AVATAR_QUALITY, RATE, mouth_box, stream, to_24k
from server_harness import RunningServer, running_server

from facecast.client.livekit_viewer import RoomViewer
from facecast.hosts.livekit.names import MOUTH_TRACK_TOPIC
from facecast.server.sessions import RoomSession

AGENT = "agent"
AVATAR = "facecast-avatar"
HANG_S = 30.0
RAPID_INTERRUPTS = 20


@pytest.fixture
def sentence(speech: tuple[np.ndarray, int, str]) -> np.ndarray:
    samples, rate, _ = speech
    return to_24k(samples, rate)


@pytest.fixture
async def viewer(live_room: LiveRoom) -> AsyncIterator[RoomViewer]:
    v = RoomViewer(mouth_box=mouth_box())
    await v.connect(live_room.url, live_room.token("viewer"))
    yield v
    await v.aclose()


@pytest.fixture
async def agent_room(live_room: LiveRoom) -> AsyncIterator[rtc.Room]:
    room = rtc.Room()
    await room.connect(live_room.url, live_room.token(AGENT, kind="agent"))
    yield room
    await room.disconnect()


@pytest.fixture
async def agent_job(live_room: LiveRoom, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """What an agent job has: LIVEKIT_* in the environment and the job's HTTP session (the plugin
    mints the worker token from the first; the base AvatarSession removes the avatar with the second)."""
    for name, value in zip(
        ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"),
        (live_room.url, *live_room.keys),
        strict=True,
    ):
        monkeypatch.setenv(name, value)
    async with http_context.open():
        yield


@pytest.fixture
def facecast_server(tmp_path: Path) -> Any:
    with running_server(tmp_path) as server:
        yield server


class Finished:
    """The agent side's playback_finished events, read from its audio output."""

    def __init__(self, session: AgentSession[Any]) -> None:
        self.events: list[PlaybackFinishedEvent] = []
        assert session.output.audio is not None
        session.output.audio.on("playback_finished", self.events.append)


async def start_agent(session: AgentSession[Any], viewer: RoomViewer, tag: str) -> Finished:
    """Start the agent (its avatar already started) and wait for the viewer's first video frame."""
    started = time.monotonic()
    await session.start(agent=Agent(instructions="Speak when told."))
    finished = Finished(session)
    await viewer.wait_for(lambda: viewer.first_video_at is not None, HANG_S, "the first video frame")
    assert viewer.first_video_at is not None
    print(f"\n[{tag}] first video frame at the viewer {viewer.first_video_at - started:+.3f} s after start()")
    return finished


async def speak_and_check(
    session: AgentSession[Any], viewer: RoomViewer, finished: Finished, pcm: np.ndarray, publisher: str
) -> None:
    """One whole utterance: played to the end, reported once, heard and seen by the viewer. The A/V
    offset is printed, not asserted: on a busy 2-core host it swings by a syllable; `facecast bench
    livekit` measures it."""
    before = len(finished.events)
    sent = time.monotonic()
    handle = session.say("A sentence.", audio=stream(pcm), add_to_chat_ctx=False)
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert handle.interrupted is False
    assert len(finished.events) == before + 1, "exactly one playback_finished per segment"
    assert finished.events[-1].interrupted is False
    assert finished.events[-1].playback_position == pytest.approx(len(pcm) / RATE, abs=0.1)

    await viewer.wait_for(lambda: (viewer.last_speech_at() or 0) > sent, what="the speech at the viewer")
    heard_from = viewer.first_speech_at(after=sent)
    assert heard_from is not None
    await asyncio.sleep(0.5)  # the tail of the speech still in flight
    heard_to = viewer.last_speech_at()
    assert heard_to is not None
    heard = viewer.speech_after(sent)
    assert heard > 0.5 * len(pcm) / RATE, f"the viewer heard {heard:.2f} s of {len(pcm) / RATE:.2f} s"

    fps = viewer.fps(heard_from, heard_to)
    gap = viewer.largest_video_gap(heard_from, heard_to)
    speaking = viewer.mouth_motion(heard_from, heard_to)
    idle = viewer.mouth_motion(heard_to + 0.3, time.monotonic())
    offset = viewer.av_offset_ms(heard_from - 0.3, heard_to + 0.3)
    print(
        f"\n[{publisher}] viewer: {fps:.1f} fps while speaking (largest gap {gap * 1000:.0f} ms), "
        f"mouth motion speaking {speaking:.2f} vs idle {idle:.2f}, A/V offset {offset:+.0f} ms"
    )
    assert fps > 15, "the video must keep flowing while the avatar speaks"
    assert speaking > 2 * idle, "the mouth must move with the speech"


async def interrupt_and_check(
    session: AgentSession[Any], viewer: RoomViewer, finished: Finished, pcm: np.ndarray
) -> None:
    """Interrupt mid-utterance: reported once as interrupted, at a plausible position; silence follows."""
    before = len(finished.events)
    long_pcm = np.concatenate([pcm, pcm])
    sent = time.monotonic()
    handle = session.say("A long sentence.", audio=stream(long_pcm), add_to_chat_ctx=False)
    await viewer.wait_for(lambda: viewer.first_speech_at(after=sent) is not None, what="speech")
    await asyncio.sleep(1.0)
    interrupted_at = time.monotonic()
    await asyncio.wait_for(session.interrupt(), HANG_S)
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert handle.interrupted is True
    assert len(finished.events) == before + 1
    event = finished.events[-1]
    assert event.interrupted is True
    assert 0.5 < event.playback_position < len(long_pcm) / RATE - 1.0
    await asyncio.sleep(1.0)
    tail = (viewer.last_speech_at() or interrupted_at) - interrupted_at
    print(f"\nviewer: speech stopped {max(tail, 0) * 1000:.0f} ms after session.interrupt()")
    assert viewer.speech_after(interrupted_at + 0.6) == 0.0, "the avatar must fall silent after an interrupt"


async def rapid_interrupts(session: AgentSession[Any], pcm: np.ndarray) -> None:
    for _ in range(RAPID_INTERRUPTS):
        handle = session.say("Again.", audio=stream(pcm), add_to_chat_ctx=False)
        await asyncio.sleep(0.15)
        await asyncio.wait_for(session.interrupt(), HANG_S)
        await asyncio.wait_for(handle.wait_for_playout(), HANG_S)


async def test_remote_mode_agent_session_in_a_real_room(
    agent_job: None,
    agent_room: rtc.Room,
    viewer: RoomViewer,
    facecast_server: RunningServer,
    sentence: np.ndarray,
) -> None:
    key = facecast_server.store.create_key("rooms")[1]
    with fake_job_context(room=agent_room, agent_identity=AGENT):
        session: AgentSession[Any] = AgentSession()
        avatar = facecast.AvatarSession(
            api_url=facecast_server.url,
            api_key=key,
            aspect_ratio="1:1",
            video_quality=AVATAR_QUALITY,
            max_duration_seconds=300,
        )
        try:
            await avatar.start(session, room=agent_room)
            finished = await start_agent(session, viewer, "remote")

            published = {p.track: p for p in viewer.published if p.participant == AVATAR}
            assert set(published) >= {"avatar_audio", "avatar_video"}
            assert {p.on_behalf_of for p in published.values()} == {AGENT}
            assert viewer.state_values()[0] == {"state": "connected", "reason": ""}

            await speak_and_check(session, viewer, finished, sentence, "remote")
            await interrupt_and_check(session, viewer, finished, sentence)

            before = len(finished.events)
            await rapid_interrupts(session, sentence)
            live = facecast_server.app.state.manager.live[avatar.session_id]
            assert isinstance(live, RoomSession)
            stats = live.worker.stats()
            # Every segment the worker saw was reported exactly once, and the agent received each report.
            assert stats["playback_finished_sent"] == stats["segments_received"]
            assert len(finished.events) - before == stats["segments_received"] - 2
            assert all(e.interrupted for e in finished.events[before:])
            await speak_and_check(session, viewer, finished, sentence, "remote, after 20 interrupts")

            # The agent leaves: the avatar leaves too, and the session ends with that reason.
            session_id = avatar.session_id
            assert session_id is not None
            await session.aclose()
            await agent_room.disconnect()
            record = await asyncio.to_thread(facecast_server.wait_ended, session_id, HANG_S)
            assert record.end_reason == "client_gone"
            await viewer.wait_for(
                lambda: AVATAR not in viewer.room.remote_participants, what="the avatar leaving"
            )
            assert viewer.state_values()[-1] == {"state": "disconnected", "reason": "client_gone"}
        finally:
            with contextlib.suppress(Exception):
                await avatar.aclose()
            with contextlib.suppress(Exception):
                await session.aclose()


async def test_remote_mode_session_ends_at_its_max_duration(
    agent_job: None, agent_room: rtc.Room, viewer: RoomViewer, facecast_server: RunningServer
) -> None:
    key = facecast_server.store.create_key("short")[1]
    with fake_job_context(room=agent_room, agent_identity=AGENT):
        session: AgentSession[Any] = AgentSession()
        avatar = facecast.AvatarSession(
            api_url=facecast_server.url, api_key=key, video_quality=AVATAR_QUALITY, max_duration_seconds=2
        )
        try:
            await avatar.start(session, room=agent_room)
            assert avatar.session_id is not None
            record = await asyncio.to_thread(facecast_server.wait_ended, avatar.session_id, HANG_S)
            assert record.end_reason == "max_duration"
            await viewer.wait_for(
                lambda: viewer.state_values()[-1:] == [{"state": "disconnected", "reason": "max_duration"}],
                what="the max_duration state packet",
            )
            await viewer.wait_for(
                lambda: AVATAR not in viewer.room.remote_participants, what="the avatar leaving"
            )
        finally:
            with contextlib.suppress(Exception):
                await avatar.aclose()
            with contextlib.suppress(Exception):
                await session.aclose()


async def test_local_mode_agent_session_in_a_real_room(
    agent_job: None, agent_room: rtc.Room, viewer: RoomViewer, sentence: np.ndarray
) -> None:
    with fake_job_context(room=agent_room, agent_identity=AGENT):
        session: AgentSession[Any] = AgentSession()
        avatar = facecast.AvatarSession(mode="local", aspect_ratio="1:1", video_quality=AVATAR_QUALITY)
        try:
            await avatar.start(session, room=agent_room)
            finished = await start_agent(session, viewer, "local")
            assert viewer.tracks_of(AGENT) >= {"avatar_audio", "avatar_video"}

            await speak_and_check(session, viewer, finished, sentence, "local")
            await interrupt_and_check(session, viewer, finished, sentence)
            before = len(finished.events)
            await rapid_interrupts(session, sentence)
            assert all(e.interrupted for e in finished.events[before:])
            assert len(finished.events) - before <= RAPID_INTERRUPTS
            await speak_and_check(session, viewer, finished, sentence, "local, after 20 interrupts")
        finally:
            await avatar.aclose()
            await session.aclose()
    assert AGENT in viewer.room.remote_participants  # local mode never removes the agent


@pytest.mark.parametrize("mode", ["remote", "local"])
async def test_plugin_avatar_sends_the_mouth_track_in_a_real_room(
    agent_job: None,
    agent_room: rtc.Room,
    viewer: RoomViewer,
    facecast_server: RunningServer,
    sentence: np.ndarray,
    mode: str,
) -> None:
    """`AvatarSession(mouth_track=True)`: remote mode asks the server's worker for it (the token body),
    local mode the agent's own runner; either way every frame's record reaches the room on
    `facecast.mouth_track`, in frame order, the jaw open while the agent speaks and at rest before."""
    records: list[tuple[str, dict[str, Any]]] = []

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == MOUTH_TRACK_TOPIC and packet.participant is not None:
            records.append((packet.participant.identity, json.loads(packet.data)))

    viewer.room.on("data_received", on_data)
    key = facecast_server.store.create_key("track")[1]
    with fake_job_context(room=agent_room, agent_identity=AGENT):
        session: AgentSession[Any] = AgentSession()
        options: dict[str, Any] = {"api_url": facecast_server.url, "api_key": key} if mode == "remote" else {}
        avatar = facecast.AvatarSession(mode=mode, video_quality=AVATAR_QUALITY, mouth_track=True, **options)
        try:
            await avatar.start(session, room=agent_room)
            await start_agent(session, viewer, f"{mode}, mouth track")
            await asyncio.sleep(0.5)  # idle frames first
            handle = session.say("A sentence.", audio=stream(sentence), add_to_chat_ctx=False)
            await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
            await asyncio.sleep(0.3)
            if mode == "remote":
                assert avatar.session_id is not None
                assert facecast_server.session(avatar.session_id).settings.mouth_track is True
        finally:
            with contextlib.suppress(Exception):
                await avatar.aclose()
            with contextlib.suppress(Exception):
                await session.aclose()
    assert records, "no mouth-track record arrived"
    assert {sender for sender, _ in records} == {AVATAR if mode == "remote" else AGENT}
    frames = [r["frame"] for _, r in records]
    assert frames == sorted(set(frames)), "records out of frame order"
    speaking = [r["blendshapes"]["jawOpen"] for _, r in records if r["speaking"]]
    idle = [r["blendshapes"]["jawOpen"] for _, r in records[:10] if not r["speaking"]]
    assert len(speaking) > 20 and idle, (len(speaking), len(idle))
    assert max(speaking) > 0.3 and max(idle) < 0.05
