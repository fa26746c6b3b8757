"""The agent's transcript (`lk.transcription`, a delta text stream bound to the avatar's audio track)
reaches the engine while the segment's audio streams in: right words are used, wrong words are
rejected and counted in the worker's stats, and words the agent's TTS timed go as spans of the audio.
The tests with `make_session` run in the in-memory double of test_livekit_worker; those with
`live_room` through a real LiveKit server with a real AgentSession."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, Agent, AgentSession, APIConnectOptions, room_io, tts
from livekit.agents.testing import fake_job_context
from livekit.agents.types import TimedString
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit_server import LiveRoom
from livekit_speech import AVATAR_QUALITY, stream, to_24k
from test_livekit_worker import AVATAR, HANG_S, make_session, playout, say  # noqa: F401 (fixture)

from facecast.bench.corpus import SENTENCES, have_flite, synthesize
from facecast.hosts.livekit.runner import TranscriptPiece
from facecast.hosts.livekit.tokens import mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar, transcript_delta
from facecast.tts import EspeakTTS, TimedSpeech

AGENT = "agent"
HEAD_S = 0.3  # audio sent before the transcript, so that its segment is open

pytestmark = pytest.mark.skipif(not have_flite(), reason="flite is not installed (apt-get install flite)")


async def _avatar_audio_sid(s: Any) -> str:
    async with asyncio.timeout(HANG_S):
        while True:
            pubs = s.agent.remote_participants.get(AVATAR)
            for p in pubs.track_publications.values() if pubs else ():
                if p.kind == rtc.TrackKind.KIND_AUDIO:
                    return str(p.sid)
            await asyncio.sleep(0.01)


async def _say_head_and_wait_for_the_segment(s: Any, out: Any, pcm: np.ndarray, rate: int) -> str:
    """Send the first HEAD_S of `pcm`; returns the avatar's audio track sid once its segment is open
    (its audio is in)."""
    await say(out, pcm[: int(HEAD_S * rate)], rate, flush=False)
    sid = await _avatar_audio_sid(s)
    async with asyncio.timeout(HANG_S):
        while (runner := s.avatar.runner) is None or runner.last_audio_at is None:
            await asyncio.sleep(0.01)
    return sid


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
    sid = await _say_head_and_wait_for_the_segment(s, out, pcm, rate)
    words = (utt.text if right else "Completely different words about bananas and a cat.").split()
    writer = await s.agent.local_participant.stream_text(
        topic="lk.transcription", attributes={"lk.transcribed_track_id": sid}
    )
    for word in words:
        await writer.write(word + " ")
    await writer.aclose()
    await asyncio.sleep(0.2)  # the words are in the engine before the rest of the audio
    await say(out, pcm[int(HEAD_S * rate) :], rate)
    await playout(out)
    stats = s.avatar.stats()
    assert stats["speech_frames"] > 0, stats
    if right:
        assert stats["transcript_mismatch_frames"] == 0, stats
    else:
        assert stats["transcript_mismatch_frames"] >= 0.3 * stats["speech_frames"], stats
    assert np.isfinite(stats["engine_ms"])


@contextlib.asynccontextmanager
async def agent_and_avatar(
    live_room: LiveRoom, session: AgentSession[Any], text_output: room_io.TextOutputOptions
) -> AsyncIterator[RoomAvatar]:
    """A user, an agent running `session` and the avatar worker in `live_room`, wired as the plugin's
    remote mode wires them (the agent's audio to the worker, its own transcription output stamped with
    the avatar's audio track); yields the worker once the session's room I/O is ready."""
    user = rtc.Room()  # RoomIO publishes the agent's transcript once it has linked a user
    await user.connect(live_room.url, live_room.token("user"))
    agent_room = rtc.Room()
    await agent_room.connect(live_room.url, live_room.token(AGENT, kind="agent"))
    token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity=AVATAR, name="Avatar", agent_identity=AGENT
    )
    avatar = RoomAvatar(live_room.url, token, quality=AVATAR_QUALITY)
    try:
        await avatar.start()
        with fake_job_context(room=agent_room, agent_identity=AGENT):
            session.output.audio = DataStreamAudioOutput(
                agent_room,
                destination_identity=AVATAR,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                wait_playback_start=True,  # as the plugin asks
            )
            await session.start(
                agent=Agent(instructions="Speak when told."),
                room=agent_room,
                room_options=room_io.RoomOptions(audio_input=False, text_output=text_output),
            )
            await asyncio.wait_for(session.room_io.wait_for_ready(), HANG_S)
            yield avatar
    finally:
        await session.aclose()
        await avatar.aclose()
        await agent_room.disconnect()
        await user.disconnect()


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
    session: AgentSession[Any] = AgentSession()
    async with agent_and_avatar(
        live_room, session, room_io.TextOutputOptions(sync_transcription=sync)
    ) as avatar:
        handle = session.say(utt.text, audio=stream(pcm), add_to_chat_ctx=False)
        await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
        stats = avatar.stats()
    assert handle.interrupted is False
    print(f"\n[{'synchronized' if sync else 'as generated'}] {stats}")
    assert stats["speech_frames"] > 0, stats
    assert stats["transcript_mismatch_frames"] == 0, stats  # right words are never judged wrong
    if sync:  # they come as the words play, after those frames were drawn: left out
        assert stats["text_frames"] == 0, stats
    else:
        assert stats["text_frames"] >= 0.5 * stats["speech_frames"], stats


def test_transcript_deltas_in_json_format_give_their_text_and_times() -> None:
    """An agent with `TextOutputOptions(json_format=True)` sends TimedString JSON, a line per delta."""
    assert transcript_delta("The quick ") == [TranscriptPiece("The quick ")]
    timed = '{"text": "The quick ", "start_time": 0.1, "end_time": 0.4}\n{"text": "brown "}\n'
    assert transcript_delta(timed) == [TranscriptPiece("The quick ", 0.1, 0.4), TranscriptPiece("brown ")]
    assert transcript_delta('{"text": "a ", "start_time": 0}\n') == [TranscriptPiece("a ", 0.0)]
    assert transcript_delta('{"text": "a ", "start_time": "soon"}\n') == [TranscriptPiece("a ")]
    assert transcript_delta("{not json} words") == [TranscriptPiece("{not json} words")]
    assert transcript_delta('{"start_time": 1}\n') == [TranscriptPiece('{"start_time": 1}\n')]


async def test_timed_pieces_become_spans_of_whole_words(
    make_session: Callable[..., Any],  # noqa: F811 (the fixture imported above)
    tmp_path: Any,
    word_spans: list[tuple[str, float, float | None, bool]],
) -> None:
    """A word split over pieces is one span; a piece with no end (livekit-agents' StreamAdapter times
    only each sentence's start) ends where the next begins, maybe after a pause, the last one with the
    segment."""
    utt = synthesize(SENTENCES[0], "slt", tmp_path)
    pcm, rate = utt.audio(), utt.sample_rate
    s = await make_session()
    out = s.output(sample_rate=rate)
    sid = await _say_head_and_wait_for_the_segment(s, out, pcm, rate)
    writer = await s.agent.local_participant.stream_text(
        topic="lk.transcription", attributes={"lk.transcribed_track_id": sid}
    )
    for piece in [
        {"text": "The bi", "start_time": 0.1, "end_time": 0.2},
        {"text": "rch ", "start_time": 0.2, "end_time": 0.45},
        {"text": "canoe slid. ", "start_time": 0.5},
        {"text": "On the", "start_time": 1.2},
        {"text": " smooth planks.", "start_time": 1.6},
    ]:
        await writer.write(json.dumps(piece) + "\n")
    await writer.aclose()
    await asyncio.sleep(0.2)
    await say(out, pcm[int(HEAD_S * rate) :], rate)
    await playout(out)
    assert word_spans == [
        ("The birch", 0.1, pytest.approx(0.35), False),
        ("canoe slid.", 0.5, pytest.approx(0.7), True),
        ("On the", 1.2, pytest.approx(0.4), True),
        ("smooth planks.", 1.6, None, True),
    ]


class EspeakWordTimesTTS(tts.TTS):
    """A streaming TTS that times its words, as ElevenLabs' and Cartesia's livekit plugins do: espeak-ng
    speaks each reply, its word events (facecast.tts) give the TimedStrings. `spoken` keeps what it said."""

    def __init__(self) -> None:
        self._espeak = EspeakTTS()
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=self._espeak.sample_rate,
            num_channels=1,
        )
        self.spoken: list[TimedSpeech] = []

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        return _EspeakWordTimesStream(tts=self, conn_options=conn_options)


class _EspeakWordTimesStream(tts.SynthesizeStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine = self._tts
        assert isinstance(engine, EspeakWordTimesTTS)
        output_emitter.initialize(
            request_id="espeak",
            sample_rate=engine.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        text = "".join([data async for data in self._input_ch if isinstance(data, str)])
        speech = await asyncio.to_thread(engine._espeak.synthesize_timed, text)
        engine.spoken.append(speech)
        output_emitter.start_segment(segment_id="reply")
        output_emitter.push_timed_transcript(
            [TimedString(w.text + " ", start_time=w.start, end_time=w.end) for w in speech.words]
        )
        output_emitter.push(speech.audio.tobytes())
        output_emitter.end_segment()


async def test_the_word_times_of_an_agent_sessions_tts_reach_the_engine_over_a_real_server(
    live_room: LiveRoom, word_spans: list[tuple[str, float, float | None, bool]]
) -> None:
    """A real AgentSession whose TTS times its words (`use_tts_aligned_transcript`), sending its
    transcript unsynchronized in JSON (`TextOutputOptions(sync_transcription=False, json_format=True)`):
    each word reaches the avatar's engine as the span of the speech's audio the TTS gave it."""
    voice = EspeakWordTimesTTS()
    session: AgentSession[Any] = AgentSession(tts=voice, use_tts_aligned_transcript=True)
    text_output = room_io.TextOutputOptions(sync_transcription=False, json_format=True)
    async with agent_and_avatar(live_room, session, text_output) as avatar:
        handle = session.say("The birch canoe slid on the smooth planks.", add_to_chat_ctx=False)
        await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
        stats = avatar.stats()
    assert handle.interrupted is False
    print(f"\n{stats}\n{word_spans}")
    (speech,) = voice.spoken
    # livekit-agents moves each word's space to its front: the avatar knows a word is whole when the
    # next one comes (the last, when the stream closes).
    assert [text for text, _, _, _ in word_spans] == [w.text for w in speech.words]
    for (text, start, duration, pause_after), word in zip(word_spans, speech.words, strict=True):
        assert start == pytest.approx(word.start, abs=1e-6), text
        assert duration == pytest.approx(word.end - word.start, abs=1e-6), text
        assert not pause_after, text  # each word ends where its TTS said
    assert stats["transcript_mismatch_frames"] == 0, stats
    assert stats["text_frames"] >= 0.5 * stats["speech_frames"] > 0, stats
