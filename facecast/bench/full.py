"""`facecast bench full`: a FULL conversation on loopback, turn after turn: the end of the user's speech →
the avatar's first speech frame, p50/p95, and where the time goes (VAD stop, STT, the answer's first TTS
audio, the avatar's first frame). The LLM is the stand-in (facecast.bench.llm_standin) answering at once,
so the figures are Facecast's own share. The user's speech is flite's (16 kHz voice `slt`) on an aiortc
peer's microphone; recognition's word error rate is reported too.

CPU: the bench's process tree (the server, the client peer, the stand-in, and the FULL session's
PocketSphinx process) during the turns, then during as long a LITE session on the same server whose agent
says the same answers (agent.speak_text, the same pauses) to a client peer of the same kind: the
difference is what the conversation (VAD, recognition, LLM client, synthesis) costs."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import uvicorn
from scipy.signal import resample_poly

from facecast import protocol as p
from facecast.avatars import load_renderer
from facecast.bench.corpus import FliteMissingError, find_flite
from facecast.bench.full_peer import FullClient
from facecast.bench.llm_standin import echo_reply, standin_llm
from facecast.bench.proctree import cpu_between, sample_tree
from facecast.bench.report import Table
from facecast.client import LiteClient, ReceivingPeer, StartedSession
from facecast.client.lite_socket import LiteSocket
from facecast.server.app import create_app
from facecast.server.config import LiveKitSettings, ServerConfig
from facecast.server.run import bind
from facecast.server.store import open_store

QUESTIONS = (
    "what is the weather like today",
    "please tell me a story",
    "how old is the moon",
    "where can i buy some bread",
    "what time does the museum open",
    "can you help me with my order",
)
STAGES = ("vad_stop_ms", "stt_ms", "answer_first_audio_ms", "avatar_first_frame_ms", "total_ms")


def _speech(text: str, tmp: Path) -> np.ndarray:
    path = tmp / f"q{abs(hash(text))}.wav"
    subprocess.run([find_flite(), "-voice", "slt", "-t", text, "-o", str(path)], check=True)
    pcm, rate = sf.read(path, dtype="int16")
    return resample_poly(pcm.astype(np.float32), 48000 // rate, 1).clip(-32768, 32767).astype(np.int16)


def _wer(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.split(), hypothesis.lower().split()
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[-1] / max(1, len(ref))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _run(turns: int) -> list[Table]:
    with tempfile.TemporaryDirectory() as tmp_name, standin_llm() as llm:
        tmp = Path(tmp_name)
        config = ServerConfig(
            host="127.0.0.1", port=0, data_dir=tmp, livekit=LiveKitSettings(), live_workers=0
        )
        store = open_store(None, tmp)
        app = create_app(config, store=store)
        sock = bind("127.0.0.1", 0, fallback_to_free_port=False)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        key = store.create_key("bench")[1]
        headers = {"X-API-KEY": key}
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                secret = (await http.post("/v1/secrets", headers=headers, json={"secret_value": "k"})).json()
                config_id = (
                    await http.post(
                        "/v1/llm_configurations",
                        headers=headers,
                        json={
                            "display_name": "stand-in",
                            "model_name": "standin-chat",
                            "secret_id": secret["data"]["id"],
                            "base_url": llm.url,
                        },
                    )
                ).json()["data"]["id"]
                minted = await http.post(
                    "/v1/sessions/token",
                    headers=headers,
                    json={
                        "mode": "FULL",
                        "llm_configuration_id": config_id,
                        "fps": 25,
                        "video_settings": {"quality": "low"},
                    },
                )
                token = minted.json()["data"]["session_token"]
                start = (
                    await http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
                ).json()["data"]
            renderer = load_renderer("ava", aspect="1:1", quality="low")
            client = FullClient(token, start, renderer.mouth_box())
            await client.connect()
            client_ms: list[float] = []
            wers: list[float] = []
            answers: list[tuple[float, str]] = []  # (the user's speech in seconds, the answer)
            tree0, wall0 = sample_tree(os.getpid()), time.monotonic()
            try:
                for n in range(turns):
                    question = QUESTIONS[n % len(QUESTIONS)]
                    await asyncio.sleep(0.5)
                    asked = time.monotonic()
                    speech = _speech(question, tmp)
                    client.mic.play(speech)
                    heard_at, heard = await client.wait_type("user.transcription", after=asked)
                    spoke_at, _ = await client.wait_type("avatar.speak_started", after=heard_at)
                    await client.wait_type("avatar.speak_ended", after=spoke_at)
                    assert client.mic.ended_at is not None
                    client_ms.append(1000 * (spoke_at - client.mic.ended_at))
                    wers.append(_wer(question, heard["payload"]["text"]))
                    answers.append((len(speech) / 48000, _answer(heard["payload"]["text"])))
                    print(
                        f"turn {n + 1}: {heard['payload']['text']!r} → {client_ms[-1]:.0f} ms",
                        file=sys.stderr,
                    )
                full_cpu = cpu_between(tree0, sample_tree(os.getpid())) / (time.monotonic() - wall0)
                session = app.state.manager.live[start["session_id"]]
                server_turns = list(session.conversation.timer.turns)
            finally:
                await client.close()
            lite_cpu = await _lite_session_cpu(url, key, answers)
        finally:
            server.should_exit = True
            await serving
            store.close()
    table = Table(
        f"FULL conversation on loopback, {turns} turns (stand-in LLM answering at once)",
        ["stage", "p50 ms", "p95 ms"],
    )
    table.add(
        "client: end of speech sent → avatar.speak_started received",
        _pct(client_ms, 0.5),
        _pct(client_ms, 0.95),
    )
    for stage in STAGES:
        values = [t[stage] for t in server_turns]
        table.add(f"server: {stage}", _pct(values, 0.5), _pct(values, 0.95))
    table.notes.append(f"recognition word error rate (flite slt speech): mean {statistics.mean(wers):.2f}")
    cpu = Table(
        "CPU of the bench's process tree (server, client peer, stand-in LLM; FULL: its PocketSphinx process)",
        ["session", "% of one core"],
    )
    cpu.add("FULL: the turns above", round(100 * full_cpu))
    cpu.add("LITE: the same answers via agent.speak_text, the same pauses", round(100 * lite_cpu))
    cpu.notes.append(
        f"the conversation's own share (FULL − LITE): {100 * (full_cpu - lite_cpu):.0f}% of one core"
    )
    return [table, cpu]


def _answer(heard: str) -> str:
    """What the stand-in LLM answered to `heard`: the LITE session says the same."""
    return echo_reply([{"role": "user", "content": heard}])


async def _lite_session_cpu(url: str, key: str, answers: list[tuple[float, str]]) -> float:
    """CPU share of the process tree while a LITE session's agent says `answers` after pauses as long as the
    user's speech in the FULL turns (and the bench's half second)."""
    async with LiteClient(url, api_key=key) as lite:
        minted = await lite.mint({"mode": "LITE", "fps": 25, "video_settings": {"quality": "low"}})
        started: StartedSession = await lite.start(minted)
        peer = ReceivingPeer(on_video=lambda frame, _arrival: frame.to_ndarray(format="rgb24"))
        await peer.connect(lite, started)
        assert started.ws_url is not None
        socket = await LiteSocket.connect(lite.http, started.ws_url)
        try:
            await socket.wait_connected()
            await peer.wait_first_video()
            tree0, wall0 = sample_tree(os.getpid()), time.monotonic()
            for n, (pause_s, text) in enumerate(answers):
                await asyncio.sleep(0.5 + pause_s)
                since = len(socket.events)
                await socket.speak_text(f"answer-{n}", text)
                await socket.wait_event(lambda e: e.get("type") == p.AGENT_SPEAK_ENDED, since, timeout=60)
            return cpu_between(tree0, sample_tree(os.getpid())) / (time.monotonic() - wall0)
        finally:
            await socket.close()
            await peer.close()
            await lite.stop(started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facecast bench full", description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6, help="user turns to measure")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    try:
        tables = asyncio.run(_run(args.turns))
    except (FliteMissingError, ImportError) as exc:
        print(f"facecast bench full: {exc}", file=sys.stderr)
        return 2
    print(f"facecast bench full — load average {load:.1f} at start / {os.getloadavg()[0]:.1f} at end")
    for table in tables:
        print()
        print(table.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
