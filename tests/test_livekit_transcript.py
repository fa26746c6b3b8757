"""The agent's timed transcript (`lk.transcription`, a delta text stream bound to the avatar's audio
track) reaches the engine while the segment's audio streams in: right words are used, wrong words are
rejected and counted in the worker's stats. The first test runs in the in-memory double of
test_livekit_worker; the last one through a real LiveKit server with a real AgentSession."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, room_io
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit_server import LiveRoom
from livekit_speech import AVATAR_QUALITY, stream, to_24k
from test_livekit_worker import AVATAR, HANG_S, make_session, playout, say  # noqa: F401 (fixture)

from facecast.bench.corpus import SENTENCES, have_flite, synthesize
from facecast.hosts.livekit.tokens import mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar, transcript_delta_text

AGENT = "agent"

pytestmark = pytest.mark.skipif(not have_flite(), reason="flite is not installed (apt-get install flite)")


async def _avatar_audio_sid(s: Any) -> str:
    async with asyncio.timeout(HANG_S):
        while True:
            pubs = s.agent.remote_participants.get(AVATAR)
            for p in pubs.track_publications.values() if pubs else ():
                if p.kind == rtc.TrackKind.KIND_AUDIO:
                    return str(p.sid)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("right", [True, False], ids=["right-words", "wrong-words"])
async def test_transcript_words_reach_the_engine_while_the_audio_streams(
    make_session: Callable[..., Any],  # noqa: F811 (the fixture imported above)
    tmp_path: Any,
    right: bool,
) -> None:
    utt = synthesize(SENTENCES[0], "slt", tmp_path)
    pcm, rate = utt.audio(), utt.sample_rate
    s = await make_session()
    out = s.output(sample_rate=rate)
    head = int(0.3 * rate)
    await say(out, pcm[:head], rate, flush=False)
    sid = await _avatar_audio_sid(s)
    runner = s.avatar.runner
    async with asyncio.timeout(HANG_S):
        while runner is None or runner.last_audio_at is None:  # the segment is open: its audio is in
            await asyncio.sleep(0.01)
            runner = s.avatar.runner
    words = (utt.text if right else "Completely different words about bananas and a cat.").split()
    writer = await s.agent.local_participant.stream_text(
        topic="lk.transcription", attributes={"lk.transcribed_track_id": sid}
    )
    for word in words:
        await writer.write(word + " ")
    await writer.aclose()
    await asyncio.sleep(0.2)  # the words are in the engine before the rest of the audio
    await say(out, pcm[head:], rate)
    await playout(out)
    stats = s.avatar.stats()
    assert stats["speech_frames"] > 0, stats
    if right:
        assert stats["transcript_mismatch_frames"] == 0, stats
    else:
        assert stats["transcript_mismatch_frames"] >= 0.3 * stats["speech_frames"], stats
    assert np.isfinite(stats["engine_ms"])


@pytest.mark.parametrize("sync", [True, False], ids=["synchronized", "as-generated"])
async def test_an_agent_sessions_transcript_reaches_the_worker_over_a_real_server(
    live_room: LiveRoom, tmp_path: Any, sync: bool
) -> None:
    """A real AgentSession speaks to the worker through a real LiveKit server, as the plugin's remote
    mode sets it up: its own transcription output (RoomIO, stamped with the avatar's audio track)
    carries the words. Unsynchronized ones (`sync_transcription=False`) come ahead of the speech and
    are aligned to it; synchronized ones (the default) come as the words play, too late for the
    mouth, and are left out rather than judged mismatched."""
    utt = synthesize(SENTENCES[1], "slt", tmp_path)
    pcm = to_24k(utt.audio(), utt.sample_rate)
    user = rtc.Room()  # RoomIO publishes the agent's transcript once it has linked a user
    await user.connect(live_room.url, live_room.token("user"))
    agent_room = rtc.Room()
    await agent_room.connect(live_room.url, live_room.token(AGENT, kind="agent"))
    token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity=AVATAR, name="Avatar", agent_identity=AGENT
    )
    avatar = RoomAvatar(live_room.url, token, quality=AVATAR_QUALITY)
    session: AgentSession[Any] = AgentSession()
    try:
        await avatar.start()
        with fake_job_context(room=agent_room, agent_identity=AGENT):
            session.output.audio = DataStreamAudioOutput(
                agent_room,
                destination_identity=AVATAR,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                wait_playback_start=True,  # as the plugin asks
            )
            text_output = room_io.TextOutputOptions(sync_transcription=sync)
            await session.start(
                agent=Agent(instructions="Speak when told."),
                room=agent_room,
                room_options=room_io.RoomOptions(audio_input=False, text_output=text_output),
            )
            await asyncio.wait_for(session.room_io.wait_for_ready(), HANG_S)
            handle = session.say(utt.text, audio=stream(pcm), add_to_chat_ctx=False)
            await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
        assert handle.interrupted is False
        stats = avatar.stats()
        print(f"\n[{'synchronized' if sync else 'as generated'}] {stats}")
        assert stats["speech_frames"] > 0, stats
        assert stats["transcript_mismatch_frames"] == 0, stats  # right words are never judged wrong
        if sync:  # they come as the words play, after those frames were drawn: left out
            assert stats["text_frames"] == 0, stats
        else:
            assert stats["text_frames"] >= 0.5 * stats["speech_frames"], stats
    finally:
        await session.aclose()
        await avatar.aclose()
        await agent_room.disconnect()
        await user.disconnect()


def test_transcript_deltas_in_json_format_give_their_text() -> None:
    """An agent with `TextOutputOptions(json_format=True)` sends TimedString JSON, a line per delta."""
    assert transcript_delta_text("The quick ") == "The quick "
    timed = '{"text": "The quick ", "start_time": 0.1, "end_time": 0.4}\n{"text": "brown "}\n'
    assert transcript_delta_text(timed) == "The quick brown "
    assert transcript_delta_text("{not json} words") == "{not json} words"
    assert transcript_delta_text('{"start_time": 1}\n') == '{"start_time": 1}\n'
