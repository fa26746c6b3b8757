"""Standalone WebRTC transport: a LiveCore streamed to one client over aiortc.

One AvatarPeer per session: an RTCPeerConnection that answers the client's offer with two send-only
tracks fed by the avatar and one data channel for events.

Timestamps come from the engine's clock, not from aiortc's (which assumes 30 fps video): video frame i
has pts i * 90000 / fps in time base 1/90000 (exact at 25 and 30 fps); audio is sent in 20 ms frames
whose pts is their first output sample, in time base 1/out_rate. aiortc's Opus encoder resamples
anything to 48 kHz stereo, but it stamps all the packets one encode() call returns with a single RTP
timestamp, so each call must yield exactly one 20 ms packet: hence the re-chunking. A 48 kHz engine
(`EngineConfig(out_rate=48000)`) spares it the resampling.

Browser clients create the same data channel themselves, without an extra round trip:

    const events = pc.createDataChannel("events", {negotiated: true, id: 0});

before `createOffer()` (the offer must contain the data channel's m-line). Both directions carry one
JSON object per message. The answer carries every ICE candidate (aiortc gathers them all in
setLocalDescription), so clients need no trickle ICE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

import av
import cv2
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCSessionDescription,
    rtcrtpsender,
)
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.g711 import PcmaEncoder, PcmuEncoder
from aiortc.codecs.g722 import G722Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, convert_timebase
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription
from av.frame import Frame
from av.video.codeccontext import VideoCodecContext

from facecast.bounded_json import MessageRefused, parse_message
from facecast.hosts import rtcp
from facecast.hosts.live import AudioOut, AvatarClosed, LiveCore, VideoOut
from facecast.protocol import CODE_BAD_REQUEST, DATA_CHANNEL_LABEL, ERROR, Encoding

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
AUDIO_FRAMES_PER_S = 50  # 20 ms: one Opus packet per frame
VIDEO_CODECS: tuple[Encoding, ...] = ("VP8", "H264")
EVENT_BACKLOG = 256  # events queued while the data channel is not open yet; the oldest go first
DEFAULT_GRACE_S = 10.0

T = TypeVar("T")

# Encoder settings (see tune_encoders). CPU per 512² avatar frame on the 2-core build machine: x264 as
# aiortc ships it (preset medium) 6.6-7.3 ms, ultrafast + zerolatency 0.8-1.05 ms; VP8 as shipped
# (cpu-used -6, temporal denoiser on) 2.1-3.7 ms, cpu-used 16 without the denoiser 1.15-1.5 ms. Luma
# PSNR stays above 46 dB at the start bitrate.
X264_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "level": "31"}
VP8_CPU_USED = "16"
# Macroblocks whose difference from the reference is below this SAD are coded as unchanged: most of an
# avatar frame (backdrop, torso) is static, and libvpx then skips their search. `facecast bench frames`:
# VP8 encode -25..-35 % against aiortc's 1; luma PSNR of decoded frames 49-51 dB either way (512²).
VP8_STATIC_THRESHOLD = "500"
# Opus as aiortc ships it upmixes to stereo and resamples to 48 kHz; the avatar's voice is mono and
# libopus takes 8-48 kHz input itself. Mono at the engine's rate, same bitrate: -40..-50 % CPU per packet.
OPUS_BITRATE = 96_000
OPUS_CLOCK = 48000  # Opus's RTP clock, whatever the input rate
OPUS_INPUT_RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus encodes without resampling
# Silent 20 ms frames encoded in a row before the silence packet is reused (libopus settles after 2).
OPUS_SILENCE_SETTLE = 5
X264_FRAME_RATE = 30  # nominal; rate control follows the frames' pts
# Bits per pixel at 30 fps (min, start, max): 512² → 240 k / 630 k / 2.0 Mbit/s. aiortc's fixed ranges
# (VP8 0.25-1.5 M, H.264 0.5-3 M) over-spend on small frames and starve 720p.
BPP_RANGE = (0.03, 0.08, 0.25)
MIN_BITRATE = 100_000
# One thread per encoder: a server's parallelism is its sessions (encoder threads would only compete
# with them), a 512² frame takes ~1 ms on one, and the EncodeMeter's thread CPU time then covers it all.
ENCODER_THREADS = 1


# -- encoders -----------------------------------------------------------------------------------------
class EncodeMeter:
    """Time spent in a track's video encoder; the tuned encoders find it in `VideoFrame.opaque`.

    Wall time is the latency the encoder adds (it includes waiting for a core or the GIL on a busy
    machine); CPU time is what it costs."""

    def __init__(self, window: int = 100) -> None:
        self.frames = 0
        self._wall: deque[float] = deque(maxlen=window)
        self._cpu: deque[float] = deque(maxlen=window)

    def record(self, wall_s: float, cpu_s: float) -> None:
        self.frames += 1
        self._wall.append(wall_s)
        self._cpu.append(cpu_s)

    @property
    def mean_ms(self) -> float | None:
        """Mean wall time per frame over the last `window` frames, None before the first."""
        return _mean_ms(self._wall)

    @property
    def mean_cpu_ms(self) -> float | None:
        """Mean CPU time of the encoding thread per frame over the last `window` frames."""
        return _mean_ms(self._cpu)


def _mean_ms(values: deque[float]) -> float | None:
    recent = list(values)  # a snapshot: the encoder thread appends concurrently
    return 1000.0 * sum(recent) / len(recent) if recent else None


def bitrate_range(width: int, height: int) -> tuple[int, int, int]:
    """(min, start, max) video bitrate in bit/s for a frame size."""
    pixel_rate = width * height * 30
    low, start, high = (max(MIN_BITRATE, int(pixel_rate * bpp)) for bpp in BPP_RANGE)
    return low, start, high


@contextlib.contextmanager
def _metered(frame: Frame) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        meter = frame.opaque
        if isinstance(meter, EncodeMeter):
            meter.record(time.perf_counter() - wall, time.thread_time() - cpu)


class _SizedBitrate:
    """target_bitrate within bitrate_range() of the frame size; REMB estimates only move it inside."""

    codec: VideoCodecContext | None
    _size: tuple[int, int] = (0, 0)
    _requested: int | None = None

    @property
    def target_bitrate(self) -> int:
        low, start, high = bitrate_range(*self._size)
        return start if self._requested is None else min(max(self._requested, low), high)

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._requested = bitrate

    def _prepare(self, frame: av.VideoFrame, create: Callable[[int, int, int], VideoCodecContext]) -> None:
        """Open our own codec context where aiortc would open (or reopen) its own: first frame, size
        change, or a bitrate more than 10% off. aiortc's encode() then finds it current and uses it."""
        self._size = (frame.width, frame.height)
        c = self.codec
        if (
            c is None
            or (c.width, c.height) != self._size
            or abs(self.target_bitrate - c.bit_rate) / c.bit_rate > 0.1
        ):
            self.codec = create(frame.width, frame.height, self.target_bitrate)


