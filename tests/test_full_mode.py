"""FULL mode end to end over loopback: a real aiortc peer whose microphone track plays speech made here with
flite; the server hears it (Silero VAD, PocketSphinx), asks the LLM (a stand-in OpenAI-compatible server
behind the real openai client, tests/llm_standin.py), speaks the answer with espeak-ng and the avatar's
mouth moves. Plus the resources FULL sessions are configured with, and the token checks."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import multiprocessing
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from browser_page import chromium_page
from scipy.signal import resample_poly
from server_harness import RunningServer

pytest.importorskip("pipecat.audio.vad.silero")
pytest.importorskip("openai")

from facecast import protocol as p
from facecast import settings
from facecast.avatars import load_renderer
from facecast.bench.full_peer import AgentEventLog, FullClient
from facecast.bench.llm_standin import StandInLLM, standin_llm
from facecast.tts import EspeakTTS

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

SECRET_VALUE = "sk-standin-Zq7-secret-value"
QUESTION = "what is the weather like today"


# -- helpers ----------------------------------------------------------------------------------------------
def flite_speech(text: str, tmp: Path) -> np.ndarray:
    """`text` spoken by flite's 16 kHz voice, as 48 kHz int16 (what a browser microphone sends)."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (scripts/test installs it)")
    path = tmp / f"{abs(hash(text))}.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == 16000
    return resample_poly(pcm.astype(np.float32), 3, 1).clip(-32768, 32767).astype(np.int16)


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    d = np.zeros((len(ref) + 1, len(hyp) + 1), int)
    d[:, 0], d[0, :] = range(len(ref) + 1), range(len(hyp) + 1)
    for i, j in itertools.product(range(1, len(ref) + 1), range(1, len(hyp) + 1)):
        d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[-1, -1] / max(1, len(ref))


@pytest.fixture
def llm() -> Iterator[StandInLLM]:
    with standin_llm() as running:
        yield running


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()["data"]


def configure_llm(http: httpx.Client, key: str, llm: StandInLLM) -> str:
    """A secret and an LLM configuration pointing at the stand-in; the configuration's id."""
    secret = _ok(
        http.post(
            "/v1/secrets",
            headers={"X-API-KEY": key},
            json={"secret_type": "LLM_API_KEY", "secret_value": SECRET_VALUE, "secret_name": "stand-in key"},
        )
    )
    config = _ok(
        http.post(
            "/v1/llm_configurations",
            headers={"X-API-KEY": key},
            json={
                "display_name": "stand-in",
                "model_name": "standin-chat",
                "secret_id": secret["id"],
                "base_url": llm.url,
            },
        )
    )
    return config["id"]


def create_context(http: httpx.Client, key: str, prompt: str, opening_text: str) -> str:
    """A context of `key` with this prompt and opening text; its id."""
    made = http.post(
        "/v1/contexts",
        headers={"X-API-KEY": key},
        json={"name": "test", "prompt": prompt, "opening_text": opening_text},
    )
    return str(_ok(made)["id"])


def check_one_turn(log: AgentEventLog, asked_at: float, heard: dict[str, Any]) -> str:
    """The events since the question in seed 002's order and the question recognised (its word error
    rate printed, not asserted); the transcript."""
    order = [e["event_type"] for t, e in log.agent_events() if t >= asked_at]
    assert order[:3] == ["user.speak_started", "user.speak_ended", "user.transcription"], order
    assert order.index("avatar.speak_started") > order.index("user.transcription")
    assert order.index("avatar.speak_ended") > order.index("avatar.speak_started")
    transcript = str(heard["payload"]["text"])
    print(f"recognised {transcript!r} for {QUESTION!r}: WER {word_error_rate(QUESTION, transcript):.2f}")
    assert "weather" in transcript
    return transcript


