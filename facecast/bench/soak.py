"""`facecast bench soak`: a real `facecast serve` process under sessions that come and go, measured from
outside; it stops by itself.

Subcommands:
- `abandon`: rounds of sessions that are started over the API and WebRTC, reach their first frame and
  are then left to time out (the client stays silent; the server's idle timeout ends them). After each
  round, with nothing live, the server's resident memory: the API process and each worker process.
- `churn`: for `--duration` seconds, `--concurrent` sessions at a time, each speaking a few utterances
  and then stopped (or abandoned, one in four) and replaced. Every `--sample` seconds, the server's RSS
  and each speaking session's A/V drift (its audio RTP clock against its video RTP clock, at the
  client). At the end, with nothing live, the memory against the baseline taken after the first session.

Tables go to stdout (Markdown with --markdown), progress to stderr. See docs/reliability.md, "Memory and
soak".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from facecast import protocol as p
from facecast.argtypes import positive_int
from facecast.bench.report import Log, Table
from facecast.bench.server import (
    FPS,
    TIMEOUT_S,
    Peer,
    ServerCode,
    ServerProcess,
    SetupError,
    baseline_checkout,
    bench_client,
    checkout_root,
    load_speech,
    run_and_print,
)
from facecast.client import LiteClient
from facecast.client.rtpcount import Arrivals

COMMANDS = ("abandon", "churn")
IDLE_TIMEOUT_S = 3  # the server's idle timeout here: an abandoned session ends this long after its start
SETTLE_S = 2.0  # after a round's sessions ended, before measuring (frees on other threads land)
UTTERANCES_PER_SESSION = 3
ABANDON_EVERY = 4  # in churn, one session in this many goes without a stop (its peer and socket close)
MAX_GROWTH_MB = 50.0  # the target: idle RSS within this of its baseline once nothing is live
AUDIO_CLOCK = 48000
AUDIO_FRAMES_PER_S = 50  # 20 ms Opus frames
VIDEO_CLOCK = 90000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facecast bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS, help="which run")
    parser.add_argument("--rounds", type=positive_int, default=8, help="abandon: rounds (default 8)")
    parser.add_argument(
        "--sessions", type=positive_int, default=20, help="abandon: sessions per round (default 20)"
    )
    parser.add_argument("--duration", type=float, default=3600.0, help="churn: seconds (default 3600)")
    parser.add_argument(
        "--concurrent", type=positive_int, default=4, help="churn: live sessions at a time (4)"
    )
    parser.add_argument("--sample", type=float, default=60.0, help="churn: seconds between samples (60)")
    parser.add_argument(
        "--live-workers",
        type=int,
        default=None,
        help="the server's worker processes (facecast serve --live-workers; 0: sessions in the API process)",
    )
    parser.add_argument(
        "--baseline",
        nargs="?",
        const="main",
        default=None,
        metavar="REF",
        help="abandon: also run the server of git REF (default main), first, in the same run",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="generated speech cache (as bench)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    log = Log(enabled=not args.quiet)
    return run_and_print("facecast bench soak", args.command, _run(args, log), markdown=args.markdown)


async def _run(args: argparse.Namespace, log: Log) -> list[Table]:
    serve_args = () if args.live_workers is None else ("--live-workers", str(args.live_workers))
    current = ServerCode("this checkout", checkout_root(), serve_args)
    if args.command == "churn":
        speech = load_speech(args.cache_dir)
        async with soak_server(current, log) as server:
            return churn_tables(await churn(server, speech, args.duration, args.concurrent, args.sample, log))
    if args.baseline is None:
        async with soak_server(current, log) as server:
            return [abandon_table(await abandon(server, args.rounds, args.sessions, log))]
    tables = []
    with baseline_checkout(args.baseline, log) as root:
        for code in (ServerCode(args.baseline, root, serve_args), current):
            async with soak_server(code, log) as server:
                tables.append(abandon_table(await abandon(server, args.rounds, args.sessions, log)))
    return tables


def soak_server(code: ServerCode, log: Log) -> ServerProcess:
    """`facecast serve` for a soak: abandoned sessions end IDLE_TIMEOUT_S after their last activity."""
    return ServerProcess(log, code, env={"FACECAST_IDLE_TIMEOUT": str(IDLE_TIMEOUT_S)})


# -- memory of the server's processes -----------------------------------------------------------------
@dataclass(frozen=True)
class ProcessMemory:
    api_mb: float
    workers_mb: tuple[float, ...]

    @property
    def total_mb(self) -> float:
        return self.api_mb + sum(self.workers_mb)


def process_memory(server: ServerProcess) -> ProcessMemory:
    """The API process's RSS and each worker process's (children of the API process), MB."""
    import psutil

    root = psutil.Process(server.pid)
    workers = []
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            workers.append(child.memory_info().rss / 2**20)
    return ProcessMemory(root.memory_info().rss / 2**20, tuple(sorted(workers)))


async def _live(client: LiteClient, server: ServerProcess) -> int:
    for _ in range(20):
        try:
            return int((await client.request("GET", f"{server.url}/healthz"))["live_sessions"])
        except aiohttp.ClientConnectionError:  # a server past its capacity may drop a connection: ask again
            await asyncio.sleep(0.5)
    raise SetupError(f"the server at {server.url} stopped answering /healthz")


async def _wait_idle(client: LiteClient, server: ServerProcess, timeout: float) -> int:
    """Wait until the server has no live session (or `timeout`); the sessions still live."""
    deadline = time.monotonic() + timeout
    while (live := await _live(client, server)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return live


# -- abandon ------------------------------------------------------------------------------------------
async def _wait_ended(client: LiteClient, session_id: str, timeout: float) -> str | None:
    """The session's end reason once the server has ended it; None if it is still running at `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = await client.session(session_id)
        except aiohttp.ClientConnectionError:  # a server past its capacity may drop a connection: ask again
            await asyncio.sleep(0.25)
            continue
        if data["state"] == p.STATE_ENDED:
            return str(data["end_reason"])
        await asyncio.sleep(0.25)
    return None