# Both contexts use the RTP clock as time base. PyAV rebases each frame's pts to the codec's time base
# in place, and aiortc's VP8 encoder reads the RTP timestamp afterwards: with libvpx's default
# 1/1000000, 30 fps frames land one tick early (2999, 5999, …). For x264, aiortc's 1/30 puts 25 fps
# frames on a 30 fps grid (pts 0, 1, 2, 4, 5), which its rate control then sees.
def _x264_context(width: int, height: int, bitrate: int) -> VideoCodecContext:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.framerate = Fraction(X264_FRAME_RATE, 1)
    codec.time_base = VIDEO_TIME_BASE
    codec.options = dict(X264_OPTIONS)
    codec.profile = "Baseline"  # as aiortc: what its SDP (profile-level-id 42…) announces
    codec.thread_count = ENCODER_THREADS
    return codec


def _vp8_context(width: int, height: int, bitrate: int) -> VideoCodecContext:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.time_base = VIDEO_TIME_BASE
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    # aiortc's CBR settings, with a fixed high speed and no temporal denoiser (the avatar is drawn,
    # there is no noise to remove).
    codec.options = {
        "bufsize": str(bitrate),
        "cpu-used": VP8_CPU_USED,
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "noise-sensitivity": "0",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": VP8_STATIC_THRESHOLD,
        "undershoot-pct": "100",
    }
    codec.thread_count = ENCODER_THREADS
    return codec


