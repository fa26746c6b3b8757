"""`facecast bench livekit`: one avatar worker in a real LiveKit room, measured at a viewer.

Starts a local `livekit-server` (built by `bash scripts/livekit-server`; found through --livekit-server,
$FACECAST_LIVEKIT_SERVER or the build cache), runs a `RoomAvatar` worker in a child process (so that
psutil reads its CPU and memory alone: engine, renderer, WebRTC encoding), and in this process an agent
(`DataStreamAudioOutput`, as an AgentSession sends speech) and a `RoomViewer` that subscribes as a
browser would. espeak-ng speech. Every time below is taken on one clock (time.monotonic, which the two
processes share) at the viewer's arrival of media or at the agent's events. See docs/benchmarks.md,
"LiveKit".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from facecast.bench.report import Log, Table

AGENT = "agent"
AVATAR = "facecast-avatar"
SENTENCES = (
    "Hello there, my name is Ava and I can help you plan your trip.",
    "The weather in Lisbon is sunny, with a light breeze from the ocean.",
    "Would you like me to book a table for two at eight o'clock?",
    "Please hold on for a moment while I look that up for you.",
    "Thanks for calling, and have a wonderful evening.",
)
FRAME_S = 0.02  # the agent sends 20 ms frames, as an AgentSession forwards TTS audio
LEAD_S = 0.3  # sent at once before pacing at playback speed, as a streaming TTS does
IDLE_S = 1.5  # idle video before speech: the mouth-motion baseline
HEARD_BEFORE_INTERRUPT_S = 0.8
TAIL_S = 0.5  # after an utterance or an interrupt, for late media to arrive
TIMEOUT_S = 30.0


@dataclass
class Options:
    avatar: str = "ava"
    aspect: str = "1:1"
    quality: str = "high"  # 512x512 at 1:1
    fps: int = 30
    starts: int = 10
    utterances: int = 5
    interrupts: int = 5
    cpu_seconds: float = 10.0


@dataclass
class Report:
    size: str
    cold_first_frame_ms: float = math.nan
    start_ms: list[float] = field(default_factory=list)  # start() call -> return, in the worker
    first_frame_ms: list[float] = field(default_factory=list)  # start() returned -> first frame at viewer
    audio_track_ms: list[float] = field(default_factory=list)  # start() returned -> audio track subscribed
    video_track_ms: list[float] = field(default_factory=list)  # start() returned -> video track subscribed
    audio_ms: list[float] = field(default_factory=list)  # first audio frame sent -> speech heard
    mouth_ms: list[float] = field(default_factory=list)  # first audio frame sent -> mouth moves
    onset_ms: list[float] = field(default_factory=list)  # mouth onset - speech onset, at the viewer
    av_offset_ms: list[float] = field(default_factory=list)  # RoomViewer.av_offset_ms over each utterance
    finished_ms: list[float] = field(default_factory=list)  # playback_finished at agent - last speech heard
    silence_ms: list[float] = field(default_factory=list)  # clear_buffer -> last speech heard
    clear_to_finished_ms: list[float] = field(default_factory=list)
    mouth_threshold: float = math.nan
    cpu_speaking: float = math.nan  # worker process, share of one core
    cpu_idle: float = math.nan
    rss_before_mb: float = math.nan  # worker process before its first session
    rss_first_mb: float = math.nan  # after the first session stopped
    rss_warm_mb: float = math.nan  # after the timed starts, no session running
    rss_session_mb: float = math.nan  # with one session that has spoken
    worker_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_per_session_mb(self) -> float:
        return self.rss_session_mb - self.rss_warm_mb


# -- the worker process ------------------------------------------------------------------------------
async def _worker_serve(config: dict[str, Any]) -> None:
    """The child: one RoomAvatar per `start` command, JSON lines in (stdin) and out (stdout)."""
    from facecast.hosts.livekit.worker import RoomAvatar

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    avatars: dict[str, RoomAvatar] = {}

    def say(**event: Any) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    say(event="ready")
    while line := await reader.readline():
        cmd = json.loads(line)
        room = cmd.get("room", "")
        try:
            if cmd["cmd"] == "start":
                avatar = RoomAvatar(
                    config["url"],
                    cmd["token"],
                    avatar=config["avatar"],
                    aspect=config["aspect"],
                    quality=config["quality"],
                    fps=config["fps"],
                    max_duration_s=600,
                )
                called = time.monotonic()
                await avatar.start()
                avatars[room] = avatar
                say(event="started", room=room, called_at=called, returned_at=time.monotonic())
            elif cmd["cmd"] == "stop":
                avatar = avatars.pop(room)
                stats = avatar.stats()
                await avatar.aclose()
                say(event="stopped", room=room, reason=avatar.ended.result(), stats=stats)
            elif cmd["cmd"] == "quit":
                break
        except Exception as exc:  # reported to the bench, which stops with the message
            say(event="error", room=room, message=f"{type(exc).__name__}: {exc}")
    for avatar in avatars.values():
        await avatar.aclose()


def _worker_main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_worker_serve(json.loads(sys.argv[1])))


class WorkerProcess:
    """The bench's handle on the worker child."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        import psutil

        self.proc = proc
        self.log_path = log_path
        self.ps = psutil.Process(proc.pid)
        self.last_stats: dict[str, Any] = {}  # RoomAvatar.stats() of the last session stopped

    @classmethod
    async def start(cls, url: str, opts: Options, log_path: Path) -> WorkerProcess:
        config = {"url": url, "avatar": opts.avatar, "aspect": opts.aspect, "quality": opts.quality}
        config["fps"] = opts.fps
        with open(log_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from facecast.bench.livekit import _worker_main; _worker_main()",
                json.dumps(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=dict(os.environ),
            )
        worker = cls(proc, log_path)
        await worker.expect("ready")
        return worker

    async def expect(self, event: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise RuntimeError(f"the worker process did not answer {event!r} in {timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"the worker process exited; its log:\n{self._log_tail()}")
        message: dict[str, Any] = json.loads(line)
        if message["event"] != event:
            raise RuntimeError(f"the worker process answered {message} instead of {event!r}")
        return message

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send(cmd="quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- the room side -----------------------------------------------------------------------------------
@dataclass
class _Session:
    name: str
    agent: Any  # rtc.Room
    viewer: Any  # RoomViewer
    started: dict[str, Any]


@contextlib.asynccontextmanager
async def _session(
    server: Any, worker: WorkerProcess, mouth_box: tuple[int, int, int, int]
) -> AsyncIterator[_Session]:
    """A fresh room with the agent and the viewer in it, then the worker's avatar; all torn down after."""
    from livekit import api, rtc

    from facecast.client.livekit_viewer import RoomViewer
    from facecast.hosts.livekit.tokens import mint_participant_token, mint_worker_token

    name = f"facecast-bench-{uuid.uuid4().hex[:8]}"

    def token(identity: str, kind: str) -> str:
        return mint_participant_token(
            server.api_key, server.api_secret, room=name, identity=identity, kind=kind
        )

    agent = rtc.Room()
    viewer = RoomViewer(mouth_box=mouth_box, publisher=AVATAR)
    await agent.connect(server.url, token(AGENT, "agent"))
    await viewer.connect(server.url, token("viewer", "standard"))
    started = False
    try:
        wtoken = mint_worker_token(
            server.api_key, server.api_secret, room=name, identity=AVATAR, name="Avatar", agent_identity=AGENT
        )
        await worker.send(cmd="start", room=name, token=wtoken)
        reply = await worker.expect("started")
        started = True
        await viewer.wait_for(lambda: viewer.first_video_at is not None, TIMEOUT_S, "the first video frame")
        yield _Session(name, agent, viewer, reply)
    finally:
        if started:
            await worker.send(cmd="stop", room=name)
            stopped = await worker.expect("stopped")
            worker.last_stats = stopped.get("stats", {})
        await viewer.aclose()
        await agent.disconnect()
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
            with contextlib.suppress(api.TwirpError):
                await lk.room.delete_room(api.DeleteRoomRequest(room=name))


async def _send(out: Any, pcm: np.ndarray, rate: int, stop: asyncio.Event | None = None) -> float:
    """Stream `pcm` in 20 ms frames: LEAD_S at once, then at playback pace. Returns when the first frame
    was handed over."""
    from livekit import rtc

    step = int(rate * FRAME_S)
    lead = int(LEAD_S / FRAME_S)
    first_at = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), step)):
        if stop is not None and stop.is_set():
            break
        chunk = pcm[i : i + step]
        await out.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
        if n >= lead:
            await asyncio.sleep(max(0.0, first_at + (n - lead + 1) * FRAME_S - time.monotonic()))
    return first_at


def _onset(viewer: Any, after: float, until: float, threshold: float) -> float | None:
    return next((v.at for v in viewer.video if after < v.at <= until and v.mouth_motion > threshold), None)


async def run(server: Any, opts: Options, log: Log, workdir: Path) -> Report:
    """Measure one worker against `server` (url, http_url, api_key, api_secret)."""
    from livekit import rtc
    from livekit.agents.voice.avatar import DataStreamAudioOutput

    from facecast.avatars import frame_size, load_renderer
    from facecast.client.livekit_viewer import AUDIO_STEP_S, SPEECH_RMS
    from facecast.tts import EspeakTTS

    width, height = frame_size(opts.aspect, opts.quality)
    report = Report(size=f"{width}x{height}@{opts.fps}")
    mouth_box = load_renderer(opts.avatar, aspect=opts.aspect, quality=opts.quality).mouth_box()
    tts = EspeakTTS()
    rate = tts.sample_rate
    speech = [tts.synthesize(text) for text in SENTENCES]
    log(f"speech: {len(speech)} espeak-ng sentences, {sum(map(len, speech)) / rate:.1f} s at {rate} Hz")

    worker = await WorkerProcess.start(server.url, opts, workdir / "worker.log")
    try:
        report.rss_before_mb = worker.rss_mb()
        # start() -> first frame: a cold start (first renderer, recogniser) and `starts` warm ones
        for i in range(opts.starts + 1):
            async with _session(server, worker, mouth_box) as s:
                first_ms = (s.viewer.first_video_at - s.started["returned_at"]) * 1000
                if i == 0:
                    report.cold_first_frame_ms = first_ms
                else:
                    returned = s.started["returned_at"]
                    report.start_ms.append((returned - s.started["called_at"]) * 1000)
                    report.first_frame_ms.append(first_ms)
                    for kind, values in (("audio", report.audio_track_ms), ("video", report.video_track_ms)):
                        at = next((p.at for p in s.viewer.published if p.kind == kind), None)
                        if at is not None:
                            values.append((at - returned) * 1000)
            log(f"start {i}/{opts.starts}{' (cold)' if i == 0 else ''}: first frame {first_ms:.0f} ms")
            if i == 0:
                report.rss_first_mb = worker.rss_mb()
        report.rss_warm_mb = worker.rss_mb()

        async with _session(server, worker, mouth_box) as s:
            viewer = s.viewer
            out = DataStreamAudioOutput(
                s.agent, destination_identity=AVATAR, wait_remote_track=rtc.TrackKind.KIND_VIDEO
            )
            finished: list[tuple[float, bool]] = []
            out.on("playback_finished", lambda ev: finished.append((time.monotonic(), ev.interrupted)))
            await asyncio.sleep(IDLE_S)
            idle = [v.mouth_motion for v in viewer.video[2:]]
            threshold = 3 * max(float(np.percentile(idle, 95)) if idle else 0.0, 0.25)
            report.mouth_threshold = threshold

            async def utterance(pcm: np.ndarray) -> tuple[float, float]:
                n = len(finished)
                sent = await _send(out, pcm, rate)
                out.flush()
                await asyncio.wait_for(out.wait_for_playout(), TIMEOUT_S)
                await viewer.wait_for(lambda: len(finished) > n, TIMEOUT_S, "playback_finished")
                return sent, finished[-1][0]

            for i in range(opts.utterances):
                sent, done = await utterance(speech[i % len(speech)])
                await asyncio.sleep(TAIL_S)
                heard = [a.at for a in viewer.audio if a.at > sent and a.rms > SPEECH_RMS]
                mouth = _onset(viewer, sent, time.monotonic(), threshold)
                if heard:
                    report.audio_ms.append((heard[0] - sent) * 1000)
                    report.finished_ms.append((done - (heard[-1] + AUDIO_STEP_S)) * 1000)
                    with contextlib.suppress(ValueError):
                        report.av_offset_ms.append(viewer.av_offset_ms(heard[0], heard[-1]))
                if mouth is not None:
                    report.mouth_ms.append((mouth - sent) * 1000)
                if heard and mouth is not None:
                    report.onset_ms.append((mouth - heard[0]) * 1000)
                heard_ms = (heard[0] - sent) * 1000 if heard else math.nan
                mouth_ms = (mouth - sent) * 1000 if mouth is not None else math.nan
                log(
                    f"utterance {i + 1}/{opts.utterances}: speech heard {heard_ms:.0f} ms, mouth moving "
                    f"{mouth_ms:.0f} ms after the first audio frame was sent"
                )

            long_pcm = np.concatenate(speech)
            for i in range(opts.interrupts):
                stop = asyncio.Event()
                n = len(finished)
                sending = asyncio.create_task(_send(out, long_pcm, rate, stop))
                await asyncio.sleep(0)
                t0 = time.monotonic()
                await viewer.wait_for(
                    lambda t0=t0: viewer.speech_after(t0) >= HEARD_BEFORE_INTERRUPT_S, TIMEOUT_S, "speech"
                )
                stop.set()
                await sending
                cleared = time.monotonic()
                out.clear_buffer()
                out.flush()
                await asyncio.wait_for(out.wait_for_playout(), TIMEOUT_S)
                await viewer.wait_for(lambda n=n: len(finished) > n, TIMEOUT_S, "playback_finished")
                report.clear_to_finished_ms.append((finished[-1][0] - cleared) * 1000)
                await asyncio.sleep(TAIL_S)
                loud = [a.at for a in viewer.audio if a.at > cleared and a.rms > SPEECH_RMS]
                report.silence_ms.append(((loud[-1] + AUDIO_STEP_S - cleared) * 1000) if loud else 0.0)
                log(f"interrupt {i + 1}/{opts.interrupts}: silent {report.silence_ms[-1]:.0f} ms after clear")

            # worker CPU: speaking back to back, then idle; RSS with this one session
            for label in ("speaking", "idle"):
                seconds = opts.cpu_seconds if label == "speaking" else opts.cpu_seconds / 2
                cpu0, t0 = worker.cpu_s(), time.monotonic()
                k = 0
                while time.monotonic() - t0 < seconds:
                    if label == "speaking":
                        await utterance(speech[k % len(speech)])
                        k += 1
                    else:
                        await asyncio.sleep(0.1)
                share = (worker.cpu_s() - cpu0) / (time.monotonic() - t0)
                if label == "speaking":
                    report.cpu_speaking = share
                    report.rss_session_mb = worker.rss_mb()
                else:
                    report.cpu_idle = share
                log(f"worker CPU {label}: {share * 100:.0f}% of a core")
        report.worker_stats = worker.last_stats
    finally:
        await worker.aclose()
    return report


# -- output --------------------------------------------------------------------------------------------
def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def tables(r: Report, opts: Options) -> list[Table]:
    t = Table(
        f"LiveKit avatar worker in a real room, {r.size}, avatar {opts.avatar}, measured at a viewer",
        ["measure", "n", "p50 ms", "p95 ms", "max ms"],
    )

    def row(label: str, values: Sequence[float]) -> None:
        t.add(label, len(values), _pct(values, 50), _pct(values, 95), max(values) if values else math.nan)

    row("start() call -> return (worker)", r.start_ms)
    row("start() returned -> audio track subscribed at viewer", r.audio_track_ms)
    row("start() returned -> video track subscribed at viewer", r.video_track_ms)
    row("start() returned -> first video frame at viewer", r.first_frame_ms)
    t.add("  the same, first (cold) start in the process", 1, r.cold_first_frame_ms, "", "")
    row("first audio frame sent -> speech heard", r.audio_ms)
    row("first audio frame sent -> mouth moving", r.mouth_ms)
    row("mouth onset - speech onset, at viewer", r.onset_ms)
    row("A/V offset over an utterance (+: video late)", r.av_offset_ms)
    row("playback_finished at agent - last speech heard", r.finished_ms)
    row("clear_buffer -> last speech heard", r.silence_ms)
    row("clear_buffer -> playback_finished at agent", r.clear_to_finished_ms)
    t.notes += [
        f"mouth moving: first video frame whose mouth-box luma change exceeds {r.mouth_threshold:.2f} "
        "(3x the idle p95); speech: 10 ms of received audio above RMS 200",
        "speech sent in 20 ms frames, 300 ms at once then at playback pace, as a streaming TTS",
        "A/V offset: lag of best correlation between received audio level and mouth opening "
        "(RoomViewer.av_offset_ms)",
    ]
    w = Table("Worker process, one session", ["measure", "value"])
    w.add("CPU while speaking, % of one core", r.cpu_speaking * 100)
    w.add("CPU while idle, % of one core", r.cpu_idle * 100)
    w.add("RSS before the first session, MB", r.rss_before_mb)
    w.add("RSS after the first session stopped, MB", r.rss_first_mb)
    w.add(f"RSS after {len(r.start_ms) + 1} sessions started and stopped, MB", r.rss_warm_mb)
    w.add("RSS with one session, MB", r.rss_session_mb)
    w.add("RSS per session (with one - after), MB", r.rss_per_session_mb)
    w.notes.append(
        "the worker process alone (engine, renderer, WebRTC encoding); the agent, the viewer (decoding) "
        "and livekit-server share the machine"
    )
    return [t, w]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecast bench livekit", description=__doc__.splitlines()[0])
    p.add_argument("--livekit-server", default=None, metavar="PATH", help="the livekit-server binary")
    p.add_argument("--avatar", default="ava")
    p.add_argument("--quality", default="high", help="frame size preset (high: 512x512 at 1:1)")
    p.add_argument("--fps", type=int, default=30, choices=(25, 30))
    p.add_argument("--starts", type=int, default=10, help="timed starts (default 10)")
    p.add_argument("--utterances", type=int, default=5, help="utterances timed (default 5)")
    p.add_argument("--interrupts", type=int, default=5, help="interrupts timed (default 5)")
    p.add_argument("--cpu-seconds", type=float, default=10.0, help="CPU window while speaking (idle: half)")
    p.add_argument(
        "--pli-throttle",
        type=int,
        default=None,
        metavar="MS",
        help="the server's keyframe-request throttle, all layers (default: the server's, 500 ms / 1 s)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="instead: a `facecast worker` carrying N dispatched avatars, jobs as processes and as threads",
    )
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str]) -> int:
    from facecast.bench import _cpu_note
    from facecast.hosts.livekit.server_process import LiveKitServerMissing, find_binary, run_livekit_server

    args = _parser().parse_args(list(argv))
    try:
        import livekit.agents  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        print(
            f"facecast bench livekit: {exc}; install the LiveKit extra: pip install 'facecast[livekit]'",
            file=sys.stderr,
        )
        return 2
    opts = Options(
        avatar=args.avatar,
        quality=args.quality,
        fps=args.fps,
        starts=args.starts,
        utterances=args.utterances,
        interrupts=args.interrupts,
        cpu_seconds=args.cpu_seconds,
    )
    if min(opts.starts, opts.utterances, opts.interrupts, args.jobs or 1) < 1 or opts.cpu_seconds <= 0:
        print(
            "facecast bench livekit: --starts, --utterances, --interrupts and --jobs must be at least 1 and "
            "--cpu-seconds positive",
            file=sys.stderr,
        )
        return 2
    try:
        binary = find_binary(args.livekit_server)
    except LiveKitServerMissing as exc:
        print(f"facecast bench livekit: {exc}", file=sys.stderr)
        return 2
    log = Log(enabled=not args.quiet)
    started, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="facecast-bench-livekit-") as tmp:
        log(f"starting {binary}")
        with run_livekit_server(
            binary, log_path=Path(tmp) / "livekit.log", pli_throttle_ms=args.pli_throttle
        ) as server:
            if args.jobs is not None:
                from facecast.bench.livekit_jobs import run_jobs

                results = [asyncio.run(run_jobs(server, args.jobs, opts.cpu_seconds, log))]
            else:
                results = tables(asyncio.run(run(server, opts, log, Path(tmp))), opts)
    import platform

    print(
        f"facecast bench livekit — {date.today().isoformat()}, Python {platform.python_version()}, "
        f"{_cpu_note()}, {time.perf_counter() - started:.0f} s, load average {load:.1f} at start / "
        f"{os.getloadavg()[0]:.1f} at end"
    )
    for t in results:
        print()
        print(t.markdown() if args.markdown else t.text())
    return 0
