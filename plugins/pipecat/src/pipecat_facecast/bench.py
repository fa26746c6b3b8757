"""Benchmarks for FacecastVideoService: first-frame latency, A/V offset at a WebRTC peer, CPU per pipeline.

Run ``python -m pipecat_facecast.bench`` (``--help`` for options). Everything runs in this process: the
bot's pipeline (avatar → ``SmallWebRTCTransport``) and an aiortc peer that receives its media and maps
both tracks onto the sender's clock with the RTCP sender reports, which is what a browser does to play
them in sync. The A/V offset is measured on a marker renderer (white while speaking, black otherwise)
against the onset of a tone; the CPU figure uses the built-in avatar.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    OutputTransportReadyFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from facecast.avatars import frame_size
from facecast.client.sender_clock import SenderClock
from facecast.engine import Engine, EngineConfig, FaceState
from facecast.engine.config import DEFAULT_LOOKAHEAD_MS
from facecast.tts import EspeakTTS
from pipecat_facecast.video import FacecastVideoService

PIPELINE_RATE = 24000
TONE_HZ = 440.0
AUDIO_ONSET = 2000  # int16 level that counts as sound
STALL_S = 0.3  # the event-loop hold-up the bench recovers from


class MarkerRenderer:
    """A stand-in avatar that shows when it speaks: white frames for speech, black ones when idle."""

    channels = 3

    def __init__(self, width: int = 256, height: int = 256) -> None:
        """Frames of `width` × `height` pixels."""
        self.width = width
        self.height = height
        self._frames = {flag: np.full((height, width, 3), 255 if flag else 0, np.uint8) for flag in (0, 1)}

    def render(self, state: FaceState) -> np.ndarray:
        """White while the face speaks, black otherwise."""
        return self._frames[int(state.speaking)]


class MeasuringPeer:
    """An aiortc peer for a ``SmallWebRTCConnection`` that receives the bot's audio and video.

    For every frame it records, as it arrives, when the sender says it should be played (the latest RTCP
    sender reports), which is what a browser lines the tracks up by. Mapped later, with the last reports
    only, the frames from before a hold-up would be placed by a mapping that no longer held for them.
    """

    def __init__(self) -> None:
        """Create the peer connection with an audio and a video transceiver and a data channel."""
        self.pc = RTCPeerConnection()
        self.audio: list[tuple[float, int, np.ndarray]] = []  # (sender time, rate, mono int16)
        self.video: list[tuple[float, float]] = []  # (sender time, mean brightness)
        self._clocks = {"audio": SenderClock(48000), "video": SenderClock(90000)}
        self._tasks: list[asyncio.Task] = []
        for kind in ("audio", "video"):
            self.pc.addTransceiver(kind, direction="sendrecv")
        self.pc.createDataChannel("chat")
        self.pc.on("track", self._on_track)

    async def connect(self, connection: SmallWebRTCConnection) -> None:
        """Offer/answer with the bot's connection (what ``POST /api/offer`` does)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        for transceiver in self.pc.getTransceivers():
            self._clocks[transceiver.kind].watch(transceiver.receiver)
        await connection.initialize(sdp=self.pc.localDescription.sdp, type=self.pc.localDescription.type)
        answer = connection.get_answer()
        assert answer is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def close(self) -> None:
        """Stop receiving and close the connection."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()

    def audio_onsets(self) -> list[float]:
        """Sender times at which a sound starts after at least 100 ms of silence."""
        onsets: list[float] = []
        quiet_since: float | None = None
        for start, rate, samples in self.audio:
            loud = np.nonzero(np.abs(samples.astype(np.int32)) > AUDIO_ONSET)[0]
            if len(loud) and quiet_since is not None and start - quiet_since >= 0.1:
                onsets.append(start + loud[0] / rate)
            if len(loud):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = start
        return onsets

    def video_onsets(self) -> list[float]:
        """Sender times of the first white (speech) frame after a black one."""
        onsets: list[float] = []
        was_white = True
        for start, brightness in self.video:
            white = brightness > 128
            if white and not was_white:
                onsets.append(start)
            was_white = white
        return onsets

    def video_times(self) -> list[float]:
        """Sender times of all video frames received."""
        return [start for start, _ in self.video]

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._receive(track)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        unmapped: list[tuple[int, float, tuple]] = []  # (pts, arrival, what is kept of the frame)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = time.monotonic()
            if track.kind == "audio":
                samples = frame.to_ndarray().reshape(-1)[:: len(frame.layout.channels)]
                unmapped.append((frame.pts, arrival, (frame.sample_rate, samples)))
            else:
                unmapped.append((frame.pts, arrival, (float(frame.to_ndarray(format="gray").mean()),)))
            # Frames from before the first sender report wait for it, then take its mapping.
            clock = self._clocks[track.kind]
            if clock.sender_time(frame.pts, arrival) is None:
                continue
            received = self.audio if track.kind == "audio" else self.video
            for pts, at, payload in unmapped:
                received.append((clock.sender_time(pts, at), *payload))
            unmapped.clear()


def tone(seconds: float, rate: int = PIPELINE_RATE) -> bytes:
    """A tone that starts at full level on its first sample (a sharp onset)."""
    t = np.arange(round(seconds * rate)) / rate
    return np.rint(12000 * np.sin(2 * np.pi * TONE_HZ * t + np.pi / 2)).astype(np.int16).tobytes()


def utterance(seconds: float, context_id: str) -> list[Frame]:
    """One TTS response: started, the tone, stopped."""
    return [
        TTSStartedFrame(context_id=context_id),
        TTSAudioRawFrame(tone(seconds), PIPELINE_RATE, 1, context_id=context_id),
        TTSStoppedFrame(context_id=context_id),
    ]


@dataclass
class WebRTCRun:
    """What a peer saw of a session: A/V offsets per utterance and the video's timing."""

    av_offsets_ms: list[float]  # video onset − audio onset, on the sender's clock (negative: video first)
    video_frames: int
    video_fps: float  # frames over their sender-time span
    max_video_gap_ms: float
    cpu_percent: float  # bot side (this process less the peer's decoder threads), of one core
    max_loop_stall_ms: float  # the longest the event loop (bot and peer alike) was held up


