"""A WebRTC peer for FULL sessions, for tests and `facecast bench full`: facecast.client's receiving peer
with a microphone that plays what it is given (paced in real time), recording the avatar's video (mouth
crops) and the events of the data channel."""

from __future__ import annotations

import asyncio
import itertools
import time
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
from aiortc import MediaStreamTrack

from facecast import protocol as p
from facecast.client import LiteClient, ReceivingPeer, StartedSession

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


class AgentEventLog:
    """Waiting on a FULL session's events as a client received them (`events`: arrival time, event),
    whichever transport carried them (the WebRTC data channel, a LiveKit room's agent-response topic)."""

    events: list[tuple[float, dict[str, Any]]]

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
    ) -> tuple[float, dict[str, Any]]:
        return await self.wait(lambda e: e.get("event_type") == event_type, timeout, after)


class FullClient(AgentEventLog):
    """A receiving peer (facecast.client) with a microphone; records the avatar's video (mouth crops) and
    the events of the data channel."""

    def __init__(self, token: str, start: dict[str, Any], mouth_box: tuple[int, int, int, int]) -> None:
        """`start` is the data of the session's /v1/sessions/start answer; `mouth_box` the avatar's."""
        self.token, self.start = token, start
        self.started = StartedSession.from_data(token, start)
        self.mic = FakeMicrophone()
        self.video: list[tuple[float, np.ndarray]] = []
        self.mouth_box = mouth_box
        self.peer = ReceivingPeer(microphone=self.mic, on_video=self._on_video)

    @property
    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """The data channel's events with their arrival times."""
        return self.peer.channel_events

    async def connect(self) -> None:
        assert self.started.webrtc is not None
        origin = urlsplit(self.started.webrtc.offer_url)
        async with LiteClient(f"{origin.scheme}://{origin.netloc}") as lite:
            await self.peer.connect(lite, self.started)
        await self.wait(lambda e: e.get("state") == p.WS_STATE_CONNECTED)

    def _on_video(self, frame: Any, arrival: float) -> None:
        x0, y0, x1, y1 = self.mouth_box
        rgb = frame.to_ndarray(format="rgb24")
        self.video.append((arrival, rgb[y0:y1, x0:x1].astype(np.float32)))

    def command(self, event_type: str, **payload: Any) -> None:
        message: dict[str, Any] = {"event_type": event_type}
        if payload:
            message["payload"] = payload
        self.peer.send_channel(message)

    def mouth_motion(self, start: float, end: float) -> float:
        """Mean frame-to-frame change of the mouth crop in [start, end] (arrival times)."""
        crops = [crop for t, crop in self.video if start <= t <= end]
        if len(crops) < 2:
            return 0.0
        return float(np.mean([np.abs(b - a).mean() for a, b in itertools.pairwise(crops)]))

    async def close(self) -> None:
        await self.peer.close()
