"""A room participant that watches an avatar the way a browser frontend would, and measures it.

`RoomViewer` joins with auto-subscribe, receives the avatar's audio and video tracks over the SFU, and
records on one clock (time.monotonic) what arrived: every video frame with the mouth's motion inside
the avatar's mouth box, the received audio's level in 10 ms steps, and the `session.state` packets.
The LiveKit tests and `facecast bench livekit` both read their figures from it.

    viewer = RoomViewer(mouth_box=load_renderer("ava", quality="low").mouth_box())
    await viewer.connect(url, token)
    await viewer.wait_for(lambda: viewer.first_video_at is not None)
    viewer.fps(since=t0), viewer.av_offset_ms(t0, t1), viewer.speech_after(t)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from livekit import rtc

from facecast.client.measure import av_offset_ms as lag_ms
from facecast.client.measure import mouth_open_from_pixels
from facecast.hosts.livekit.names import (
    ATTRIBUTE_PUBLISH_ON_BEHALF,
    AUDIO_TRACK_NAME,
    SESSION_STATE_TOPIC,
    VIDEO_TRACK_NAME,
)

AUDIO_STEP_S = 0.01  # the level is recorded per 10 ms of received audio
SPEECH_RMS = 200.0  # int16 RMS above this is speech (the avatar's silence is exact zeros)


@dataclass
class VideoSample:
    at: float  # arrival, time.monotonic()
    mouth_motion: float  # mean absolute luma change in the mouth box since the previous frame
    mouth_open: float  # fraction of dark pixels in the mouth box (facecast.bench.metrics)


@dataclass
class AudioSample:
    at: float
    rms: float  # int16 RMS of 10 ms


@dataclass
class Published:
    participant: str
    track: str
    kind: str  # "audio" | "video"
    on_behalf_of: str | None  # the publisher's lk.publish_on_behalf attribute
    at: float


@dataclass
class StatePacket:
    at: float
    sender: str
    state: dict[str, str]


class RoomViewer:
    """Subscribes to everything in a room and records what the avatar's tracks deliver.

    `mouth_box` (x0, y0, x1, y1, in the avatar's video frame) enables the mouth-motion metric; without it
    video frames are only counted. `publisher` limits the recording to one participant's tracks."""

    def __init__(
        self, *, mouth_box: tuple[int, int, int, int] | None = None, publisher: str | None = None
    ) -> None:
        self.room = rtc.Room()
        self.mouth_box = mouth_box
        self.publisher = publisher
        self.published: list[Published] = []
        self.states: list[StatePacket] = []
        self.video: list[VideoSample] = []
        self.audio: list[AudioSample] = []
        self.first_video_at: float | None = None
        self.first_audio_at: float | None = None
        self._last_mouth: np.ndarray | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.room.on("track_subscribed", self._on_track)
        self.room.on("data_received", self._on_data)

    async def connect(self, url: str, token: str) -> None:
        await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.room.disconnect()

    # -- what arrived -----------------------------------------------------------------------------------
    def state_values(self, sender: str | None = None) -> list[dict[str, str]]:
        return [s.state for s in self.states if sender is None or s.sender == sender]

    def tracks_of(self, participant: str) -> set[str]:
        return {p.track for p in self.published if p.participant == participant}

    def fps(self, since: float, until: float | None = None) -> float:
        """Video frames received per second between two instants (default: until the last frame)."""
        times = [v.at for v in self.video if v.at >= since and (until is None or v.at <= until)]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def largest_video_gap(self, since: float, until: float | None = None) -> float:
        times = [v.at for v in self.video if v.at >= since and (until is None or v.at <= until)]
        return float(np.max(np.diff(times))) if len(times) >= 2 else 0.0

    def speech_after(self, t: float, until: float | None = None) -> float:
        """Seconds of speech-level audio received in (t, until]."""
        n = sum(1 for a in self.audio if a.at > t and (until is None or a.at <= until) and a.rms > SPEECH_RMS)
        return n * AUDIO_STEP_S

    def last_speech_at(self) -> float | None:
        loud = [a.at for a in self.audio if a.rms > SPEECH_RMS]
        return loud[-1] if loud else None

    def first_speech_at(self, after: float = 0.0) -> float | None:
        return next((a.at for a in self.audio if a.at > after and a.rms > SPEECH_RMS), None)

    def mouth_motion(self, since: float, until: float) -> float:
        """Mean mouth motion over the video frames received in [since, until]."""
        values = [v.mouth_motion for v in self.video if since <= v.at <= until]
        return float(np.mean(values)) if values else 0.0

    def av_offset_ms(self, since: float, until: float, rate_hz: float = 100.0) -> float:
        """How much later the mouth opens than the sound is heard, from arrival times alone (positive:
        video late). Both tracks are put on one grid: the audio level and the mouth's opening (dark
        pixels, as the offline lip-sync bench reads it), the latter held between frames; the lag of
        best correlation is the offset."""
        grid = np.arange(since, until, 1.0 / rate_hz)
        audio = [(a.at, a.rms) for a in self.audio if since - 1 <= a.at <= until + 1]
        video = [
            (v.at, v.mouth_open)
            for v in self.video
            if since - 1 <= v.at <= until + 1 and not np.isnan(v.mouth_open)
        ]
        if len(audio) < 10 or len(video) < 10:
            raise ValueError("not enough audio and video received to measure an offset")
        at, av = np.array(audio).T
        vt, vv = np.array(video).T
        level = np.interp(grid, at, av)
        idx = np.clip(np.searchsorted(vt, grid, side="right") - 1, 0, len(vv) - 1)
        return lag_ms(level, vv[idx], rate_hz, max_lag_ms=300.0)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the viewer waited {timeout:.0f} s for {what or 'a condition'}")
            await asyncio.sleep(0.02)

    # -- room events ------------------------------------------------------------------------------------
    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic != SESSION_STATE_TOPIC:
            return
        sender = packet.participant.identity if packet.participant else ""
        with contextlib.suppress(ValueError):
            self.states.append(StatePacket(time.monotonic(), sender, json.loads(packet.data)))

    def _on_track(
        self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        kind = "video" if track.kind == rtc.TrackKind.KIND_VIDEO else "audio"
        self.published.append(
            Published(
                participant.identity,
                track.name,
                kind,
                participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF),
                time.monotonic(),
            )
        )
        if self.publisher is not None and participant.identity != self.publisher:
            return
        if track.name == VIDEO_TRACK_NAME:
            self._spawn(self._read_video(rtc.VideoStream(track)))
        elif track.name == AUDIO_TRACK_NAME:
            self._spawn(self._read_audio(rtc.AudioStream(track, sample_rate=48000, num_channels=1)))

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_video(self, stream: rtc.VideoStream) -> None:
        async for event in stream:
            now = time.monotonic()
            if self.first_video_at is None:
                self.first_video_at = now
            self.video.append(VideoSample(now, *self._mouth(event.frame)))
        await stream.aclose()

    async def _read_audio(self, stream: rtc.AudioStream) -> None:
        pending = np.zeros(0, np.int16)
        step = int(48000 * AUDIO_STEP_S)
        async for event in stream:
            now = time.monotonic()
            if self.first_audio_at is None:
                self.first_audio_at = now
            pending = np.concatenate([pending, np.frombuffer(bytes(event.frame.data), np.int16)])
            n = len(pending) // step
            for k in range(n):
                chunk = pending[k * step : (k + 1) * step].astype(np.float64)
                # the chunks of one frame arrived together; spread them back over the frame's span
                self.audio.append(
                    AudioSample(now - (n - 1 - k) * AUDIO_STEP_S, float(np.sqrt(np.mean(chunk**2))))
                )
            pending = pending[n * step :]
        await stream.aclose()

    def _mouth(self, frame: rtc.VideoFrame) -> tuple[float, float]:
        if self.mouth_box is None:
            return 0.0, 0.0
        x0, y0, x1, y1 = self.mouth_box
        if frame.type != rtc.VideoBufferType.I420:
            frame = frame.convert(rtc.VideoBufferType.I420)
        luma = np.frombuffer(bytes(frame.data), np.uint8)[: frame.width * frame.height]
        plane = luma.reshape(frame.height, frame.width)
        if frame.width < x1 or frame.height < y1:
            # not the avatar's size: the SFU sent a lower simulcast layer for a moment
            self._last_mouth = None
            return 0.0, float("nan")
        crop = plane[y0:y1, x0:x1].astype(np.float32)
        last, self._last_mouth = self._last_mouth, crop
        motion = 0.0 if last is None or last.shape != crop.shape else float(np.abs(crop - last).mean())
        return motion, mouth_open_from_pixels(plane, self.mouth_box)