async def abandoned_session(client: LiteClient) -> tuple[str | None, bool]:
    """Start a session, signal WebRTC, say nothing: the server ends it at its idle timeout. The client's
    peer stays open until then, as a client that went away without a word leaves it. Returns the end
    reason (None: not ended within 30 s of the timeout) and whether a first video frame arrived (on a
    machine too loaded for it, the session is abandoned all the same)."""
    peer = Peer(client, decode=False)
    try:
        try:
            await peer.open()
            framed = True
        except TimeoutError:
            framed = False
        if not peer.session_id:  # the token could not be minted
            return None, False
        return await _wait_ended(client, peer.session_id, IDLE_TIMEOUT_S + 30), framed
    finally:
        await peer.close()


@dataclass
class AbandonRun:
    label: str
    per_round: int
    baseline: ProcessMemory
    rounds: list[ProcessMemory] = field(default_factory=list)
    live: list[int] = field(default_factory=list)  # sessions still live when each round was measured
    not_idle: int = 0  # sessions that ended otherwise than by the idle timeout
    no_frame: int = 0  # sessions whose first video frame did not come within TIMEOUT_S

    @property
    def growth_mb(self) -> float:
        return self.rounds[-1].total_mb - self.baseline.total_mb


async def abandon(server: ServerProcess, rounds: int, per_round: int, log: Log) -> AbandonRun:
    """`rounds` rounds of `per_round` concurrent abandoned sessions; the server's memory with nothing
    live, after one such session (the baseline: models, codecs and arenas loaded once) and after each
    round."""
    async with bench_client(server) as client:
        ended = [await abandoned_session(client)]
        await _wait_idle(client, server, 30)
        await asyncio.sleep(SETTLE_S)
        run = AbandonRun(server.code.label, per_round, process_memory(server))
        for n in range(1, rounds + 1):
            ended += await asyncio.gather(*(abandoned_session(client) for _ in range(per_round)))
            run.not_idle = sum(reason != p.END_IDLE for reason, _ in ended)
            run.no_frame = sum(not framed for _, framed in ended)
            run.live.append(await _wait_idle(client, server, 30))
            await asyncio.sleep(SETTLE_S)
            mem = process_memory(server)
            run.rounds.append(mem)
            log(
                f"abandon ({run.label}) round {n}/{rounds}: API process {mem.api_mb:.0f} MB, children "
                f"{_workers(mem)} MB, {mem.total_mb - run.baseline.total_mb:+.0f} MB over the baseline, "
                f"{run.live[-1]} live"
            )
    return run


