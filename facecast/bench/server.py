"""`facecast bench server`: a real `facecast serve` process under load, measured from outside.

Subcommands: ttff · sessions · drift · memory · all. The server runs in a child process (temporary data
directory, free loopback port, its own API key) so that psutil measures its CPU and memory alone. Every
client peer (aiortc, receiving and decoding the media) runs in this process on one event loop, and
shares the machine with the server. Tables go to stdout (Markdown with --markdown), progress to stderr.
See docs/benchmarks.md, "Server".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from facecast.bench.report import Log, Table
from facecast.server import protocol as p

COMMANDS = ("ttff", "sessions", "drift", "memory", "all")
FPS = 30
QUALITY = "high"  # 512x512 at 1:1
AVATAR = "ava"
LEVELS = (1, 2, 4, 6, 8)
FULL_LEVELS = (*LEVELS, 10, 12)
MEMORY_LEVELS = (1, 4, 8)
MAX_CONCURRENT = 64  # the bench key's own cap, above any level (keys default to 4)
CHUNK_S = 0.1  # agent.speak chunk, as a streaming TTS sends them
LEAD_CHUNKS = 3  # chunks sent at once before pacing at playback speed
SPEECH_SENTENCES = 6
SETTLE_S = 3.0  # after sessions join a level, before its hold window: their set-up is not the load
IDLE_S = 2.0  # idle video before the first utterance in the drift run: the mouth-motion baseline
UTTERANCE_GAP_S = 2.0
AUDIO_RMS = 500.0  # a decoded 20 ms audio frame this loud is speech (flite speaks at ~3000 RMS)
CHURN_SAMPLE = 50
CHURN_BATCH = 5  # divides CHURN_SAMPLE
TIMEOUT_S = 30.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facecast bench server", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all", choices=COMMANDS, help="which benchmark (all)")
    parser.add_argument("--runs", type=int, default=10, help="sequential sessions for ttff (default 10)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each sessions level is held")
    parser.add_argument("--full", action="store_true", help="sessions: also 10 and 12 concurrent sessions")
    parser.add_argument("--duration", type=float, default=60.0, help="drift session length in s (default 60)")
    parser.add_argument("--churn", type=int, default=500, help="sessions started and stopped for memory")
    parser.add_argument("--cache-dir", type=Path, default=None, help="generated speech cache (as bench)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str]) -> int:
    from facecast.bench import _cpu_note
    from facecast.bench.corpus import FliteMissingError

    args = _parser().parse_args(list(argv))
    log = Log(enabled=not args.quiet)
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        tables = asyncio.run(_run(args, log))
    except (FliteMissingError, ImportError) as exc:  # a missing prerequisite, not a bug: one line
        print(f"facecast bench server: {exc}", file=sys.stderr)
        return 2
    load_after = os.getloadavg()
    print(
        f"facecast bench server {args.command} — {date.today().isoformat()}, Python "
        f"{platform.python_version()}, {_cpu_note()}, {time.perf_counter() - started:.0f} s, "
        # The clients and anything else running share the cores with the server: say how busy it was.
        f"load average (1/5/15 min) {_load(load_before)} at start / {_load(load_after)} at end"
    )
    for t in tables:
        print()
        print(t.markdown() if args.markdown else t.text())
    return 0


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.1f}" for v in avg)


async def _run(args: argparse.Namespace, log: Log) -> list[Table]:
    want = set(COMMANDS[:-1]) if args.command == "all" else {args.command}
    speech = load_speech(args.cache_dir) if want - {"ttff"} else []
    tables: list[Table] = []
    # A fresh server for each benchmark: one's sessions and allocations must not weigh on the next.
    if "ttff" in want:
        async with ServerProcess(log) as server:
            tables.append(await ttff(server, args.runs, log))
    if "sessions" in want:
        async with ServerProcess(log) as server:
            levels = FULL_LEVELS if args.full else LEVELS
            tables.append(await sessions(server, speech, levels, args.hold, log))
    if "drift" in want:
        async with ServerProcess(log) as server:
            tables.extend(await drift(server, speech, args.duration, log))
    if "memory" in want:
        async with ServerProcess(log) as server:
            tables.extend(await memory(server, speech, args.churn, log))
    return tables


def load_speech(cache_dir: Path | None) -> list[bytes]:
    """A few corpus sentences (flite slt, cached like the other benchmarks) as LITE audio: PCM16 24 kHz."""
    from scipy.signal import resample_poly

    from facecast.bench.corpus import SENTENCES, synthesize

    out = []
    for text in SENTENCES[:SPEECH_SENTENCES]:
        utt = synthesize(text, "slt", cache_dir)
        g = math.gcd(p.LITE_AUDIO_RATE, utt.sample_rate)
        pcm = resample_poly(utt.audio().astype(np.float32), p.LITE_AUDIO_RATE // g, utt.sample_rate // g)
        out.append(pcm.clip(-32768, 32767).astype("<i2").tobytes())
    return out


# -- the server ---------------------------------------------------------------------------------------
class ServerProcess:
    """`facecast serve` in a child process on a free loopback port, with a fresh data directory and key."""

    def __init__(self, log: Log, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self._env = dict(env or {})  # FACECAST_* settings for this server (others are not passed on)
        self.url = ""
        self.api_key = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ps: Any = None
        self._log_path = Path()

    async def __aenter__(self) -> ServerProcess:
        import httpx
        import psutil

        self._tmp = tempfile.TemporaryDirectory(prefix="facecast-bench-server-")
        data_dir = Path(self._tmp.name)
        # Only this run's settings: a FACECAST_DATABASE_URL or limit from the caller's shell must not apply.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACECAST_")}
        # The ramp measures past the server's admission limit on purpose.
        env["FACECAST_MAX_LIVE_SESSIONS"] = str(MAX_CONCURRENT)
        env.update(self._env)
        cli = [sys.executable, "-m", "facecast"]
        keys = [*cli, "keys", "create", "--name", "bench", "--max-concurrent", str(MAX_CONCURRENT)]
        self.api_key = subprocess.run(
            [*keys, "--data-dir", str(data_dir)], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = data_dir / "server.log"
        serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with open(self._log_path, "wb") as out:
            self._proc = subprocess.Popen(
                [*serve, "--data-dir", str(data_dir)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._ps = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while True:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    await self.__aexit__(None, None, None)
                    raise RuntimeError(f"facecast serve did not start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        self.log(f"server pid {self._proc.pid} on {self.url}, RSS {self.rss_mb():.0f} MB")
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # the server's own account of what went wrong, before it is deleted
            self.log(f"server log (last lines):\n{self.log_tail()}")
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown ends every session
            try:
                await asyncio.to_thread(self._proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.log("server did not stop within 30 s of SIGINT; killing it")
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def rss_mb(self) -> float:
        return float(self._ps.memory_info().rss) / 2**20

    def cpu_s(self) -> float:
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def threads(self) -> int:
        return int(self._ps.num_threads())

    def fds(self) -> int:
        return int(self._ps.num_fds())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the client ---------------------------------------------------------------------------------------
@dataclass
class Timing:
    """One session's way to its first frame, seconds (time.monotonic)."""

    start: float = 0.0  # POST /v1/sessions/start
    offer: float = 0.0  # the client's offer, ICE gathering included
    answer: float = 0.0  # POST offer → answer applied
    first_frame: float = 0.0  # answer applied → first decoded video frame

    @property
    def total(self) -> float:
        return self.start + self.offer + self.answer + self.first_frame


