"""RTCP sender reports on the engine's media clock, from a session's first packets on.

A browser lip-syncs a stream's audio and video only once it can map both tracks' RTP timestamps to one
wall clock, which it learns from RTCP sender reports (SR): WebRTC's stream synchroniser takes the
latest SR of each track once a second and needs two different ones per track before it has a
mapping. aiortc 1.16 sends a track's first SR 0.5-1.5 s after the sender starts and then one every
0.5-1.5 s, each stamped with the wall time at which the track's last packet left, so for the first
1-3 s of a session the browser plays each track on its own jitter buffer, and later SRs each carry
one packet's send jitter (encode time, the event loop, the audio's re-chunking into 20 ms packets).

MediaClockReports replaces a peer's senders' RTCP loops: each SR maps the last packet's RTP timestamp to
NTP = epoch + that packet's media time (its pts on the engine's clock, which audio and video share
sample-exactly), with one epoch for all the peer's senders, so the two mappings agree by construction.
The first SR goes out right after a track's first packet, then at EARLY_REPORTS_S, then every
REPORT_INTERVAL_S. SDES (CNAME) and the closing BYE are as aiortc sends them.

Reports alone do not move what Chromium shows in the first seconds (measured: `facecast bench
browser`): its synchroniser first acts ~5 s in and closes the gap slowly. The gap comes from its jitter
buffers (audio starts at NetEq's ~60 ms floor, video at ~12 ms), so each video frame is also held
VIDEO_HOLD_S before it is sent; the SRs still map its true media time, so the synchroniser sees the
tracks nearly aligned from the start and has little left to correct.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from facecast import settings

log = logging.getLogger(__name__)

# Delays between a track's first packet and its first SRs: two within 0.1 s give the browser a mapping
# before its first synchronisation pass; the later ones refine the fit while the session settles.
EARLY_REPORTS_S = (0.0, 0.1, 0.2, 0.4)
# Then one every 0.3-0.6 s (randomised as RFC 3550 6.3.1 asks): WebRTC's synchroniser takes one SR per
# track per pass, once a second, and needs a new one each time to refine its fit (aiortc's 0.5-1.5 s
# misses passes). An SR with SDES is ~60 bytes.
REPORT_INTERVAL_S = (0.3, 0.6)
# Each video frame leaves this long after the avatar released it (its audio leaves at once). Chromium
# starts a session with ~60 ms of audio in its jitter buffer (NetEq's floor) against ~12 ms of video,
# and its synchroniser first moves ~5 s in, by about half the gap per move: without the hold the mouth
# leads the sound by ~45 ms from the start. One frame at 30 fps: a 50 ms hold, tried in Chromium, made
# the first second's mouth lag the sound by ~29 ms (docs/benchmarks.md, Sync in the browser). A frame
# waits for its hold in the avatar's video queue (live.VIDEO_QUEUE_FRAMES, two), so a hold past about
# two frame periods less the encode time would drop frames.
VIDEO_HOLD_S = 0.033
MAX_HOLD_LAG_S = 0.1  # a frame this late for its hold: the avatar's clock moved on, and the hold follows
NTP_EPOCH_OFFSET_S = 2208988800  # 1900-01-01 to 1970-01-01
# FACECAST_SENDER_REPORTS=aiortc keeps aiortc's own reports and no video hold, as aiortc ships: `facecast
# bench browser` compares the two.
MODE_ENV = settings.SENDER_REPORTS.name

_PRIVATE = "_RTCRtpSender__"  # aiortc's name-mangled sender state read here
_STATE = ("rtp_timestamp", "packet_count", "octet_count", "cname", "rtcp_started", "rtcp_exited", "lsr")


def enabled() -> bool:
    """False when FACECAST_SENDER_REPORTS=aiortc asks for aiortc's own sender reports (and no hold)."""
    return settings.SENDER_REPORTS.get() != "aiortc"


def _ntp(wall_s: float) -> int:
    """A time.time() value as a 64-bit NTP timestamp."""
    seconds = wall_s + NTP_EPOCH_OFFSET_S
    return (int(seconds) << 32) | int((seconds % 1.0) * (1 << 32))


class MediaClockReports:
    """Sender reports for one peer connection's senders, on one media clock, and the video hold.
    attach() them before the connection starts sending (before the answer is applied)."""

    def __init__(self) -> None:
        self.epoch: float | None = None  # time.time() at media time 0, set by the first packet sent

    def attach(self, *senders: RTCRtpSender) -> bool:
        """Take over the senders' RTCP reports; False (aiortc's own kept, for all) if aiortc's layout
        changed."""
        for sender in senders:
            if sender.track is None or not all(hasattr(sender, _PRIVATE + name) for name in _STATE):
                log.warning("aiortc's RTP sender layout changed; keeping its own RTCP sender reports")
                return False
        for sender in senders:
            _SenderClock(self, sender)
        return True

    def epoch_for(self, media_s: float) -> float:
        if self.epoch is None:
            self.epoch = time.time() - media_s
        return self.epoch


