"""A test's client of a WebRTC session on the test server, built on facecast.client: the receiving peer
records each video frame's mouth crop and each audio frame's RMS; the LITE WebSocket keeps the events."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.signal import resample_poly
from server_harness import RunningServer

from facecast.avatars import load_renderer
from facecast.client import LiteClient, LiteSocket, ReceivingPeer, StartedSession
from facecast.client.lite_socket import SPEAK_CHUNK_S, pcm_chunks

DEFAULT_WAIT_S = 20.0


@dataclass
class Received:
    """What the client peer saw, stamped with arrival time (monotonic)."""

    video: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, mouth crop)
    audio: list[tuple[float, int, float]] = field(default_factory=list)  # (arrival, pts, rms)
    video_size: tuple[int, int] | None = None


class SessionClient:
    """A started session's receiving peer and LITE WebSocket (`connect` opens both)."""

    def __init__(self, server: RunningServer, lite: LiteClient, started: StartedSession) -> None:
        self.server, self.lite, self.started = server, lite, started
        self.token = started.session_token
        self.start = dict(started.data)
        self.received = Received()
        self.socket: LiteSocket | None = None
        record = server.session(started.session_id)
        look = record.settings.look
        renderer = load_renderer(look.avatar, aspect=look.aspect, quality=look.quality)
        self.mouth_box = renderer.mouth_box()
        self.peer = ReceivingPeer(on_video=self._on_video, on_audio=self._on_audio)

    @property
    def pc(self) -> Any:
        return self.peer.pc

    @property
    def channel(self) -> Any:
        return self.peer.channel

    @property
    def channel_events(self) -> list[dict[str, Any]]:
        return [event for _, event in self.peer.channel_events]

    @property
    def events(self) -> list[tuple[float, dict[str, Any]]]:
        return self.socket.events if self.socket is not None else []

    async def connect(self) -> None:
        """Offer/answer, then the WebSocket, until the session reports it connected."""
        await self.peer.connect(self.lite, self.started)
        assert self.started.ws_url is not None
        self.socket = await LiteSocket.connect(self.lite.http, self.started.ws_url)
        await self.socket.wait_connected(DEFAULT_WAIT_S)

    async def wait_event(self, match: Any, timeout: float = DEFAULT_WAIT_S) -> tuple[float, dict[str, Any]]:
        assert self.socket is not None
        return await self.socket.wait_event(match, timeout=timeout)

    async def send(self, message: dict[str, Any]) -> float:
        assert self.socket is not None
        return await self.socket.send(message)

    async def speak(self, pcm16k: np.ndarray, event_id: str) -> float:
        """Send 16 kHz speech as 24 kHz PCM16 in 100 ms agent.speak chunks; returns the first send time."""
        assert self.socket is not None
        pcm = resample_poly(pcm16k.astype(np.float32), 3, 2).clip(-32768, 32767).astype("<i2").tobytes()
        first = 0.0
        for chunk in pcm_chunks(pcm, SPEAK_CHUNK_S):
            sent = await self.socket.speak(event_id, chunk)
            first = first or sent
        await self.socket.speak_end(event_id)
        return first

    def mouth_motion(self) -> np.ndarray:
        """Per received video frame: mean absolute change of the mouth crop since the previous frame.
        Speech moves the lips from frame to frame; idle sway and breathing move them slowly."""
        crops = [crop for _, _, crop in self.received.video]
        return np.array([0.0] + [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(crops)])

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        await self.peer.close()
        await self.lite.close()

    def _on_video(self, frame: Any, arrival: float) -> None:
        x0, y0, x1, y1 = self.mouth_box
        rgb = frame.to_ndarray(format="rgb24")
        self.received.video_size = (frame.width, frame.height)
        self.received.video.append((arrival, frame.pts, rgb[y0:y1, x0:x1].astype(np.float32)))

    def _on_audio(self, frame: Any, arrival: float) -> None:
        samples = frame.to_ndarray().astype(np.float32).reshape(-1)
        self.received.audio.append((arrival, frame.pts, float(np.sqrt(np.mean(samples**2)))))


async def started_client(server: RunningServer, key: str | None = None, **token_fields: Any) -> SessionClient:
    """A client of a session minted with `token_fields` (by `key`, or a fresh key) and started; not yet
    connected."""
    key = key or server.store.create_key("session-client")[1]
    lite = LiteClient(server.url, key, timeout_s=DEFAULT_WAIT_S)
    started = await lite.start(await lite.mint(token_fields))
    return SessionClient(server, lite, started)