async def start_full(
    server: RunningServer, key: str, body: dict[str, Any], responses: list[str]
) -> FullClient:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        minted = await http.post(
            "/v1/sessions/token",
            headers={"X-API-KEY": key},
            json={"mode": "FULL", "fps": 25, "video_settings": {"quality": "low"}, **body},
        )
        responses.append(minted.text)
        token = _ok(minted)["session_token"]
        started = await http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
        responses.append(started.text)
    start = _ok(started)
    record = server.session(start["session_id"])
    renderer = load_renderer(
        record.avatar_id,
        aspect=record.settings.look.aspect,
        quality=record.settings.look.quality,
    )
    client = FullClient(token, start, renderer.mouth_box())
    await client.connect()
    return client


# -- resources and tokens (no media) ----------------------------------------------------------------------
def test_contexts_crud_belongs_to_the_key(server: RunningServer) -> None:
    key, other = server.store.create_key("a")[1], server.store.create_key("b")[1]
    with server.client() as http:
        made = _ok(
            http.post(
                "/v1/contexts",
                headers={"X-API-KEY": key},
                json={"name": "support", "prompt": "Help ${user_name}.", "opening_text": "Hi ${user_name}!"},
            )
        )
        assert made["id"].startswith("ctx_") and made["prompt"] == "Help ${user_name}."
        assert http.get(f"/v1/contexts/{made['id']}", headers={"X-API-KEY": other}).status_code == 404
        assert _ok(http.get("/v1/contexts", headers={"X-API-KEY": other}))["contexts"] == []
        changed = _ok(
            http.patch(
                f"/v1/contexts/{made['id']}", headers={"X-API-KEY": key}, json={"opening_text": "Hello."}
            )
        )
        assert changed["opening_text"] == "Hello." and changed["prompt"] == "Help ${user_name}."
        listed = _ok(http.get("/v1/contexts", headers={"X-API-KEY": key}))["contexts"]
        assert [c["id"] for c in listed] == [made["id"]]
        assert http.delete(f"/v1/contexts/{made['id']}", headers={"X-API-KEY": other}).status_code == 404
        _ok(http.delete(f"/v1/contexts/{made['id']}", headers={"X-API-KEY": key}))
        assert http.get(f"/v1/contexts/{made['id']}", headers={"X-API-KEY": key}).status_code == 404
        bad = http.post("/v1/contexts", headers={"X-API-KEY": key}, json={"name": "x", "prompt": ""})
        assert bad.status_code == 400 and "prompt" in bad.json()["message"]


