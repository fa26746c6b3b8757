"""End to end over loopback: a real aiortc peer receives a session's audio and video from the server while
the LITE WebSocket sends speech, interrupts it, and the session's expiry closes the peer."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from scipy.signal import resample_poly
from server_harness import RunningServer, running_server

from facecast import protocol as p
from facecast.avatars import load_renderer

FPS = 25
CHUNK_S = 0.1


@dataclass
class Received:
    """What the client peer saw, stamped with arrival time (monotonic)."""

    video: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, mouth crop)
    audio: list[tuple[float, int, float]] = field(default_factory=list)  # (arrival, pts, rms)
    video_size: tuple[int, int] | None = None


class Client:
    """An aiortc peer plus the session's LITE WebSocket."""

    def __init__(self, server: RunningServer, token: str, start: dict[str, Any]) -> None:
        self.server, self.token, self.start = server, token, start
        self.pc = RTCPeerConnection()
        self.received = Received()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.channel_events: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.ws: Any = None
        self.channel: Any = None
        settings = server.session(start["session_id"]).settings
        renderer = load_renderer(
            server.session(start["session_id"]).avatar_id,
            aspect=settings.look.aspect,
            quality=settings.look.quality,
        )
        self.mouth_box = renderer.mouth_box()

    async def connect(self) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.channel = self.pc.createDataChannel("events", negotiated=True, id=0)
        self.channel.on("message", lambda m: self.channel_events.append(json.loads(m)))
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(
                self.start["webrtc"]["offer_url"],
                headers={"Authorization": f"Bearer {self.token}"},
                json={"sdp": self.pc.localDescription.sdp, "type": "offer"},
            )
        assert r.status_code == 200, r.text
        answer = r.json()["data"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        self.ws = await websockets.connect(self.start["ws_url"])
        self._tasks.append(asyncio.create_task(self._read_ws()))
        await self.wait_event(lambda e: e.get("state") == p.WS_STATE_CONNECTED)

    def _on_track(self, track: Any) -> None:
        self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: Any) -> None:
        x0, y0, x1, y1 = self.mouth_box
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                rgb = frame.to_ndarray(format="rgb24")
                self.received.video_size = (frame.width, frame.height)
                self.received.video.append((now, frame.pts, rgb[y0:y1, x0:x1].astype(np.float32)))
            else:
                samples = frame.to_ndarray().astype(np.float32).reshape(-1)
                self.received.audio.append((now, frame.pts, float(np.sqrt(np.mean(samples**2)))))

    async def _read_ws(self) -> None:
        try:
            async for raw in self.ws:
                self.events.append((time.monotonic(), json.loads(raw)))
        except websockets.ConnectionClosed:
            return

    async def wait_event(self, match: Any, timeout: float = 20.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamped in self.events:
                if match(stamped[1]):
                    return stamped
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching event in {[e for _, e in self.events]}")

    async def send(self, message: dict[str, Any]) -> float:
        await self.ws.send(json.dumps(message))
        return time.monotonic()

    async def speak(self, pcm16k: np.ndarray, event_id: str) -> float:
        """Send 16 kHz speech as 24 kHz PCM16 in 100 ms agent.speak chunks; returns the first send time."""
        pcm = resample_poly(pcm16k.astype(np.float32), 3, 2).clip(-32768, 32767).astype("<i2")
        step = int(p.LITE_AUDIO_RATE * CHUNK_S)
        first = 0.0
        for i in range(0, len(pcm), step):
            sent = await self.send(
                {
                    "type": "agent.speak",
                    "event_id": event_id,
                    "audio": base64.b64encode(pcm[i : i + step].tobytes()).decode(),
                }
            )
            first = first or sent
        await self.send({"type": "agent.speak_end", "event_id": event_id})
        return first

    def mouth_motion(self) -> np.ndarray:
        """Per received video frame: mean absolute change of the mouth crop since the previous frame.
        Speech moves the lips from frame to frame; idle sway and breathing move them slowly."""
        crops = [crop for _, _, crop in self.received.video]
        return np.array([0.0] + [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(crops)])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        await self.pc.close()


@pytest.fixture(params=[0, 2], ids=["in-process", "pool"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The server with its WebRTC sessions in its own process, and in two worker processes."""
    with running_server(tmp_path, live_workers=request.param) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    encoding = getattr(request, "param", "VP8")
    key = server.store.create_key("rtc")[1]
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        minted = (
            await http.post(
                "/v1/sessions/token",
                headers={"X-API-KEY": key},
                json={"fps": FPS, "video_settings": {"quality": "low", "encoding": encoding}},
            )
        ).json()["data"]
        token = minted["session_token"]
        start = (await http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})).json()[
            "data"
        ]
    c = Client(server, token, start)
    await c.connect()
    yield c
    await c.close()


@pytest.mark.parametrize("client", ["VP8", "H264"], indirect=True)
async def test_peer_receives_paced_video_and_audio_and_speech_moves_the_mouth(
    client: Client, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, rate, _ = speech
    assert rate == 16000
    await asyncio.sleep(1.0)  # idle video first: the face is alive before anyone speaks
    idle_frames = len(client.received.video)
    first_send = await client.speak(pcm, "hello-1")
    started_at, _ = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
    _, ended = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED, timeout=30)
    await asyncio.sleep(0.5)

    video = client.received.video
    assert idle_frames >= 10, "no idle video before speech"
    assert client.received.video_size == (256, 256)
    steps = np.diff([pts for _, pts, _ in video])
    assert np.median(steps) == 90000 // FPS, "video is not stamped at the session's frame rate"
    assert len(client.received.audio) > 50
    assert ended["event_id"] == "hello-1" and ended["played_s"] == pytest.approx(len(pcm) / rate, abs=0.05)

    motion = client.mouth_motion()
    arrivals = np.array([t for t, _, _ in video])
    speaking = (arrivals > started_at) & (arrivals < started_at + len(pcm) / rate)
    idle_motion = np.percentile(motion[2:idle_frames], 95)
    speaking_motion = np.percentile(motion[speaking], 90)
    print(f"\n[webrtc] mouth motion idle p95 {idle_motion:.2f}, speaking p90 {speaking_motion:.2f}")
    assert speaking_motion > 4 * max(idle_motion, 0.25), "the mouth did not move"

    # Latency: first agent.speak sent -> first received frame whose mouth left rest.
    moving = np.flatnonzero((arrivals > first_send) & (motion > 3 * max(idle_motion, 0.25)))
    latency_ms = (arrivals[moving[0]] - first_send) * 1000
    # A/V offset at the receiver: audio onset (first loud packet) vs mouth onset, by arrival time.
    audio = client.received.audio
    loud = [t for t, _, rms in audio if t > first_send and rms > 500]
    offset_ms = (arrivals[moving[0]] - loud[0]) * 1000
    windows = pcm[: len(pcm) // 320 * 320].astype(np.float32).reshape(-1, 320)
    lead_ms = int(np.argmax(np.sqrt((windows**2).mean(axis=1)) > 500)) * 20  # silence before the first word
    print(
        f"\n[webrtc] speech onset ({lead_ms} ms in) -> moving mouth {latency_ms - lead_ms:.0f} ms, "
        f"-> speech audio {(loud[0] - first_send) * 1000 - lead_ms:.0f} ms; "
        f"mouth-audio arrival offset {offset_ms:+.0f} ms"
    )
    assert client.channel_events, "no events on the data channel"
    assert {e["type"] for e in client.channel_events} >= {p.AGENT_SPEAK_STARTED, p.AGENT_SPEAK_ENDED}


async def test_interrupt_stops_speech_video_within_a_few_frames(
    client: Client, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, _, _ = speech
    await client.speak(np.concatenate([pcm, pcm, pcm]), "long")
    started_at, _ = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
    await asyncio.sleep(1.2)
    interrupt_sent = await client.send({"type": "agent.interrupt"})
    _, interrupted = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_INTERRUPTED)
    await asyncio.sleep(1.0)
    assert interrupted["event_id"] == "long" and 0.5 < interrupted["played_s"] < 3.0

    motion = client.mouth_motion()
    arrivals = np.array([t for t, _, _ in client.received.video])
    after = np.flatnonzero(arrivals > interrupt_sent)
    peak = motion[(arrivals > started_at) & (arrivals < interrupt_sent)].max()
    still_moving = [i for i in after if motion[i] > 0.15 * peak]
    frames_to_rest = 0 if not still_moving else still_moving[-1] - after[0] + 1
    print(f"\n[webrtc] interrupt -> mouth at rest after {frames_to_rest} received frames")
    # Two engine frames plus the pacing queue (2) and frames already on the wire on loopback.
    assert frames_to_rest <= 8
    quiet = [rms for t, _, rms in client.received.audio if t > interrupt_sent + 0.4]
    assert quiet and max(quiet) < 200, "speech audio kept playing after the interrupt"


async def test_session_end_closes_the_peer_and_socket(client: Client, server: RunningServer) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(
            f"{server.url}/v1/sessions/stop", headers={"Authorization": f"Bearer {client.token}"}
        )
    assert r.status_code == 200
    _, stopped = await client.wait_event(lambda e: e["type"] == p.SESSION_STOPPED)
    assert stopped["end_reason"] == p.END_STOPPED
    await client.wait_event(lambda e: e.get("state") == p.WS_STATE_CLOSED)
    deadline = time.monotonic() + 15
    while (
        client.pc.connectionState not in ("closed", "failed", "disconnected") and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.05)
    assert client.pc.connectionState in ("closed", "failed", "disconnected")


async def test_peer_leaving_ends_the_session_as_client_gone(client: Client, server: RunningServer) -> None:
    session_id = client.start["session_id"]
    while len(client.received.video) < 5:
        await asyncio.sleep(0.05)
    await client.pc.close()
    record = await asyncio.to_thread(server.wait_ended, session_id, 30.0)
    assert record.end_reason == p.END_CLIENT_GONE
    assert record.stats["frames"] > 0 and record.stats["time_to_first_frame_ms"] is not None


async def test_speech_limits_answer_with_errors_and_the_session_goes_on(client: Client) -> None:
    ten_s = base64.b64encode(np.zeros(p.LITE_AUDIO_RATE * 10, "<i2").tobytes()).decode()
    too_long = base64.b64encode(np.zeros(p.LITE_AUDIO_RATE * 11, "<i2").tobytes()).decode()
    await client.send({"type": "agent.speak", "event_id": "big", "audio": too_long})
    _, error = await client.wait_event(lambda e: e["type"] == p.ERROR)
    assert error["event_id"] == "big" and "at most 10 s per message" in error["message"]
    limit = int(client.server.config.limits.max_queued_speech_s // 10)
    for _ in range(limit):
        await client.send({"type": "agent.speak", "event_id": "flood", "audio": ten_s})
    await client.send({"type": "agent.speak", "event_id": "flood", "audio": ten_s})
    _, queued = await client.wait_event(lambda e: e["type"] == p.ERROR and e["event_id"] == "flood")
    assert "ahead of playback" in queued["message"]
    await client.send({"type": "agent.interrupt"})
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_INTERRUPTED)
    await client.send({"type": "agent.speak", "event_id": "after", "audio": ten_s[:6400]})
    await client.send({"type": "agent.speak_end", "event_id": "after"})
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED and e["event_id"] == "after")
    errors = [e for _, e in client.events if e["type"] == p.ERROR]
    assert len(errors) == 2
