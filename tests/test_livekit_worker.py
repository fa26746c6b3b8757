"""The avatar worker against the LiveKit avatar protocol.

Real: livekit-agents' `DataStreamAudioOutput` on the agent side, `DataStreamAudioReceiver` +
`FacecastAvatarRunner` + the engine on the worker side, and the `rtc.AudioSource` whose played-out audio
is read back from the published track. Stand-in: the LiveKit server and the data channel between them
(tests/livekit_room.py). What is asserted is counted on the wire (RPCs, data packets) or in samples of
published audio, never in wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc
from livekit.agents import utils
from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioOutput, DataStreamAudioReceiver
from livekit_room import URL, MemoryRoom, MemoryServer

from facecast.hosts.livekit.generator import FacecastVideoGenerator
from facecast.hosts.livekit.names import SESSION_STATE_TOPIC
from facecast.hosts.livekit.tokens import mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar

ROOM = "room-1"
AGENT = "agent-1"
AVATAR = "facecast-avatar"
RATE = 24000
FPS = 30
FRAME = RATE // FPS  # output samples per video frame
CHUNK = RATE // 100  # the played-out audio arrives in 10 ms chunks
HANG_S = 20.0  # guards against a hang; never a performance threshold

FINISHED = "lk.playback_finished"
CLEAR = "lk.clear_buffer"


def blocks(seconds: float, rate: int = RATE, block_ms: int = 20) -> np.ndarray:
    """Speech stand-in that is never silent: 20 ms blocks of rising constant level."""
    n = int(seconds * rate)
    block = rate * block_ms // 1000
    return (300 + 100 * (np.arange(n) // block)).clip(max=30000).astype(np.int16)


class PlayedAudio:
    """Reads back what the avatar's audio track actually played, in 10 ms chunks."""

    def __init__(self, track: Any) -> None:
        self._stream = rtc.AudioStream.from_track(track=track, sample_rate=RATE, num_channels=1)
        self.chunks: list[tuple[float, np.ndarray]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._stream:
            self.chunks.append((time.monotonic(), np.frombuffer(bytes(event.frame.data), np.int16).copy()))

    def speech_samples(self, after: float | None = None) -> int:
        return sum(
            int(np.count_nonzero(np.abs(c) > 50)) for t, c in self.chunks if after is None or t > after
        )

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(HANG_S):
            while not predicate():
                await asyncio.sleep(0.005)

    async def wait_chunks(self, n: int) -> None:
        target = len(self.chunks) + n
        await self.wait_for(lambda: len(self.chunks) >= target)

    async def aclose(self) -> None:
        self._task.cancel()
        await self._stream.aclose()


class Session:
    """An agent room and an avatar worker in the room double."""

    def __init__(self, server: MemoryServer, agent: MemoryRoom, avatar: RoomAvatar, ended: list[str]) -> None:
        self.server = server
        self.agent = agent
        self.avatar = avatar
        self.ended = ended

    def output(self, **kw: Any) -> DataStreamAudioOutput:
        kw.setdefault("sample_rate", RATE)
        kw.setdefault("wait_remote_track", rtc.TrackKind.KIND_VIDEO)
        # A missing playback_finished must stall the agent (and fail the test), not time out quietly.
        kw.setdefault("clear_buffer_timeout", HANG_S * 2)
        return DataStreamAudioOutput(self.agent, destination_identity=AVATAR, **kw)  # type: ignore[arg-type]

    async def played(self) -> PlayedAudio:
        async with asyncio.timeout(HANG_S):
            while True:
                pubs = self.agent.remote_participants.get(AVATAR)
                tracks = [
                    p.track
                    for p in (pubs.track_publications.values() if pubs else ())
                    if p.kind == rtc.TrackKind.KIND_AUDIO
                ]
                if tracks:
                    return PlayedAudio(tracks[0])
                await asyncio.sleep(0.01)

    async def stream(self, *chunks: bytes, attributes: dict[str, str] | None = None) -> None:
        """One utterance as any sender can stream it, after the avatar is ready (has video). A sender
        must answer lk.playback_finished: the receiver gives up on a sender that cannot be told."""
        if "lk.playback_finished" not in self.agent.local_participant._rpc_handlers:
            self.agent.local_participant.register_rpc_method("lk.playback_finished", lambda _data: "ok")
        await asyncio.wait_for(
            utils.wait_for_track_publication(self.agent, identity=AVATAR, kind=rtc.TrackKind.KIND_VIDEO),  # type: ignore[call-overload]
            HANG_S,
        )
        writer = await self.agent.local_participant.stream_bytes(
            "AUDIO_test",
            topic="lk.audio_stream",
            destination_identities=[AVATAR],
            attributes={"sample_rate": str(RATE), "num_channels": "1"} if attributes is None else attributes,
        )
        for chunk in chunks:
            await writer.write(chunk)
        await writer.aclose()

    def finished(self) -> list[dict[str, Any]]:
        return [json.loads(r.payload) for r in self.server.rpcs(FINISHED, caller=AVATAR)]

    def states(self) -> list[dict[str, str]]:
        return [json.loads(d.payload) for d in self.server.data(SESSION_STATE_TOPIC, sender=AVATAR)]


@pytest.fixture
async def make_session() -> AsyncIterator[Callable[..., Awaitable[Session]]]:
    sessions: list[Session] = []

    async def make(*, join_agent: bool = True, start: bool = True, **avatar_kw: Any) -> Session:
        server = MemoryServer()
        agent = await server.connect(AGENT, ROOM, kind="agent") if join_agent else server.new_room()
        token = mint_worker_token(
            server.api_key, server.api_secret, room=ROOM, identity=AVATAR, name="Avatar", agent_identity=AGENT
        )
        ended: list[str] = []
        avatar_kw.setdefault("quality", "low")
        avatar = RoomAvatar(URL, token, room=server.new_room(), on_end=ended.append, **avatar_kw)  # type: ignore[arg-type]
        if start:
            await avatar.start()
        session = Session(server, agent, avatar, ended)
        sessions.append(session)
        return session

    yield make
    for s in sessions:
        await s.avatar.aclose()
        await s.agent.disconnect()


async def say(out: DataStreamAudioOutput, pcm: np.ndarray, rate: int = RATE, *, flush: bool = True) -> None:
    """What an AgentSession does with TTS audio: 20 ms frames, faster than real time, then flush."""
    step = rate // 50
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step]
        await out.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
    if flush:
        out.flush()


