"""RTCP sender reports on the engine's media clock (facecast.hosts.rtcp), seen by an aiortc receiver:
each track's first two arrive right after its first packets, and every report of a track sits on one
line from RTP time to NTP time (media time, not send time); the video leaves one frame period late."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpSrPacket

from facecast.avatars import load_renderer
from facecast.engine import Engine, EngineConfig
from facecast.hosts import rtcp
from facecast.hosts.live import LiveCore
from facecast.hosts.webrtc import AvatarPeer

CLOCK_RATES = {"audio": 48000, "video": 90000}


class Watched:
    """A receiver's first RTP packet (arrival, timestamp) and its sender reports (arrival, NTP s, RTP)."""

    def __init__(self, receiver: Any) -> None:
        self.first: tuple[float, int] | None = None
        self.reports: list[tuple[float, float, int]] = []
        handle_rtp, handle_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            if self.first is None:
                self.first = (time.monotonic(), packet.timestamp)
            await handle_rtp(packet, arrival_time_ms)

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                seconds = (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32
                self.reports.append((time.monotonic(), seconds, packet.sender_info.rtp_timestamp))
            await handle_rtcp(packet)

        receiver._handle_rtp_packet, receiver._handle_rtcp_packet = on_rtp, on_rtcp


@pytest.fixture
async def watched() -> AsyncIterator[dict[str, Watched]]:
    engine = Engine(
        load_renderer("ava", quality="low"), EngineConfig(fps=30, out_rate=48000, tracker="energy")
    )
    avatar = LiveCore(engine)
    peer = AvatarPeer(avatar)
    client = RTCPeerConnection()
    try:
        client.addTransceiver("video", direction="recvonly")
        client.addTransceiver("audio", direction="recvonly")
        drained: list[asyncio.Task[None]] = []

        async def drain(track: Any) -> None:
            while True:
                await track.recv()

        client.on("track", lambda track: drained.append(asyncio.create_task(drain(track))))
        await avatar.start()
        await client.setLocalDescription(await client.createOffer())
        answer = await peer.answer(client.localDescription.sdp, client.localDescription.type)
        await client.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
        yield {r.track.kind: Watched(r) for r in client.getReceivers()}
    finally:
        await client.close()
        await peer.aclose()
        await avatar.aclose()
        for task in drained:
            task.cancel()


async def _until_reports(watched: dict[str, Watched], count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while any(len(w.reports) < count for w in watched.values()):
        assert time.monotonic() < deadline, {k: len(w.reports) for k, w in watched.items()}
        await asyncio.sleep(0.02)


async def test_reports_come_early_and_map_rtp_to_media_time(watched: dict[str, Watched]) -> None:
    assert rtcp.enabled()
    await _until_reports(watched, 4)
    for kind, w in watched.items():
        assert w.first is not None
        second_after_s = w.reports[1][0] - w.first[0]
        # aiortc alone: the second report 1-3 s after the sender starts.
        assert second_after_s < 0.5, f"{kind}: second sender report {second_after_s:.2f} s after media"
        # Media time, not send time: NTP advances exactly as the RTP clock does, report to report.
        rate = CLOCK_RATES[kind]
        for (_, ntp0, rtp0), (_, ntp1, rtp1) in zip(w.reports, w.reports[1:], strict=False):
            assert abs((ntp1 - ntp0) - ((rtp1 - rtp0) % 2**32) / rate) < 1e-4, (kind, w.reports)


def test_sender_reports_mode_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rtcp.MODE_ENV, "aiortc")
    assert not rtcp.enabled()
    monkeypatch.setenv(rtcp.MODE_ENV, "media-clock")
    assert rtcp.enabled()


async def test_the_first_video_frame_leaves_at_once_and_the_next_ones_after_the_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fractions import Fraction
    from types import SimpleNamespace

    slept: list[float] = []

    class _Asyncio:
        """rtcp's asyncio, recording its sleeps instead of sleeping (so no wall clock is involved)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def sleep(self, seconds: float) -> None:
            slept.append(seconds)

    monkeypatch.setattr(rtcp, "asyncio", _Asyncio())

    class Track:
        index = 0

        async def recv(self) -> Any:
            frame = SimpleNamespace(pts=self.index * 3000, time_base=Fraction(1, 90000))
            self.index += 1
            return frame

    async def next_encoded(codec: Any) -> None:
        return None

    sender = SimpleNamespace(kind="video", track=Track(), _next_encoded_frame=next_encoded)
    rtcp._SenderClock(rtcp.MediaClockReports(), sender)  # type: ignore[arg-type]
    await sender.track.recv()
    assert slept == []  # the first frame: not held
    await sender.track.recv()
    await sender.track.recv()
    # Returned at once by the track, each later frame waits for its release (one period per frame
    # since the first) plus the hold.
    assert len(slept) == 2 and all(s >= rtcp.VIDEO_HOLD_S for s in slept), slept