class EncodeWhereSent(NamedTuple):
    """A track's frame as its sender gets it when encoding happens on the event loop (see
    encode_where_sent): aiortc passes anything that is not an av.Frame to the encoder's pack()."""

    frame: Frame
    keyframe: bool  # the receiver asked for one (PLI / FIR) since the previous frame

    # What hosts/rtcp.py's hold and sender reports read from a track's frames.
    @property
    def pts(self) -> int | None:
        return self.frame.pts

    @property
    def time_base(self) -> Fraction | None:
        return self.frame.time_base


class _EncodesInPack:
    """pack() of an EncodeWhereSent encodes it right there, on the event loop; aiortc's own pack() (for
    pre-encoded packets) otherwise."""

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        if isinstance(packet, EncodeWhereSent):
            return self.encode(packet.frame, packet.keyframe)  # type: ignore[attr-defined,no-any-return]
        return super().pack(packet)  # type: ignore[misc,no-any-return]


class _TunedH264Encoder(_EncodesInPack, _SizedBitrate, H264Encoder):
    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        with _metered(frame):
            return super().encode(frame, force_keyframe)

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        self._prepare(frame, _x264_context)
        return super()._encode_frame(frame, force_keyframe)


class _TunedVp8Encoder(_EncodesInPack, _SizedBitrate, Vp8Encoder):
    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        with _metered(frame):
            assert isinstance(frame, av.VideoFrame)
            self._prepare(frame, _vp8_context)
            return super().encode(frame, force_keyframe)


