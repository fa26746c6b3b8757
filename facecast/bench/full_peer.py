"""A WebRTC peer for FULL sessions, for tests and `facecast bench full`: an aiortc client whose microphone
plays what it is given (paced in real time), which records the avatar's video (mouth crops) and the
events of the data channel."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from facecast import protocol as p

MIC_RATE = 48000


class FakeMicrophone(MediaStreamTrack):
    """A microphone that plays what the test queues, paced in real time, and silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queued = np.zeros(0, np.int16)
        self._pts = 0
        self._t0: float | None = None
        self.ended_at: float | None = None

    def play(self, pcm48k: np.ndarray) -> None:
        self._queued = np.concatenate([self._queued, pcm48k])
        self.ended_at: float | None = None  # monotonic time the last queued sample was sent

    @property
    def playing(self) -> bool:
        return len(self._queued) > 0

    async def recv(self) -> av.AudioFrame:
        n = MIC_RATE // 50
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self._pts / MIC_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk, self._queued = self._queued[:n], self._queued[n:]
        if len(chunk) and not len(self._queued):
            self.ended_at = time.monotonic()
        if len(chunk) < n:
            chunk = np.concatenate([chunk, np.zeros(n - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = MIC_RATE, self._pts, Fraction(1, MIC_RATE)
        self._pts += n
        return frame


class FullClient:
    """An aiortc peer with a microphone; records the avatar's video (mouth crops) and the events."""

    def __init__(self, token: str, start: dict[str, Any], mouth_box: tuple[int, int, int, int]) -> None:
        """`start` is the data of the session's /v1/sessions/start answer; `mouth_box` the avatar's."""
        self.token, self.start = token, start
        self.pc = RTCPeerConnection()
        self.mic = FakeMicrophone()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.video: list[tuple[float, np.ndarray]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.mouth_box = mouth_box

    async def connect(self) -> None:
        self.pc.addTrack(self.mic)
        self.pc.addTransceiver("video", direction="recvonly")
        self.channel = self.pc.createDataChannel("events", negotiated=True, id=0)
        self.channel.on("message", lambda m: self.events.append((time.monotonic(), json.loads(m))))
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._read(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                self.start["webrtc"]["offer_url"],
                headers={"Authorization": f"Bearer {self.token}"},
                json={"sdp": self.pc.localDescription.sdp, "type": "offer"},
            )
        assert r.status_code == 200, r.text
        answer = r.json()["data"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await self.wait(lambda e: e.get("state") == p.WS_STATE_CONNECTED)

    async def _read(self, track: Any) -> None:
        x0, y0, x1, y1 = self.mouth_box
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                rgb = frame.to_ndarray(format="rgb24")
                self.video.append((time.monotonic(), rgb[y0:y1, x0:x1].astype(np.float32)))

    def command(self, event_type: str, **payload: Any) -> None:
        message: dict[str, Any] = {"event_type": event_type}
        if payload:
            message["payload"] = payload
        self.channel.send(json.dumps(message))

    def agent_events(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if "event_type" in e]

    async def wait(
        self, match: Any, timeout: float = 60.0, after: float = 0.0
    ) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamped in self.events:
                if stamped[0] >= after and match(stamped[1]):
                    return stamped
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching event in {[e for _, e in self.events]}")

    async def wait_type(
        self, event_type: str, timeout: float = 60.0, after: float = 0.0
    ) -> tuple[float, dict]:
        return await self.wait(lambda e: e.get("event_type") == event_type, timeout, after)

    def mouth_motion(self, start: float, end: float) -> float:
        """Mean frame-to-frame change of the mouth crop in [start, end] (arrival times)."""
        crops = [crop for t, crop in self.video if start <= t <= end]
        if len(crops) < 2:
            return 0.0
        return float(np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(crops)]))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