async def webrtc_session(
    *,
    utterances: int = 4,
    speech_s: float = 1.0,
    pause_s: float = 1.0,
    fps: int = 30,
    quality: str = "low",
    marker: bool = True,
    warmup_s: float = 1.5,
    stall_s: float = 0.0,
) -> WebRTCRun:
    """Run avatar → SmallWebRTC → aiortc peer, speaking `utterances` tones, and measure at the peer.

    `stall_s` holds the event loop up that long in the middle of the second utterance, as a busy
    machine or a long garbage collection does, to see whether the tracks come back together after it.
    """
    width, height = frame_size("1:1", quality)
    avatar = FacecastVideoService(
        settings=FacecastVideoService.Settings(fps=fps, quality=quality),
        tracker="energy",
        renderer=MarkerRenderer(width, height) if marker else None,
    )
    connection = SmallWebRTCConnection()
    peer = MeasuringPeer()
    await peer.connect(connection)
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(
            audio_out_enabled=True,
            video_out_enabled=True,
            video_out_is_live=True,
            video_out_width=width,
            video_out_height=height,
            video_out_framerate=fps,
        ),
    )
    worker = PipelineWorker(
        Pipeline([avatar, transport.output()]),
        params=PipelineParams(audio_out_sample_rate=PIPELINE_RATE),
        cancel_on_idle_timeout=False,
    )
    cpu = _CpuMeter(exclude=lambda name: name.endswith("-decoder"))
    stalls = _LoopStallMeter()

    async def drive() -> None:
        await asyncio.sleep(warmup_s)  # connection set-up, first key frame
        cpu.start()
        for k in range(utterances):
            await worker.queue_frames(utterance(speech_s, f"u{k}"))
            if k == 1 and stall_s:
                await asyncio.sleep(speech_s / 2)
                time.sleep(stall_s)  # blocking on purpose: the whole loop stops
                await asyncio.sleep(speech_s / 2 + pause_s)
            else:
                await asyncio.sleep(speech_s + pause_s)
        cpu.stop()
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    try:
        async with stalls:
            await asyncio.gather(runner.run(), drive())
    finally:
        await peer.close()

    audio, video = peer.audio_onsets(), peer.video_onsets()
    offsets = []
    for v in video:
        nearest = min(audio, key=lambda a: abs(a - v), default=None)
        if nearest is not None and abs(nearest - v) < 0.5:
            offsets.append((v - nearest) * 1000)
    times = peer.video_times()
    gaps = np.diff(times) if len(times) > 1 else np.zeros(1)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return WebRTCRun(
        av_offsets_ms=offsets,
        video_frames=len(times),
        video_fps=(len(times) - 1) / span if span else 0.0,
        max_video_gap_ms=float(gaps.max() * 1000),
        cpu_percent=cpu.percent,
        max_loop_stall_ms=stalls.max_ms,
    )