async def playout(out: DataStreamAudioOutput) -> Any:
    return await asyncio.wait_for(out.wait_for_playout(), HANG_S)


async def test_the_lip_sync_reaches_the_room_engine_and_its_stats_are_the_live_core_s(
    make_session: Callable[..., Any],
) -> None:
    s = await make_session(tracker="energy", language="fr", lookahead_ms=40)
    runner = s.avatar.runner
    assert runner is not None
    config = runner.generator.config
    assert (config.tracker, config.language, config.lookahead_ms) == ("energy", "fr", 40)
    assert s.avatar.live_stats is runner.generator.core.stats  # the live core's own LiveStats


async def test_normal_end_reports_once_with_the_played_duration(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    out = s.output()
    started: list[float] = []
    out.on("playback_started", lambda ev: started.append(ev.created_at))
    await say(out, blocks(0.8))
    played = await s.played()
    event = await playout(out)
    await played.wait_chunks(5)  # let the tail reach the track

    assert [f["interrupted"] for f in s.finished()] == [False]
    assert event.interrupted is False
    assert event.playback_position == pytest.approx(0.8, abs=1 / FPS)
    # Reported once the audio has played out, not when it was queued: all of it is on the track.
    assert played.speech_samples() == pytest.approx(0.8 * RATE, abs=FRAME)
    assert set(s.finished()[0]) == {"playback_position", "interrupted", "synchronized_transcript"}
    stats = s.avatar.stats()
    assert (
        stats["segments_received"] == 1
        and stats["playback_finished_sent"] == 1
        and stats["speech_frames"] > 0
    )
    await played.aclose()


async def test_interrupt_mid_utterance_stops_speech_within_two_frames(
    make_session: Callable[..., Any],
) -> None:
    s = await make_session()
    out = s.output()
    played = await s.played()
    await say(out, blocks(2.0), flush=False)
    await played.wait_for(lambda: played.speech_samples() >= 0.4 * RATE)

    out.clear_buffer()
    event = await playout(out)
    out.flush()
    await played.wait_chunks(30)  # 300 ms more of the track: anything still queued would show up here

    assert event.interrupted is True
    assert [f["interrupted"] for f in s.finished()] == [True]
    heard = played.speech_samples()
    reported = round(event.playback_position * RATE)
    # What played past the interrupt is what was heard beyond the position the worker reported when
    # the clear arrived: at most 2 frames, the source queue included.
    assert heard - reported <= 2 * FRAME, f"{heard - reported} samples of speech after the clear"
    # And the position is what was heard, not what had been queued (up to 100 ms more).
    assert abs(heard - reported) <= FRAME
    assert 0.3 <= event.playback_position < 1.0
    await played.aclose()


async def test_interrupt_between_utterances_sends_nothing(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    out = s.output()
    await say(out, blocks(0.3))
    await playout(out)
    # The agent skips clear_buffer with nothing pending; a sender that calls it anyway gets "ok" and
    # no playback_finished, because nothing is playing.
    reply = await s.agent.local_participant.perform_rpc(destination_identity=AVATAR, method=CLEAR, payload="")
    assert reply == "ok"
    await say(out, blocks(0.3))
    await playout(out)
    assert [f["interrupted"] for f in s.finished()] == [False, False]


async def test_queued_segments_are_each_answered_on_interrupt(make_session: Callable[..., Any]) -> None:
    """A sender that streams the next utterance before the first has played (the stock AvatarRunner
    keeps one 'playing' flag and loses the second segment's answer here)."""
    s = await make_session()
    played = await s.played()
    for _ in range(2):
        await s.stream(blocks(1.0).tobytes())
    await played.wait_for(lambda: played.speech_samples() >= 0.3 * RATE)
    assert (
        await s.agent.local_participant.perform_rpc(destination_identity=AVATAR, method=CLEAR, payload="")
        == "ok"
    )
    await played.wait_for(lambda: len(s.finished()) >= 2)
    await played.wait_chunks(20)
    first, second = s.finished()
    assert first["interrupted"] and second["interrupted"]
    assert first["playback_position"] > 0.25 and second["playback_position"] == 0.0
    assert len(s.finished()) == 2
    await played.aclose()


async def test_back_to_back_segments_each_end_once(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    for _ in range(3):
        await s.stream(blocks(0.3).tobytes())
    async with asyncio.timeout(HANG_S):
        while len(s.finished()) < 3:
            await asyncio.sleep(0.01)
    assert [(f["interrupted"], f["playback_position"]) for f in s.finished()] == [(False, 0.3)] * 3


async def test_hundred_rapid_interrupts_never_stall_the_agent(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    out = s.output()
    for i in range(100):
        await say(out, blocks(0.1), flush=False)
        if i % 4 == 0:
            await asyncio.sleep(0.02)  # vary the interleaving: let some audio reach the worker first
        out.clear_buffer()
        out.flush()
        await playout(out)
    await say(out, blocks(0.3))
    event = await playout(out)

    finished = s.finished()
    assert len(finished) == 101  # exactly one answer per segment
    assert all(f["interrupted"] for f in finished[:100])
    assert event.interrupted is False and event.playback_position == pytest.approx(0.3, abs=1 / FPS)
    assert s.avatar.stats()["interrupts"] == 100


async def test_empty_streams_get_no_answer(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    out = s.output()
    out.flush()  # the agent opens no stream for an empty segment
    await s.stream()  # another sender might
    await say(out, blocks(0.3))
    await playout(out)
    assert [f["interrupted"] for f in s.finished()] == [False]
    assert s.avatar.stats()["segments_received"] == 1


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
async def test_other_input_rates(make_session: Callable[..., Any], rate: int) -> None:
    s = await make_session()
    out = s.output(sample_rate=None)  # frames keep their own rate on the wire
    played = await s.played()
    await say(out, blocks(0.5, rate), rate)
    event = await playout(out)
    await played.wait_chunks(5)
    assert s.server.stream_log[-1].attributes["sample_rate"] == str(rate)
    assert event.interrupted is False
    assert event.playback_position == pytest.approx(0.5, abs=1 / FPS)
    assert played.speech_samples() == pytest.approx(0.5 * RATE, abs=FRAME)
    await played.aclose()


async def test_sender_leaving_mid_stream_ends_the_session(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    out = s.output()
    await say(out, blocks(1.0), flush=False)
    await s.agent.disconnect()
    reason = await asyncio.wait_for(s.avatar.ended, HANG_S)
    assert reason == "client_gone" and s.ended == ["client_gone"]
    assert s.states()[-1] == {"state": "disconnected", "reason": "client_gone"}
    assert AVATAR not in s.server.participants(ROOM)


async def test_avatar_joining_late_receives_the_held_audio(make_session: Callable[..., Any]) -> None:
    s = await make_session(start=False)
    out = s.output()
    sending = asyncio.create_task(say(out, blocks(0.4)))
    await asyncio.sleep(0.05)
    assert not sending.done()  # wait_remote_track holds the agent's audio until the avatar has video
    assert s.server.stream_log == []
    await s.avatar.start()
    await asyncio.wait_for(sending, HANG_S)
    event = await playout(out)
    assert event.interrupted is False and event.playback_position == pytest.approx(0.4, abs=1 / FPS)
    assert len(s.finished()) == 1


async def test_session_state_and_publish_on_behalf(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    avatar = s.agent.remote_participants[AVATAR]
    assert avatar.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert avatar.attributes["lk.publish_on_behalf"] == AGENT
    async with asyncio.timeout(HANG_S):
        while len(avatar.track_publications) < 2:
            await asyncio.sleep(0.01)
    tracks = {(p.name, p.kind, p.source) for p in avatar.track_publications.values()}
    assert tracks == {
        ("avatar_audio", rtc.TrackKind.KIND_AUDIO, rtc.TrackSource.SOURCE_MICROPHONE),
        ("avatar_video", rtc.TrackKind.KIND_VIDEO, rtc.TrackSource.SOURCE_CAMERA),
    }
    # The agent broadcasts these to everyone; the worker takes (and drains) them.
    await s.agent.local_participant.send_text("Hello.", topic="lk.transcription")
    writer = await s.agent.local_participant.stream_bytes("session", topic="lk.agent.session")
    await writer.write(b"{}")
    await writer.aclose()
    await asyncio.sleep(0.05)
    assert [AVATAR] == s.server.stream_log[-2].delivered_to == s.server.stream_log[-1].delivered_to
    assert not s.avatar.ended.done()

    await s.avatar.aclose()
    await s.avatar.aclose()  # idempotent
    assert s.ended == ["stopped"]
    assert s.states() == [
        {"state": "connected", "reason": ""},
        {"state": "disconnected", "reason": "stopped"},
    ]


async def test_stream_without_format_is_an_error(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    await s.stream(b"\0\0" * 480, attributes={})
    assert await asyncio.wait_for(s.avatar.ended, HANG_S) == "error"
    states = s.states()
    assert states[0]["state"] == "connected"
    assert states[-2]["state"] == "error" and "sample_rate" in states[-2]["reason"]
    assert states[-1] == {"state": "disconnected", "reason": "error"}


async def test_max_duration(make_session: Callable[..., Any]) -> None:
    s = await make_session(max_duration_s=0.3)
    out = s.output()
    sending = asyncio.create_task(say(out, blocks(2.0), flush=False))
    assert await asyncio.wait_for(s.avatar.ended, HANG_S) == "max_duration"
    await sending
    # Leaving mid-utterance, the worker still answers the agent, so it is not left "speaking".
    event = await playout(out)
    assert event.interrupted is True
    assert s.states()[-1] == {"state": "disconnected", "reason": "max_duration"}
    assert AVATAR not in s.server.participants(ROOM)


async def test_agent_that_never_joins(make_session: Callable[..., Any]) -> None:
    s = await make_session(join_agent=False, agent_join_timeout_s=0.2)
    assert await asyncio.wait_for(s.avatar.ended, HANG_S) == "client_gone"


async def test_removed_by_the_server(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    await s.server.remove_participant(ROOM, AVATAR)
    assert await asyncio.wait_for(s.avatar.ended, HANG_S) == "client_gone"


async def test_listening_pose_follows_the_agent_state(make_session: Callable[..., Any]) -> None:
    s = await make_session()
    core = s.avatar._runner.generator.core  # type: ignore[union-attr]

    def listening() -> bool | None:
        return None if core.last_frame is None else core.last_frame.state.listening

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(HANG_S):
            while not predicate():
                await asyncio.sleep(0.005)

    await until(lambda: listening() is False)
    await s.agent.local_participant.set_attributes({"lk.agent.state": "listening"})
    await until(lambda: listening() is True)
    await s.agent.local_participant.set_attributes({"lk.agent.state": "speaking"})
    await until(lambda: listening() is False)


async def test_rooms_whose_agents_share_an_identity_stay_apart() -> None:
    """One worker process, two rooms, both agents called agent-1: an interrupt in one room must not
    reach the other (livekit-agents keys its clear_buffer handlers by sender identity, process-wide)."""
    server = MemoryServer()
    outs, avatars = [], []
    for room, avatar_identity in (("room-a", "face-a"), ("room-b", "face-b")):
        agent = await server.connect(AGENT, room, kind="agent")
        token = mint_worker_token(
            server.api_key,
            server.api_secret,
            room=room,
            identity=avatar_identity,
            name="A",
            agent_identity=AGENT,
        )
        avatar = RoomAvatar(URL, token, quality="low", room=server.new_room())  # type: ignore[arg-type]
        await avatar.start()
        avatars.append(avatar)
        outs.append(
            DataStreamAudioOutput(
                agent,  # type: ignore[arg-type]
                destination_identity=avatar_identity,
                sample_rate=RATE,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                clear_buffer_timeout=HANG_S * 2,
            )
        )
    for out in outs:
        await say(out, blocks(1.0))
    async with asyncio.timeout(HANG_S):
        while min(a.stats()["speech_frames"] for a in avatars) < 3:
            await asyncio.sleep(0.01)
    outs[0].clear_buffer()
    first, second = await playout(outs[0]), await playout(outs[1])
    assert first.interrupted is True and second.interrupted is False
    assert [a.stats()["interrupts"] for a in avatars] == [1, 0]
    for avatar in avatars:
        await avatar.aclose()


def test_worker_token_claims() -> None:
    secret = "a-secret-that-is-long-enough-for-hs256"
    token = mint_worker_token("key", secret, room="r", identity="av", name="Ava", agent_identity="ag")
    claims = api.TokenVerifier("key", secret).verify(token)
    assert claims.kind == "agent"
    assert claims.identity == "av" and claims.name == "Ava"
    assert claims.attributes == {"lk.publish_on_behalf": "ag"}
    grants = claims.video
    assert grants is not None
    assert (
        grants.room_join,
        grants.room,
        grants.can_publish,
        grants.can_subscribe,
        grants.can_publish_data,
    ) == (
        True,
        "r",
        True,
        True,
        True,
    )
    assert not grants.room_admin and not grants.room_create


def test_bad_options_fail_before_joining() -> None:
    async def build(**kw: Any) -> RoomAvatar:
        return RoomAvatar(URL, "token", **kw)

    for kw in ({"avatar": "nobody"}, {"aspect": "16:9"}, {"fps": 60}, {"max_duration_s": 0}):
        with pytest.raises(ValueError):
            asyncio.run(build(**kw))


async def test_generator_under_the_stock_avatar_runner() -> None:
    """FacecastVideoGenerator also satisfies livekit-agents' own AvatarRunner."""
    server = MemoryServer()
    agent = await server.connect(AGENT, ROOM, kind="agent")
    worker = await server.connect(AVATAR, ROOM, kind="agent")
    generator = FacecastVideoGenerator(quality="low")
    runner = AvatarRunner(
        worker,  # type: ignore[arg-type]
        audio_recv=DataStreamAudioReceiver(worker, sender_identity=AGENT),  # type: ignore[arg-type]
        video_gen=generator,
        options=generator.options(),
    )
    await runner.start()
    out = DataStreamAudioOutput(
        agent,  # type: ignore[arg-type]
        destination_identity=AVATAR,
        sample_rate=RATE,
        wait_remote_track=rtc.TrackKind.KIND_VIDEO,
        clear_buffer_timeout=HANG_S * 2,
    )
    await say(out, blocks(0.3))
    event = await playout(out)
    assert event.interrupted is False and event.playback_position == pytest.approx(0.3, abs=1 / FPS)
    assert len(server.rpcs(FINISHED, caller=AVATAR)) == 1
    await runner.aclose()
    await generator.aclose()


def test_video_is_published_at_the_avatars_frame_rate_in_one_layer() -> None:
    """Left to the SDK, a 256² track got LiveKit's 15 fps camera preset and simulcast layers (measured on
    a real server: 15 fps at the viewer, first frames waiting on a layer switch)."""
    from facecast.hosts.livekit.runner import AV_STREAM, video_publish_options

    options = video_publish_options(256, 256, 30)
    assert options.video_encoding.max_framerate == 30
    assert options.video_encoding.max_bitrate >= 150_000
    assert options.simulcast is False
    assert options.stream == AV_STREAM
    assert video_publish_options(512, 512, 25).video_encoding.max_framerate == 25


def test_every_lazy_export_of_the_livekit_hosts_resolves() -> None:
    import facecast.hosts.livekit as hosts

    for name in hosts.__all__:
        assert getattr(hosts, name) is not None
