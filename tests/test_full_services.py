"""FULL mode's speech services chosen per session: the token's stt_service / tts_service name a Pipecat
service and the secret of its key; bad choices are 400s (404 for a secret the key does not own, 501 for a
service whose dependencies are not installed); the session builds the service it chose."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web
from scipy.signal import resample_poly
from server_harness import RunningServer

pytest.importorskip("pipecat.audio.vad.silero")
pytest.importorskip("openai")

from facecast.avatars import load_renderer
from facecast.bench.full_peer import FullClient
from facecast.bench.llm_standin import StandInLLM, standin_llm
from facecast.conversation.services import (
    PocketSphinxSTTService,
    SpeechChoice,
    stt_service,
    tts_service,
)
from facecast.tts import EspeakTTS
from facecast.tts.espeak_service import EspeakTTSService

TTS_KEY = "tts-key-Qm3-never-shown"


@pytest.fixture
def llm() -> Iterator[StandInLLM]:
    with standin_llm() as running:
        yield running


def _data(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_speech_service_choices_are_checked_at_token(
    server: RunningServer, llm: StandInLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACECAST_LLM_BASE_URL", llm.url)
    monkeypatch.setenv("FACECAST_LLM_MODEL", "standin-chat")
    key = server.store.create_key("a")[1]
    other_key = server.store.create_key("b")[1]
    with server.client() as http:

        def secret(api_key: str) -> str:
            body = {"secret_type": "TTS_API_KEY", "secret_value": TTS_KEY, "secret_name": "tts"}
            return _data(http.post("/v1/secrets", headers={"X-API-KEY": api_key}, json=body))["id"]

        def token(**body: Any) -> httpx.Response:
            return http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={"mode": "FULL", **body})

        def refused(response: httpx.Response, status: int, *words: str) -> None:
            assert response.status_code == status, response.text
            message = response.json()["message"]
            assert all(word in message for word in words), message

        mine, theirs = secret(key), secret(other_key)
        refused(
            token(stt_service={"provider": "vosk"}), 400, "stt_service.provider", "pocketsphinx", "openai"
        )
        refused(token(tts_service={"provider": "polly"}), 400, "tts_service.provider", "elevenlabs")
        refused(
            token(tts_service={"provider": "elevenlabs", "voice": "v"}), 400, "POST /v1/secrets", "secret_id"
        )
        refused(token(tts_service={"provider": "elevenlabs", "secret_id": theirs, "voice": "v"}), 404, theirs)
        refused(token(tts_service={"provider": "cartesia", "secret_id": mine}), 400, "tts_service.voice")
        refused(
            token(
                tts_service={"provider": "cartesia", "secret_id": mine, "voice": "v", "base_url": "http://x"}
            ),
            400,
            "base_url",
        )
        refused(
            token(
                tts_service={"provider": "openai", "secret_id": mine}, avatar_persona={"voice_id": "en-us"}
            ),
            400,
            "tts_service.voice",
            "avatar_persona.voice_id",
        )
        refused(token(tts_service={"provider": "espeak", "voice": "x"}), 400, "avatar_persona.voice_id")
        refused(token(stt_service={"provider": "openai"}), 400, "secret_id")  # OpenAI itself needs a key
        refused(token(stt_service={"provider": "openai", "base_url": "ftp://x"}), 400, "http(s)")
        lite = http.post(
            "/v1/sessions/token", headers={"X-API-KEY": key}, json={"stt_service": {"provider": "openai"}}
        )
        refused(lite, 409, "FULL")
        if importlib.util.find_spec("deepgram") is None:
            deepgram = token(stt_service={"provider": "deepgram", "secret_id": mine})
            refused(deepgram, 501, "pip install 'pipecat-ai[deepgram]'")

        minted = _data(
            token(
                stt_service={
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:9000/v1",
                    "model": "whisper-1",
                },
                tts_service={"provider": "elevenlabs", "secret_id": mine, "voice": "Rachel"},
            )
        )
        full = server.session(minted["session_id"]).settings.full
        assert full is not None
        assert (full.stt.provider, full.stt.base_url, full.stt.secret_id) == (
            "openai",
            "http://127.0.0.1:9000/v1",
            None,
        )
        assert (full.tts.provider, full.tts.secret_id, full.tts.voice) == ("elevenlabs", mine, "Rachel")
        default = server.session(_data(token())["session_id"]).settings.full
        assert default is not None and (default.stt.provider, default.tts.provider) == (
            "pocketsphinx",
            "espeak",
        )
        described = http.get(f"/v1/sessions/{minted['session_id']}", headers={"X-API-KEY": key})
        assert described.status_code == 200 and TTS_KEY not in described.text


def test_the_chosen_services_are_built_with_their_key_endpoint_and_voice() -> None:
    assert isinstance(stt_service(SpeechChoice("pocketsphinx")), PocketSphinxSTTService)
    espeak = tts_service(SpeechChoice("espeak"), "en-gb")
    assert isinstance(espeak, EspeakTTSService) and espeak._settings.voice == "en-gb"

    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
    from pipecat.services.openai.stt import OpenAISTTService
    from pipecat.services.openai.tts import OpenAITTSService

    whisper = stt_service(SpeechChoice("openai", base_url="http://127.0.0.1:9000/v1", model="whisper-1"))
    assert isinstance(whisper, OpenAISTTService)
    assert str(whisper._client.base_url).startswith("http://127.0.0.1:9000/v1")
    assert whisper._settings.model == "whisper-1"
    speech = tts_service(SpeechChoice("openai", api_key="k1", voice="nova"), "en-us")
    assert isinstance(speech, OpenAITTSService)
    assert speech._settings.voice == "nova" and speech._client.api_key == "k1"
    eleven = tts_service(SpeechChoice("elevenlabs", api_key="k2", voice="Rachel"), "en-us")
    assert isinstance(eleven, ElevenLabsTTSService) and eleven._settings.voice == "Rachel"
    assert "k2" not in repr(SpeechChoice("elevenlabs", api_key="k2"))


@contextlib.contextmanager
def standin_speech_server() -> Iterator[dict[str, Any]]:
    """A stand-in for an external TTS service: OpenAI's speech endpoint (`POST /v1/audio/speech`, raw 24 kHz
    PCM16) on loopback, speaking with espeak-ng; records each request's text and Authorization header."""
    state: dict[str, Any] = {"requests": []}
    ready = threading.Event()
    espeak = EspeakTTS()

    async def speech(request: web.Request) -> web.Response:
        body = await request.json()
        state["requests"].append(
            {"input": body["input"], "authorization": request.headers.get("Authorization")}
        )
        pcm = espeak.synthesize(body["input"]).astype(np.float32)
        at_24k = resample_poly(pcm, 24000, espeak.sample_rate).clip(-32768, 32767).astype(np.int16)
        return web.Response(body=at_24k.tobytes(), content_type="audio/pcm")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", speech)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield state
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        loop.close()


