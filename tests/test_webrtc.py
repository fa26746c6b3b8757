"""The WebRTC transport against a real aiortc client peer over loopback (SDP exchanged in-process)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiortc import (
    rtcrtpsender,
    sdp,
)
from aiortc.codecs.h264 import H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from aiortc.mediastreams import MediaStreamError

from facecast.avatars import load_renderer
from facecast.client import ReceivingPeer
from facecast.engine import Engine, EngineConfig, SegmentEnded, SegmentStarted
from facecast.engine.types import SegmentEvent
from facecast.hosts import webrtc
from facecast.hosts.live import LiveCore, VideoOut
from facecast.hosts.webrtc import (
    EVENT_BACKLOG,
    AvatarAudioTrack,
    AvatarPeer,
    EncodeMeter,
    bitrate_range,
    tune_encoders,
)

RATE = 16000
DARK_Y = 16 + 219 * 60 / 255  # luma 60 (what mouth_box() promises about the interior) in limited-range Y


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (0.5 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until cond() holds; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _steps(values: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(values)]


@dataclass
class Received:
    video: list[tuple[float, int, float]] = field(default_factory=list)  # arrival, pts, mouth dark fraction
    audio: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # arrival, pts, left channel
    sizes: set[tuple[int, int]] = field(default_factory=set)
    audio_rates: set[int] = field(default_factory=set)


class Client:
    """A browser stand-in (facecast.client's receiving peer): receive-only audio and video, and the
    negotiated events channel; each stream on the sender's clock, as a browser lines audio and video up."""

    def __init__(self, mouth_box: tuple[int, int, int, int]) -> None:
        self.box = mouth_box
        self.rx = Received()
        self.peer = ReceivingPeer(on_video=self._on_video, on_audio=self._on_audio, sender_clocks=True)
        self.pc, self.channel = self.peer.pc, self.peer.channel
        self.messages = self.peer.channel_events  # (arrival, event)
        self.clocks = self.peer.clocks

    async def connect(self, peer: AvatarPeer) -> str:
        answer = await peer.answer(await self.peer.create_offer(), "offer")
        await self.peer.accept_answer(answer.sdp, answer.type)
        return answer.sdp

    def _on_video(self, frame: av.VideoFrame, now: float) -> None:
        x0, y0, x1, y1 = self.box
        self.rx.sizes.add((frame.width, frame.height))
        luma = frame.to_ndarray()[: frame.height]  # the Y plane of the decoded I420 frame
        self.rx.video.append((now, frame.pts, float((luma[y0:y1, x0:x1] < DARK_Y).mean())))

    def _on_audio(self, frame: av.AudioFrame, now: float) -> None:
        self.rx.audio_rates.add(frame.sample_rate)
        left = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].copy()
        self.rx.audio.append((now, frame.pts, left))

    def events(self) -> list[dict[str, Any]]:
        return [m for _, m in self.messages]

    async def close(self) -> None:
        await self.peer.close()


@dataclass
class Session:
    avatar: LiveCore
    peer: AvatarPeer
    client: Client
    renderer_size: tuple[int, int]
    events: list[SegmentEvent]
    messages: list[dict[str, Any]]
    closed: list[float]
    connected: list[float]


SessionFactory = Callable[..., Session]


@pytest.fixture
async def sessions() -> AsyncIterator[SessionFactory]:
    made: list[Session] = []

    def make(
        *,
        codec: str = "VP8",
        fps: int = 30,
        aspect: str = "1:1",
        quality: str = "high",
        grace_s: float = 10.0,
    ) -> Session:
        renderer = load_renderer("ava", aspect=aspect, quality=quality)
        events: list[SegmentEvent] = []
        messages: list[dict[str, Any]] = []
        closed: list[float] = []
        connected: list[float] = []
        holder: list[AvatarPeer] = []

        def on_event(event: SegmentEvent) -> None:
            events.append(event)
            kind = "started" if isinstance(event, SegmentStarted) else "ended"
            extra = {"interrupted": event.interrupted} if isinstance(event, SegmentEnded) else {}
            holder[0].send_event({"type": f"agent.speak_{kind}", "segment_id": event.segment_id, **extra})

        engine = Engine(renderer, EngineConfig(fps=fps, out_rate=48000, tracker="energy"))
        avatar = LiveCore(engine, on_event=on_event)
        peer = AvatarPeer(
            avatar,
            codec=codec,  # type: ignore[arg-type]
            on_message=messages.append,
            on_connected=lambda: connected.append(time.monotonic()),
            on_closed=lambda: closed.append(time.monotonic()),
            grace_s=grace_s,
        )
        holder.append(peer)
        session = Session(
            avatar,
            peer,
            Client(renderer.mouth_box()),
            (renderer.width, renderer.height),
            events,
            messages,
            closed,
            connected,
        )
        made.append(session)
        return session

    yield make
    for s in made:
        await s.client.close()
        await s.peer.aclose()
        await s.avatar.aclose()


