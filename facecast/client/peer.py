"""A WebRTC peer that receives a Facecast session: the avatar's video and audio and the events channel.

It offers receive-only audio and video (or sends a microphone, for FULL sessions) and the negotiated
data channel the server opens, then reads every received track in a task of its own until `close`.
Each frame's arrival and RTP time go into `video_arrivals` / `audio_arrivals`; with `decode=False` the
frames are counted without being decoded (`rtpcount`), so that many peers cost little.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from facecast import protocol as p
from facecast.client.api import LiteClient, StartedSession
from facecast.client.rtpcount import Arrivals, count_frames
from facecast.client.sender_clock import SenderClock

AUDIO_CLOCK = 48000  # Opus
VIDEO_CLOCK = 90000
DEFAULT_WAIT_S = 30.0
FrameHandler = Callable[[Any, float], None]  # (decoded av frame, arrival time.monotonic())
ChannelHandler = Callable[[dict[str, Any]], None]


class ReceivingPeer:
    """One client peer of a session. `on_video` / `on_audio` see every decoded frame as it arrives;
    `clocks` map each track's media time onto the sender's clock (RTCP sender reports)."""

    def __init__(
        self,
        *,
        ice_servers: Sequence[Mapping[str, Any]] | None = (),
        data_channel: tuple[str, int] = (p.DATA_CHANNEL_LABEL, 0),
        decode: bool = True,
        on_video: FrameHandler | None = None,
        on_audio: FrameHandler | None = None,
        on_channel_event: ChannelHandler | None = None,
        microphone: MediaStreamTrack | None = None,
        sender_clocks: bool = False,
    ) -> None:
        """Args:
        ice_servers: STUN/TURN servers as the session's start answer lists them; () for none (loopback:
            aiortc would otherwise add a public STUN server), None for aiortc's default.
        data_channel: (label, id) of the negotiated events channel.
        decode: False: count the frames without decoding (no `on_video`/`on_audio` then).
        microphone: an audio track to send (FULL sessions hear it); then no audio is received.
        sender_clocks: watch the RTCP sender reports, so that `clocks` can answer (a little work per
            packet, which the bench's many peers do without).
        """
        if not decode and (on_video or on_audio):
            raise ValueError(
                "frames that are only counted are not decoded: on_video/on_audio need decode=True"
            )
        servers = None
        if ice_servers is not None:
            servers = [
                RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                for s in ice_servers
            ]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.video_arrivals = Arrivals()
        self.audio_arrivals = Arrivals()
        self.channel_events: list[tuple[float, dict[str, Any]]] = []  # (arrival, event)
        self.first_video = asyncio.Event()
        self.clocks: dict[str, SenderClock] = {}
        self._on_frame = {"video": on_video, "audio": on_audio}
        self._on_channel_event = on_channel_event
        self._tasks: list[asyncio.Task[None]] = []
        video = self.pc.addTransceiver("video", direction="recvonly")
        receivers = [video.receiver]
        if microphone is not None:
            self.pc.addTrack(microphone)
        else:
            receivers.append(self.pc.addTransceiver("audio", direction="recvonly").receiver)
        if sender_clocks:
            for kind, receiver in zip(("video", "audio"), receivers, strict=False):
                self.clocks[kind] = SenderClock(VIDEO_CLOCK if kind == "video" else AUDIO_CLOCK)
                self.clocks[kind].watch(receiver)
        label, channel_id = data_channel
        # The server creates the same negotiated channel; the offer must carry its m-line.
        self.channel = self.pc.createDataChannel(label, negotiated=True, id=channel_id)
        self.channel.on("message", self._channel_message)
        if decode:
            self.pc.on("track", self._on_track)
        else:  # the tracks stay empty: frames are counted where aiortc would queue them for decoding
            count_frames(video.receiver, self.video_arrivals, self.first_video.set)
            if len(receivers) > 1:
                count_frames(receivers[1], self.audio_arrivals)

    @property
    def video_frames(self) -> int:
        return len(self.video_arrivals.times)

    async def create_offer(self) -> str:
        """The offer's SDP (ICE gathering included)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str, sdp_type: str = "answer") -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))

    async def connect(self, client: LiteClient, started: StartedSession) -> None:
        """Offer → the session's answer → applied (media flows a moment later)."""
        sdp, sdp_type = await client.offer(started, await self.create_offer())
        await self.accept_answer(sdp, sdp_type)

    async def wait_first_video(self, timeout: float = DEFAULT_WAIT_S) -> None:
        try:
            await asyncio.wait_for(self.first_video.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no video frame within {timeout:.0f} s of the answer") from None

    async def wait_channel_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = DEFAULT_WAIT_S, after: float = 0.0
    ) -> tuple[float, dict[str, Any]]:
        """The first data-channel event arrived at or after `after` that matches, with its arrival."""
        deadline = time.monotonic() + timeout
        while True:
            for stamped in self.channel_events:
                if stamped[0] >= after and match(stamped[1]):
                    return stamped
            if time.monotonic() >= deadline:
                seen = [event for _, event in self.channel_events[-20:]]
                raise TimeoutError(f"no matching data channel event within {timeout:.0f} s in {seen}")
            await asyncio.sleep(0.01)

    def send_channel(self, message: dict[str, Any]) -> None:
        """A message on the events channel (FULL sessions take their commands here)."""
        self.channel.send(json.dumps(message))

    async def close(self) -> None:
        """Close the connection and end the readers; idempotent."""
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _channel_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        self.channel_events.append((time.monotonic(), event))
        if self._on_channel_event is not None:
            self._on_channel_event(event)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._read(track), name=f"facecast-peer-{track.kind}"))

    async def _read(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        arrivals = self.video_arrivals if kind == "video" else self.audio_arrivals
        clock, handle = self.clocks.get(kind), self._on_frame[kind]
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            arrivals.add(now, int(frame.pts))
            if clock is not None:
                clock.note_arrival(frame.pts, now)
            if kind == "video":
                self.first_video.set()
            if handle is not None:
                handle(frame, now)
