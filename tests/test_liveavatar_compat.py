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
import contextlib
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

from facecast import protocol as p
from facecast.avatars import load_renderer
from facecast.client.livekit_viewer import RoomViewer
from facecast.server.config import LiveKitSettings
from tests.server_harness import RunningServer, running_server

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

liveavatar = pytest.importorskip("livekit.plugins.liveavatar")
api_liveavatar = pytest.importorskip("pipecat.services.heygen.api_liveavatar")

PLUGIN_AVATAR = "liveavatar-avatar-agent"  # the identity livekit-plugins-liveavatar gives the avatar
RATE = 24000
HANG_S = 30.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, livekit_server: LiveKitServer
) -> Iterator[RunningServer]:
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


def mouth_motion(viewer: RoomViewer, since: float, until: float) -> float:
    """The mean mouth motion received in [since, until], skipping frames the box could not be measured
    in (a smaller simulcast layer at the start)."""
    values = [v.mouth_motion for v in viewer.video if since <= v.at <= until and np.isfinite(v.mouth_motion)]
    return float(np.mean(values)) if values else 0.0


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
                lk = record.settings.livekit
                assert lk is not None and lk.audio_source == "websocket" and lk.room == live_room.name
                assert lk.avatar_identity == PLUGIN_AVATAR  # read from the token the plugin minted
                assert record.settings.look.quality == "low"  # top-level video_quality

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
                speaking = mouth_motion(viewer, t0, t1)
                await asyncio.sleep(1.0)
                assert speaking > 2 * mouth_motion(viewer, t1 + 0.3, time.monotonic())

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

                # Stops: closing the agent session closes the plugin's socket, and the plugin then stops
                # the session (in the background: its aclose does not wait for that).
                await session.aclose()
                ended = await asyncio.to_thread(server.wait_ended, record.id, HANG_S)
                await avatar.aclose()
        assert ended.end_reason == p.END_STOPPED
        assert ended.stats["segments_received"] == 3 and ended.stats["interrupts"] == 1
        await viewer.wait_for(lambda: PLUGIN_AVATAR not in viewer.room.remote_participants, HANG_S)
    finally:
        await agent.disconnect()
        await viewer.aclose()


# -- pipecat ---------------------------------------------------------------------------------------------
@pytest.fixture
def pipecat_api(server: RunningServer, monkeypatch: Any) -> Any:
    """pipecat's LiveAvatar client pointed at Facecast: its base URL is a class attribute."""
    monkeypatch.setattr(api_liveavatar.LiveAvatarApi, "BASE_URL", f"{server.url}/v1")
    return api_liveavatar


async def room_names(server: RunningServer) -> set[str]:
    from livekit import api

    lk = server.config.livekit
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as client:
        rooms = await client.room.list_rooms(api.ListRoomsRequest())
    return {room.name for room in rooms.rooms}


async def watch_owned_room(server: RunningServer, key_id: str, viewer: RoomViewer) -> str:
    """Join, as a second frontend, the room the server made for this key's session once it has started."""
    deadline = time.monotonic() + HANG_S
    while True:
        records, _ = server.store.list_sessions(key_id, active=True, page=1, page_size=5)
        if records and records[0].state == p.STATE_STARTED:
            break
        assert time.monotonic() < deadline, "the session never started"
        await asyncio.sleep(0.05)
    lk = server.config.livekit
    room = LiveRoom(
        LiveKitServer(lk.ws_url, lk.api_key or "", lk.api_secret or ""),
        records[0].settings.livekit.room,
    )
    await viewer.connect(room.url, room.token("viewer"))
    return room.name


def claims(server: RunningServer, token: str) -> Any:
    from livekit import api

    lk = server.config.livekit
    return api.TokenVerifier(lk.api_key, lk.api_secret).verify(token)


