"""`facecast bench server`: a real `facecast serve` process under load, measured from outside.

Subcommands: ttff · sessions · drift · memory · all. The server runs in a child process (temporary data
directory, free loopback port, its own API key) so that its CPU and memory (with any worker processes
it starts) are measured alone. Every client peer (aiortc) runs in this process on one event loop and
shares the machine with the server; in `sessions` all but one of them count RTP frames without
decoding them, so that the clients cost little. `sessions --baseline REF` runs REF's server (a
temporary git worktree) under the same load in the same run; `sessions --track-only` runs track-only
sessions (mouth_track, video false: audio and mouth-track records, no video) and reports the records'
rate and lateness instead of the video's. Tables go to stdout (Markdown with
--markdown), progress to stderr. See docs/benchmarks.md, "Server".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from facecast import protocol as p
from facecast.bench.proctree import TreeSample, sample_tree
from facecast.bench.report import Log, Table
from facecast.client import LiteClient, LiteSocket, MintedSession, ReceivingPeer, StartedSession
from facecast.client.lite_socket import pcm_chunks
from facecast.client.rtpcount import Arrivals, frame_gaps

COMMANDS = ("ttff", "sessions", "drift", "memory", "all")
FPS = 30
QUALITY = "high"  # 512x512 at 1:1
AVATAR = "ava"
LEVELS = (2, 4, 8)
FULL_LEVELS = (*LEVELS, 12, 16)
MEMORY_LEVELS = (1, 4, 8)
MAX_CONCURRENT = 64  # the bench key's own cap, above any level (keys default to 4)
CHUNK_S = 0.1  # agent.speak chunk, as a streaming TTS sends them
LEAD_CHUNKS = 3  # chunks sent at once before pacing at playback speed
SPEECH_SENTENCES = 6
SETTLE_S = 3.0  # after sessions join a level, before its hold window: their set-up is not the load
DRAIN_S = 10.0  # at most this long for the utterances under way to end before the idle window
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
    parser.add_argument("--hold", type=float, default=10.0, help="sessions: seconds of speech measured")
    parser.add_argument("--idle", type=float, default=5.0, help="sessions: seconds of silence measured")
    parser.add_argument(
        "--levels", type=_levels, default=None, help="sessions: concurrent sessions, e.g. 2,4,8 (default)"
    )
    parser.add_argument("--full", action="store_true", help="sessions: levels 2, 4, 8, 12 and 16")
    parser.add_argument(
        "--rounds", type=int, default=1, help="sessions: runs of each level per code, alternating order"
    )
    parser.add_argument(
        "--baseline",
        nargs="?",
        const="main",
        default=None,
        metavar="REF",
        help="sessions: also run the server of git REF (default main) under the same load, side by side",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra `facecast serve` argument for this checkout's server, e.g. "
        "--server-arg=--live-workers=2 (repeatable)",
    )
    parser.add_argument(
        "--baseline-server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra `facecast serve` argument for the baseline's server (repeatable)",
    )
    parser.add_argument(
        "--track-only",
        action="store_true",
        help="sessions: track-only sessions (mouth_track, video false): records instead of video",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="drift session length in s (default 60)")
    parser.add_argument("--churn", type=int, default=500, help="sessions started and stopped for memory")
    parser.add_argument("--cache-dir", type=Path, default=None, help="generated speech cache (as bench)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give session counts separated by commas, e.g. 2,4,8"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every level needs at least one session")
    return levels


class SetupError(Exception):
    """The benchmark cannot start as asked (a baseline that cannot be checked out, a server that does
    not start): said in one line, not as a traceback."""


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    log = Log(enabled=not args.quiet)
    return run_and_print("facecast bench server", args.command, _run(args, log), markdown=args.markdown)


def run_and_print(name: str, command: str, run: Coroutine[Any, Any, list[Table]], *, markdown: bool) -> int:
    """Run a bench of a server process and print its tables under one header line (the date, the machine,
    how long it took and how busy the machine was); a missing prerequisite is one line on stderr, exit 2.
    `facecast bench server` and `facecast bench soak` print this way."""
    from facecast.bench import _cpu_note
    from facecast.bench.corpus import FliteMissingError

    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        tables = asyncio.run(run)
    except (FliteMissingError, ImportError, SetupError) as exc:  # a missing prerequisite: one line
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    load_after = os.getloadavg()
    print(
        f"{name} {command} — {date.today().isoformat()}, Python "
        f"{platform.python_version()}, {_cpu_note()}, {time.perf_counter() - started:.0f} s, "
        # The clients and anything else running share the cores with the server: say how busy it was.
        f"load average (1/5/15 min) {_load(load_before)} at start / {_load(load_after)} at end"
    )
    for t in tables:
        print()
        print(t.markdown() if markdown else t.text())
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
        levels = args.levels or (FULL_LEVELS if args.full else LEVELS)
        current = ServerCode("this checkout", checkout_root(), tuple(args.server_arg))
        run = functools.partial(
            sessions,
            speech=speech,
            levels=levels,
            hold_s=args.hold,
            idle_s=args.idle,
            log=log,
            rounds=args.rounds,
            track_only=args.track_only,
        )
        if args.baseline is None:
            tables.extend(await run([current]))
        else:
            with baseline_checkout(args.baseline, log) as root:
                baseline = ServerCode(args.baseline, root, tuple(args.baseline_server_arg))
                tables.extend(await run([baseline, current]))
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
@dataclass(frozen=True)
class ServerCode:
    """Which code a bench server runs: a checkout whose root goes first on PYTHONPATH (the interpreter
    and installed packages stay this process's), and extra `facecast serve` arguments."""

    label: str
    root: Path
    serve_args: tuple[str, ...] = ()


def checkout_root() -> Path:
    """The directory holding the `facecast` package this bench runs from."""
    import facecast

    return Path(facecast.__file__).resolve().parent.parent


@contextlib.contextmanager
def baseline_checkout(ref: str, log: Log) -> Iterator[Path]:
    """REF checked out (detached) into a temporary git worktree of this checkout's repository, removed
    afterwards."""
    root = checkout_root()
    probe = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-dir"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SetupError(f"--baseline needs facecast run from a git checkout; {root} is not one")
    tmp = Path(tempfile.mkdtemp(prefix="facecast-baseline-"))
    path = tmp / "checkout"
    added = subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", str(path), ref],
        capture_output=True,
        text=True,
    )
    if added.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SetupError(f"--baseline {ref}: git worktree add failed: {added.stderr.strip()}")
    commit = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    log(f"baseline {ref} ({commit}) checked out in {path}")
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(root), "worktree", "remove", "--force", str(path)], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