async def test_a_session_speaks_with_the_tts_service_it_chose(server: RunningServer, llm: StandInLLM) -> None:
    key = server.store.create_key("a")[1]
    with standin_speech_server() as speech:
        with server.client() as http:
            headers = {"X-API-KEY": key}
            body = {"secret_type": "TTS_API_KEY", "secret_value": TTS_KEY, "secret_name": "tts"}
            secret_id = _data(http.post("/v1/secrets", headers=headers, json=body))["id"]
            llm_secret = _data(http.post("/v1/secrets", headers=headers, json={"secret_value": "llm-key"}))[
                "id"
            ]
            config = {
                "display_name": "s",
                "model_name": "standin-chat",
                "secret_id": llm_secret,
                "base_url": llm.url,
            }
            config_id = _data(http.post("/v1/llm_configurations", headers=headers, json=config))["id"]
            minted = _data(
                http.post(
                    "/v1/sessions/token",
                    headers=headers,
                    json={
                        "mode": "FULL",
                        "fps": 25,
                        "video_settings": {"quality": "low"},
                        "llm_configuration_id": config_id,
                        "tts_service": {
                            "provider": "openai",
                            "base_url": speech["url"],
                            "secret_id": secret_id,
                            "voice": "nova",
                        },
                    },
                )
            )
            start = _data(
                http.post(
                    "/v1/sessions/start", headers={"Authorization": f"Bearer {minted['session_token']}"}
                )
            )
        record = server.session(start["session_id"])
        renderer = load_renderer(record.avatar_id, aspect=record.settings.look.aspect, quality="low")
        client = FullClient(minted["session_token"], start, renderer.mouth_box())
        await client.connect()
        try:
            client.command("avatar.speak_text", text="The weather is lovely today, with a warm breeze.")
            spoke_at, _ = await client.wait_type("avatar.speak_started")
            ended_at, ended = await client.wait_type("avatar.speak_ended", after=spoke_at)
            assert ended["payload"]["interrupted"] is False
            await asyncio.sleep(1.5)
            assert client.mouth_motion(spoke_at, ended_at) > 1.3 * client.mouth_motion(
                ended_at + 0.5, ended_at + 1.5
            )
        finally:
            await client.close()
            async with httpx.AsyncClient(base_url=server.url) as http_async:
                await http_async.post(
                    "/v1/sessions/stop", headers={"Authorization": f"Bearer {minted['session_token']}"}
                )
    assert [r["input"] for r in speech["requests"]] == ["The weather is lovely today, with a warm breeze."]
    assert all(r["authorization"] == f"Bearer {TTS_KEY}" for r in speech["requests"])