class _TunedOpusEncoder(Encoder):
    """aiortc's OpusEncoder without its upmix and resampling: the codec runs at the frames' own rate and
    layout. 20 ms frames go straight to the codec (others are re-chunked as aiortc does); each packet's
    RTP timestamp is its audio's pts on a 48 kHz clock, counted from the first packet (as aiortc's).

    Digital silence (every idle frame) is not encoded again and again: once the codec has turned
    OPUS_SILENCE_SETTLE silent frames in a row into the same packet, that packet is sent for further
    silent frames until sound returns. The codec then has only seen silence since, as it would have."""

    def __init__(self) -> None:
        self._codec: av.AudioCodecContext | None = None
        self._chunker: av.AudioResampler | None = None
        self._format: tuple[int, str] = (0, "")  # the frames' rate and layout
        self._codec_rate = 0
        self._chunking = False  # set for good by the first frame that is not 20 ms long
        self._fed = 0  # samples given to the codec: its own continuous pts
        self._first_time: Fraction | None = None
        self._silent_run = 0  # silent frames the codec encoded in a row
        self._last_packet = b""
        self._silence: bytes | None = None

    def _open(self, rate: int, layout: str) -> None:
        codec_rate = rate if rate in OPUS_INPUT_RATES else OPUS_CLOCK  # others are resampled, as aiortc
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.bit_rate = OPUS_BITRATE
        codec.format = "s16"
        codec.layout = layout
        codec.sample_rate = codec_rate
        codec.time_base = Fraction(1, codec_rate)
        codec.options = {"application": "voip"}  # as aiortc
        self._codec = codec
        self._chunker = av.AudioResampler(
            format="s16", layout=layout, rate=codec_rate, frame_size=codec_rate // AUDIO_FRAMES_PER_S
        )
        self._format = (rate, layout)
        self._codec_rate = codec_rate
        self._chunking, self._fed, self._first_time = False, 0, None
        self._silent_run, self._last_packet, self._silence = 0, b"", None

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.AudioFrame)
        layout = "mono" if frame.layout.name == "mono" else "stereo"
        if self._codec is None or self._format != (frame.sample_rate, layout):
            self._open(frame.sample_rate, layout)
        assert self._chunker is not None
        # Straight to the codec only what it takes as it is: s16 at its rate, 20 ms.
        self._chunking = self._chunking or (
            frame.format.name != "s16"
            or frame.sample_rate != self._codec_rate
            or frame.samples != self._codec_rate // AUDIO_FRAMES_PER_S
        )
        payloads: list[bytes] = []
        timestamp: int | None = None
        for chunk in self._chunker.resample(frame) if self._chunking else [frame]:
            # Where this audio plays; a frame without pts is taken to follow the previous one.
            start = (
                Fraction(self._fed, self._codec_rate) if chunk.pts is None else chunk.pts * chunk.time_base
            )
            got = self._encode_chunk(chunk)
            if got and timestamp is None:
                if self._first_time is None:
                    self._first_time = start
                timestamp = int((start - self._first_time) * OPUS_CLOCK)
            payloads += got
        if timestamp is None:
            return [], None  # type: ignore[return-value]  # aiortc's convention: nothing to send yet
        return payloads, timestamp

    def _encode_chunk(self, chunk: av.AudioFrame) -> list[bytes]:
        assert self._codec is not None
        silent = not chunk.to_ndarray().any()
        if silent and self._silence is not None:
            return [self._silence]
        chunk.pts, chunk.time_base = self._fed, self._codec.time_base
        self._fed += chunk.samples
        packets = [bytes(p) for p in self._codec.encode(chunk)]
        if not silent:
            self._silent_run, self._silence = 0, None
        elif len(packets) == 1:
            self._silent_run += 1
            if self._silent_run >= OPUS_SILENCE_SETTLE and packets[0] == self._last_packet:
                self._silence = packets[0]
        self._last_packet = packets[-1] if packets else b""
        return packets

    def pack(self, packet: av.Packet | EncodeWhereSent) -> tuple[list[bytes], int]:
        if isinstance(packet, EncodeWhereSent):
            return self.encode(packet.frame)
        return [bytes(packet)], convert_timebase(packet.pts, packet.time_base, Fraction(1, OPUS_CLOCK))


def i420_frame(image: np.ndarray) -> av.VideoFrame:
    """An RGB(A) render as the yuv420p VideoFrame the encoders take, wrapping the converted buffer
    instead of copying it into the frame (0.06 ms instead of 0.25 ms at 512²). OpenCV's I420 is BT.601
    limited range, what decoders assume; 0.4 ms vs 4 ms for PyAV's reformat."""
    return _wrap_i420(to_i420(image))


def to_i420(image: np.ndarray) -> np.ndarray:
    """An RGB(A) render as one I420 buffer: (height * 3 / 2, width) uint8."""
    code = cv2.COLOR_RGBA2YUV_I420 if image.shape[2] == 4 else cv2.COLOR_RGB2YUV_I420
    return cv2.cvtColor(image, code)


def _wrap_i420(yuv: np.ndarray) -> av.VideoFrame:
    if yuv.shape[0] % 6 == 0:  # PyAV 18.1 misreads the height of an I420 buffer whose chroma rows are odd
        return av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


class _G722Encoder(_EncodesInPack, G722Encoder):
    pass


class _PcmaEncoder(_EncodesInPack, PcmaEncoder):
    pass


class _PcmuEncoder(_EncodesInPack, PcmuEncoder):
    pass


# Every codec aiortc can send, each able to encode in pack().
_TUNED_ENCODERS: dict[str, type[Encoder]] = {
    "video/h264": _TunedH264Encoder,
    "video/vp8": _TunedVp8Encoder,
    "audio/opus": _TunedOpusEncoder,
    "audio/g722": _G722Encoder,
    "audio/pcma": _PcmaEncoder,
    "audio/pcmu": _PcmuEncoder,
}


def _tuned_get_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    encoder = _TUNED_ENCODERS.get(codec.mimeType.lower())
    return encoder() if encoder is not None else get_encoder(codec)