def _negotiated_video_codec(answer_sdp: str) -> str:
    video = next(m for m in sdp.SessionDescription.parse(answer_sdp).media if m.kind == "video")
    return video.rtp.codecs[0].mimeType


@pytest.mark.parametrize(
    ("codec", "fps", "aspect", "quality"), [("VP8", 30, "1:1", "high"), ("H264", 25, "4:3", "low")]
)
async def test_streams_video_and_audio_on_the_engine_clock(
    sessions: SessionFactory, codec: str, fps: int, aspect: str, quality: str
) -> None:
    s = sessions(codec=codec, fps=fps, aspect=aspect, quality=quality)
    await s.avatar.start()
    began = time.monotonic()
    answer = await s.client.connect(s.peer)
    assert _negotiated_video_codec(answer) == f"video/{codec}"
    assert "a=candidate" in answer  # gathered before the answer was returned
    await _until(lambda: len(s.client.rx.video) >= 30 and len(s.client.rx.audio) >= 50)
    cpu, wall = time.process_time(), time.monotonic()
    await _until(lambda: len(s.client.rx.video) >= 60)
    cpu_share = (time.process_time() - cpu) / (time.monotonic() - wall)
    stats = await s.peer.stats()

    rx = s.client.rx
    assert rx.sizes == {s.renderer_size}
    step = 90000 // fps
    video_steps = _steps([pts for _, pts, _ in rx.video])
    assert all(d > 0 and d % step == 0 for d in video_steps), set(video_steps)
    assert step in video_steps
    assert rx.audio_rates == {48000}
    audio_steps = _steps([pts for _, pts, _ in rx.audio])
    assert all(d > 0 and d % 960 == 0 for d in audio_steps), set(audio_steps)
    assert not any(np.any(a) for _, _, a in rx.audio)  # idle: silence, but it flows
    assert len(s.connected) == 1 and not s.closed
    assert s.peer.connection_state == "connected"
    assert stats["video_codec"] == codec and stats["connection_state"] == "connected"
    assert stats["video_frames_sent"] >= len(rx.video)
    assert stats["video_bytes_sent"] > 0 and stats["audio_packets_sent"] >= len(rx.audio)
    assert stats["encode_ms"] is not None and stats["encode_ms"] > 0
    assert stats["first_video_sent_at"] >= s.avatar.stats.first_frame_at
    print(
        f"\n{codec} {s.renderer_size[0]}x{s.renderer_size[1]}@{fps}: first frame "
        f"{1000 * (rx.video[0][0] - began):.0f} ms after the offer; encode {stats['encode_ms']:.2f} ms "
        f"wall, {stats['encode_cpu_ms']:.2f} ms CPU per frame; render {s.avatar.stats.engine_ms:.2f} ms; "
        f"process CPU {100 * cpu_share:.0f}% of one core (render + encode + decode, both peers)"
    )


async def test_frames_are_encoded_on_the_event_loop_and_a_pli_gets_a_keyframe(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int, bool]] = []  # (encoder, thread, keyframe asked)

    def recording(cls: type[Any]) -> Callable[..., Any]:
        encode = cls.encode

        def encode_recorded(self: Any, frame: Any, force_keyframe: bool = False) -> Any:
            calls.append((cls.__name__, threading.get_ident(), force_keyframe))
            return encode(self, frame, force_keyframe)

        return encode_recorded

    for cls in (webrtc._TunedVp8Encoder, webrtc._TunedOpusEncoder):
        monkeypatch.setattr(cls, "encode", recording(cls))
    s = sessions()
    await s.avatar.start()
    await s.client.connect(s.peer)
    await _until(lambda: len(s.client.rx.video) >= 20)
    loop_thread = threading.get_ident()
    assert {name for name, _, _ in calls} == {"_TunedVp8Encoder", "_TunedOpusEncoder"}
    assert {thread for _, thread, _ in calls} == {loop_thread}  # no executor hand-off
    assert not any(keyframe for _, _, keyframe in calls)
    # The receiver reports a lost picture: the next frame the sender encodes is a keyframe.
    video_sender = next(t.sender for t in s.peer._pc.getTransceivers() if t.kind == "video")
    video_receiver = next(r for r in s.client.pc.getReceivers() if r.track.kind == "video")
    asked = len(calls)
    await video_receiver._send_rtcp_pli(video_sender._ssrc)
    await _until(lambda: any(keyframe for _, _, keyframe in calls[asked:]))
    received = len(s.client.rx.video)
    await _until(lambda: len(s.client.rx.video) >= received + 10)  # and the stream goes on


