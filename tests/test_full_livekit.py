"""FULL mode over the LiveKit transport, end to end on a real LiveKit server: a real `rtc.Room` user
participant talks into a microphone track (flite speech made here), the avatar worker hears it (Silero
VAD, PocketSphinx), the LLM (the stand-in OpenAI-compatible server, facecast.bench.llm_standin) answers,
espeak-ng speaks and the user sees the avatar's mouth move. Commands go as data packets on
`agent-control`, events come back on `agent-response` (the JSON of the WebRTC data channel)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from full_room_user import RoomUser
from livekit_server import LiveKitServer, LiveRoom
from server_harness import RunningServer, running_server
from test_full_mode import (
    QUESTION,
    check_one_turn,
    configure_llm,
    create_context,
    flite_speech,
)

pytest.importorskip("pipecat.audio.vad.silero")
pytest.importorskip("openai")

from facecast import protocol as p
from facecast.avatars import load_renderer
from facecast.bench.llm_standin import StandInLLM, standin_llm
from facecast.client.livekit_viewer import SPEECH_RMS
from facecast.server.config import LiveKitSettings

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

AVATAR = "facecast-avatar"  # the avatar's identity in a room this server makes


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, livekit_server: LiveKitServer
) -> Iterator[RunningServer]:
    """A Facecast server that knows the test LiveKit server (so it can make rooms for sessions)."""
    settings = LiveKitSettings(livekit_server.url, livekit_server.api_key, livekit_server.api_secret)
    with running_server(Path(tmp_path_factory.mktemp("facecast-full-livekit")), livekit=settings) as running:
        yield running


@pytest.fixture(scope="module")
def llm() -> Iterator[StandInLLM]:
    with standin_llm() as running:
        yield running


@pytest.fixture(scope="module")
def mouth_box() -> tuple[int, int, int, int]:
    return load_renderer("ava", quality="low").mouth_box()


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def start_full(server: RunningServer, key: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Mint and start a FULL session; its bearer token and /start answer."""
    async with httpx.AsyncClient(base_url=server.url, timeout=90) as http:
        minted = await http.post(
            "/v1/sessions/token",
            headers={"X-API-KEY": key},
            json={"mode": "FULL", "fps": 25, "video_settings": {"quality": "low"}, **body},
        )
        token = _ok(minted)["session_token"]
        started = await http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
    return token, _ok(started)