def encode_where_sent(sender: RTCRtpSender) -> bool:
    """Have `sender` encode its track's frames on the event loop, as it takes them, instead of in
    aiortc's thread-pool executor. The executor costs two thread hand-offs per frame (futures, a
    self-pipe write, GIL switches; 80 frames a second for one session's video and audio) for work of
    about a millisecond, during which PyAV releases the GIL anyway (the avatar's worker thread runs
    meanwhile). The sender's encoder must be a tuned one (tune_encoders()); False, and aiortc's path
    kept, otherwise. Call before the sender starts. aiortc then sends no audio-level header extension
    (it computes that only for frames it encodes itself)."""
    track = sender.track
    if track is None or rtcrtpsender.get_encoder is not _tuned_get_encoder:
        return False
    if not hasattr(sender, "_send_keyframe"):
        log.warning("aiortc's RTP sender layout changed; encoding in its executor")
        return False
    track_recv: Callable[[], Awaitable[Frame]] = track.recv
    send_keyframe: Callable[[], None] = sender._send_keyframe
    keyframe = False

    def request_keyframe() -> None:
        nonlocal keyframe
        keyframe = True
        send_keyframe()  # aiortc's own flag too, for frames that take its path

    async def recv() -> EncodeWhereSent:
        nonlocal keyframe
        frame = await track_recv()
        wanted, keyframe = keyframe, False
        return EncodeWhereSent(frame, wanted)

    # aiortc looks both up on the instance, per frame and per PLI / FIR.
    track.recv = recv  # type: ignore[method-assign]
    sender._send_keyframe = request_keyframe  # type: ignore[method-assign]
    return True


def tune_encoders() -> None:
    """Make aiortc's RTP senders use faster video encoders. Idempotent; process-wide.

    A narrow patch of aiortc 1.16: `aiortc.rtcrtpsender.get_encoder` (the one name the sender uses to
    create encoders) returns subclasses of aiortc's H264Encoder / Vp8Encoder that open their codec
    context themselves just before aiortc would, with: x264 preset ultrafast + tune zerolatency
    (aiortc uses preset medium; profile Baseline, level 3.1 and its packetization are unchanged),
    VP8 realtime at cpu-used 16 without the temporal denoiser (aiortc: cpu-used -6, denoiser on) and
    static macroblocks skipped (VP8_STATIC_THRESHOLD), and bitrate limits that scale with the frame size
    (bitrate_range). They also time each encode into the EncodeMeter a track puts in
    `VideoFrame.opaque`. Opus encodes mono audio as mono at its own rate (_TunedOpusEncoder). Every
    tuned encoder also encodes an EncodeWhereSent given to pack() (see encode_where_sent)."""
    if not (hasattr(rtcrtpsender, "get_encoder") and hasattr(H264Encoder, "_encode_frame")):
        log.warning("aiortc's encoder layout changed; keeping its stock video encoders")
        return
    rtcrtpsender.get_encoder = _tuned_get_encoder  # type: ignore[attr-defined]