class _SenderClock:
    """One sender's link between RTP timestamps and media time, its RTCP loop and, for video, the
    hold."""

    def __init__(self, reports: MediaClockReports, sender: RTCRtpSender) -> None:
        self._reports = reports
        self._sender = sender
        self._first_pts_s: float | None = None  # media time of the first frame the track gave
        self._first_rtp: int | None = None  # RTP timestamp of its packets
        self._clock_rate = 0
        self._first_sent = asyncio.Event()
        # aiortc looks both up on the instance when the sender starts (send()) and per frame.
        track = sender.track
        track_recv: Callable[[], Awaitable[Any]] = track.recv
        next_encoded = sender._next_encoded_frame

        hold_s = VIDEO_HOLD_S if sender.kind == "video" else 0.0
        released_at = 0.0  # event-loop time of media time 0, as the avatar releases frames

        async def recv() -> Any:
            nonlocal released_at
            frame = await track_recv()
            if frame.pts is None or frame.time_base is None:
                return frame
            pts_s = float(frame.pts * frame.time_base)
            now = asyncio.get_running_loop().time()
            if self._first_pts_s is None:
                # The first frame goes out at once: it starts the picture (time to first frame), and
                # what the hold aligns, the mouth with its sound, begins with speech, frames later.
                self._first_pts_s = pts_s
                released_at = now - pts_s
            elif hold_s:
                due = released_at + pts_s + hold_s
                if now > due + MAX_HOLD_LAG_S:
                    released_at = now - pts_s - hold_s
                elif due > now:
                    await asyncio.sleep(due - now)
            return frame

        async def next_encoded_frame(codec: RTCRtpCodecParameters) -> Any:
            # Called again only once the previous frame's packets are all sent: the first call that
            # finds packets sent finds the first frame's RTP timestamp.
            if self._first_rtp is None and self._get("packet_count") > 0:
                self._first_rtp = self._get("rtp_timestamp")
                self._clock_rate = codec.clockRate
                self._first_sent.set()
            return await next_encoded(codec)

        track.recv = recv  # type: ignore[method-assign]
        sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]
        sender._run_rtcp = self._run_rtcp  # type: ignore[method-assign]

    def _get(self, name: str) -> Any:
        return getattr(self._sender, _PRIVATE + name)

    def _set(self, name: str, value: Any) -> None:
        setattr(self._sender, _PRIVATE + name, value)

    def media_time_s(self, rtp_timestamp: int) -> float:
        """The media time of a packet this sender sent (after its first)."""
        assert self._first_rtp is not None and self._first_pts_s is not None
        return self._first_pts_s + ((rtp_timestamp - self._first_rtp) % (1 << 32)) / self._clock_rate

    def report(self) -> list[AnyRtcpPacket]:
        """An SR for the last packet sent, with SDES, as aiortc words them."""
        rtp_timestamp = self._get("rtp_timestamp")
        media_s = self.media_time_s(rtp_timestamp)
        ntp = _ntp(self._reports.epoch_for(media_s) + media_s)
        ssrc = self._sender._ssrc
        info = RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=rtp_timestamp,
            packet_count=self._get("packet_count"),
            octet_count=self._get("octet_count"),
        )
        packets: list[AnyRtcpPacket] = [RtcpSrPacket(ssrc=ssrc, sender_info=info)]
        # For aiortc's round-trip estimate from the receiver reports (LSR/DLSR).
        self._set("lsr", (ntp >> 16) & 0xFFFFFFFF)
        self._set("lsr_time", time.time())
        cname = self._get("cname")
        if cname is not None:
            packets.append(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, cname.encode())])]))
        return packets

    async def _run_rtcp(self) -> None:
        self._get("rtcp_started").set()
        try:
            await self._first_sent.wait()
            if self._first_pts_s is None:  # a track whose frames carry no pts: nothing to map
                log.warning("the %s track's frames have no pts; no RTCP sender reports", self._sender.kind)
                await asyncio.Event().wait()
            for delay in EARLY_REPORTS_S:
                await asyncio.sleep(delay)
                await self._sender._send_rtcp(self.report())
            while True:
                await asyncio.sleep(random.uniform(*REPORT_INTERVAL_S))
                await self._sender._send_rtcp(self.report())
        except asyncio.CancelledError:
            pass
        await self._sender._send_rtcp([RtcpByePacket(sources=[self._sender._ssrc])])
        self._get("rtcp_exited").set()