async def stop(server: RunningServer, token: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        stopped = await http.post("/v1/sessions/stop", headers={"Authorization": f"Bearer {token}"})
    assert stopped.status_code == 200, stopped.text


async def described(server: RunningServer, key: str, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        return _ok(await http.get(f"/v1/sessions/{session_id}", headers={"X-API-KEY": key}))


def assert_nothing_left(server: RunningServer) -> None:
    names = {t.get_name() for t in asyncio.all_tasks(server.loop)}
    left = [
        n for n in names if n.startswith(("facecast-conversation", "facecast-full-room", "facecast-room"))
    ]
    assert not left, left


async def wait_no_children(timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not multiprocessing.active_children()  # the PocketSphinx decoder's process is gone


# -- tokens -------------------------------------------------------------------------------------------
def test_full_tokens_for_livekit_rooms(server: RunningServer, llm: StandInLLM) -> None:
    key = server.store.create_key("tokens")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)

        def token(**body: Any) -> httpx.Response:
            return http.post(
                "/v1/sessions/token",
                headers={"X-API-KEY": key},
                json={"mode": "FULL", "llm_configuration_id": config_id, **body},
            )

        owned = _ok(token(transport="livekit"))
        record = server.session(owned["session_id"])
        assert record.transport == "livekit" and record.settings.livekit is not None
        assert record.settings.livekit.owned and record.settings.full is not None
        # The default stays WebRTC, even on a server that knows a LiveKit server.
        assert server.session(_ok(token())["session_id"]).transport == "webrtc"
        room = {"livekit_url": "ws://127.0.0.1:7880", "livekit_room": "r", "livekit_client_token": "t"}
        theirs = server.session(_ok(token(livekit_config=room))["session_id"])
        assert theirs.transport == "livekit" and not theirs.settings.livekit.owned  # type: ignore[union-attr]
        # A Facecast-shaped room (an agent identity) still takes the server's voice in FULL mode.
        facecast_room = {"livekit_url": "ws://127.0.0.1:7880", "livekit_room": "r", "agent_identity": "a"}
        voiced = token(livekit_config=facecast_room, avatar_persona={"voice_id": "en-us"})
        assert voiced.status_code == 200, voiced.text
        for audio_source in ("websocket", "data_stream"):
            refused = token(transport="livekit", audio_source=audio_source)
            assert refused.status_code == 409 and "audio_source" in refused.json()["message"]


# -- conversations --------------------------------------------------------------------------------------
async def test_conversation_in_a_room_the_server_makes(
    server: RunningServer, llm: StandInLLM, mouth_box: tuple[int, int, int, int], tmp_path: Path
) -> None:
    key = server.store.create_key("owned")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
        context_id = create_context(http, key, "Help ${name}.", "Hello ${name}, ask away.")
    token, start = await start_full(
        server,
        key,
        {
            "transport": "livekit",
            "llm_configuration_id": config_id,
            "avatar_persona": {"context_id": context_id},
            "dynamic_variables": {"name": "Jordan"},
        },
    )
    assert start["livekit_client_token"] and start["livekit_agent_token"] == ""  # the server is the agent
    assert "audio_source" not in start  # the server speaks itself; there is no agent audio to source
    session_id = start["session_id"]
    user = RoomUser(mouth_box=mouth_box, avatar=start["avatar_identity"])
    try:
        await user.connect(start["livekit_url"], start["livekit_client_token"])
        # The opening text, substituted, once the user hears the avatar.
        _, opening = await user.wait_type("avatar.transcription")
        assert opening["payload"]["text"] == "Hello Jordan, ask away."
        opened_end, _ = await user.wait_type("avatar.speak_ended")
        assert user.viewer.speech_after(0) > 0.5  # the avatar's voice reached the user
        await asyncio.sleep(0.5)

        asked_at = time.monotonic()
        user.play(flite_speech(QUESTION, tmp_path))
        heard_at, heard = await user.wait_type("user.transcription", after=asked_at)
        said_at, _ = await user.wait(
            lambda e: e.get("event_type") == "avatar.transcription" and "sunny" in e["payload"]["text"],
            after=heard_at,
        )
        ended_at, ended = await user.wait_type("avatar.speak_ended", after=said_at)
        assert ended["payload"]["interrupted"] is False
        await asyncio.sleep(1.5)  # idle video after the answer, to compare the mouth against
        transcript = check_one_turn(user, asked_at, heard)
        said = [
            e for t, e in user.agent_events() if t >= heard_at and e["event_type"] == "avatar.transcription"
        ]
        assert (
            " ".join(e["payload"]["text"] for e in said)
            == f"You asked about {transcript}. It is sunny today."
        )
        assert all(e["session_id"] == session_id and e["topic"] == "agent-response" for _, e in user.events)
        speaking = [t for t, e in user.agent_events() if e["event_type"] == "avatar.speak_started"][-1]
        assert opened_end < speaking
        idle = user.viewer.mouth_motion(ended_at + 0.5, ended_at + 1.5)
        assert user.viewer.mouth_motion(speaking, ended_at) > 1.3 * idle
        assert user.viewer.speech_after(speaking, ended_at + 0.5) > 1.0
        stats = (await described(server, key, session_id))["stats"]
        assert stats["conversation"]["turns"] == 1, stats
        print(f"turn: {stats['conversation']}")
        assert stats["livekit"]["user_identity"] == "user"

        # Barge-in: the user's speech stops the avatar.
        story = "This is a long story about the sea. " * 8  # about twenty seconds of speech
        user.command("avatar.speak_text", text=story)
        started_at, _ = await user.wait_type("avatar.speak_started", after=ended_at)
        await asyncio.sleep(1.0)
        user.play(flite_speech("stop please", tmp_path))
        user_at, _ = await user.wait_type("user.speak_started", after=started_at)
        cut_at, cut = await user.wait_type("avatar.speak_ended", after=started_at)
        assert cut["payload"]["interrupted"] is True and cut_at - started_at < 10.0
        await asyncio.sleep(2.0)  # the answer to "stop please" may start; it is cut below too
        # What the user hears: the avatar's voice stops (until it answers "stop please").
        answer = [
            t for t, e in user.agent_events() if t > cut_at and e["event_type"] == "avatar.speak_started"
        ]
        quiet_until = answer[0] if answer else time.monotonic()
        loud = [a.at for a in user.viewer.audio if user_at < a.at < quiet_until and a.rms > SPEECH_RMS]
        silent_at = loud[-1] if loud else user_at
        assert silent_at - user_at < 2.0 and quiet_until - silent_at > 0.3
        print(
            f"barge-in: user speech detected → avatar speak_ended {1000 * (cut_at - user_at):.0f} ms, "
            f"→ avatar audio silent at the user {1000 * (silent_at - user_at):.0f} ms"
        )
        # avatar.interrupt, and bad commands answered with an error to the sender.
        user.command("avatar.speak_text", text=story)
        again, _ = await user.wait(
            lambda e: e.get("event_type") == "avatar.transcription" and "story" in e["payload"]["text"],
            after=cut_at,
        )
        user.command("avatar.interrupt")
        _, interrupted = await user.wait_type("avatar.speak_ended", after=again)
        assert interrupted["payload"]["interrupted"] is True
        user.command("avatar.speak_text")
        _, error = await user.wait(lambda e: e.get("type") == p.ERROR)
        assert "text" in error["message"]
        user.send_raw(b"not json")
        _, refused = await user.wait(lambda e: e.get("type") == p.ERROR and "JSON" in e["message"])
        assert "agent-control" in refused["message"]
    finally:
        await stop(server, token)
        await user.aclose()
    record = await asyncio.to_thread(server.wait_ended, session_id, 30.0)
    assert record.end_reason == p.END_STOPPED
    await wait_no_children()
    assert_nothing_left(server)


async def test_push_to_talk_in_the_users_own_room(
    server: RunningServer,
    llm: StandInLLM,
    live_room: LiveRoom,
    mouth_box: tuple[int, int, int, int],
    tmp_path: Path,
) -> None:
    """LiveAvatar's shape of the user's own room: the avatar joins with the token the caller minted;
    one user is heard at a time, and when that one leaves, the next one with a microphone is."""
    key = server.store.create_key("theirs")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
    avatar_token = live_room.token("their-avatar")
    token, start = await start_full(
        server,
        key,
        {
            "llm_configuration_id": config_id,
            "interactivity_type": "PUSH_TO_TALK",
            "livekit_config": {
                "livekit_url": live_room.url,
                "livekit_room": live_room.name,
                "livekit_client_token": avatar_token,
            },
        },
    )
    session_id = start["session_id"]
    watcher = RoomUser(mouth_box=mouth_box, avatar="their-avatar")  # keeps the room from emptying
    first = RoomUser(mouth_box=mouth_box, avatar="their-avatar")
    second = RoomUser(mouth_box=mouth_box, avatar="their-avatar")
    speech = flite_speech(QUESTION, tmp_path)
    try:
        await watcher.connect(live_room.url, live_room.token("watcher"), microphone=False)
        await first.connect(live_room.url, live_room.token("first"))
        await asyncio.sleep(0.5)
        await second.connect(live_room.url, live_room.token("second"))  # heard only once first leaves
        first.command("user.stop_push_to_talk")
        await first.wait_type("user.push_to_talk_stop_failed")
        outside = time.monotonic()
        await first.play_all(speech)
        await asyncio.sleep(1.5)
        heard = [e["event_type"] for t, e in first.agent_events() if t >= outside]
        assert "user.speak_started" not in heard and "user.transcription" not in heard, heard
        first.command("user.start_push_to_talk")
        await first.wait_type("user.push_to_talk_started")
        first.command("user.start_push_to_talk")
        await first.wait_type("user.push_to_talk_start_failed")
        await first.play_all(speech)
        first.command("user.stop_push_to_talk")
        stopped_at, _ = await first.wait_type("user.push_to_talk_stopped")
        _, transcribed = await first.wait_type("user.transcription", after=outside)
        assert "weather" in transcribed["payload"]["text"]
        answered_at, _ = await first.wait(
            lambda e: e.get("event_type") == "avatar.transcription" and "sunny" in e["payload"]["text"],
            after=stopped_at,
        )
        # Events go to everyone in the room: the watcher saw the same turn.
        assert any(e.get("event_type") == "user.transcription" for _, e in watcher.events)
        await first.wait_type("avatar.speak_ended", after=answered_at)

        # The first user leaves; the next one with a microphone is heard.
        await first.aclose()
        joined = time.monotonic()
        await asyncio.sleep(1.0)
        second.command("user.start_push_to_talk")
        await second.wait_type("user.push_to_talk_started", after=joined)
        await second.play_all(speech)
        second.command("user.stop_push_to_talk")
        _, again = await second.wait_type("user.transcription", after=joined)
        assert "weather" in again["payload"]["text"]
        assert (await described(server, key, session_id))["stats"]["livekit"]["user_identity"] == "second"
    finally:
        await stop(server, token)
        for user in (first, second, watcher):
            await user.aclose()
    record = await asyncio.to_thread(server.wait_ended, session_id, 30.0)
    assert record.end_reason == p.END_STOPPED
    await wait_no_children()
    assert_nothing_left(server)


async def test_the_user_leaving_ends_the_session(
    server: RunningServer, llm: StandInLLM, mouth_box: tuple[int, int, int, int]
) -> None:
    key = server.store.create_key("leaving")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
    _, start = await start_full(server, key, {"transport": "livekit", "llm_configuration_id": config_id})
    session_id = start["session_id"]
    user = RoomUser(mouth_box=mouth_box, avatar=start["avatar_identity"])
    try:
        await user.connect(start["livekit_url"], start["livekit_client_token"])
        deadline = time.monotonic() + 30
        while (await described(server, key, session_id))["stats"]["livekit"]["user_identity"] != "user":
            assert time.monotonic() < deadline, "the session never heard the user's microphone"
            await asyncio.sleep(0.2)
    finally:
        await user.aclose()  # the room is empty now: the avatar leaves and the session ends
    record = await asyncio.to_thread(server.wait_ended, session_id, 30.0)
    assert record.end_reason == p.END_CLIENT_GONE
    await wait_no_children()
    assert_nothing_left(server)
