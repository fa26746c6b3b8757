"""A session's settings, typed from the token body to the engine: the look, the lip-sync (tracker,
look-ahead, the persona's language) and the persona's voice, in this process and as the worker pool
builds them; what a session could not use is refused, not dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from server_harness import RunningServer, running_server

from facecast import protocol as p
from facecast.avatars import ASPECTS, QUALITIES
from facecast.avatars.look import Look
from facecast.engine.config import FPS_CHOICES, MAX_LOOKAHEAD_MS, EngineConfig
from facecast.hosts.live import LiveCore
from facecast.server.config import ServerConfig
from facecast.server.pool import WEBRTC_AUDIO_RATE, AvatarSpec, build_engine
from facecast.server.session_settings import (
    TRACKERS,
    FullPersona,
    FullSettings,
    LipSync,
    LiveKitRoom,
    LlmSettings,
    SessionSettings,
)
from facecast.server.sessions import LiveSession
from facecast.server.store import SessionRecord
from facecast.tts import EspeakTTS


@pytest.fixture()
def server(tmp_path: Path) -> Any:
    with running_server(tmp_path) as running:
        yield running


def mint(server: RunningServer, key: str, **body: Any) -> Any:
    with server.client() as http:
        return http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json=body)


def test_lip_sync_and_language_reach_the_engine_of_a_started_session(server: RunningServer) -> None:
    key = server.store.create_key("k")[1]
    minted = mint(
        server,
        key,
        avatar_persona={"language": "fr"},
        lookahead_ms=40,
        fps=25,
        aspect_ratio="3:4",
        video_settings={"quality": "low", "encoding": "H264"},
    )
    assert minted.status_code == 200, minted.text
    data = minted.json()["data"]
    record = server.session(data["session_id"])
    assert record.settings.look == Look(avatar="ava", aspect="3:4", quality="low", fps=25)
    assert record.settings.lip_sync == LipSync(language="fr", tracker="auto", lookahead_ms=40)
    with server.client() as http:
        started = http.post(
            "/v1/sessions/start", headers={"Authorization": f"Bearer {data['session_token']}"}
        )
        assert started.status_code == 200, started.text
        assert started.json()["data"]["video"]["encoding"] == "H264"
        avatar = server.app.state.manager.live[data["session_id"]].avatar
        assert isinstance(avatar, LiveCore)
        config = avatar._engine.config
        assert (config.fps, config.lookahead_ms, config.language, config.tracker) == (25, 40, "fr", "auto")
        assert not config.uses_phones  # French: the energy tracker, not English phone recognition
        listed = http.get(f"/v1/sessions/{data['session_id']}", headers={"X-API-KEY": key}).json()["data"]
    assert {k: listed["settings"][k] for k in ("language", "tracker", "lookahead_ms", "fps")} == {
        "language": "fr",
        "tracker": "auto",
        "lookahead_ms": 40,
        "fps": 25,
    }


def test_the_worker_pool_builds_the_engine_from_the_same_settings(server: RunningServer) -> None:
    key = server.store.create_key("k")[1]
    minted = mint(server, key, tracker="phones", lookahead_ms=0, avatar_persona={"language": "de"})
    assert minted.status_code == 200, minted.text
    record = server.session(minted.json()["data"]["session_id"])
    # What a worker process runs for a session's Start (facecast.server.pool), from the stored record.
    engine = build_engine(AvatarSpec.from_settings(record.settings, None))
    assert engine.config == EngineConfig(
        fps=30, out_rate=WEBRTC_AUDIO_RATE, lookahead_ms=0, tracker="phones", language="de"
    )


def test_persona_fields_a_lite_session_cannot_use_are_refused(server: RunningServer) -> None:
    key = server.store.create_key("k")[1]
    context = mint(server, key, avatar_persona={"context_id": "ctx_1"})
    assert context.status_code == 409 and "mode FULL" in context.json()["message"]
    unknown = mint(server, key, avatar_persona={"voice_id": "klingon"})
    assert unknown.status_code == 404 and "/v1/voices" in unknown.json()["message"]
    in_room = mint(
        server,
        key,
        avatar_persona={"voice_id": "fr"},
        livekit_config={"livekit_url": "ws://127.0.0.1:9", "livekit_room": "r", "livekit_worker_token": "t"},
    )
    assert in_room.status_code == 409 and "data_stream" in in_room.json()["message"]
    bad_language = mint(server, key, avatar_persona={"language": "français"})
    assert bad_language.status_code == 400 and "language" in bad_language.json()["message"]
    too_far = mint(server, key, lookahead_ms=MAX_LOOKAHEAD_MS + 1)
    assert too_far.status_code == 400 and "lookahead_ms" in too_far.json()["message"]
    voiced = mint(server, key, avatar_persona={"voice_id": "FR", "language": "fr"})
    assert voiced.status_code == 200, voiced.text
    record = server.session(voiced.json()["data"]["session_id"])
    assert record.settings.voice_id == "fr"  # agent.speak_text speaks with it (LiveSession._speak_text)


class SpeechRecorder:
    """A LiveSession's manager and avatar in one: it synthesises with espeak-ng and records the voice
    asked for, and what reached the avatar."""

    def __init__(self) -> None:
        self.config = ServerConfig()
        self.voices: list[str | None] = []
        self.calls: list[str] = []
        self._tts = EspeakTTS()

    def spawn(self, coro: Any) -> None:
        coro.close()

    async def synthesize(self, text: str, *, voice: str | None = None) -> Any:
        self.voices.append(voice)
        return self._tts.synthesize_timed(text, voice)

    async def open_segment(self, tag: Any = None) -> int:
        self.calls.append("open")
        return 1

    async def push_audio(self, pcm: Any, sample_rate: int, *, text: str | None = None) -> int:
        self.calls.append(f"audio {len(pcm) / sample_rate:.1f}")
        return 0

    async def push_phones(self, timings: Any) -> int:
        self.calls.append("phones")
        return 0

    async def end_segment(self) -> None:
        self.calls.append("end")


async def test_agent_speak_text_speaks_in_the_session_voice() -> None:
    settings = SessionSettings(
        look=Look(),
        encoding="VP8",
        max_session_duration=60,
        interactivity_type="CONVERSATIONAL",
        voice_id="fr",
    )
    record = SessionRecord(
        "ses_v", "key", "LITE", "ava", False, "webrtc", settings, p.STATE_STARTED, "", 0.0, 0.0
    )
    recorder = SpeechRecorder()
    session = LiveSession(record, recorder, manager=recorder, started_mono=0.0)  # type: ignore[arg-type]
    session.ws_state = p.WS_STATE_CONNECTED
    replies: list[dict[str, Any]] = []

    async def reply(event: dict[str, Any]) -> None:
        replies.append(event)

    await session.handle({"type": p.AGENT_SPEAK_TEXT, "text": "bonjour", "event_id": "e1"}, reply)
    assert replies == [] and recorder.voices == ["fr"]
    assert recorder.calls[0] == "open" and recorder.calls[-1] == "end"
    assert any(call.startswith("audio") and call != "audio 0.0" for call in recorder.calls)


# -- the stored shape ------------------------------------------------------------------------------------
def test_records_written_before_the_lip_sync_was_kept_read_back_with_what_they_ran_with() -> None:
    old_full = {
        "video_settings": {"quality": "low", "encoding": "VP8"},
        "aspect_ratio": "1:1",
        "fps": 30,
        "max_session_duration": 600,
        "interactivity_type": "PUSH_TO_TALK",
        "full": {
            "persona": {
                "context_id": None,
                "prompt": "Be brief.",
                "opening_text": "",
                "voice_id": "en-us",
                "language": "en",
            },
            "llm": {"llm_configuration_id": None, "model": "m", "base_url": "http://x/v1", "secret_id": None},
        },
    }
    settings = SessionSettings.from_json(old_full, avatar="leo")
    assert settings.look == Look(avatar="leo", quality="low")
    assert settings.lip_sync == LipSync()  # the defaults those sessions ran with
    assert settings.voice_id == "en-us" and settings.language == "en"
    assert settings.full == FullSettings(
        FullPersona(context_id=None, prompt="Be brief.", opening_text=""),
        LlmSettings(llm_configuration_id=None, model="m", base_url="http://x/v1", secret_id=None),
    )


def test_public_settings_leave_out_the_worker_token() -> None:
    room = LiveKitRoom("ws://h", "r", "secret-token", "agent", "avatar", "data_stream", owned=False)
    settings = SessionSettings(
        look=Look(),
        encoding="VP8",
        max_session_duration=60,
        interactivity_type="CONVERSATIONAL",
        livekit=room,
    )
    assert settings.to_json()["livekit"]["worker_token"] == "secret-token"
    assert "worker_token" not in settings.public_json()["livekit"]
    assert settings.public_json()["livekit"]["room"] == "r"


@given(
    look=st.builds(
        Look,
        avatar=st.sampled_from(["ava", "leo", "photo-0123456789ab"]),
        aspect=st.sampled_from(ASPECTS),
        quality=st.sampled_from(QUALITIES),
        fps=st.sampled_from(FPS_CHOICES),
    ),
    lip_sync=st.builds(
        LipSync,
        language=st.sampled_from(["en", "en-GB", "fr", "de"]),
        tracker=st.sampled_from(TRACKERS),
        lookahead_ms=st.integers(0, MAX_LOOKAHEAD_MS),
    ),
    voice_id=st.none() | st.sampled_from(["en-us", "fr"]),
    encoding=st.sampled_from(["VP8", "H264"]),
    duration=st.integers(1, 86_400),
)
def test_settings_read_back_as_they_were_stored(
    look: Look, lip_sync: LipSync, voice_id: str | None, encoding: Any, duration: int
) -> None:
    settings = SessionSettings(
        look=look,
        encoding=encoding,
        max_session_duration=duration,
        interactivity_type="CONVERSATIONAL",
        lip_sync=lip_sync,
        voice_id=voice_id,
    )
    assert SessionSettings.from_json(settings.to_json(), avatar=look.avatar) == settings


def test_an_ended_session_lists_its_settings(server: RunningServer) -> None:
    key = server.store.create_key("k")[1]
    minted = mint(server, key, tracker="energy").json()["data"]
    with server.client() as http:
        stopped = http.post(
            "/v1/sessions/stop", headers={"Authorization": f"Bearer {minted['session_token']}"}
        )
        assert stopped.status_code == 200 and stopped.json()["code"] == p.CODE_OK
        listed = http.get("/v1/sessions?status=history", headers={"X-API-KEY": key}).json()["data"]
    (session,) = listed["sessions"]
    assert session["settings"]["tracker"] == "energy" and "worker_token" not in str(session)