class ServerProcess:
    """`facecast serve` in a child process on a free loopback port, with a fresh data directory and key.
    CPU, memory and threads are summed over its whole process tree (worker processes included)."""

    def __init__(
        self, log: Log, code: ServerCode | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.log = log
        self.code = code or ServerCode("this checkout", checkout_root())
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
        env["PYTHONPATH"] = os.pathsep.join([str(self.code.root), *filter(None, [env.get("PYTHONPATH")])])
        # `python -m` puts the working directory first on sys.path, before PYTHONPATH: run every command
        # from the data directory, so that the bench's own directory never decides which code runs.
        run = functools.partial(subprocess.run, env=env, cwd=data_dir, capture_output=True, text=True)
        where = run([sys.executable, "-c", "import facecast; print(facecast.__file__)"]).stdout.strip()
        if not Path(where).resolve().is_relative_to(self.code.root.resolve()):
            await self.__aexit__(None, None, None)
            raise SetupError(f"the server for {self.code.label} would import facecast from {where!r}")
        cli = [sys.executable, "-m", "facecast"]
        keys = [*cli, "keys", "create", "--name", "bench", "--max-concurrent", str(MAX_CONCURRENT)]
        self.api_key = run([*keys, "--data-dir", str(data_dir)], check=True).stdout.strip()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = data_dir / "server.log"
        serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with open(self._log_path, "wb") as out:
            self._proc = subprocess.Popen(
                [*serve, "--data-dir", str(data_dir), *self.code.serve_args],
                env=env,
                cwd=data_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._ps = psutil.Process(self._proc.pid)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while True:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    await self.__aexit__(None, None, None)
                    raise SetupError(f"facecast serve ({self.code.label}) did not start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        self.log(
            f"server ({self.code.label}, {Path(where).parent}) pid {self._proc.pid} on {self.url}, "
            f"RSS {self.rss_mb():.0f} MB"
        )
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

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def sample(self) -> TreeSample:
        assert self._proc is not None
        return sample_tree(self._proc.pid)

    def rss_mb(self) -> float:
        return self.sample().rss_bytes / 2**20

    def threads(self) -> int:
        return self.sample().threads

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
    """Arrivals at the client: every frame's arrival and RTP timestamp (decoded or only counted) and,
    when measuring pixels, per-frame lists: (arrival, media time in seconds from the stream's first
    packet, value) where value is the mouth motion (video) or RMS, and each video frame's mean luma."""

    video_arrivals: Arrivals = field(default_factory=Arrivals)
    audio_arrivals: Arrivals = field(default_factory=Arrivals)
    video: list[tuple[float, float, float]] = field(default_factory=list)
    audio: list[tuple[float, float, float]] = field(default_factory=list)
    luma: list[float] = field(default_factory=list)

    @property
    def video_frames(self) -> int:
        return len(self.video_arrivals.times)


class Peer:
    """One session as a client app sees it (facecast.client): the session API, a peer receiving audio
    and video, and the LITE WebSocket. With `decode=False` the peer counts complete RTP frames without
    decoding them (facecast.client.rtpcount); otherwise aiortc decodes them and, with `mouth_box`, every
    video frame's mouth motion and luma and every audio frame's RMS are recorded. `track_only`: the
    session sends audio and mouth-track records (docs/mouth-track.md), no video."""

    def __init__(
        self,
        client: LiteClient,
        *,
        mouth_box: tuple[int, ...] | None = None,
        decode: bool = True,
        track_only: bool = False,
    ) -> None:
        self.client = client
        self.mouth_box = mouth_box
        self.decode = decode
        self.track_only = track_only
        self.received = Received()
        self.parked = asyncio.Event()  # talk() waits at its gate
        self.speech_errors = 0
        self.session_id = ""
        self._minted: MintedSession | None = None
        self._started: StartedSession | None = None
        self._peer: ReceivingPeer | None = None
        self._ws: LiteSocket | None = None
        self._last_mouth: np.ndarray | None = None

    @property
    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """The LITE WebSocket's events with their arrival times."""
        return self._ws.events if self._ws is not None else []

    def track_arrivals(self) -> Arrivals:
        """The mouth-track records that came on the WebSocket: arrival time and frame index."""
        arrivals = Arrivals()
        for arrived, event in self.events:
            if event["type"] == p.AVATAR_MOUTH_TRACK:
                arrivals.add(arrived, event["track"]["frame"])
        return arrivals

    async def open(self, max_session_duration: int | None = None) -> Timing:
        """Mint, start, signal WebRTC and wait for the first decoded video frame (track-only: the first
        audio packet)."""
        body: dict[str, Any] = {
            "transport": "webrtc",
            "fps": FPS,
            "aspect_ratio": "1:1",
            "video_settings": {"quality": QUALITY},
        }
        if self.track_only:
            body.update(mouth_track=True, video=False)
        if max_session_duration is not None:
            body["max_session_duration"] = max_session_duration
        self._minted = await self.client.mint(body)
        self.session_id = self._minted.session_id
        timing = Timing()
        t = time.monotonic()
        started = self._started = await self.client.start(self._minted)
        timing.start, t = _lap(t)
        measuring = self.mouth_box is not None
        # No ICE servers: aiortc would otherwise add a public STUN server, unreachable offline.
        peer = self._peer = ReceivingPeer(
            ice_servers=[],
            decode=self.decode,
            on_video=self._on_video if measuring else None,
            on_audio=self._on_audio if measuring else None,
        )
        # The peer's arrivals are the bench's: every frame, decoded or only counted.
        self.received.video_arrivals, self.received.audio_arrivals = peer.video_arrivals, peer.audio_arrivals
        offer = await peer.create_offer()
        timing.offer, t = _lap(t)
        await peer.accept_answer(*await self.client.offer(started, offer))
        timing.answer, t = _lap(t)
        try:
            if self.track_only:
                await _first_arrival(peer.audio_arrivals, TIMEOUT_S)
            else:
                await peer.wait_first_video(TIMEOUT_S)
        except TimeoutError:
            what = "audio packet" if self.track_only else "video frame"
            raise TimeoutError(
                f"session {self.session_id}: no {what} within {TIMEOUT_S:.0f} s of the answer"
            ) from None
        timing.first_frame, _ = _lap(t)
        return timing

    async def connect_ws(self) -> None:
        """Open the LITE WebSocket and wait until the session reports `connected`."""
        assert self._started is not None and self._started.ws_url is not None
        self._ws = await LiteSocket.connect(self.client.http, self._started.ws_url)
        await self._ws.wait_connected(TIMEOUT_S)

    def _on_video(self, frame: Any, arrival: float) -> None:
        self.received.video.append((arrival, float(frame.pts * frame.time_base), self._mouth_motion(frame)))

    def _on_audio(self, frame: Any, arrival: float) -> None:
        samples = frame.to_ndarray().astype(np.float32)
        rms = float(np.sqrt(np.mean(samples**2)))
        self.received.audio.append((arrival, float(frame.pts * frame.time_base), rms))

    def _mouth_motion(self, frame: Any) -> float:
        """Mean absolute luma change inside the mouth box since the previous frame: speech moves the lips
        from frame to frame, idle sway and breathing barely do."""
        assert self.mouth_box is not None
        x0, y0, x1, y1 = self.mouth_box
        planes = frame.to_ndarray()  # yuv420p: the luma rows come first
        self.received.luma.append(float(planes[: frame.height].mean()))
        crop = planes[y0:y1, x0:x1].astype(np.float32)
        last, self._last_mouth = self._last_mouth, crop
        return 0.0 if last is None or last.shape != crop.shape else float(np.abs(crop - last).mean())

    async def wait_event(
        self, match: Callable[[dict[str, Any]], bool], since: int = 0, timeout: float = TIMEOUT_S
    ) -> tuple[float, dict[str, Any]]:
        """The first event from index `since` on that matches, with its arrival time."""
        assert self._ws is not None
        try:
            return await self._ws.wait_event(match, since, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"session {self.session_id}: no matching event within {timeout:.0f} s"
            ) from None

    async def say(self, pcm: bytes, event_id: str) -> tuple[float, float]:
        """One utterance in CHUNK_S agent.speak messages at playback pace after a short lead, as a
        streaming TTS sends them. Returns (first send, arrival of its agent.speak_ended); an `error` event
        for it counts as a speech error."""
        assert self._ws is not None
        since = len(self.events)
        first = time.monotonic()
        for k, chunk in enumerate(pcm_chunks(pcm, CHUNK_S)):
            delay = first + max(0, k - LEAD_CHUNKS) * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._ws.speak(event_id, chunk)
        await self._ws.speak_end(event_id)
        ends = (p.AGENT_SPEAK_ENDED, p.AGENT_SPEAK_INTERRUPTED, p.ERROR)
        arrived, event = await self.wait_event(
            lambda e: e["type"] in ends and e.get("event_id") == event_id, since
        )
        if event["type"] == p.ERROR:
            self.speech_errors += 1
        return first, arrived

    async def talk(self, speech: Sequence[bytes], offset: int = 0, gate: asyncio.Event | None = None) -> None:
        """Speak forever (until cancelled), one utterance after another with a short pause; while `gate`
        is cleared, wait (`parked` set) before the next utterance."""
        for n in itertools.count():
            if gate is not None and not gate.is_set():
                self.parked.set()
                await gate.wait()
                self.parked.clear()
            await self.say(speech[(n + offset) % len(speech)], f"u{n}")
            await asyncio.sleep(0.3)

    async def stats(self) -> dict[str, Any]:
        return await self.client.stats(self.session_id)

    async def stop(self) -> str:
        """POST /v1/sessions/stop; the end reason."""
        if self._minted is None:
            return ""
        return await self.client.stop(self._minted)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._peer is not None:
            await self._peer.close()


async def _first_arrival(arrivals: Arrivals, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not arrivals.times:
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


def record_lateness_ms(tracks: Sequence[Arrivals], t0: float, t1: float) -> tuple[float, float]:
    """(p95, max) over the sessions of how late each mouth-track record arrived in [t0, t1): its arrival
    minus its frame's time on the session's timeline (frame / FPS), less the smallest such offset of its
    session in the window. 0 when every record comes exactly one frame period after the one before."""
    late: list[float] = []
    for track in tracks:
        arrival = np.asarray(track.times)
        frame = np.asarray(track.rtp_timestamps, dtype=np.float64)
        inside = (arrival >= t0) & (arrival < t1)
        if inside.any():
            offset = arrival[inside] - frame[inside] / FPS
            late.extend((offset - offset.min()).tolist())
    if not late:
        return math.nan, math.nan
    return _ms(float(np.percentile(late, 95))), _ms(max(late))


def _lap(t: float) -> tuple[float, float]:
    now = time.monotonic()
    return now - t, now


async def _close_all(peers: Sequence[Peer]) -> None:
    for peer in peers:
        with contextlib.suppress(Exception):
            await peer.stop()
        await peer.close()


def bench_client(server: ServerProcess) -> LiteClient:
    """The session API of the bench's server with its key; one connection per concurrent call (aiohttp's
    default pool of 100 is plenty)."""
    return LiteClient(server.url, server.api_key, timeout_s=TIMEOUT_S)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


# -- ttff ---------------------------------------------------------------------------------------------
async def ttff(server: ServerProcess, runs: int, log: Log) -> Table:
    """Sequential sessions: /v1/sessions/start sent → first decoded video frame at the client."""
    timings: list[Timing] = []
    server_ms: list[float] = []
    async with bench_client(server) as client:
        for i in range(runs):
            peer = Peer(client)
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
# Released frames that may still wait for the encoder when a window closes (the server's video queue).
ENCODER_QUEUE_FRAMES = 2


@dataclass(frozen=True)
class Snapshot:
    """Every session's server stats, the server's and the clients' CPU time, at one instant."""

    stats: list[dict[str, Any]]
    server_cpu_s: float  # the server's whole process tree
    client_cpu_s: float  # this process: every client peer
    wall: float  # time.monotonic


async def _snapshot(server: ServerProcess, peers: Sequence[Peer]) -> Snapshot:
    stats = await asyncio.gather(*(peer.stats() for peer in peers))
    return Snapshot(list(stats), server.sample().cpu_s, time.process_time(), time.monotonic())


@dataclass(frozen=True)
class WindowFigures:
    """One measuring window of one level: the server's counters and CPU, and what the clients received."""

    server_cpu_pct: float  # of one core
    client_cpu_pct: float
    fps_mean: float  # video frames received per session and second
    fps_min: float  # the slowest session's
    not_drawn: int  # frames the pacer produced without drawing (frames_dropped)
    lost: int  # drawn frames the encoder never took
    dropped_pct: float  # not drawn + lost + frames not released, over elapsed x fps
    fell_behind_s: float  # the slowest pacer's slip against its session clock in the window
    largest_gap_ms: float  # between two frames at one client (a client that got < 2: the window)
    long_gaps: int  # inter-arrival gaps over two frame periods, summed over the sessions
    engine_ms: float  # the server's mean engine wall time per frame, over the sessions
    encode_ms: float
    # The server's CPU time over the frames its sessions released: what one frame costs, whether or not
    # the machine had the CPU to keep every session at full rate.
    cpu_ms_per_frame: float = math.nan


def window_figures(a: Snapshot, b: Snapshot, videos: Sequence[Arrivals]) -> WindowFigures:
    """From two snapshots and each session's video arrivals (the same sessions, in the same order)."""
    wall = b.wall - a.wall
    not_drawn = lost = frames = 0
    expected = late = fell_behind = 0.0
    for s0, s1 in zip(a.stats, b.stats, strict=True):
        if not (s0 and s1):  # the session ended in the window (its record kept no stats): nothing to count
            continue
        released = _stat(s1, "frames", "frames_sent") - _stat(s0, "frames", "frames_sent")
        skipped = s1["frames_dropped"] - s0["frames_dropped"]
        frames += released
        not_drawn += skipped
        if "frames_lost_in_queue" in s1:  # counted by the server since the live core
            lost += s1["frames_lost_in_queue"] - s0["frames_lost_in_queue"]
        else:
            encoded = s1.get("video_frames_sent", 0) - s0.get("video_frames_sent", 0)
            lost += max(0, released - skipped - encoded - ENCODER_QUEUE_FRAMES)
        elapsed = s1["duration_s"] - s0["duration_s"]
        expected += elapsed * FPS
        late += max(0.0, elapsed * FPS - released - 1)  # a read falls anywhere in a frame: +-1
        fell_behind = max(fell_behind, elapsed - released / FPS)
    fps: list[float] = []
    largest, long_gaps = 0.0, 0
    for video in videos:
        times = video.between(a.wall, b.wall)
        fps.append(len(times) / wall)
        gaps = frame_gaps(times, 1 / FPS)
        largest = max(largest, gaps.largest_s if gaps.frames >= 2 else wall)
        long_gaps += gaps.over_two_periods
    server_cpu_s = b.server_cpu_s - a.server_cpu_s
    return WindowFigures(
        server_cpu_pct=100.0 * server_cpu_s / wall,
        client_cpu_pct=100.0 * (b.client_cpu_s - a.client_cpu_s) / wall,
        fps_mean=float(np.mean(fps)) if fps else math.nan,
        fps_min=min(fps, default=math.nan),
        not_drawn=not_drawn,
        lost=lost,
        dropped_pct=min(100.0, 100.0 * (not_drawn + lost + late) / max(expected, 1.0)),
        fell_behind_s=fell_behind,
        largest_gap_ms=_ms(largest),
        long_gaps=long_gaps,
        engine_ms=float(np.mean([_stat(s, "engine_ms", "render_ms") or math.nan for s in b.stats if s])),
        encode_ms=float(np.mean([s.get("encode_ms") or math.nan for s in b.stats if s])),
        cpu_ms_per_frame=1000.0 * server_cpu_s / frames if frames else math.nan,
    )


def _stat(stats: dict[str, Any], *names: str) -> Any:
    """The first of `names` the session's stats have: the live core renamed some (frames_sent is now
    frames, render_ms engine_ms), and a baseline may be older or newer than this checkout."""
    for name in names:
        if name in stats:
            return stats[name]
    raise KeyError(f"the server's session stats have none of {', '.join(names)}: {sorted(stats)}")


@dataclass(frozen=True)
class PixelCheck:
    """The decoded session's pictures: the mouth moves while it speaks, and the frames are not black."""

    moving_speaking_pct: float  # frames whose mouth moved (luma change in the mouth box), speaking
    moving_idle_pct: float  # the same in silence (idle sway and breathing stay under the threshold)
    luma: float  # mean luma of the frames, 0-255

    @property
    def ok(self) -> bool:
        return (
            self.moving_speaking_pct >= 10.0
            and self.moving_speaking_pct > 2 * self.moving_idle_pct
            and (self.luma > 32.0)
        )


def pixel_check(
    video: Sequence[tuple[float, float, float]],
    luma: Sequence[float],
    speaking: tuple[float, float],
    idle: tuple[float, float],
) -> PixelCheck:
    """`video`: (arrival, media s, mouth motion) per decoded frame, `luma` its mean luma; the windows are
    (start, end) arrival times. A frame moves when its motion passes 3x the idle window's p95 (at least
    0.25), as in the drift run."""
    v = np.asarray(video, dtype=np.float64).reshape(-1, 3)
    y = np.asarray(luma, dtype=np.float64)
    in_speech = (v[:, 0] >= speaking[0]) & (v[:, 0] < speaking[1])
    in_idle = (v[:, 0] >= idle[0]) & (v[:, 0] < idle[1])
    idle_motion = v[in_idle, 2]
    threshold = 3 * max(float(np.percentile(idle_motion, 95)) if len(idle_motion) else 0.0, 0.25)

    def moving_pct(rows: np.ndarray) -> float:
        return 100.0 * float(np.mean(v[rows, 2] > threshold)) if rows.any() else math.nan

    return PixelCheck(
        moving_pct(in_speech),
        moving_pct(in_idle),
        float(y[in_speech].mean()) if in_speech.any() else math.nan,
    )


@dataclass
class LevelRun:
    """One server (one code) carrying `sessions` concurrent sessions: a speaking window, then a silent one."""

    code: str
    sessions: int
    reached: int = 0
    ttff_s: list[float] = field(default_factory=list)
    speaking: WindowFigures | None = None
    idle: WindowFigures | None = None
    rss_idle_server_mb: float = math.nan
    rss_first_mb: float = math.nan  # with the first session
    rss_mb: float = math.nan  # with every session, after the speaking window
    processes: int = 0
    pixels: PixelCheck | None = None
    track_only: bool = False
    lateness_ms: tuple[float, float] = (math.nan, math.nan)  # track-only: records' (p95, max), speaking
    speech_errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rss_per_further_mb(self) -> float:
        return (self.rss_mb - self.rss_first_mb) / (self.sessions - 1) if self.sessions > 1 else math.nan


async def sessions(
    codes: Sequence[ServerCode],
    speech: Sequence[bytes],
    levels: Sequence[int],
    hold_s: float,
    idle_s: float,
    log: Log,
    rounds: int = 1,
    track_only: bool = False,
) -> list[Table]:
    """Per level and round, a fresh server of each code in turn carries that many speaking sessions: one
    table per level with a column per code (medians over the rounds) and their ratio. `track_only`:
    track-only sessions (no video; the mouth track's records are what is delivered)."""
    from facecast.avatars import load_renderer

    box = load_renderer(AVATAR, aspect="1:1", quality=QUALITY).mouth_box()
    tables = []
    for level in levels:
        runs: list[list[LevelRun]] = [[] for _ in codes]
        for n in range(rounds):
            # Rounds alternate the order (A B, B A, ...): a machine that grows busier or quieter over the
            # run weighs on both codes alike.
            order = list(enumerate(codes)) if n % 2 == 0 else list(enumerate(codes))[::-1]
            for i, code in order:
                async with ServerProcess(log, code) as server:
                    run = await _level_run(server, speech, level, hold_s, idle_s, box, log, track_only)
                runs[i].append(run)
                if run.speaking is not None:
                    unit = "records/s" if track_only else "fps"
                    log(
                        f"sessions {level} ({code.label}, round {n + 1}/{rounds}): server CPU "
                        f"{run.speaking.server_cpu_pct:.0f}%, {run.speaking.fps_mean:.1f} {unit} per "
                        "session, "
                        f"{run.speaking.not_drawn} not drawn, client CPU {run.speaking.client_cpu_pct:.0f}%"
                    )
        tables.append(level_table(level, runs, hold_s, idle_s))
    return tables


async def _level_run(
    server: ServerProcess,
    speech: Sequence[bytes],
    level: int,
    hold_s: float,
    idle_s: float,
    mouth_box: tuple[int, ...],
    log: Log,
    track_only: bool = False,
) -> LevelRun:
    run = LevelRun(server.code.label, level, rss_idle_server_mb=server.rss_mb(), track_only=track_only)
    speaking = asyncio.Event()
    speaking.set()
    peers: list[Peer] = []
    talkers: list[asyncio.Task[None]] = []
    async with bench_client(server) as client:
        try:
            while len(peers) < level:
                # The first session is decoded and its pixels checked; the others only count frames.
                first = not peers and not track_only
                peer = Peer(
                    client, mouth_box=mouth_box if first else None, decode=first, track_only=track_only
                )
                peers.append(peer)
                try:
                    run.ttff_s.append((await peer.open()).total)
                except TimeoutError as exc:  # an overloaded server may never draw a new session's frame
                    run.notes.append(f"{server.code.label}: {level} sessions not reached: {exc}")
                    log(f"sessions {level} ({server.code.label}): not reached ({exc})")
                    return run
                await peer.connect_ws()
                if first:
                    run.rss_first_mb = server.rss_mb()
                talkers.append(asyncio.create_task(peer.talk(speech, offset=len(peers), gate=speaking)))
            run.reached = level
            await asyncio.sleep(SETTLE_S)
            a = await _snapshot(server, peers)
            await asyncio.sleep(hold_s)
            b = await _snapshot(server, peers)
            tree = server.sample()
            run.rss_mb, run.processes = tree.rss_bytes / 2**20, tree.processes
            speaking.clear()
            try:  # the utterances under way end before the silent window
                await asyncio.wait_for(asyncio.gather(*(peer.parked.wait() for peer in peers)), DRAIN_S)
            except TimeoutError:
                run.notes.append(
                    f"{server.code.label}: speech still under way {DRAIN_S:.0f} s after the speaking window; "
                    "the idle figures include some"
                )
            c = await _snapshot(server, peers)
            await asyncio.sleep(idle_s)
            d = await _snapshot(server, peers)
            if track_only:
                videos = [peer.track_arrivals() for peer in peers]
                run.lateness_ms = record_lateness_ms(videos, a.wall, b.wall)
            else:
                videos = [peer.received.video_arrivals for peer in peers]
                sample = peers[0].received
                run.pixels = pixel_check(sample.video, sample.luma, (a.wall, b.wall), (c.wall, d.wall))
            run.speaking, run.idle = window_figures(a, b, videos), window_figures(c, d, videos)
            for task in talkers:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    run.notes.append(f"{server.code.label}: a speaking client failed: {task.exception()!r}")
        finally:
            for task in talkers:
                task.cancel()
            await asyncio.gather(*talkers, return_exceptions=True)
            await _close_all(peers)
            run.speech_errors = sum(peer.speech_errors for peer in peers)
    return run


def level_table(level: int, runs: Sequence[Sequence[LevelRun]], hold_s: float, idle_s: float) -> Table:
    """Figures as rows, one column per code (`runs[i]`: its rounds; each figure their median) and, for
    two codes, the second over the first."""
    nan = math.nan

    def speaking(get: Callable[[WindowFigures], float]) -> Callable[[LevelRun], float]:
        return lambda r: get(r.speaking) if r.speaking is not None else nan

    def idle(get: Callable[[WindowFigures], float]) -> Callable[[LevelRun], float]:
        return lambda r: get(r.idle) if r.idle is not None else nan

    def ttff(q: float) -> Callable[[LevelRun], float]:
        return lambda r: _ms(float(np.percentile(r.ttff_s, q))) if r.ttff_s else nan

    def pixels(get: Callable[[PixelCheck], float]) -> Callable[[LevelRun], float]:
        return lambda r: get(r.pixels) if r.pixels is not None else nan

    rows: list[tuple[str, Callable[[LevelRun], Any]]] = [
        ("sessions reached", lambda r: r.reached),
        ("delivered fps per session, mean", speaking(lambda w: w.fps_mean)),
        ("delivered fps, slowest session", speaking(lambda w: w.fps_min)),
        ("server: not drawn, frames", speaking(lambda w: w.not_drawn)),
        ("server: lost in queue, frames", speaking(lambda w: w.lost)),
        ("server: dropped %", speaking(lambda w: w.dropped_pct)),
        ("server: pacer fell behind s", speaking(lambda w: w.fell_behind_s)),
        ("client: largest frame gap ms", speaking(lambda w: w.largest_gap_ms)),
        (f"client: gaps > {_ms(2 / FPS):.0f} ms, all sessions", speaking(lambda w: w.long_gaps)),
        ("time to first frame ms, median", ttff(50)),
        ("time to first frame ms, p95", ttff(95)),
        ("server CPU % speaking", speaking(lambda w: w.server_cpu_pct)),
        ("server CPU % speaking, per session", speaking(lambda w: w.server_cpu_pct / level)),
        ("server CPU ms per frame released, speaking", speaking(lambda w: w.cpu_ms_per_frame)),
        ("server CPU % idle", idle(lambda w: w.server_cpu_pct)),
        ("server CPU % idle, per session", idle(lambda w: w.server_cpu_pct / level)),
        ("server: engine ms / frame", speaking(lambda w: w.engine_ms)),
        ("server: encode ms / frame", speaking(lambda w: w.encode_ms)),
        ("server RSS MB", lambda r: r.rss_mb),
        ("server RSS MB, no session", lambda r: r.rss_idle_server_mb),
        ("server RSS MB per further session", lambda r: r.rss_per_further_mb),
        ("server processes", lambda r: r.processes),
        ("idle: delivered fps per session", idle(lambda w: w.fps_mean)),
        ("idle: server not drawn + lost, frames", idle(lambda w: w.not_drawn + w.lost)),
        ("client CPU % speaking", speaking(lambda w: w.client_cpu_pct)),
        ("client CPU % idle", idle(lambda w: w.client_cpu_pct)),
        ("sampled session: mouth moving % of frames, speaking", pixels(lambda c: c.moving_speaking_pct)),
        ("sampled session: mouth moving % of frames, idle", pixels(lambda c: c.moving_idle_pct)),
        ("sampled session: mean luma", pixels(lambda c: c.luma)),
        ("sampled session: pixels ok, rounds", lambda r: int(r.pixels is not None and r.pixels.ok)),
        ("speech errors", lambda r: r.speech_errors),
    ]
    track_only = runs[0][0].track_only
    if track_only:  # no video: what the clients receive is the mouth track's records
        rows = [
            (name.replace("fps", "records/s").replace("frame gap", "gap between records"), get)
            for name, get in rows
            if not name.startswith(("sampled session", "server: encode"))
        ]
        rows[1:1] = [
            ("record lateness ms, p95", lambda r: r.lateness_ms[0]),
            ("record lateness ms, max", lambda r: r.lateness_ms[1]),
        ]
    codes = [rounds[0].code for rounds in runs]
    headers = ["", *codes]
    if len(runs) == 2:
        headers.append(f"{codes[1]} / {codes[0]}")
    what = "track-only sessions (audio + mouth track, no video)" if track_only else "sessions (512x512 VP8)"
    table = Table(
        f"{level} concurrent {what} @ {FPS} fps: {hold_s:.0f} s all speaking, then {idle_s:.0f} s all silent",
        headers,
    )
    for name, get in rows:
        # Counts of rounds (pixels ok) are summed, every other figure is the median over the rounds.
        combine = sum if name.endswith(", rounds") else _median
        cells = [combine([get(r) for r in rounds]) for rounds in runs]
        if len(runs) == 2:
            cells.append(_ratio(cells[1], cells[0]))
        table.add(name, *cells)
    table.notes += [note for rounds in runs for r in rounds for note in r.notes]
    table.notes += [
        f"each column is a fresh server carrying the same client load, one after the other, {len(runs[0])} "
        "round(s) in alternating order, each figure the median over the rounds; CPU % is of one "
        "core (200% = both cores of a 2-core machine); server CPU and RSS sum its whole process tree (RSS "
        "counts pages shared between forked processes once per process)",
        (
            "track-only: each session's avatar.mouth_track records on its LITE WebSocket are its frames; "
            "record lateness = a record's arrival minus frame / fps, less its session's smallest such "
            "offset in the speaking window; client CPU % is every client, in the bench process"
            if track_only
            else "every session but the first counts complete RTP frames without decoding them; the first "
            "decodes and its pixels are checked: the mouth moves (luma change in the mouth box over 3x the "
            "silent window's p95) while speaking, mean luma > 32; client CPU % is every client, in the "
            "bench process"
        ),
        "not drawn = frames_dropped (the pacer ran late and skipped drawing); lost in queue = drawn frames "
        "the encoder did not take; dropped % = not drawn + lost + frames not released, over elapsed x fps; "
        "time to first frame = start call -> first frame at the client, each session joining under the "
        "load of the ones before it",
    ]
    return table


def _median(values: Sequence[float]) -> float:
    if len(values) == 1:  # one round: the figure as measured (an int stays an int)
        return values[0]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    median = float(np.median(finite))
    # Counts stay counts: the median of whole numbers prints as one when it is whole.
    return int(median) if median.is_integer() and all(isinstance(v, int) for v in finite) else median


def _ratio(new: Any, old: Any) -> str:
    if isinstance(new, str) or isinstance(old, str):
        return ""
    if not (math.isfinite(new) and math.isfinite(old)) or old == 0:
        return "-"
    return f"{new / old:.2f}x"


# -- drift --------------------------------------------------------------------------------------------
async def drift(server: ServerProcess, speech: Sequence[bytes], duration: float, log: Log) -> list[Table]:
    """One long session with periodic speech: does the mouth keep its place against the audio, and does
    the pacer keep wall-clock time?"""
    from facecast.avatars import load_renderer

    box = load_renderer(AVATAR, aspect="1:1", quality=QUALITY).mouth_box()
    said: list[tuple[float, float]] = []  # per utterance: (first send, agent.speak_ended arrival)
    async with bench_client(server) as client:
        peer = Peer(client, mouth_box=box)
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
    sent = _stat(s1, "frames", "frames_sent") - _stat(s0, "frames", "frames_sent")
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
    async with bench_client(server) as client:
        try:
            for level in MEMORY_LEVELS:
                new = []
                while len(peers) < level:
                    peer = Peer(client)
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
        churned = await _churn(client, server, churn, log)
    return [live, churned]


async def _churn(client: LiteClient, server: ServerProcess, total: int, log: Log) -> Table:
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
        reasons = await asyncio.gather(*(_one_session(client) for _ in range(n)))
        not_stopped += sum(reason != p.END_STOPPED for reason in reasons)
        done += n
        block.append(server.rss_mb())
        if done % CHURN_SAMPLE == 0 or done == total:
            medians.append(float(np.median(block)))
            table.add(done, medians[-1], max(block), server.threads(), server.fds(), not_stopped)
            log(f"memory churn {done}/{total}: server RSS {medians[-1]:.0f} MB (median since the last row)")
            block = []
    live = (await client.request("GET", f"{server.url}/healthz"))["live_sessions"]
    half = medians[len(medians) // 2 - 1]  # the median at about half of the sessions
    table.notes += [
        f"growth of the median from session {min(CHURN_SAMPLE, done)} (after warm-up) to {done}: "
        f"{medians[-1] - medians[0]:+.1f} MB; over the second half: {medians[-1] - half:+.1f} MB; "
        f"live sessions afterwards: {live}",
        "each session: token -> start -> WebRTC offer/answer -> first decoded frame -> stop",
        "target: no growth after 500 sessions",
    ]
    return table


async def _one_session(client: LiteClient) -> str:
    peer = Peer(client)
    try:
        await peer.open()
        return await peer.stop()
    finally:
        await peer.close()