# -- tracks -------------------------------------------------------------------------------------------
async def _next_output(track: MediaStreamTrack, get: Callable[[], Awaitable[T]]) -> T:
    """The avatar's next output for a live track; MediaStreamError (aiortc's end of stream) otherwise."""
    if track.readyState != "live":
        raise MediaStreamError
    try:
        out = await get()
    except AvatarClosed:
        track.stop()
        raise MediaStreamError from None
    if track.readyState != "live":
        raise MediaStreamError
    return out


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar's video: I420 frames stamped index * 90000 / fps. Frames the avatar skipped leave a
    gap in the timestamps, as a real-time sender should."""

    kind = "video"

    def __init__(self, avatar: LiveCore) -> None:
        super().__init__()
        self._avatar = avatar
        self._fps = avatar.config.fps
        self.meter = EncodeMeter()
        self.frames = 0  # frames handed to the sender
        self.first_sent_at: float | None = None  # time.monotonic() of the first
        # The last render and its I420 buffer: a still idle frame repeats the render (STILL_PX in
        # hosts/live.py), which then needs no second conversion.
        self._converted: tuple[np.ndarray, np.ndarray] | None = None

    async def recv(self) -> av.VideoFrame:
        out: VideoOut = await _next_output(self, self._avatar.next_video)
        if self._converted is None or self._converted[0] is not out.image:
            self._converted = (out.image, to_i420(out.image))
        frame = _wrap_i420(self._converted[1])
        frame.pts = out.index * VIDEO_CLOCK // self._fps
        frame.time_base = VIDEO_TIME_BASE
        frame.opaque = self.meter
        if self.first_sent_at is None:
            self.first_sent_at = time.monotonic()
        self.frames += 1
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    """The avatar's audio re-chunked into 20 ms mono s16 frames at the engine's out_rate, pts = first
    output sample (time base 1/out_rate)."""

    kind = "audio"

    def __init__(self, avatar: LiveCore) -> None:
        super().__init__()
        self._avatar = avatar
        self._rate = avatar.config.out_rate
        self._time_base = Fraction(1, self._rate)
        self._chunk = self._rate // AUDIO_FRAMES_PER_S
        self._buffer = np.zeros(0, np.int16)
        self._start = 0  # output sample of _buffer[0]
        self.frames = 0  # frames handed to the sender

    async def recv(self) -> av.AudioFrame:
        while len(self._buffer) < self._chunk:
            out: AudioOut = await _next_output(self, self._avatar.next_audio)
            if len(self._buffer) and out.sample_start == self._start + len(self._buffer):
                self._buffer = np.concatenate([self._buffer, out.samples])
            else:  # first frame, or a gap after the avatar's queue overflowed: restart the grid here
                self._buffer, self._start = out.samples, out.sample_start
        samples, self._buffer = self._buffer[: self._chunk], self._buffer[self._chunk :]
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._start
        frame.time_base = self._time_base
        self._start += self._chunk
        self.frames += 1
        return frame


# -- peer ---------------------------------------------------------------------------------------------
def _codec_preferences(first: Encoding) -> list[RTCRtpCodecCapability]:
    """Every video codec aiortc supports (with RTX), `first` ahead of the others."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    return sorted(codecs, key=lambda c: c.mimeType.lower() != f"video/{first.lower()}")


def _call_safely(callback: Callable[[], None] | None, name: str) -> None:
    """A failing user callback is logged; it must not break aiortc's event handling."""
    if callback is not None:
        try:
            callback()
        except Exception:
            log.exception("%s callback failed", name)


def _ice_server(server: Mapping[str, Any]) -> RTCIceServer:
    return RTCIceServer(
        urls=server["urls"], username=server.get("username"), credential=server.get("credential")
    )


def without_mdns_candidates(sdp: str) -> str:
    """Drop the browser's `*.local` (mDNS-obfuscated) host candidates from an offer.

    aioice resolves each with a 1 s multicast query inside setRemoteDescription, which fails across
    networks and where multicast is filtered, adding a second to every session start. Without them the
    browser's connectivity checks still reach our candidates and aioice learns its address as a
    peer-reflexive candidate (RFC 8445 7.3.1.3), so the connection forms just the same."""
    lines = sdp.splitlines(keepends=True)
    return "".join(line for line in lines if not (line.startswith("a=candidate:") and ".local " in line))


OFFER_HINT = (
    "send the browser's pc.localDescription.sdp after createOffer() with recvonly audio and video "
    "transceivers and the negotiated data channel"
)