async def test_pipecat_models_round_trip_and_the_server_makes_the_room(
    server: RunningServer, pipecat_api: Any
) -> None:
    key, secret = server.store.create_key("pipecat-models")
    request = pipecat_api.LiveAvatarNewSessionRequest(
        avatar_id="ava",
        video_settings=pipecat_api.VideoSettings(
            encoding=pipecat_api.VideoEncoding.H264, quality=pipecat_api.VideoQuality.low
        ),
        avatar_persona=pipecat_api.AvatarPersona(language="en"),
        max_session_duration=120,
    )
    async with aiohttp.ClientSession() as http:
        client = pipecat_api.LiveAvatarApi(secret, http)
        token = await client.create_session_token(request)  # parses as SessionTokenResponse
        assert isinstance(token, pipecat_api.SessionTokenResponse) and token.code == p.CODE_OK
        started = await client.start_session(token.data.session_token)  # LiveAvatarSessionResponse
        data = started.data
        assert data.session_id == token.data.session_id and data.max_session_duration == 120
        assert data.livekit_url == server.config.livekit.ws_url
        record = server.session(data.session_id)
        lk = record.settings.livekit
        assert lk is not None and lk.owned
        assert (record.settings.look.quality, record.settings.encoding) == ("low", "H264")
        room = lk.room
        # The user's token and the agent's token both join the session's room, as different people.
        user, agent = claims(server, data.livekit_client_token), claims(server, data.livekit_agent_token)
        assert user.video.room == agent.video.room == room and user.identity != agent.identity
        assert agent.kind == "agent"
        # The LITE socket is live and connected from the start: the avatar is already in the room.
        async with http.ws_connect(data.ws_url) as ws:
            first = await asyncio.wait_for(ws.receive_json(), HANG_S)
            assert first["type"] == p.SESSION_STATE_UPDATED and first["state"] == p.WS_STATE_CONNECTED
        stopped = await client.stop_session(data.session_id, token.data.session_token)
        assert stopped["code"] == p.CODE_OK and stopped["data"]["end_reason"] == p.END_STOPPED
    assert room not in await room_names(server)  # the room the server made went with the session

    # Exactly as the model serialises itself, unset fields as nulls included.
    body = pipecat_api.LiveAvatarNewSessionRequest(avatar_id="ava", is_sandbox=None, video_settings=None)
    with server.client() as http_client:
        answer = http_client.post(
            "/v1/sessions/token", json=body.model_dump(mode="json"), headers={"X-API-KEY": secret}
        )
        assert answer.status_code == 200, answer.text
        parsed = pipecat_api.SessionTokenResponse.model_validate(answer.json())
        http_client.post(
            "/v1/sessions/stop", headers={"Authorization": f"Bearer {parsed.data.session_token}"}
        ).raise_for_status()
    assert server.session(parsed.data.session_id).end_reason == p.END_STOPPED
    assert server.session(parsed.data.session_id).key_id == key.id