def _timeline(stamped: list[tuple[float, int]], clock: int) -> Callable[[int], float]:
    """Map a stream's RTP timestamps to wall time the way a receiver without sync would play it: at
    the smallest delay any of its frames arrived with."""
    pts0 = stamped[0][1]
    base = min(arrival - ((pts - pts0) % (1 << 32)) / clock for arrival, pts in stamped)
    return lambda pts: base + ((pts - pts0) % (1 << 32)) / clock


async def test_speech_moves_the_mouth_and_an_interrupt_brings_it_back_to_rest(
    sessions: SessionFactory,
) -> None:
    s = sessions(codec="VP8", fps=30)
    sent: list[int] = []  # engine frame index of each video frame handed to the track, in order
    next_video = s.avatar.next_video

    async def spy() -> VideoOut:
        out = await next_video()
        sent.append(out.index)
        return out

    s.avatar.next_video = spy  # type: ignore[method-assign]
    await s.avatar.start()
    await s.client.connect(s.peer)
    rx = s.client.rx
    await _until(lambda: len(rx.video) >= 15)
    idle = max(d for _, _, d in rx.video)

    pushed_at = time.monotonic()
    segment = await s.avatar.push_audio(_tone(3.0), RATE)
    await s.avatar.end_segment()
    await _until(lambda: sum(d > idle + 0.02 for _, _, d in rx.video) >= 8)
    cleared_at = time.monotonic()
    released_at_call = s.avatar.stats.frames  # frames from this index on are released after the call
    await s.avatar.clear()
    await _until(lambda: any(e.get("type") == "agent.speak_ended" for e in s.client.events()))
    step = 90000 // 30

    def indices() -> list[int]:  # engine frame index of each received frame, by its pts
        return [sent[0] + pts // step for _, pts, _ in rx.video]

    await _until(lambda: sum(i >= released_at_call for i in indices()) >= 12)

    # Data channel: the avatar's segment events, in order.
    assert s.client.events() == [
        {"type": "agent.speak_started", "segment_id": segment},
        {"type": "agent.speak_ended", "segment_id": segment, "interrupted": True},
    ]
    assert [type(e) for e in s.events] == [SegmentStarted, SegmentEnded]
    # Speech opened the mouth in the received video.
    speaking = [d for arrival, _, d in rx.video if pushed_at < arrival < cleared_at]
    assert max(speaking) > idle + 0.05
    # After the interrupt: frames produced before it are not sent, the first one drawn after it is
    # half-way, the next at rest, for good. Received frames are matched to engine frames by pts.
    received = indices()
    assert received == sent[: len(received)]
    after = [d for i, (_, _, d) in zip(received, rx.video, strict=True) if i >= released_at_call]
    assert all(d <= idle + 0.005 for d in after[1:]), after
    # And the sound stopped: the last 10 received audio frames are silent.
    assert not any(np.any(a) for _, _, a in rx.audio[-10:])

    # Measured, not asserted: when the first open mouth and the first sound arrived, and the A/V offset
    # a browser would show: both placed on the sender's clock through their RTCP sender reports.
    await _until(lambda: all(clock.ready for clock in s.client.clocks.values()))
    first_open = next((a, pts) for a, pts, d in rx.video if a > pushed_at and d > idle + 0.02)
    sound = next((a, pts, samples) for a, pts, samples in rx.audio if np.abs(samples).max() > 1000)
    sound_at = s.client.clocks["audio"].sender_time(sound[1], sound[0])
    open_at = s.client.clocks["video"].sender_time(first_open[1], first_open[0])
    assert sound_at is not None and open_at is not None
    onset = sound_at + int(np.argmax(np.abs(sound[2]) > 1000)) / 48000
    offset_ms = 1000 * (open_at - onset)
    print(
        f"\nspeech: push -> first open mouth received {1000 * (first_open[0] - pushed_at):.0f} ms, "
        f"push -> first sound received {1000 * (sound[0] - pushed_at):.0f} ms (aiortc's receiver holds "
        f"4 audio packets), push -> first speech frame released "
        f"{s.avatar.stats.audio_to_video_latency_ms[0]:.0f} ms; "
        f"A/V offset by sender reports (mouth opens - sound starts) {offset_ms:+.0f} ms"
    )


async def test_client_closing_fires_on_closed_once_and_ends_the_tracks(sessions: SessionFactory) -> None:
    s = sessions(quality="low")
    await s.avatar.start()
    await s.client.connect(s.peer)
    await _until(lambda: len(s.client.rx.video) >= 3)
    await s.client.close()
    await _until(lambda: bool(s.closed))
    await s.peer.aclose()
    await s.peer.aclose()
    assert len(s.closed) == 1
    assert s.peer.video.readyState == "ended" and s.peer.audio.readyState == "ended"
    assert s.peer.connection_state == "closed"
    assert not s.avatar.closed  # the avatar belongs to the session, not to the peer


async def test_an_answered_offer_that_never_connects_fires_on_closed_after_the_grace(
    sessions: SessionFactory,
) -> None:
    s = sessions(quality="low", grace_s=0.3)
    await s.client.pc.setLocalDescription(await s.client.pc.createOffer())
    await s.peer.answer(s.client.pc.localDescription.sdp, "offer")  # the client never applies it
    await _until(lambda: bool(s.closed))
    assert not s.connected
    await s.peer.aclose()
    assert len(s.closed) == 1


async def test_aclose_does_not_fire_on_closed(sessions: SessionFactory) -> None:
    s = sessions(quality="low", grace_s=0.2)
    await s.avatar.start()
    await s.client.connect(s.peer)
    await _until(lambda: len(s.client.rx.video) >= 2)
    await s.peer.aclose()
    await asyncio.sleep(0.4)
    assert not s.closed
    assert s.peer.video.readyState == "ended" and s.peer.audio.readyState == "ended"
    s.peer.send_event({"type": "late"})  # ignored once closed
    await s.client.close()
    await s.avatar.aclose()
    await asyncio.sleep(0.05)  # let cancelled tasks finish unwinding
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not left, left  # nothing of the tracks, the peer or the avatar keeps running


async def test_events_wait_for_the_channel_and_client_messages_reach_on_message(
    sessions: SessionFactory,
) -> None:
    s = sessions(quality="low")
    for i in range(EVENT_BACKLOG + 5):
        s.peer.send_event({"type": "early", "n": i})
    await s.avatar.start()
    await s.client.connect(s.peer)
    await _until(lambda: len(s.client.messages) >= EVENT_BACKLOG)
    s.peer.send_event({"type": "late"})
    s.client.channel.send(json.dumps({"type": "session.keep_alive"}))
    s.client.channel.send("[1, 2]")
    s.client.channel.send("not json")
    s.client.channel.send(json.dumps({"type": "agent.interrupt", "event_id": "x"}))
    await _until(lambda: len(s.messages) >= 2 and len(s.client.messages) >= EVENT_BACKLOG + 3)

    received = [m for m in s.client.events() if m["type"] != "error"]
    assert [m["n"] for m in received[:-1]] == list(range(5, EVENT_BACKLOG + 5))  # oldest dropped
    assert received[-1] == {"type": "late"}
    # The two messages that are no JSON object are answered, not passed on.
    errors = [m for m in s.client.events() if m["type"] == "error"]
    assert [e["code"] for e in errors] == [4000, 4000]
    assert "JSON object" in errors[0]["message"] and "not JSON" in errors[1]["message"]
    assert (await s.peer.stats())["events_dropped"] == 5
    assert s.messages == [{"type": "session.keep_alive"}, {"type": "agent.interrupt", "event_id": "x"}]


async def test_peer_rejects_bad_arguments(sessions: SessionFactory) -> None:
    s = sessions(quality="low")
    with pytest.raises(ValueError, match="codec"):
        AvatarPeer(s.avatar, codec="AV1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offer"):
        await s.peer.answer("v=0\r\n", "answer")


@pytest.mark.parametrize(("out_rate", "fps"), [(16000, 30), (24000, 25)])
async def test_audio_track_rechunks_into_20ms_frames_on_the_output_sample_clock(
    out_rate: int, fps: int
) -> None:
    avatar = LiveCore(Engine(None, EngineConfig(fps=fps, out_rate=out_rate, tracker="energy")))
    track = AvatarAudioTrack(avatar)
    try:
        first = asyncio.create_task(track.recv())
        await asyncio.sleep(0)
        await avatar.start()
        await avatar.push_audio(_tone(0.3), RATE)
        await avatar.end_segment()
        frames = [await first] + [await track.recv() for _ in range(29)]
    finally:
        await avatar.aclose()
    chunk = out_rate // 50
    assert all(f.samples == chunk and f.sample_rate == out_rate for f in frames)
    assert all(f.time_base == Fraction(1, out_rate) and f.format.name == "s16" for f in frames)
    assert [f.pts for f in frames] == [i * chunk for i in range(30)]
    assert any(np.any(f.to_ndarray()) for f in frames)  # the speech is in there
    with pytest.raises(MediaStreamError):  # the avatar is closed: end of stream for aiortc
        await track.recv()
    assert track.readyState == "ended"


@pytest.mark.parametrize(("mime", "fps"), [("video/VP8", 25), ("video/VP8", 30), ("video/H264", 25)])
def test_tuned_encoders_keep_exact_timestamps_decode_and_meter(mime: str, fps: int) -> None:
    tune_encoders()
    tune_encoders()
    params = rtcrtpsender.RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96)
    encoder = rtcrtpsender.get_encoder(params)
    stock = Vp8Encoder if mime == "video/VP8" else H264Encoder
    assert isinstance(encoder, stock) and type(encoder) is not stock
    renderer = load_renderer("ava", quality="medium")
    engine = Engine(renderer, EngineConfig(fps=fps, tracker="energy"))
    engine.push_audio(_tone(0.5), RATE)
    meter = EncodeMeter()
    decoder = av.CodecContext.create("vp8" if mime == "video/VP8" else "h264", "r")
    stamps, decoded = [], 0
    for i in range(12):
        rgb = engine.next_frame().video
        assert rgb is not None
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base, frame.opaque = i * 90000 // fps, Fraction(1, 90000), meter
        payloads, stamp = encoder.encode(frame, force_keyframe=i == 0)
        stamps.append(stamp)
        decoded += _decode(decoder, mime, payloads)
    assert stamps == [i * 90000 // fps for i in range(12)]
    assert decoded >= 10
    assert meter.frames == 12 and meter.mean_ms is not None and meter.mean_ms > 0
    low, start, high = bitrate_range(384, 384)
    assert encoder.target_bitrate == start
    encoder.target_bitrate = 10**9
    assert encoder.target_bitrate == high
    encoder.target_bitrate = 1
    assert encoder.target_bitrate == low
    opus = rtcrtpsender.RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    audio = rtcrtpsender.get_encoder(opus)
    assert type(audio).__name__ == "_TunedOpusEncoder"


def _decode(decoder: Any, mime: str, payloads: list[bytes]) -> int:
    """Depacketize one frame's RTP payloads the way aiortc's receiver does, and decode it."""
    depayload = vp8_depayload if mime == "video/VP8" else h264_depayload
    data = b"".join(depayload(p) for p in payloads)
    return len(decoder.decode(av.Packet(data))) if data else 0


def test_bitrate_range_scales_with_the_frame_size() -> None:
    small, square, large = bitrate_range(256, 256), bitrate_range(512, 512), bitrate_range(960, 720)
    assert small[0] >= 100_000
    for r in (small, square, large):
        assert r[0] < r[1] < r[2]
    assert small[1] < square[1] < large[1]
    assert square[2] / square[1] == pytest.approx(0.25 / 0.08, rel=0.01)


def test_mdns_candidates_are_dropped_from_offers() -> None:
    from facecast.hosts.webrtc import without_mdns_candidates

    sdp = (
        "v=0\r\n"
        "a=candidate:1 1 udp 2113937151 0d5e5fc9-d90e-4e18-8f94-763ca2d95aeb.local 51165 typ host\r\n"
        "a=candidate:2 1 udp 2113937151 192.168.1.20 51166 typ host\r\n"
        "a=candidate:3 1 udp 1677729535 203.0.113.7 40000 typ srflx raddr 0.0.0.0 rport 0\r\n"
        "a=end-of-candidates\r\n"
    )
    kept = without_mdns_candidates(sdp)
    assert ".local" not in kept
    assert (
        "192.168.1.20 51166" in kept
        and "203.0.113.7 40000" in kept
        and kept.endswith("a=end-of-candidates\r\n")
    )