def check_offer_sdp(sdp: str) -> None:
    """Raise ValueError saying what is missing from an SDP offer that cannot be answered. aiortc's parser
    accepts any text and fails later with messages such as "None is not in list"."""
    lines = [line.strip() for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError(f"the offer is not SDP: it must begin with the line v=0; {OFFER_HINT}")
    if not any(line.startswith("m=") for line in lines):
        raise ValueError(f"the SDP offer has no media sections (m= lines); {OFFER_HINT}")
    try:
        description = SessionDescription.parse(sdp)
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"the SDP offer does not parse ({exc}); {OFFER_HINT}") from None
    for index, media in enumerate(description.media):
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise ValueError(
                f"media section {index} ({media.kind}) of the SDP offer has no ICE credentials "
                f"(a=ice-ufrag, a=ice-pwd); {OFFER_HINT}"
            )
        if media.dtls is None or not media.dtls.fingerprints:
            raise ValueError(
                f"media section {index} ({media.kind}) of the SDP offer has no DTLS fingerprint "
                f"(a=fingerprint); {OFFER_HINT}"
            )


class AvatarPeer:
    """One client's WebRTC connection to a LiveCore.

    `ice_servers` are `[{"urls": ..., "username": ..., "credential": ...}]`; an empty list means host
    candidates only (aiortc would otherwise add Google's public STUN server). `codec` is the video codec
    put first in the answer (the other one stays as a fallback for clients without it). `on_message`
    receives the client's data-channel messages (JSON objects). `on_connected` is called once, when
    the connection is first established. `on_closed` is called once when the connection closes (the
    client closed it), fails (a client that vanished fails when aioice's consent checks give up,
    about 30 s), or is not connected `grace_s` after the answer; not when aclose() ends it.
    `on_audio_track`, when given, receives the client's audio track (its microphone), once the offer
    carries one. `video=False` makes a track-only peer: no video track and no video encoder (the
    answer's video section, if the offer has one, is inactive); the audio and the data channel stay,
    for a client that draws the avatar itself from the mouth track. aiortc
    has no "disconnected" state; should one appear it gets the same grace. Callbacks run on the event
    loop and must not block."""

    def __init__(
        self,
        avatar: LiveCore,
        *,
        ice_servers: Sequence[Mapping[str, Any]] = (),
        codec: Encoding = "VP8",
        on_message: Callable[[dict[str, Any]], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_closed: Callable[[], None] | None = None,
        on_audio_track: Callable[[MediaStreamTrack], None] | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        video: bool = True,
    ) -> None:
        if codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {VIDEO_CODECS}, got {codec!r}")
        tune_encoders()
        self.codec = codec
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_closed = on_closed
        self._grace_s = grace_s
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[_ice_server(s) for s in ice_servers]))
        self.video = AvatarVideoTrack(avatar) if video else None
        self.audio = AvatarAudioTrack(avatar)
        # Transceivers before the offer arrives, so the codec preference shapes the answer.
        # With on_audio_track the client's microphone comes back on the audio transceiver (FULL mode).
        audio_direction = "sendrecv" if on_audio_track is not None else "sendonly"
        audio = self._pc.addTransceiver(self.audio, direction=audio_direction)
        self._on_audio_track = on_audio_track
        if on_audio_track is not None:
            self._pc.on("track", self._track_arrived)
        senders = [audio.sender]
        if self.video is not None:
            video_transceiver = self._pc.addTransceiver(self.video, direction="sendonly")
            video_transceiver.setCodecPreferences(_codec_preferences(codec))
            senders.append(video_transceiver.sender)
        if rtcp.enabled():  # sender reports on the engine's clock from the first packets: see hosts/rtcp.py
            rtcp.MediaClockReports().attach(*senders)
        for sender in senders:  # after rtcp's hold, which wraps the tracks' own frames
            encode_where_sent(sender)
        self._channel = self._pc.createDataChannel(DATA_CHANNEL_LABEL, negotiated=True, id=0)
        self._channel.on("open", self._flush_events)
        self._channel.on("message", self._receive)
        self._pc.on("connectionstatechange", self._state_changed)
        self._backlog: deque[str] = deque(maxlen=EVENT_BACKLOG)
        self._events_dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed_fired = False
        self._closing: asyncio.Task[None] | None = None
        self.answered_at: float | None = None  # time.monotonic() when the answer was ready
        self.connected_at: float | None = None

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState

    async def answer(self, offer_sdp: str, offer_type: str = "offer") -> RTCSessionDescription:
        """Apply the client's offer and return the complete answer (all ICE candidates inside)."""
        if offer_type != "offer":
            raise ValueError(f"expected an SDP offer, got type {offer_type!r}")
        check_offer_sdp(offer_sdp)
        offer_sdp = without_mdns_candidates(offer_sdp)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type=offer_type))
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        self.answered_at = time.monotonic()
        self._state_changed()  # the grace period for connecting starts now
        description = self._pc.localDescription
        assert description is not None
        return description

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Send one JSON object to the client; queued (bounded, oldest dropped) until the channel opens."""
        if self._closing is not None:
            return
        message = json.dumps(event, separators=(",", ":"))
        if self._channel.readyState == "open":
            self._channel.send(message)
            return
        if len(self._backlog) == self._backlog.maxlen:
            self._events_dropped += 1
        self._backlog.append(message)

    async def stats(self) -> dict[str, Any]:
        """Bytes / packets / frames sent per track, and the mean video encode time (tuned encoders only;
        None otherwise)."""
        out: dict[str, Any] = {
            "connection_state": self._pc.connectionState,
            "video_codec": self.codec,
            "video_frames_sent": self.video.frames if self.video is not None else 0,
            "first_video_sent_at": self.video.first_sent_at if self.video is not None else None,
            "audio_frames_sent": self.audio.frames,
            "encode_ms": self.video.meter.mean_ms if self.video is not None else None,
            "encode_cpu_ms": self.video.meter.mean_cpu_ms if self.video is not None else None,
            "events_dropped": self._events_dropped,
        }
        for transceiver in self._pc.getTransceivers():
            sender = transceiver.sender
            sent = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
            out[f"{sender.kind}_bytes_sent"] = sum(s.bytesSent for s in sent)
            out[f"{sender.kind}_packets_sent"] = sum(s.packetsSent for s in sent)
        return out

    async def aclose(self) -> None:
        """Close the connection and its tracks. Idempotent; does not call on_closed."""
        if self._closing is None:
            self._cancel_timer()
            self._closing = asyncio.create_task(self._pc.close())
        await asyncio.shield(self._closing)
        if self.video is not None:  # the senders stop their tracks, unless media never started
            self.video.stop()
        self.audio.stop()

    # -- internals ------------------------------------------------------------------------------------
    def _flush_events(self) -> None:
        while self._backlog and self._channel.readyState == "open":
            self._channel.send(self._backlog.popleft())

    def _receive(self, message: str | bytes) -> None:
        try:
            event = parse_message(message)
        except MessageRefused as exc:
            self._refuse(str(exc))
            return
        if not isinstance(event, dict):
            self._refuse("a message must be a JSON object with a string 'type'")
            return
        if self._on_message is not None:
            _call_safely(functools.partial(self._on_message, event), "on_message")

    def _track_arrived(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._on_audio_track is not None:
            _call_safely(functools.partial(self._on_audio_track, track), "on_audio_track")

    def _refuse(self, reason: str) -> None:
        """Answer a message that cannot be parsed with an `error` event; the connection goes on."""
        log.warning("refused a data channel message: %s", reason)
        self.send_event(
            {"type": ERROR, "event_id": uuid.uuid4().hex, "code": CODE_BAD_REQUEST, "message": reason}
        )

    def _state_changed(self) -> None:
        if self._closing is not None:
            return
        state = self._pc.connectionState
        if state in ("failed", "closed"):
            self._fire_closed()
        elif state == "connected":
            self._cancel_timer()
            if self.connected_at is None:
                self.connected_at = time.monotonic()
                _call_safely(self._on_connected, "on_connected")
        elif self._timer is None and self.answered_at is not None:
            self._timer = asyncio.get_running_loop().call_later(self._grace_s, self._fire_closed)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire_closed(self) -> None:
        self._cancel_timer()
        if self._closed_fired or self._closing is not None:
            return
        self._closed_fired = True
        _call_safely(self._on_closed, "on_closed")
