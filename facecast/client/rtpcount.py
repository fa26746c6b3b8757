"""Counting a WebRTC peer's received frames without decoding them, so that many bench clients cost little.

An aiortc receiver depacketises RTP into complete encoded frames (its jitter buffer groups packets by
RTP timestamp up to the marker bit) and hands each to a decoder thread through a queue. `count_frames`
replaces that queue on one receiver: each complete frame is timed and counted on arrival and never
decoded, while everything before it (SRTP, RTCP receiver reports, NACKs, REMB bandwidth estimates,
keyframe requests) runs as for any peer, so the server's sender sees an ordinary client.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Name-mangled private attribute of aiortc's RTCRtpReceiver (aiortc 1.16): the decoder thread's queue.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


@dataclass
class Arrivals:
    """Frames of one stream in arrival order: arrival time (time.monotonic, s) and RTP timestamp."""

    times: list[float] = field(default_factory=list)
    rtp_timestamps: list[int] = field(default_factory=list)

    def add(self, arrival: float, rtp_timestamp: int) -> None:
        self.times.append(arrival)
        self.rtp_timestamps.append(rtp_timestamp)

    def between(self, t0: float, t1: float) -> list[float]:
        """Arrival times in [t0, t1)."""
        a = np.asarray(self.times)
        return a[(a >= t0) & (a < t1)].tolist()


@dataclass(frozen=True)
class Gaps:
    """Inter-arrival gaps of one stream over a window."""

    frames: int
    largest_s: float  # NaN with fewer than two frames
    over_two_periods: int  # gaps longer than two frame periods: a viewer sees the picture stall


def frame_gaps(times: Sequence[float], period_s: float) -> Gaps:
    t = np.asarray(times, dtype=np.float64)
    if len(t) < 2:
        return Gaps(len(t), float("nan"), 0)
    d = np.diff(t)
    return Gaps(len(t), float(d.max()), int((d > 2 * period_s).sum()))


class CountingQueue:
    """Stands in for an aiortc receiver's decoder queue. A complete frame (codec, encoded frame) is
    recorded and dropped; None, which the receiver puts when it stops, still reaches the decoder thread,
    which has waited on `get` without work and now ends the track as usual."""

    def __init__(self, arrivals: Arrivals, on_frame: Callable[[], None] | None = None) -> None:
        self.arrivals = arrivals
        self._on_frame = on_frame
        self._stop: queue.Queue[None] = queue.Queue()

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:
            self._stop.put(None)
            return
        _codec, encoded_frame = item
        self.arrivals.add(time.monotonic(), int(encoded_frame.timestamp))
        if self._on_frame is not None:
            self._on_frame()

    def get(self) -> None:
        return self._stop.get()


def count_frames(receiver: Any, arrivals: Arrivals, on_frame: Callable[[], None] | None = None) -> None:
    """Make an aiortc RTCRtpReceiver count its frames into `arrivals` instead of decoding them. Call it
    before the remote description is applied (the receiver starts its decoder thread then)."""
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue):
        import aiortc

        raise RuntimeError(
            f"aiortc {aiortc.__version__}'s RTCRtpReceiver has no decoder queue where the bench expects "
            f"one ({_DECODER_QUEUE}); the counting clients need aiortc 1.16 (pip install 'aiortc==1.16.*')"
        )
    setattr(receiver, _DECODER_QUEUE, CountingQueue(arrivals, on_frame))
