"""Mapping received WebRTC media onto the sender's clock, as browsers do for lip sync (RTCP sender reports).

aiortc decodes frames with timestamps counted from each track's first packet and keeps the RTCP sender
reports to itself; `SenderClock` watches a receiver's packets to recover both. Used by whatever receives
a Facecast stream with aiortc: the Pipecat plugin's remote mode, its bench and the WebRTC tests.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

from aiortc.rtp import RtcpSrPacket

NTP_FRACTION = 2**32
REPORTS_KEPT = 8


class SenderClock:
    """One received track: media time → the sender's wall clock (seconds), and the receive latency."""

    def __init__(self, clock_rate: int) -> None:
        """A track whose RTP clock runs at `clock_rate` Hz (48000 for Opus, 90000 for video)."""
        self.clock_rate = clock_rate
        self._first_rtp: int | None = None
        self._reports: deque[tuple[float, float, int]] = deque(maxlen=REPORTS_KEPT)  # (arrival, NTP s, RTP)
        self._latencies: deque[float] = deque(maxlen=50)

    def watch(self, receiver: Any) -> None:
        """Observe an ``RTCRtpReceiver``'s packets (call before its track starts)."""
        handle_rtp, handle_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            if self._first_rtp is None:
                self._first_rtp = packet.timestamp
            await handle_rtp(packet, arrival_time_ms)

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                seconds = (ntp >> 32) + (ntp & 0xFFFFFFFF) / NTP_FRACTION
                self._reports.append((time.monotonic(), seconds, packet.sender_info.rtp_timestamp))
            await handle_rtcp(packet)

        receiver._handle_rtp_packet, receiver._handle_rtcp_packet = on_rtp, on_rtcp

    @property
    def ready(self) -> bool:
        """Whether media and a sender report have been seen, so that `sender_time` can answer."""
        return self._first_rtp is not None and bool(self._reports)

    def sender_time(self, pts: int, arrival: float) -> float | None:
        """Sender wall-clock seconds of decoded media time `pts` (None before the first report)."""
        if not self.ready:
            return None
        _, ntp, rtp = min(self._reports, key=lambda report: abs(report[0] - arrival))
        timestamp = (self._first_rtp + pts) % 2**32
        delta = (timestamp - rtp + 2**31) % 2**32 - 2**31
        return ntp + delta / self.clock_rate

    def note_arrival(self, pts: int, arrival: float) -> None:
        """Record how long a frame took to arrive (in the sender's clock, offset included)."""
        sent = self.sender_time(pts, arrival)
        if sent is not None:
            self._latencies.append(arrival - sent)

    @property
    def latency(self) -> float | None:
        """Median arrival − send time of recent frames (includes the clocks' offset), None if unknown."""
        return statistics.median(self._latencies) if self._latencies else None