def abandon_table(run: AbandonRun) -> Table:
    table = Table(
        f"{run.label}: server memory after rounds of {run.per_round} WebRTC sessions left to time out "
        f"(idle timeout {IDLE_TIMEOUT_S} s), nothing live",
        ["sessions", "API process MB", "child processes MB", "total MB", "over baseline MB", "live"],
    )
    base = run.baseline
    table.add(1, base.api_mb, _workers(base), base.total_mb, 0.0, 0)
    for n, (mem, live) in enumerate(zip(run.rounds, run.live, strict=True), 1):
        table.add(
            1 + n * run.per_round, mem.api_mb, _workers(mem), mem.total_mb, mem.total_mb - base.total_mb, live
        )
    met = "met" if run.growth_mb <= MAX_GROWTH_MB else "NOT met"
    table.notes += [
        "each session: token -> start -> WebRTC offer/answer -> first video frame -> silence until the "
        "server ends it (idle timeout); the client's peer closes only then",
        "child processes: the live workers and multiprocessing's resource tracker",
        f"sessions that ended otherwise than by the idle timeout: {run.not_idle}; whose first frame did "
        f"not come within {TIMEOUT_S:.0f} s (machine load): {run.no_frame}",
        f"baseline: after one such session; target: within +{MAX_GROWTH_MB:.0f} MB ({met}: "
        f"{run.growth_mb:+.1f} MB)",
    ]
    return table


def _workers(mem: ProcessMemory) -> str:
    return "+".join(f"{mb:.0f}" for mb in mem.workers_mb) or "-"


# -- churn ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChurnSample:
    t_s: float
    started: int
    live: int
    memory: ProcessMemory
    worst_drift_ms: float  # the largest |A/V drift| over the sessions speaking then; NaN: none was


@dataclass
class ChurnRun:
    duration_s: float
    concurrent: int
    baseline: ProcessMemory | None = None
    after: ProcessMemory | None = None
    live_after: int = 0
    started: int = 0
    stopped: int = 0
    abandoned: int = 0
    utterances: int = 0
    speech_errors: int = 0
    failures: list[str] = field(default_factory=list)
    samples: list[ChurnSample] = field(default_factory=list)

    @property
    def growth_mb(self) -> float:
        assert self.baseline is not None and self.after is not None
        return self.after.total_mb - self.baseline.total_mb

    @property
    def worst_drift_ms(self) -> float:
        drifts = [s.worst_drift_ms for s in self.samples if not math.isnan(s.worst_drift_ms)]
        return max(drifts) if drifts else math.nan


def _lateness_change_s(arrivals: Arrivals, clock: int, window: int) -> float | None:
    """How much later, against its own media clock, a stream arrives now than at its start, s: the least
    lateness (arrival minus RTP time) over its last `window` frames minus that over its first `window`.
    The least, because jitter only ever delays a packet."""
    times, stamps = arrivals.times, arrivals.rtp_timestamps
    if len(times) < 2 * window:
        return None
    t0, s0 = times[0], stamps[0]

    def least(indexes: range) -> float:
        return min((times[i] - t0) - ((stamps[i] - s0) % 2**32) / clock for i in indexes)

    return least(range(len(times) - window, len(times))) - least(range(window))


def av_drift_ms(peer: Peer) -> float | None:
    """How far a session's audio has drifted from its video at the client since the session's first
    second, ms: the change in video's lateness minus the change in audio's (positive when audio now
    arrives early against video). Zero while both play at real time from one clock. None before both
    streams have run for two seconds."""
    video = _lateness_change_s(peer.received.video_arrivals, VIDEO_CLOCK, FPS)
    audio = _lateness_change_s(peer.received.audio_arrivals, AUDIO_CLOCK, AUDIO_FRAMES_PER_S)
    if video is None or audio is None:
        return None
    return (video - audio) * 1000.0


async def churned_session(
    client: LiteClient,
    speech: Sequence[bytes],
    n: int,
    run: ChurnRun,
    speaking: set[Peer],
) -> None:
    """Session `n`: started, connected, UTTERANCES_PER_SESSION utterances, then stopped, or (one in
    ABANDON_EVERY) abandoned: its socket and peer close without a stop and the server sees them go."""
    peer = Peer(client, decode=False)
    try:
        await peer.open()
        run.started += 1
        await peer.connect_ws()
        speaking.add(peer)
        for k in range(UTTERANCES_PER_SESSION):
            await peer.say(speech[(n + k) % len(speech)], f"s{n}u{k}")
            run.utterances += 1
        speaking.discard(peer)
        run.speech_errors += peer.speech_errors
        if n % ABANDON_EVERY == ABANDON_EVERY - 1:
            run.abandoned += 1
        else:
            reason = await peer.stop()
            run.stopped += 1
            if reason != p.END_STOPPED:
                run.failures.append(f"session {peer.session_id} ended as {reason}, not stopped")
    except Exception as exc:
        run.failures.append(f"session {peer.session_id or n}: {type(exc).__name__}: {exc}")
    finally:
        speaking.discard(peer)
        await peer.close()


