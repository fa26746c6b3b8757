"""The user of a FULL session in a LiveKit room, as a frontend would be: a real `rtc.Room` participant
that watches the avatar (facecast.client.livekit_viewer), talks into a microphone track (what the test
queues, paced in real time, silence otherwise), sends `agent-control` commands as data packets and
records the `agent-response` events with their arrival times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import numpy as np
from livekit import rtc

from facecast.bench.full_peer import AgentEventLog
from facecast.client.livekit_viewer import RoomViewer

MIC_RATE = 48000
MIC_FRAME = MIC_RATE // 100  # 10 ms
MIC_QUEUE_MS = 200  # queued ahead: a busy test loop must not leave gaps in the speech (the VAD splits there)


class RoomUser(AgentEventLog):
    def __init__(self, *, mouth_box: tuple[int, int, int, int], avatar: str) -> None:
        self.viewer = RoomViewer(mouth_box=mouth_box, publisher=avatar)
        self.room = self.viewer.room
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._queued = np.zeros(0, np.int16)
        self._source = rtc.AudioSource(MIC_RATE, 1, queue_size_ms=MIC_QUEUE_MS)
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self.room.on("data_received", self._on_data)

    async def connect(self, url: str, token: str, *, microphone: bool = True) -> None:
        await self.viewer.connect(url, token)
        if microphone:
            await self.publish_microphone()

    async def publish_microphone(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self._pump = asyncio.create_task(self._send_microphone())

    # -- the microphone ---------------------------------------------------------------------------------
    def play(self, pcm48k: np.ndarray) -> None:
        self._queued = np.concatenate([self._queued, pcm48k])

    @property
    def playing(self) -> bool:
        return len(self._queued) > 0

    async def play_all(self, pcm48k: np.ndarray) -> None:
        self.play(pcm48k)
        while self.playing:
            await asyncio.sleep(0.05)

    async def _send_microphone(self) -> None:
        silence = np.zeros(MIC_FRAME, np.int16)
        while True:
            chunk, self._queued = self._queued[:MIC_FRAME], self._queued[MIC_FRAME:]
            if len(chunk) < MIC_FRAME:
                chunk = np.concatenate([chunk, silence[: MIC_FRAME - len(chunk)]])
            await self._source.capture_frame(rtc.AudioFrame(chunk.tobytes(), MIC_RATE, 1, MIC_FRAME))

    # -- commands and events ----------------------------------------------------------------------------
    def command(self, event_type: str, **payload: Any) -> None:
        message: dict[str, Any] = {"event_type": event_type}
        if payload:
            message["payload"] = payload
        self.send_raw(json.dumps(message).encode())

    def send_raw(self, data: bytes) -> None:
        asyncio.get_running_loop().create_task(
            self.room.local_participant.publish_data(data, reliable=True, topic="agent-control")
        )

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic != "agent-response":
            return
        self.events.append((time.monotonic(), json.loads(packet.data)))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.viewer.aclose()
        await self._source.aclose()