class _Probe(FrameProcessor):
    """Notes when the first frame of a kind passes."""

    def __init__(self, wanted: Callable[[Frame], bool]) -> None:
        super().__init__()
        self._wanted = wanted
        self.seen: asyncio.Event = asyncio.Event()
        self.at = 0.0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and not self.seen.is_set() and self._wanted(frame):
            self.at = time.monotonic()
            self.seen.set()
        await self.push_frame(frame, direction)


async def first_frame_latency(
    *, runs: int = 10, realtime_tts: bool = False, fps: int = 30, lookahead_ms: int = DEFAULT_LOOKAHEAD_MS
) -> list[float]:
    """Milliseconds from the first TTS audio frame reaching the service to its first speech frame.

    `realtime_tts` delivers the TTS audio in 20 ms chunks at real-time pace (a streaming TTS at its
    slowest); otherwise it arrives at once, as most TTS services deliver it (faster than real time).
    """
    latencies = []
    for k in range(runs):
        avatar = FacecastVideoService(
            settings=FacecastVideoService.Settings(fps=fps), lookahead_ms=lookahead_ms
        )
        arrived = _Probe(lambda frame: isinstance(frame, TTSAudioRawFrame))
        out = _Probe(lambda frame: isinstance(frame, TTSAudioRawFrame))
        worker = PipelineWorker(
            Pipeline([arrived, avatar, out]),
            params=PipelineParams(audio_out_sample_rate=PIPELINE_RATE),
            cancel_on_idle_timeout=False,
        )

        async def drive(worker=worker, arrived=arrived, out=out, k=k) -> None:
            await asyncio.sleep(0.3)
            await worker.queue_frame(OutputTransportReadyFrame())
            await asyncio.sleep(0.2 + 0.0031 * k)  # the speech meets the avatar's clock at another phase
            pcm = tone(0.6)
            if realtime_tts:
                await worker.queue_frame(TTSStartedFrame())
                step = 2 * PIPELINE_RATE // 50
                t0 = time.monotonic()
                for n, i in enumerate(range(0, len(pcm), step)):
                    await worker.queue_frame(TTSAudioRawFrame(pcm[i : i + step], PIPELINE_RATE, 1))
                    await asyncio.sleep(max(0.0, t0 + 0.02 * (n + 1) - time.monotonic()))
                await worker.queue_frame(TTSStoppedFrame())
            else:
                await worker.queue_frames(utterance(0.6, "latency"))
            await asyncio.wait_for(out.seen.wait(), 5)
            latencies.append((out.at - arrived.at) * 1000)
            await worker.queue_frame(EndFrame())

        runner = WorkerRunner()
        await runner.add_workers(worker)
        await asyncio.gather(runner.run(), drive())
    return latencies


class _LoopStallMeter:
    """The longest the running event loop was held up (a busy machine, a garbage collection), in ms.

    A stall delays the bot's frames and the peer's reading alike, so it shows up as a hole in the
    video that the avatar did not cause; the WebRTC run reports it beside the gaps it measured.
    """

    TICK_S = 0.005

    def __init__(self) -> None:
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _LoopStallMeter:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK_S)
            late = time.monotonic() - before - self.TICK_S
            self.max_ms = max(self.max_ms, late * 1000)


class _CpuMeter:
    """CPU time of this process between start() and stop(), less the threads `exclude` names."""

    def __init__(self, exclude: Callable[[str], bool]) -> None:
        self._exclude = exclude
        self._t0 = self._cpu0 = 0.0
        self.percent = 0.0
        self._excluded0: dict[int, float] = {}

    def _excluded(self) -> dict[int, float]:
        out = {}
        for thread in threading.enumerate():
            if thread.ident is not None and self._exclude(thread.name):
                try:
                    out[thread.ident] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
                except (OSError, ProcessLookupError):
                    continue
        return out

    def start(self) -> None:
        self._t0, self._cpu0, self._excluded0 = time.monotonic(), time.process_time(), self._excluded()

    def stop(self) -> None:
        wall = time.monotonic() - self._t0
        cpu = time.process_time() - self._cpu0
        excluded = sum(t - self._excluded0.get(ident, 0.0) for ident, t in self._excluded().items())
        self.percent = 100 * (cpu - excluded) / wall if wall else 0.0