@dataclass
class Received:
    """Arrivals at the client. Per-frame lists only when measuring (the drift run): (arrival, media time
    in seconds from the stream's first packet, value) where value is the mouth motion (video) or RMS."""

    video_frames: int = 0
    audio_frames: int = 0
    video: list[tuple[float, float, float]] = field(default_factory=list)
    audio: list[tuple[float, float, float]] = field(default_factory=list)


class Peer:
    """One session as a client app sees it: the HTTP calls, an aiortc peer receiving audio and video,
    and the LITE WebSocket. With `mouth_box`, every video frame's mouth motion and every audio frame's
    RMS are recorded; otherwise frames are only counted (decoded by aiortc, never converted)."""

    def __init__(self, http: Any, server: ServerProcess, *, mouth_box: tuple[int, ...] | None = None) -> None:
        self.http = http
        self.server = server
        self.mouth_box = mouth_box
        self.received = Received()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.speech_errors = 0
        self.session_id = ""
        self._token = ""
        self._start: dict[str, Any] = {}
        self._pc: Any = None
        self._ws: Any = None
        self._first_video = asyncio.Event()
        self._new_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_mouth: np.ndarray | None = None

    async def _post(self, url: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> Any:
        r = await self.http.post(url, headers=headers, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"POST {url}: {r.status_code} {r.text}")
        return r.json()["data"]

    async def open(self, max_session_duration: int | None = None) -> Timing:
        """Mint, start, signal WebRTC and wait for the first decoded video frame."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        body: dict[str, Any] = {"fps": FPS, "aspect_ratio": "1:1", "video_settings": {"quality": QUALITY}}
        if max_session_duration is not None:
            body["max_session_duration"] = max_session_duration
        base = self.server.url
        minted = await self._post(f"{base}/v1/sessions/token", {"X-API-KEY": self.server.api_key}, body)
        self.session_id, self._token = minted["session_id"], minted["session_token"]
        bearer = {"Authorization": f"Bearer {self._token}"}
        timing = Timing()
        t = time.monotonic()
        self._start = await self._post(f"{base}/v1/sessions/start", bearer)
        timing.start, t = _lap(t)
        # No ICE servers: aiortc would otherwise add a public STUN server, unreachable offline.
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc.addTransceiver("video", direction="recvonly")
        self._pc.addTransceiver("audio", direction="recvonly")
        self._pc.createDataChannel(p.DATA_CHANNEL_LABEL, negotiated=True, id=0)
        self._pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._read(track))))
        await self._pc.setLocalDescription(await self._pc.createOffer())
        timing.offer, t = _lap(t)
        offer = {"sdp": self._pc.localDescription.sdp, "type": "offer"}
        answer = await self._post(self._start["webrtc"]["offer_url"], bearer, offer)
        await self._pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        timing.answer, t = _lap(t)
        try:
            await asyncio.wait_for(self._first_video.wait(), TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(
                f"session {self.session_id}: no video frame within {TIMEOUT_S:.0f} s of the answer"
            ) from None
        timing.first_frame, _ = _lap(t)
        return timing

    async def connect_ws(self) -> None:
        """Open the LITE WebSocket and wait until the session reports `connected`."""
        import websockets

        self._ws = await websockets.connect(self._start["ws_url"], max_size=None)
        self._tasks.append(asyncio.create_task(self._read_ws()))
        await self.wait_event(lambda e: e.get("state") == p.WS_STATE_CONNECTED)

    async def _read(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        r = self.received
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                r.video_frames += 1
                self._first_video.set()
                if self.mouth_box is not None:
                    r.video.append((now, float(frame.pts * frame.time_base), self._mouth_motion(frame)))
            else:
                r.audio_frames += 1
                if self.mouth_box is not None:
                    samples = frame.to_ndarray().astype(np.float32)
                    rms = float(np.sqrt(np.mean(samples**2)))
                    r.audio.append((now, float(frame.pts * frame.time_base), rms))

    def _mouth_motion(self, frame: Any) -> float:
        """Mean absolute luma change inside the mouth box since the previous frame: speech moves the lips
        from frame to frame, idle sway and breathing barely do."""
        assert self.mouth_box is not None
        x0, y0, x1, y1 = self.mouth_box
        crop = frame.to_ndarray()[y0:y1, x0:x1].astype(np.float32)  # yuv420p: luma rows come first
        last, self._last_mouth = self._last_mouth, crop
        return 0.0 if last is None or last.shape != crop.shape else float(np.abs(crop - last).mean())

    async def _read_ws(self) -> None:
        import websockets

        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                self.events.append((time.monotonic(), json.loads(raw)))
                self._new_event.set()

    async def wait_event(
        self, match: Callable[[dict[str, Any]], bool], since: int = 0, timeout: float = TIMEOUT_S
    ) -> tuple[float, dict[str, Any]]:
        """The first event from index `since` on that matches, with its arrival time."""
        deadline = time.monotonic() + timeout
        while True:
            for stamped in self.events[since:]:
                if match(stamped[1]):
                    return stamped
            since = len(self.events)
            self._new_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"session {self.session_id}: no matching event within {timeout:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), left)

    async def say(self, pcm: bytes, event_id: str) -> tuple[float, float]:
        """One utterance in CHUNK_S agent.speak messages at playback pace after a short lead, as a
        streaming TTS sends them. Returns (first send, arrival of its agent.speak_ended); an `error` event
        for it counts as a speech error."""
        since = len(self.events)
        step = int(p.LITE_AUDIO_RATE * CHUNK_S) * 2
        first = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            delay = first + max(0, k - LEAD_CHUNKS) * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = base64.b64encode(pcm[i : i + step]).decode()
            await self._ws.send(json.dumps({"type": p.AGENT_SPEAK, "event_id": event_id, "audio": chunk}))
        await self._ws.send(json.dumps({"type": p.AGENT_SPEAK_END, "event_id": event_id}))
        ends = (p.AGENT_SPEAK_ENDED, p.AGENT_SPEAK_INTERRUPTED, p.ERROR)
        arrived, event = await self.wait_event(
            lambda e: e["type"] in ends and e.get("event_id") == event_id, since
        )
        if event["type"] == p.ERROR:
            self.speech_errors += 1
        return first, arrived

    async def talk(self, speech: Sequence[bytes], offset: int = 0) -> None:
        """Speak forever (until cancelled), one utterance after another with a short pause."""
        for n in itertools.count():
            await self.say(speech[(n + offset) % len(speech)], f"u{n}")
            await asyncio.sleep(0.3)

    async def stats(self) -> dict[str, Any]:
        r = await self.http.get(
            f"{self.server.url}/v1/sessions/{self.session_id}", headers={"X-API-KEY": self.server.api_key}
        )
        r.raise_for_status()
        return dict(r.json()["data"]["stats"] or {})

    async def stop(self) -> str:
        """POST /v1/sessions/stop; the end reason."""
        if not self._token:
            return ""
        data = await self._post(
            f"{self.server.url}/v1/sessions/stop", {"Authorization": f"Bearer {self._token}"}
        )
        return str(data["end_reason"])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._pc is not None:
            await self._pc.close()


def _lap(t: float) -> tuple[float, float]:
    now = time.monotonic()
    return now - t, now


async def _close_all(peers: Sequence[Peer]) -> None:
    for peer in peers:
        with contextlib.suppress(Exception):
            await peer.stop()
        await peer.close()


def _http() -> Any:
    import httpx

    # One connection per concurrent call; the default pool (100) is plenty.
    return httpx.AsyncClient(timeout=TIMEOUT_S)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


# -- ttff ---------------------------------------------------------------------------------------------
async def ttff(server: ServerProcess, runs: int, log: Log) -> Table:
    """Sequential sessions: /v1/sessions/start sent → first decoded video frame at the client."""
    timings: list[Timing] = []
    server_ms: list[float] = []
    async with _http() as http:
        for i in range(runs):
            peer = Peer(http, server)
            try:
                timing = await peer.open()
                stats = await peer.stats()
            finally:
                await _close_all([peer])
            timings.append(timing)
            server_ms.append(float(stats.get("time_to_first_frame_ms") or math.nan))
            log(f"ttff {i + 1}/{runs}: {_ms(timing.total):.0f} ms (server {server_ms[-1]:.0f} ms)")
    table = Table(
        f"Time to first video frame ({runs} sequential sessions, 512x512 VP8 @ {FPS} fps, loopback)",
        ["", "start call ms", "client offer ms", "answer ms", "to first frame ms", "total ms", "server ms"],
    )
    cols = [
        [t.start for t in timings],
        [t.offer for t in timings],
        [t.answer for t in timings],
        [t.first_frame for t in timings],
        [t.total for t in timings],
    ]
    for label, q in (("median", 50), ("p95", 95)):
        cells = [_ms(float(np.percentile(c, q))) for c in cols]
        table.add(label, *cells, float(np.nanpercentile(server_ms, q)))
    table.notes += [
        "total = start call + client offer (aiortc ICE gathering) + offer → answer applied + until the "
        "first decoded frame; server = start call received → first frame handed to the encoder",
        "target: total <= 300 ms",
    ]
    return table


# -- sessions -----------------------------------------------------------------------------------------
@dataclass
class _Window:
    """Per-session counters at one instant (server stats) and the process CPU times."""

    stats: list[dict[str, Any]]
    received: list[int]
    server_cpu: float
    client_cpu: float
    wall: float


async def _window(server: ServerProcess, peers: Sequence[Peer]) -> _Window:
    import psutil

    stats = await asyncio.gather(*(peer.stats() for peer in peers))
    t = psutil.Process().cpu_times()
    return _Window(
        list(stats),
        [peer.received.video_frames for peer in peers],
        server.cpu_s(),
        t.user + t.system,
        time.monotonic(),
    )


async def sessions(
    server: ServerProcess, speech: Sequence[bytes], levels: Sequence[int], hold_s: float, log: Log
) -> Table:
    """Ramp concurrent speaking sessions; per level, hold and measure the server's CPU and lost frames."""
    import psutil

    table = Table(
        f"Concurrent sessions (512x512 VP8 @ {FPS} fps, all speaking, {hold_s:.0f} s per level)",
        [
            "sessions",
            "server CPU %",
            "CPU/session %",
            "render ms",
            "encode ms",
            "not drawn",
            "lost in queue",
            "fell behind s",
            "dropped %",
            "client fps",
            "client CPU %",
            "machine CPU %",
        ],
    )
    peers: list[Peer] = []
    talkers: list[asyncio.Task[None]] = []
    best, clean = 0, True  # the highest level that, like every level below it, dropped nothing
    async with _http() as http:
        try:
            for level in levels:
                try:
                    while len(peers) < level:
                        peer = Peer(http, server)
                        peers.append(peer)
                        await peer.open()
                        await peer.connect_ws()
                        talkers.append(asyncio.create_task(peer.talk(speech, offset=len(peers))))
                except TimeoutError as exc:  # an overloaded server may never draw a new session's frame
                    table.notes.append(f"{level} sessions not reached: {exc}")
                    log(f"sessions {level}: not reached ({exc})")
                    break
                await asyncio.sleep(SETTLE_S)
                psutil.cpu_percent(None)  # starts the machine-wide window
                a = await _window(server, peers)
                await asyncio.sleep(hold_s)
                b = await _window(server, peers)
                machine = psutil.cpu_percent(None)
                for task in talkers:
                    if task.done() and task.exception() is not None:
                        raise RuntimeError(f"a speaking client failed: {task.exception()!r}")
                row = _level_row(level, a, b)
                table.add(level, *row, machine)
                # Frames released late are not lost, but a pacer that falls behind delays speech for good.
                clean = clean and row.not_drawn + row.lost == 0 and row.fell_behind_s < 2 / FPS
                if clean:
                    best = level
                log(
                    f"sessions {level}: server CPU {row.server_cpu:.0f}%, {row.not_drawn} not drawn, "
                    f"{row.lost} lost in queue, fell {row.fell_behind_s:.2f} s behind, "
                    f"client {row.client_fps:.1f} fps"
                )
        finally:
            for task in talkers:
                task.cancel()
            await asyncio.gather(*talkers, return_exceptions=True)
            await _close_all(peers)
    errors = sum(peer.speech_errors for peer in peers)
    table.notes += [
        f"most sessions sustained (nothing dropped, no pacer falling behind): {best}; target: >= 8",
        "CPU % is of one core (200% = both cores of a 2-core machine); server CPU is the `facecast serve` "
        "process alone, over the hold window",
        "not drawn = frames the pacer produced without drawing because it ran late (frames_dropped); "
        "lost in queue = drawn frames the encoder did not take in time (frames_sent - not drawn - "
        "video_frames_sent, less the 2-frame queue); dropped % = not drawn + lost + frames not released "
        "in the window, over elapsed x fps",
        "fell behind = how much further the slowest session's pacer fell behind real time in the window "
        "(elapsed - frames_sent / fps; its audio is as late); render / encode ms = the server's mean "
        "wall time per frame",
        "the clients (one aiortc peer per session, decoding VP8) run in the bench process on the same "
        f"machine: client CPU % is theirs; machine CPU % is every process, of all cores; "
        f"speech errors: {errors}",
    ]
    return table


class _Level(NamedTuple):
    server_cpu: float
    cpu_per_session: float
    render_ms: float
    encode_ms: float
    not_drawn: int
    lost: int
    fell_behind_s: float
    dropped_pct: float
    client_fps: float
    client_cpu: float


def _level_row(level: int, a: _Window, b: _Window) -> _Level:
    from facecast.hosts.realtime import VIDEO_QUEUE_FRAMES

    wall = b.wall - a.wall
    server_cpu = 100.0 * (b.server_cpu - a.server_cpu) / wall
    not_drawn = lost = 0
    expected = late = fell_behind = 0.0
    for s0, s1 in zip(a.stats, b.stats, strict=True):
        released = s1["frames_sent"] - s0["frames_sent"]
        skipped = s1["frames_dropped"] - s0["frames_dropped"]
        encoded = s1.get("video_frames_sent", 0) - s0.get("video_frames_sent", 0)
        not_drawn += skipped
        # Up to VIDEO_QUEUE_FRAMES released frames may still wait in the queue when the window closes.
        lost += max(0, released - skipped - encoded - VIDEO_QUEUE_FRAMES)
        elapsed = s1["duration_s"] - s0["duration_s"]
        expected += elapsed * FPS
        late += max(0.0, elapsed * FPS - released - 1)  # a read falls anywhere in a frame: +-1
        fell_behind = max(fell_behind, elapsed - released / FPS)
    received = sum(r1 - r0 for r0, r1 in zip(a.received, b.received, strict=True))
    return _Level(
        server_cpu,
        server_cpu / level,
        float(np.mean([s["render_ms"] for s in b.stats])),
        float(np.mean([s.get("encode_ms") or math.nan for s in b.stats])),
        not_drawn,
        lost,
        fell_behind,
        min(100.0, 100.0 * (not_drawn + lost + late) / max(expected, 1.0)),
        received / level / wall,
        100.0 * (b.client_cpu - a.client_cpu) / wall,
    )


# -- drift --------------------------------------------------------------------------------------------
async def drift(server: ServerProcess, speech: Sequence[bytes], duration: float, log: Log) -> list[Table]:
    """One long session with periodic speech: does the mouth keep its place against the audio, and does
    the pacer keep wall-clock time?"""
    from facecast.avatars import load_renderer

    box = load_renderer(AVATAR, aspect="1:1", quality=QUALITY).mouth_box()
    said: list[tuple[float, float]] = []  # per utterance: (first send, agent.speak_ended arrival)
    async with _http() as http:
        peer = Peer(http, server, mouth_box=box)
        try:
            await peer.open(max_session_duration=int(duration) + 120)
            await peer.connect_ws()
            await asyncio.sleep(IDLE_S)
            s0 = await peer.stats()
            t0 = time.monotonic()
            next_log = t0 + 30
            for n in itertools.count():
                if time.monotonic() - t0 >= duration:
                    break
                said.append(await peer.say(speech[n % len(speech)], f"u{n}"))
                await asyncio.sleep(UTTERANCE_GAP_S)
                if time.monotonic() >= next_log:
                    next_log += 30
                    log(f"drift: {time.monotonic() - t0:.0f}/{duration:.0f} s, {n + 1} utterances")
            s1 = await peer.stats()
        finally:
            await _close_all([peer])
    return [_sync_table(peer.received, said), _pacer_table(s0, s1, peer.speech_errors)]


def _sync_table(received: Received, said: Sequence[tuple[float, float]]) -> Table:
    video = np.array(received.video)  # (arrival, media s, mouth motion)
    audio = np.array(received.audio)  # (arrival, media s, rms)
    first = said[0][0]
    idle = video[video[:, 0] < first, 2][2:]
    threshold = 3 * max(float(np.percentile(idle, 95)) if len(idle) else 0.0, 0.25)
    onsets = []  # (send time from the first utterance, mouth onset - audio onset in s)
    for sent, ended in said:
        v = video[(video[:, 0] > sent) & (video[:, 0] <= ended) & (video[:, 2] > threshold), 0]
        a = audio[(audio[:, 0] > sent) & (audio[:, 0] <= ended) & (audio[:, 2] > AUDIO_RMS), 0]
        if len(v) and len(a):
            onsets.append((sent - first, v[0] - a[0]))
    elapsed = said[-1][1] - first
    edge = min(60.0, elapsed / 2)  # the first and the last minute, or halves of a shorter run

    def window(rows: np.ndarray, t: np.ndarray, early: bool) -> np.ndarray:
        return rows[t < edge] if early else rows[t >= elapsed - edge]

    offs = np.array(onsets)
    # Each stream's latency: arrival minus its media time. A pacer or a queue that drifts moves it.
    lat_v, t_v = video[:, 0] - video[:, 1], video[:, 0] - first
    lat_a, t_a = audio[:, 0] - audio[:, 1], audio[:, 0] - first
    table = Table(
        f"A/V sync over one {elapsed:.0f} s session (512x512 VP8 @ {FPS} fps, speech every ~"
        f"{elapsed / len(said):.0f} s)",
        ["window", "utterances", "mouth - audio onset ms", "video latency ms", "audio latency ms"],
    )
    medians = []
    for early in (True, False):
        o = window(offs[:, 1], offs[:, 0], early) if len(offs) else np.zeros(0)
        medians.append(
            (
                len(o),
                _ms(float(np.median(o))) if len(o) else math.nan,
                _ms(float(np.median(window(lat_v, t_v, early)))),
                _ms(float(np.median(window(lat_a, t_a, early)))),
            )
        )
    (n0, o0, v0, a0), (n1, o1, v1, a1) = medians
    # Latencies count from each stream's first packet, so only their change means something.
    table.add(f"first {edge:.0f} s", n0, o0, 0.0, 0.0)
    table.add(f"last {edge:.0f} s", n1, o1, v1 - v0, a1 - a0)
    table.add("change", "", o1 - o0, v1 - v0, a1 - a0)
    table.notes += [
        "onsets by arrival at the client: first loud audio frame (RMS > 500) and first video frame whose "
        f"mouth moved (mouth-box luma change > {threshold:.2f}, 3x the idle p95); medians per window",
        "video / audio latency = arrival - RTP media time (median), as a change from the first window; "
        "video change - audio change is the A/V drift of the transport",
        "a negative onset offset is the mouth first: aiortc's audio jitter buffer holds 4 packets (80 ms) "
        "before it releases audio, so audio reaches the app later than the video of the same instant",
        f"target: A/V offset stays within one frame ({1000 / FPS:.0f} ms) from the first to the last minute",
    ]
    return table


def _pacer_table(s0: dict[str, Any], s1: dict[str, Any], errors: int) -> Table:
    elapsed = s1["duration_s"] - s0["duration_s"]
    sent = s1["frames_sent"] - s0["frames_sent"]
    expected = elapsed * FPS
    table = Table(
        "Server pacing over the same session (GET /v1/sessions/{id} at both ends)",
        ["elapsed s", "frames sent", "elapsed x fps", "difference frames", "drift ppm", "not drawn"],
    )
    table.add(
        elapsed,
        sent,
        expected,
        sent - expected,
        1e6 * (sent - expected) / expected,
        s1["frames_dropped"] - s0["frames_dropped"],
    )
    table.notes.append(
        f"elapsed is the server's own session clock; +-1 frame is the read-out granularity; "
        f"speech errors: {errors}"
    )
    return table


# -- memory -------------------------------------------------------------------------------------------
async def memory(server: ServerProcess, speech: Sequence[bytes], churn: int, log: Log) -> list[Table]:
    """The server's RSS: idle, with live sessions, and across many sessions started and stopped."""
    base = server.rss_mb()
    live = Table(
        f"Server resident memory with live sessions (512x512 VP8 @ {FPS} fps, each has spoken once)",
        ["live sessions", "server RSS MB", "over idle server MB", "MB per session", "threads"],
    )
    live.add(0, base, 0.0, math.nan, server.threads())
    rss: dict[int, float] = {}
    peers: list[Peer] = []
    async with _http() as http:
        try:
            for level in MEMORY_LEVELS:
                new = []
                while len(peers) < level:
                    peer = Peer(http, server)
                    peers.append(peer)
                    new.append(peer)
                    await peer.open()
                    await peer.connect_ws()
                # One utterance each, so that every session's tracker and buffers exist.
                await asyncio.gather(*(peer.say(speech[i % len(speech)], "m") for i, peer in enumerate(new)))
                await asyncio.sleep(1.0)
                rss[level] = server.rss_mb()
                live.add(level, rss[level], rss[level] - base, (rss[level] - base) / level, server.threads())
                log(f"memory: {level} live sessions, server RSS {rss[level]:.0f} MB")
        finally:
            await _close_all(peers)
        await asyncio.sleep(2.0)
        first, last = MEMORY_LEVELS[0], MEMORY_LEVELS[-1]
        live.notes += [
            f"first session {rss[first] - base:.1f} MB (includes models and codecs loaded once); "
            f"each further session {(rss[last] - rss[first]) / (last - first):.1f} MB",
            "target: <= 100 MB per live session",
            f"after stopping all {last}: {server.rss_mb():.1f} MB, {server.threads()} threads",
        ]
        churned = await _churn(http, server, churn, log)
    return [live, churned]


async def _churn(http: Any, server: ServerProcess, total: int, log: Log) -> Table:
    table = Table(
        f"Server memory across {total} sessions started and stopped ({CHURN_BATCH} at a time, each to its "
        "first decoded video frame)",
        ["sessions", "median RSS MB", "max RSS MB", "threads", "open files", "not ended as stopped"],
    )
    table.add(0, server.rss_mb(), server.rss_mb(), server.threads(), server.fds(), 0)
    # RSS swings by tens of MB from one batch to the next (buffers freed or not given back yet), so each
    # row summarises the samples taken after every batch of its CHURN_SAMPLE sessions.
    block: list[float] = []
    medians: list[float] = []
    not_stopped = done = 0
    while done < total:
        n = min(CHURN_BATCH, total - done)
        reasons = await asyncio.gather(*(_one_session(http, server) for _ in range(n)))
        not_stopped += sum(reason != p.END_STOPPED for reason in reasons)
        done += n
        block.append(server.rss_mb())
        if done % CHURN_SAMPLE == 0 or done == total:
            medians.append(float(np.median(block)))
            table.add(done, medians[-1], max(block), server.threads(), server.fds(), not_stopped)
            log(f"memory churn {done}/{total}: server RSS {medians[-1]:.0f} MB (median since the last row)")
            block = []
    r = await http.get(f"{server.url}/healthz")
    live = r.json()["data"]["live_sessions"]
    half = medians[len(medians) // 2 - 1]  # the median at about half of the sessions
    table.notes += [
        f"growth of the median from session {min(CHURN_SAMPLE, done)} (after warm-up) to {done}: "
        f"{medians[-1] - medians[0]:+.1f} MB; over the second half: {medians[-1] - half:+.1f} MB; "
        f"live sessions afterwards: {live}",
        "each session: token -> start -> WebRTC offer/answer -> first decoded frame -> stop",
        "target: no growth after 500 sessions",
    ]
    return table


async def _one_session(http: Any, server: ServerProcess) -> str:
    peer = Peer(http, server)
    try:
        await peer.open()
        return await peer.stop()
    finally:
        await peer.close()