def test_secrets_are_encrypted_at_rest_and_never_returned(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = server.store.create_key("a")[1]
    texts = []
    with server.client() as http:
        made = http.post("/v1/secrets", headers={"X-API-KEY": key}, json={"secret_value": SECRET_VALUE})
        texts.append(made.text)
        secret_id = _ok(made)["id"]
        texts.append(http.get("/v1/secrets", headers={"X-API-KEY": key}).text)
        texts.append(
            http.patch(
                f"/v1/secrets/{secret_id}",
                headers={"X-API-KEY": key},
                json={"secret_value": SECRET_VALUE + "2"},
            ).text
        )
        texts.append(http.get("/openapi.json").text)
    assert all(SECRET_VALUE not in text for text in texts)
    assert _ok(httpx.Response(200, text=texts[1]))["secrets"][0]["id"] == secret_id
    assert SECRET_VALUE not in caplog.text
    # At rest: neither the database file nor anything else in the data dir holds the value.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path
    assert (tmp_path / "secrets.key").stat().st_mode & 0o077 == 0


def test_llm_configurations_check_their_secret_and_url(server: RunningServer) -> None:
    key, other = server.store.create_key("a")[1], server.store.create_key("b")[1]
    with server.client() as http:
        secret_id = _ok(http.post("/v1/secrets", headers={"X-API-KEY": other}, json={"secret_value": "x"}))[
            "id"
        ]
        body = {
            "display_name": "d",
            "model_name": "m",
            "secret_id": secret_id,
            "base_url": "http://127.0.0.1:9/v1",
        }
        foreign = http.post("/v1/llm_configurations", headers={"X-API-KEY": key}, json=body)
        assert foreign.status_code == 404 and "POST /v1/secrets" in foreign.json()["message"]
        bad_url = http.post(
            "/v1/llm_configurations",
            headers={"X-API-KEY": other},
            json={**body, "base_url": "127.0.0.1:11434"},
        )
        assert bad_url.status_code == 400 and "base_url" in bad_url.json()["message"]
        made = _ok(http.post("/v1/llm_configurations", headers={"X-API-KEY": other}, json=body))
        assert made["model_name"] == "m" and made["secret_id"] == secret_id
        in_use = http.delete(f"/v1/secrets/{secret_id}", headers={"X-API-KEY": other})
        assert in_use.status_code == 409 and made["id"] in in_use.json()["message"]


def test_voices_are_espeak_voices(server: RunningServer) -> None:
    key = server.store.create_key("a")[1]
    with server.client() as http:
        assert http.get("/v1/voices").status_code == 401
        voices = _ok(http.get("/v1/voices", headers={"X-API-KEY": key}))["voices"]
    ids = {v["voice_id"] for v in voices}
    assert {"en-us", "de", "fr"} <= ids
    assert all(v["provider"] == "espeak-ng" for v in voices)
    tts = EspeakTTS()
    for voice in voices:  # every voice listed can speak
        assert tts.synthesize_timed("hello", voice["voice_id"]).audio.size > 0


def test_full_tokens_say_what_is_missing(server: RunningServer, llm: StandInLLM, monkeypatch: Any) -> None:
    for name in ("FACECAST_LLM_BASE_URL", "FACECAST_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    key = server.store.create_key("a")[1]
    with server.client() as http:

        def token(**body: Any) -> httpx.Response:
            return http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={"mode": "FULL", **body})

        no_llm = token()
        assert no_llm.status_code == 409
        assert "/v1/llm_configurations" in no_llm.json()["message"]
        assert "FACECAST_LLM_BASE_URL" in no_llm.json()["message"]
        config_id = configure_llm(http, key, llm)
        context_id = create_context(http, key, "Help ${user_name} on the ${plan} plan.", "Hi!")
        persona = {"context_id": context_id}
        undefined = token(
            llm_configuration_id=config_id, avatar_persona=persona, dynamic_variables={"plan": "Pro"}
        )
        assert undefined.status_code == 400 and "${user_name}" in undefined.json()["message"]
        assert "${plan}" not in undefined.json()["message"]
        unknown_voice = token(llm_configuration_id=config_id, avatar_persona={"voice_id": "klingon"})
        assert unknown_voice.status_code == 404 and "/v1/voices" in unknown_voice.json()["message"]
        assert token(llm_configuration_id="llm_nope").status_code == 404
        german = token(llm_configuration_id=config_id, avatar_persona={"language": "de"})
        assert german.status_code == 501 and "English" in german.json()["message"]
        # FULL sessions in LiveKit rooms: tests/test_full_livekit.py; their agent is the server itself.
        from_room = token(llm_configuration_id=config_id, transport="webrtc", audio_source="websocket")
        assert from_room.status_code == 409 and "drop audio_source" in from_room.json()["message"]
        lite = http.post(  # accepted and unused in LITE mode (the schema cannot say otherwise)
            "/v1/sessions/token", headers={"X-API-KEY": key}, json={"dynamic_variables": {"a": "b"}}
        )
        assert (
            lite.status_code == 200
            and server.session(lite.json()["data"]["session_id"]).settings.full is None
        )
        minted = _ok(
            token(
                llm_configuration_id=config_id,
                avatar_persona=persona,
                dynamic_variables={"user_name": "Jordan", "plan": "Pro"},
            )
        )
        full = server.session(minted["session_id"]).settings.full
        assert full is not None and full.persona.prompt == "Help Jordan on the Pro plan."
        monkeypatch.setenv("FACECAST_LLM_BASE_URL", llm.url)
        monkeypatch.setenv("FACECAST_LLM_MODEL", "standin-chat")
        assert token().status_code == 200  # the server's default LLM
        described = http.get(f"/v1/sessions/{minted['session_id']}", headers={"X-API-KEY": key}).text
        assert SECRET_VALUE not in described


# -- conversations over WebRTC --------------------------------------------------------------------------
async def test_conversation_hears_answers_and_speaks(
    server: RunningServer,
    llm: StandInLLM,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    key = server.store.create_key("a")[1]
    responses: list[str] = []
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
        context_id = create_context(
            http, key, "You help ${user_name}. Answer briefly.", "Hello ${user_name}, ask me anything."
        )
    client = await start_full(
        server,
        key,
        {
            "llm_configuration_id": config_id,
            "avatar_persona": {"voice_id": "en-us", "context_id": context_id, "language": "en"},
            "dynamic_variables": {"user_name": "Jordan"},
        },
        responses,
    )
    try:
        # The opening text, substituted, is spoken first.
        _, opening = await client.wait_type("avatar.transcription")
        assert opening["payload"]["text"] == "Hello Jordan, ask me anything."
        opened_end, _ = await client.wait_type("avatar.speak_ended")
        await asyncio.sleep(0.5)
        asked_at = time.monotonic()
        client.mic.play(flite_speech(QUESTION, tmp_path))
        heard_at, heard = await client.wait_type("user.transcription", after=asked_at)
        last_said, _ = await client.wait(
            lambda e: e.get("event_type") == "avatar.transcription" and "sunny" in e["payload"]["text"],
            after=heard_at,
        )
        ended_at, ended = await client.wait_type("avatar.speak_ended", after=last_said)
        said = [
            e for t, e in client.agent_events() if t >= heard_at and e["event_type"] == "avatar.transcription"
        ]
        answer = " ".join(e["payload"]["text"] for e in said)  # one event per sentence, as each starts
        assert ended["payload"]["interrupted"] is False
        await asyncio.sleep(1.5)  # idle video after the answer, to compare the mouth against
        transcript = check_one_turn(client, asked_at, heard)
        assert answer == f"You asked about {transcript}. It is sunny today."
        # One turn: the avatar does not stop between the answer's two sentences.
        answer_events = [e["event_type"] for t, e in client.agent_events() if heard_at <= t <= ended_at]
        assert answer_events.count("avatar.speak_started") == 1, answer_events
        # The LLM got the substituted prompt, the conversation so far, and the stored key.
        request = llm.requests[-1]
        assert request["headers"]["Authorization"] == f"Bearer {SECRET_VALUE}"
        sent = json.dumps(request["body"]["messages"])
        assert "You help Jordan." in sent and "Hello Jordan, ask me anything." in sent and transcript in sent
        speaking = [t for t, e in client.agent_events() if e["event_type"] == "avatar.speak_started"][-1]
        # Speech moves the lips frame to frame more than idle life (breathing, sway) does once settled.
        idle = client.mouth_motion(ended_at + 0.5, ended_at + 1.5)
        assert client.mouth_motion(speaking, ended_at) > 1.3 * idle
        assert opened_end < speaking
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            described = await http.get(
                f"/v1/sessions/{client.start['session_id']}", headers={"X-API-KEY": key}
            )
        stats = described.json()["data"]["stats"]["conversation"]
        assert stats["turns"] == 1 and stats["total_ms_p50"] > stats["stt_ms_p50"] > 0, stats
        print(f"turn: {stats}")
    finally:
        await client.close()
    assert all(SECRET_VALUE not in text for text in responses)
    assert all(SECRET_VALUE not in json.dumps(e) for _, e in client.events)
    assert SECRET_VALUE not in caplog.text
    out, err = capfd.readouterr()  # Pipecat logs with loguru, to stderr
    assert SECRET_VALUE not in out and SECRET_VALUE not in err


async def test_push_to_talk_listens_only_inside_its_window(
    server: RunningServer, llm: StandInLLM, tmp_path: Path
) -> None:
    key = server.store.create_key("a")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
    client = await start_full(
        server, key, {"llm_configuration_id": config_id, "interactivity_type": "PUSH_TO_TALK"}, []
    )
    try:
        speech = flite_speech(QUESTION, tmp_path)
        client.command("user.stop_push_to_talk")
        await client.wait_type("user.push_to_talk_stop_failed")
        outside = time.monotonic()
        client.mic.play(speech)
        while client.mic.playing:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        heard = [e["event_type"] for t, e in client.agent_events() if t >= outside]
        assert "user.speak_started" not in heard and "user.transcription" not in heard, heard
        client.command("user.start_push_to_talk")
        await client.wait_type("user.push_to_talk_started")
        client.command("user.start_push_to_talk")
        await client.wait_type("user.push_to_talk_start_failed")
        client.mic.play(speech)
        while client.mic.playing:
            await asyncio.sleep(0.05)
        client.command("user.stop_push_to_talk")
        stopped_at, _ = await client.wait_type("user.push_to_talk_stopped")
        _, heard_event = await client.wait_type("user.transcription", after=outside)
        assert "weather" in heard_event["payload"]["text"]
        await client.wait(
            lambda e: e.get("event_type") == "avatar.transcription" and "sunny" in e["payload"]["text"],
            after=stopped_at,
        )
    finally:
        await client.close()


async def test_user_speech_barges_in_on_the_avatar(
    server: RunningServer, llm: StandInLLM, tmp_path: Path
) -> None:
    key = server.store.create_key("a")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
    client = await start_full(server, key, {"llm_configuration_id": config_id}, [])
    try:
        speech = flite_speech("stop please", tmp_path)
        long_text = "This is a long story about the sea. " * 8  # about twenty seconds of speech
        client.command("avatar.speak_text", text=long_text)
        started_at, _ = await client.wait_type("avatar.speak_started")
        await asyncio.sleep(1.0)
        client.mic.play(speech)
        user_at, _ = await client.wait_type("user.speak_started", after=started_at)
        ended_at, ended = await client.wait_type("avatar.speak_ended", after=started_at)
        assert ended["payload"]["interrupted"] is True
        assert ended_at - started_at < 10.0  # well before the story would have ended
        print(f"barge-in: user speech detected → avatar speak_ended in {1000 * (ended_at - user_at):.0f} ms")
        # An explicit interrupt works too, and a bad command is answered with an error.
        client.command("avatar.speak_text", text=long_text)
        again, _ = await client.wait_type("avatar.speak_started", after=ended_at + 0.01)
        client.command("avatar.interrupt")
        _, cut = await client.wait_type("avatar.speak_ended", after=again)
        assert cut["payload"]["interrupted"] is True
        client.command("avatar.speak_text")
        _, error = await client.wait(lambda e: e.get("type") == p.ERROR)
        assert "text" in error["message"]
    finally:
        await client.close()


@pytest.mark.skipif(not settings.TEST_LLM_URL.get(), reason="set FACECAST_TEST_LLM_URL to run")
async def test_real_llm_endpoint_answers(server: RunningServer, tmp_path: Path) -> None:
    """Opt-in: FACECAST_TEST_LLM_URL (an OpenAI-compatible base URL), FACECAST_TEST_LLM_MODEL and, if it
    needs one, FACECAST_TEST_LLM_KEY."""
    key = server.store.create_key("a")[1]
    body: dict[str, Any] = {
        "display_name": "real",
        "model_name": settings.TEST_LLM_MODEL.get() or "gpt-4o-mini",
        "base_url": settings.TEST_LLM_URL.get(),
    }
    with server.client() as http:
        if settings.TEST_LLM_KEY.get():
            body["secret_id"] = _ok(
                http.post(
                    "/v1/secrets",
                    headers={"X-API-KEY": key},
                    json={"secret_value": settings.TEST_LLM_KEY.get()},
                )
            )["id"]
        config_id = _ok(http.post("/v1/llm_configurations", headers={"X-API-KEY": key}, json=body))["id"]
    client = await start_full(server, key, {"llm_configuration_id": config_id}, [])
    try:
        asked = time.monotonic()
        client.command("avatar.speak_response", text="Say hello in five words.")
        _, said = await client.wait_type("avatar.transcription", timeout=90, after=asked)
        assert said["payload"]["text"].strip()
        await client.wait_type("avatar.speak_ended", timeout=90, after=asked)
    finally:
        await client.close()


async def test_a_full_session_sends_the_mouth_track_on_its_data_channel(
    server: RunningServer, llm: StandInLLM
) -> None:
    key = server.store.create_key("a")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
        context_id = create_context(http, key, "Be brief.", "Hello there, how are you?")
    client = await start_full(
        server,
        key,
        {
            "llm_configuration_id": config_id,
            "mouth_track": True,
            "avatar_persona": {"context_id": context_id},
        },
        [],
    )
    try:
        await client.wait_type("avatar.speak_ended")
        tracks = [e for _, e in client.events if e.get("type") == p.AVATAR_MOUTH_TRACK]
        frames = [e["track"]["frame"] for e in tracks]
        assert len(frames) > 25 and frames == sorted(set(frames)), frames[:40]
        # The server starts a FULL session's utterances: no client event_id to carry.
        assert all(e["event_id"] is None for e in tracks)
        spoken = [e["track"] for e in tracks if e["track"]["speaking"]]
        assert spoken and not tracks[0]["track"]["speaking"]
        assert max(r["blendshapes"]["jawOpen"] for r in spoken) > 0.3
    finally:
        await client.close()


async def test_stopping_a_full_session_leaves_nothing_running(server: RunningServer, llm: StandInLLM) -> None:
    key = server.store.create_key("a")[1]
    with server.client() as http:
        config_id = configure_llm(http, key, llm)
    client = await start_full(server, key, {"llm_configuration_id": config_id}, [])
    try:
        assert multiprocessing.active_children()  # the PocketSphinx decoder's process
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            stopped = await http.post(
                "/v1/sessions/stop", headers={"Authorization": f"Bearer {client.token}"}
            )
        assert stopped.status_code == 200, stopped.text
        record = await asyncio.to_thread(server.wait_ended, client.start["session_id"], 30.0)
        assert record.end_reason == p.END_STOPPED
        deadline = time.monotonic() + 20
        while multiprocessing.active_children() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not multiprocessing.active_children()
        names = {t.get_name() for t in asyncio.all_tasks(server.loop)}
        assert not any(name.startswith("facecast-conversation") for name in names), names
    finally:
        await client.close()


async def test_an_unreachable_llm_is_reported_to_the_client(server: RunningServer) -> None:
    key = server.store.create_key("a")[1]
    with server.client() as http:
        closed_port = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
        config_id = _ok(
            http.post(
                "/v1/llm_configurations",
                headers={"X-API-KEY": key},
                json={"display_name": "down", "model_name": "m", "base_url": closed_port},
            )
        )["id"]
    client = await start_full(server, key, {"llm_configuration_id": config_id}, [])
    try:
        client.command("avatar.speak_response", text="hello?")
        _, error = await client.wait(lambda e: e.get("type") == p.ERROR)
        assert "LLM" in error["message"] and "failed" in error["message"], error
    finally:
        await client.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/test installs it)"
)
def test_browser_client_talks_in_full_mode(
    server: RunningServer, llm: StandInLLM, tmp_path: Path, monkeypatch: Any
) -> None:
    """The browser client in real headless Chromium, whose fake microphone plays flite speech (looped)."""
    from playwright.sync_api import expect

    monkeypatch.setenv("FACECAST_LLM_BASE_URL", llm.url)  # the server's default LLM: the stand-in
    monkeypatch.setenv("FACECAST_LLM_MODEL", "standin-chat")
    speech = resample_poly(flite_speech(QUESTION, tmp_path).astype(np.float32), 1, 3).astype(np.int16)
    wav = tmp_path / "mic.wav"
    sf.write(wav, np.concatenate([np.zeros(16000, np.int16), speech, np.zeros(32000, np.int16)]), 16000)
    key = server.store.create_key("browser")[1]
    fake_microphone = (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    )
    with chromium_page(fake_microphone) as (page, errors):
        page.goto(f"{server.url}/#key={key}")
        page.select_option("#mode", "FULL")
        page.click("#start")
        transcript = page.get_by_test_id("transcript")
        expect(transcript).to_contain_text("you: what is the weather", timeout=60_000)
        expect(transcript).to_contain_text("avatar: It is sunny today.", timeout=60_000)
        page.click("#stop")
        expect(page.get_by_test_id("status")).to_have_text("idle", timeout=20_000)
        assert errors == []