async def test_pipecat_request_with_its_own_room(
    server: RunningServer, pipecat_api: Any, live_room: LiveRoom, mouth_box: tuple[int, int, int, int]
) -> None:
    """`livekit_config` (CustomSDKLiveKitConfig): the avatar joins the caller's room with the token given;
    the agent's audio over the LITE socket plays there."""
    from facecast.hosts.livekit.tokens import mint_worker_token

    _, secret = server.store.create_key("pipecat-own-room")
    avatar_token = mint_worker_token(
        *live_room.keys, room=live_room.name, identity="my-avatar", name="Avatar", agent_identity="bot"
    )
    request = pipecat_api.LiveAvatarNewSessionRequest(
        avatar_id="ava",
        video_settings=pipecat_api.VideoSettings(
            encoding=pipecat_api.VideoEncoding.VP8, quality=pipecat_api.VideoQuality.low
        ),
        livekit_config=pipecat_api.CustomSDKLiveKitConfig(
            livekit_url=live_room.url, livekit_room=live_room.name, livekit_client_token=avatar_token
        ),
    )
    viewer = RoomViewer(mouth_box=mouth_box, publisher="my-avatar")
    await viewer.connect(live_room.url, live_room.token("viewer"))
    try:
        async with aiohttp.ClientSession() as http:
            client = pipecat_api.LiveAvatarApi(secret, http)
            started = await client.new_session(request)  # token + start, both answers parsed
            assert started.access_token == "" and started.livekit_url == live_room.url  # your own room
            await viewer.wait_for(lambda: viewer.tracks_of("my-avatar") >= {"avatar_audio", "avatar_video"})
            async with http.ws_connect(started.ws_url) as ws:
                assert (await ws.receive_json())["state"] == p.WS_STATE_CONNECTED
                t0 = time.monotonic()
                pcm = tone(1.5).tobytes()
                for i in range(0, len(pcm), RATE):  # 0.5 s chunks, one utterance, one event_id
                    await ws.send_json(
                        {"type": "agent.speak", "event_id": "u1", "audio": b64(pcm[i : i + RATE])}
                    )
                await ws.send_json({"type": "agent.speak_end", "event_id": "u1"})
                events = await read_until(ws, lambda e: e.get("new_state") == p.AGENT_IDLE)
                kinds = [e["type"] for e in events]
                assert kinds.index(p.AGENT_SPEAK_STARTED) < kinds.index(p.AGENT_SPEAK_ENDED)
                assert {e["event_id"] for e in events if e["type"].startswith("agent.speak")} == {"u1"}
                ended = next(e for e in events if e["type"] == p.AGENT_SPEAK_ENDED)
                assert ended["played_s"] == pytest.approx(1.5, abs=0.05)
                assert [e["new_state"] for e in events if e["type"] == p.AGENT_STATE_UPDATED] == [
                    "talking",
                    "idle",
                ]
                assert viewer.speech_after(t0) > 1.0

                # Interrupted mid-utterance: one speak_interrupted for what played, then silence.
                await ws.send_json(
                    {"type": "agent.speak", "event_id": "u2", "audio": b64(tone(4.0).tobytes())}
                )
                await read_until(ws, lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
                await viewer.wait_for(lambda: viewer.speech_after(time.monotonic() - 0.3) > 0.1, HANG_S)
                await ws.send_json({"type": "agent.interrupt", "event_id": None})  # as pipecat sends it
                cut = time.monotonic()
                events = await read_until(ws, lambda e: e.get("new_state") == p.AGENT_IDLE)
                (interrupted,) = [e for e in events if e["type"] == p.AGENT_SPEAK_INTERRUPTED]
                assert interrupted["event_id"] == "u2" and 0.0 < interrupted["played_s"] < 4.0
                assert p.AGENT_SPEAK_ENDED not in [e["type"] for e in events]
                await ws.send_json({"type": "agent.speak_end", "event_id": "u2"})  # nothing open: no error
                assert not [e for e in await pending(ws, 1.5) if e["type"] == p.ERROR]
                assert viewer.speech_after(cut + 0.5) == 0.0
            await client.close_session(started.session_id)
    finally:
        await viewer.aclose()


def speech_seconds(pcm: bytes, rate: int) -> float:
    """Seconds of 10 ms steps louder than silence."""
    samples = np.frombuffer(pcm, np.int16).astype(np.float64)
    step = rate // 100
    steps = samples[: len(samples) // step * step].reshape(-1, step)
    return float(np.sum(np.sqrt(np.mean(steps**2, axis=1)) > 300)) / 100


def b64(pcm: bytes) -> str:
    import base64

    return base64.b64encode(pcm).decode()


async def pending(ws: Any, seconds: float) -> list[dict[str, Any]]:
    """The events that arrive within `seconds`."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    with contextlib.suppress(TimeoutError):
        while (left := deadline - time.monotonic()) > 0:
            events.append(await ws.receive_json(timeout=left))
    return events


async def read_until(ws: Any, done: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or not done(events[-1]):
        events.append(await asyncio.wait_for(ws.receive_json(), HANG_S))
    return events


async def test_pipecat_heygen_video_service_unchanged(
    server: RunningServer, pipecat_api: Any, mouth_box: tuple[int, int, int, int]
) -> None:
    """pipecat's HeyGenVideoService (LIVE_AVATAR): Facecast makes the room, the service joins it with the
    client token and receives the avatar's video and voice; its TTS audio goes out on the LITE socket."""
    from pipecat.frames.frames import (
        ErrorFrame,
        OutputImageRawFrame,
        OutputTransportReadyFrame,
        SpeechOutputAudioRawFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.worker import PipelineParams
    from pipecat.services.heygen.client import ServiceType
    from pipecat.services.heygen.video import HeyGenVideoService
    from pipecat.tests.utils import SleepFrame, run_test

    key, secret = server.store.create_key("pipecat-service")
    pcm = tone(1.5).tobytes()
    step = 2 * RATE // 10
    speech = [
        TTSStartedFrame(context_id="hello"),
        *(TTSAudioRawFrame(pcm[i : i + step], RATE, 1, context_id="hello") for i in range(0, len(pcm), step)),
        TTSStoppedFrame(context_id="hello"),
    ]
    async with aiohttp.ClientSession() as http:
        service = HeyGenVideoService(
            api_key=secret,
            session=http,
            service_type=ServiceType.LIVE_AVATAR,
            session_request=pipecat_api.LiveAvatarNewSessionRequest(
                avatar_id="ava",
                video_settings=pipecat_api.VideoSettings(
                    encoding=pipecat_api.VideoEncoding.H264, quality=pipecat_api.VideoQuality.low
                ),
            ),
        )
        frames = [OutputTransportReadyFrame(), SleepFrame(2.0), *speech, SleepFrame(3.0)]
        viewer = RoomViewer(mouth_box=mouth_box, publisher="facecast-avatar")
        watching = asyncio.create_task(watch_owned_room(server, key.id, viewer))
        try:
            down, up = await asyncio.wait_for(
                run_test(
                    service, frames_to_send=frames, pipeline_params=PipelineParams(audio_out_sample_rate=RATE)
                ),
                60,
            )
            room = await asyncio.wait_for(watching, HANG_S)
        finally:
            watching.cancel()
            await viewer.aclose()
    # The user's frontend saw the avatar in the room the server made: voice, and a mouth moving with it.
    assert viewer.tracks_of("facecast-avatar") >= {"avatar_audio", "avatar_video"}
    assert {pub.on_behalf_of for pub in viewer.published if pub.participant == "facecast-avatar"} == {
        "facecast-agent"
    }
    first, last = viewer.first_speech_at(), viewer.last_speech_at()
    assert first is not None and last is not None and 1.0 < last - first < 2.5
    assert mouth_motion(viewer, first, last) > 2 * mouth_motion(viewer, first - 1.5, first - 0.2)
    assert room not in await room_names(server)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    assert len(images) > 30 and {f.size for f in images} == {(256, 256)}
    voice = [f for f in down if isinstance(f, SpeechOutputAudioRawFrame)]
    # The avatar's voice came back through the room: about the 1.5 s sent, the rest silence.
    assert 1.0 < speech_seconds(b"".join(f.audio for f in voice), voice[0].sample_rate) < 2.5
    (record,) = server.store.list_sessions(key.id, active=False, page=1, page_size=5)[0]
    assert record.transport == "livekit" and record.settings.livekit and record.settings.livekit.owned
    assert record.end_reason == p.END_STOPPED  # the service stopped its session at the end


# -- the request shapes, without a room --------------------------------------------------------------------
def mint(server: RunningServer, secret: str, body: dict[str, Any]) -> httpx.Response:
    with server.client() as client:
        return client.post("/v1/sessions/token", json=body, headers={"X-API-KEY": secret})


def test_top_level_video_quality_and_conflicting_fields(server: RunningServer) -> None:
    _, secret = server.store.create_key("shapes")
    answer = mint(server, secret, {"avatar_id": "ava", "transport": "webrtc", "video_quality": "medium"})
    assert answer.status_code == 200, answer.text
    record = server.session(answer.json()["data"]["session_id"])
    assert record.transport == "webrtc" and record.settings.look.quality == "medium"

    clash = mint(server, secret, {"video_quality": "low", "video_settings": {"quality": "high"}})
    assert clash.status_code == 400 and "video_quality" in clash.json()["message"]
    both = mint(
        server,
        secret,
        {"transport": "webrtc", "livekit_config": {"livekit_url": "ws://x", "livekit_room": "r"}},
    )
    assert both.status_code == 400 and "transport livekit" in both.json()["message"]
    # Left out, the transport is livekit here: this server knows a LiveKit server and makes the room.
    owned = mint(server, secret, {"avatar_id": "ava"})
    assert server.session(owned.json()["data"]["session_id"]).transport == "livekit"


def test_without_a_livekit_server_sessions_stay_webrtc(tmp_path: Path) -> None:
    with running_server(tmp_path) as plain:
        _, secret = plain.store.create_key("plain")
        answer = mint(plain, secret, {"avatar_id": "ava"})
        assert plain.session(answer.json()["data"]["session_id"]).transport == "webrtc"
        refused = mint(plain, secret, {"transport": "livekit"})
        assert refused.status_code == 400 and "--livekit-url" in refused.json()["message"]


def test_livekit_settings_come_whole() -> None:
    with pytest.raises(ValueError, match="FACECAST_LIVEKIT_API_SECRET"):
        LiveKitSettings("ws://127.0.0.1:7880", "key")
    with pytest.raises(ValueError, match="ws://"):
        LiveKitSettings("127.0.0.1:7880", "key", "secret")
    assert LiveKitSettings("https://lk.example.com", "k", "s").ws_url == "wss://lk.example.com"


def test_serve_flags_and_environment_name_the_livekit_server(monkeypatch: Any) -> None:
    from facecast.cli import build_parser
    from facecast.cli.common import UsageError
    from facecast.cli.serve import _server_config

    for name in ("URL", "API_KEY", "API_SECRET"):
        monkeypatch.delenv(f"FACECAST_LIVEKIT_{name}", raising=False)
    monkeypatch.setenv("FACECAST_LIVEKIT_API_SECRET", "from-env")
    args = build_parser().parse_args(
        ["serve", "--livekit-url", "wss://lk.example.com", "--livekit-api-key", "k"]
    )
    assert _server_config(args).livekit == LiveKitSettings("wss://lk.example.com", "k", "from-env")
    monkeypatch.delenv("FACECAST_LIVEKIT_API_SECRET")
    with pytest.raises(UsageError, match="--livekit-api-secret"):
        _server_config(args)
    assert not _server_config(build_parser().parse_args(["serve"])).livekit.configured


async def test_server_made_room_with_the_client_token_and_server_side_speech(
    server: RunningServer, mouth_box: tuple[int, int, int, int]
) -> None:
    """The user's frontend joins with `livekit_client_token` from /start; `agent.speak_text` (server-side
    speech, 22.05 kHz) plays in the room like audio sent over the socket."""
    _, secret = server.store.create_key("owned-room-text")
    with server.client() as http_client:
        minted = http_client.post(
            "/v1/sessions/token",
            json={"avatar_id": "ava", "video_quality": "low"},
            headers={"X-API-KEY": secret},
        ).json()["data"]
        bearer = {"Authorization": f"Bearer {minted['session_token']}"}
        data = http_client.post("/v1/sessions/start", headers=bearer).json()["data"]
    assert data["transport"] == "livekit" and data["audio_source"] == "websocket"
    viewer = RoomViewer(mouth_box=mouth_box, publisher=data["avatar_identity"])
    await viewer.connect(data["livekit_url"], data["livekit_client_token"])
    try:
        await viewer.wait_for(lambda: viewer.first_video_at is not None, HANG_S, "the avatar's video")
        async with aiohttp.ClientSession() as http, http.ws_connect(data["ws_url"]) as ws:
            assert (await ws.receive_json())["state"] == p.WS_STATE_CONNECTED
            await ws.send_json(
                {"type": "agent.speak_text", "event_id": "t1", "text": "Hello from the server."}
            )
            events = await read_until(ws, lambda e: e["type"] == p.AGENT_SPEAK_ENDED)
        assert [e["type"] for e in events if e["type"].startswith("agent.speak")] == [
            p.AGENT_SPEAK_STARTED,
            p.AGENT_SPEAK_ENDED,
        ]
        assert events[-1]["event_id"] == "t1" and events[-1]["played_s"] > 0.5
        assert viewer.speech_after(0) > 0.5
    finally:
        await viewer.aclose()
        with server.client() as http_client:
            http_client.post("/v1/sessions/stop", headers=bearer)
    assert server.session(minted["session_id"]).end_reason == p.END_STOPPED