async def avatar_cpu(*, seconds: float = 8.0, fps: int = 30, quality: str = "high") -> float:
    """Percent of one core for the avatar alone (engine, tracker, renderer, Pipecat frames), half speech."""

    class _Sink(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, (StartFrame, EndFrame)) or direction == FrameDirection.UPSTREAM:
                await self.push_frame(frame, direction)

    avatar = FacecastVideoService(settings=FacecastVideoService.Settings(fps=fps, quality=quality))
    worker = PipelineWorker(
        Pipeline([avatar, _Sink()]),
        params=PipelineParams(audio_out_sample_rate=PIPELINE_RATE),
        cancel_on_idle_timeout=False,
    )
    meter = _CpuMeter(exclude=lambda name: False)

    async def drive() -> None:
        await worker.queue_frame(OutputTransportReadyFrame())
        await asyncio.sleep(0.5)
        meter.start()
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            await worker.queue_frames(utterance(1.0, f"cpu{k}"))
            await asyncio.sleep(2.0)
            k += 1
        meter.stop()
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())
    return meter.percent


ALIGNED_TEXT = (
    "Thanks for calling. I can help you change your booking, check the status of an order, or answer "
    "questions about our opening hours. What would you like to do today?"
)


def alignment_stall() -> tuple[float, float]:
    """(milliseconds, seconds of speech): how long ending an utterance blocks when the text is aligned.

    ``Engine.end_segment()`` force-aligns the whole utterance with its transcript when it has one; the
    service calls it on the event loop when the ``TTSStoppedFrame`` arrives.
    """
    speech = EspeakTTS().synthesize_timed(ALIGNED_TEXT)
    engine = Engine(None, EngineConfig(fps=30, out_rate=PIPELINE_RATE))
    engine.push_audio(speech.audio, speech.sample_rate, text=ALIGNED_TEXT)
    started = time.perf_counter()
    engine.end_segment()
    return (time.perf_counter() - started) * 1000, len(speech.audio) / speech.sample_rate


def _summary(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"median {statistics.median(values):.0f} ms, min {min(values):.0f}, max {max(values):.0f} "
        f"(n={len(values)})"
    )


async def _main(args: argparse.Namespace) -> None:
    look = f"look-ahead {args.lookahead_ms} ms"
    burst = await first_frame_latency(runs=args.runs, lookahead_ms=args.lookahead_ms)
    print(
        f"first speech frame after the first TTS audio, TTS faster than real time, {look}: {_summary(burst)}"
    )
    streamed = await first_frame_latency(runs=args.runs, realtime_tts=True, lookahead_ms=args.lookahead_ms)
    print(
        f"first speech frame after the first TTS audio, TTS at real-time pace, {look}: {_summary(streamed)}"
    )
    run = await webrtc_session(utterances=args.utterances)
    print(f"A/V offset at a WebRTC peer (video − audio, sender clock): {_summary(run.av_offsets_ms)}")
    print(
        f"video at the peer: {run.video_frames} frames, {run.video_fps:.1f} fps, "
        f"largest gap {run.max_video_gap_ms:.0f} ms (largest event-loop stall {run.max_loop_stall_ms:.0f} ms)"
    )
    held = await webrtc_session(utterances=args.utterances, stall_s=STALL_S)
    print(
        f"A/V offset per utterance, the event loop held up {STALL_S * 1000:.0f} ms in the second one: "
        + ", ".join(f"{offset:.0f}" for offset in held.av_offsets_ms)
        + " ms"
    )
    stall, spoken = alignment_stall()
    print(f"event loop blocked by forced alignment at the end of {spoken:.1f} s of speech: {stall:.0f} ms")
    cpu = await avatar_cpu(quality="high")
    print(f"CPU, avatar alone, 512×512 @ 30 fps, half speech: {cpu:.0f} % of one core")
    full = await webrtc_session(utterances=args.utterances, quality="high", marker=False)
    print(
        "CPU, avatar + SmallWebRTC (VP8 + Opus encoding), 512×512 @ 30 fps, half speech: "
        f"{full.cpu_percent:.0f} % of one core"
    )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m pipecat_facecast.bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="latency runs per TTS kind")
    parser.add_argument("--utterances", type=int, default=6, help="utterances per WebRTC session")
    parser.add_argument(
        "--lookahead-ms",
        type=int,
        default=DEFAULT_LOOKAHEAD_MS,
        help="the avatar's look-ahead (latency runs)",
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