async def churn(
    server: ServerProcess,
    speech: Sequence[bytes],
    duration: float,
    concurrent: int,
    sample_s: float,
    log: Log,
) -> ChurnRun:
    """For `duration` seconds, `concurrent` lanes of churned sessions; sampled every `sample_s`. The
    baseline is the server's memory with nothing live after one churned session; `after`, the same once
    the last session has ended."""
    run = ChurnRun(duration, concurrent)
    speaking: set[Peer] = set()
    numbers = itertools.count()
    async with bench_client(server) as client:
        await churned_session(client, speech, next(numbers), run, speaking)
        await _wait_idle(client, server, 30)
        await asyncio.sleep(SETTLE_S)
        run.baseline = process_memory(server)
        start = time.monotonic()
        end = start + duration

        async def lane() -> None:
            while time.monotonic() < end:
                await churned_session(client, speech, next(numbers), run, speaking)

        lanes = [asyncio.create_task(lane()) for _ in range(concurrent)]
        try:
            next_sample = start + sample_s
            while not all(task.done() for task in lanes):
                await asyncio.sleep(0.25)
                if time.monotonic() < next_sample:
                    continue
                next_sample += sample_s
                drifts = [abs(d) for d in map(av_drift_ms, list(speaking)) if d is not None]
                sample = ChurnSample(
                    time.monotonic() - start,
                    run.started,
                    await _live(client, server),
                    process_memory(server),
                    max(drifts) if drifts else math.nan,
                )
                run.samples.append(sample)
                log(
                    f"soak {sample.t_s:.0f}/{duration:.0f} s: {run.started} sessions started, {sample.live} "
                    f"live, server RSS {sample.memory.total_mb:.0f} MB, worst A/V drift "
                    f"{sample.worst_drift_ms:.0f} ms, {len(run.failures)} failures"
                )
        finally:
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        # Abandoned sessions end when the server sees their peer go (or at the idle timeout).
        run.live_after = await _wait_idle(client, server, IDLE_TIMEOUT_S + 30)
        await asyncio.sleep(SETTLE_S)
        run.after = process_memory(server)
    return run


def churn_tables(run: ChurnRun) -> list[Table]:
    samples = Table(
        f"Soak: {run.concurrent} sessions at a time, churned and speaking, for {run.duration_s:.0f} s",
        [
            "t s",
            "sessions started",
            "live",
            "API process MB",
            "child processes MB",
            "total MB",
            "worst A/V drift ms (absolute)",
        ],
    )
    for s in run.samples:
        samples.add(
            round(s.t_s),
            s.started,
            s.live,
            s.memory.api_mb,
            _workers(s.memory),
            s.memory.total_mb,
            s.worst_drift_ms,
        )
    assert run.baseline is not None and run.after is not None
    summary = Table("Soak summary", ["figure", "value"])
    summary.add("sessions started", run.started)
    summary.add("stopped / abandoned", f"{run.stopped} / {run.abandoned}")
    summary.add("utterances spoken", run.utterances)
    summary.add("speech errors", run.speech_errors)
    summary.add("failed sessions", len(run.failures))
    summary.add("server RSS MB, nothing live, after the first session", run.baseline.total_mb)
    summary.add("server RSS MB, nothing live, at the end", run.after.total_mb)
    summary.add("growth MB", run.growth_mb)
    summary.add("sessions live at the end", run.live_after)
    summary.add("worst A/V drift ms (absolute) over the samples", run.worst_drift_ms)
    met = "met" if run.growth_mb <= MAX_GROWTH_MB else "NOT met"
    summary.notes += [
        f"each session: start, WebRTC, LITE WebSocket, {UTTERANCES_PER_SESSION} utterances (flite, "
        f"streamed at playback pace), then stopped; one in {ABANDON_EVERY} abandoned (peer and socket "
        "closed without a stop)",
        "A/V drift: at the client, the change since each session's first second in video's lateness against "
        "its RTP clock minus audio's (least lateness over a second of frames: jitter filtered out)",
        f"target: growth within +{MAX_GROWTH_MB:.0f} MB ({met})",
        *run.failures[:10],
    ]
    return [samples, summary]
