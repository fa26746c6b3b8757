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
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from facecast.bench.report import Log, Table
from facecast.bench.server import (
    Peer,
    ServerCode,
    ServerProcess,
    SetupError,
    _http,
    checkout_root,
    load_speech,
)
from facecast.server import protocol as p

COMMANDS = ("abandon", "churn")
IDLE_TIMEOUT_S = 3  # the server's idle timeout here: an abandoned session ends this long after its start
SETTLE_S = 2.0  # after a round's sessions ended, before measuring (frees on other threads land)
UTTERANCES_PER_SESSION = 3
ABANDON_EVERY = 4  # in churn, one session in this many is left to time out instead of stopped
MAX_GROWTH_MB = 50.0  # the target: idle RSS within this of its baseline once nothing is live
AUDIO_CLOCK = 48000
VIDEO_CLOCK = 90000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facecast bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS, help="which run")
    parser.add_argument("--rounds", type=int, default=8, help="abandon: rounds (default 8)")
    parser.add_argument("--sessions", type=int, default=20, help="abandon: sessions per round (default 20)")
    parser.add_argument("--duration", type=float, default=3600.0, help="churn: seconds (default 3600)")
    parser.add_argument("--concurrent", type=int, default=4, help="churn: live sessions at a time (4)")
    parser.add_argument("--sample", type=float, default=60.0, help="churn: seconds between samples (60)")
    parser.add_argument(
        "--live-workers",
        type=int,
        default=None,
        help="the server's worker processes (facecast serve --live-workers; 0: sessions in the API process)",
    )
    parser.add_argument("--cache-dir", default=None, help="generated speech cache (as bench)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str]) -> int:
    from facecast.bench import _cpu_note
    from facecast.bench.corpus import FliteMissingError

    args = _parser().parse_args(list(argv))
    log = Log(enabled=not args.quiet)
    started = time.perf_counter()
    try:
        tables = asyncio.run(_run(args, log))
    except (FliteMissingError, ImportError, SetupError) as exc:
        print(f"facecast bench soak: {exc}", file=sys.stderr)
        return 2
    print(
        f"facecast bench soak {args.command} — {date.today().isoformat()}, Python "
        f"{platform.python_version()}, {_cpu_note()}, {time.perf_counter() - started:.0f} s, "
        f"load average {os.getloadavg()[0]:.1f} at end"
    )
    for table in tables:
        print()
        print(table.markdown() if args.markdown else table.text())
    return 0


async def _run(args: argparse.Namespace, log: Log) -> list[Table]:
    serve_args = () if args.live_workers is None else ("--live-workers", str(args.live_workers))
    code = ServerCode("this checkout", checkout_root(), serve_args)
    env = {"FACECAST_IDLE_TIMEOUT": str(IDLE_TIMEOUT_S)}
    async with ServerProcess(log, code, env=env) as server:
        if args.command == "abandon":
            return [await abandon(server, args.rounds, args.sessions, log)]
        from pathlib import Path

        speech = load_speech(Path(args.cache_dir) if args.cache_dir else None)
        return await churn(server, speech, args.duration, args.concurrent, args.sample, log)


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


async def _live(http: Any, server: ServerProcess) -> int:
    r = await http.get(f"{server.url}/healthz")
    return int(r.json()["data"]["live_sessions"])


async def _wait_idle(http: Any, server: ServerProcess, timeout: float) -> int:
    """Wait until the server has no live session (or `timeout`); the sessions still live."""
    deadline = time.monotonic() + timeout
    while (live := await _live(http, server)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return live


# -- abandon ------------------------------------------------------------------------------------------
async def _abandoned_session(http: Any, server: ServerProcess) -> None:
    """Start a session, reach its first frame, say nothing: the server ends it at its idle timeout. The
    client's peer stays open until then, as a client that went away without a word leaves it."""
    peer = Peer(http, server, decode=False)
    try:
        await peer.open()
        deadline = time.monotonic() + IDLE_TIMEOUT_S + 30
        while time.monotonic() < deadline and peer._pc.connectionState not in ("closed", "failed"):
            await asyncio.sleep(0.25)
            if time.monotonic() > deadline - 30 + 2:  # the idle timeout has passed: ended server-side?
                r = await http.get(
                    f"{server.url}/v1/sessions/{peer.session_id}", headers={"X-API-KEY": server.api_key}
                )
                if r.json()["data"]["state"] == p.STATE_ENDED:
                    break
    finally:
        await peer.close()


async def abandon(server: ServerProcess, rounds: int, per_round: int, log: Log) -> Table:
    table = Table(
        f"Server memory after rounds of {per_round} WebRTC sessions left to time out "
        f"(idle timeout {IDLE_TIMEOUT_S} s), nothing live",
        ["sessions", "API process MB", "worker processes MB", "total MB", "over baseline MB", "live"],
    )
    async with _http() as http:
        await _abandoned_session(http, server)  # models, codecs and arenas loaded once
        await _wait_idle(http, server, 30)
        await asyncio.sleep(SETTLE_S)
        base = process_memory(server)
        table.add(1, base.api_mb, _workers(base), base.total_mb, 0.0, 0)
        for round_ in range(1, rounds + 1):
            await asyncio.gather(*(_abandoned_session(http, server) for _ in range(per_round)))
            live = await _wait_idle(http, server, 30)
            await asyncio.sleep(SETTLE_S)
            mem = process_memory(server)
            table.add(
                1 + round_ * per_round,
                mem.api_mb,
                _workers(mem),
                mem.total_mb,
                mem.total_mb - base.total_mb,
                live,
            )
            log(
                f"abandon round {round_}/{rounds}: API {mem.api_mb:.0f} MB, workers {_workers(mem)} MB, "
                f"{mem.total_mb - base.total_mb:+.0f} MB over baseline, {live} live"
            )
    growth = float(table.rows[-1][4])
    table.notes += [
        "each session: token -> start -> WebRTC offer/answer -> first video frame -> silence until the "
        "server ends it (idle timeout); the client's peer closes only then",
        f"baseline: after one such session; target: within +{MAX_GROWTH_MB:.0f} MB "
        f"({'met' if growth <= MAX_GROWTH_MB else 'NOT met'}: {growth:+.1f} MB)",
    ]
    return table


def _workers(mem: ProcessMemory) -> str:
    return "+".join(f"{mb:.0f}" for mb in mem.workers_mb) or "-"


# -- churn --------------------------------------------------------------------------------------------
@dataclass
class ChurnFigures:
    started: int = 0
    stopped: int = 0
    abandoned: int = 0
    utterances: int = 0
    speech_errors: int = 0
    failures: list[str] = field(default_factory=list)
    drift_ms: list[float] = field(default_factory=list)  # each sample's worst |A/V drift| over sessions


def av_drift_ms(peer: Peer) -> float | None:
    """How far the audio's RTP clock has run from the video's since the first packet of each, against the
    client's arrival clock, ms: positive when audio is ahead. None before both have arrived for 1 s."""
    v, a = peer.received.video_arrivals, peer.received.audio_arrivals
    if len(v.times) < 30 or len(a.times) < 50:
        return None
    # Over the same arrival window, media time advanced per stream.
    video_media = ((v.rtp_timestamps[-1] - v.rtp_timestamps[0]) % 2**32) / VIDEO_CLOCK
    audio_media = ((a.rtp_timestamps[-1] - a.rtp_timestamps[0]) % 2**32) / AUDIO_CLOCK
    video_wall = v.times[-1] - v.times[0]
    audio_wall = a.times[-1] - a.times[0]
    return ((audio_media - audio_wall) - (video_media - video_wall)) * 1000.0


async def _churned_session(
    http: Any,
    server: ServerProcess,
    speech: Sequence[bytes],
    n: int,
    figures: ChurnFigures,
    live_peers: set[Peer],
) -> None:
    peer = Peer(http, server, decode=False)
    try:
        await peer.open()
        figures.started += 1
        await peer.connect_ws()
        live_peers.add(peer)
        for k in range(UTTERANCES_PER_SESSION):
            await peer.say(speech[(n + k) % len(speech)], f"s{n}u{k}")
            figures.utterances += 1
        figures.speech_errors += peer.speech_errors
        live_peers.discard(peer)
        if n % ABANDON_EVERY == ABANDON_EVERY - 1:
            figures.abandoned += 1  # the socket and peer close without a stop: the server sees them go
        else:
            reason = await peer.stop()
            if reason != p.END_STOPPED:
                figures.failures.append(f"session {peer.session_id} ended as {reason}")
            figures.stopped += 1
    except Exception as exc:
        figures.failures.append(f"session {peer.session_id or n}: {type(exc).__name__}: {exc}")
    finally:
        live_peers.discard(peer)
        await peer.close()


async def churn(
    server: ServerProcess,
    speech: Sequence[bytes],
    duration: float,
    concurrent: int,
    sample_s: float,
    log: Log,
) -> list[Table]:
    figures = ChurnFigures()
    samples = Table(
        f"Soak: {concurrent} sessions at a time churned and speaking for {duration:.0f} s",
        ["t s", "sessions started", "live", "API process MB", "workers MB", "total MB", "max |A/V drift| ms"],
    )
    live_peers: set[Peer] = set()
    counter = itertools.count()
    async with _http() as http:
        await _churned_session(http, server, speech, next(counter), figures, live_peers)
        await _wait_idle(http, server, IDLE_TIMEOUT_S + 30)
        await asyncio.sleep(SETTLE_S)
        base = process_memory(server)
        start = time.monotonic()
        end = start + duration

        async def lane() -> None:
            while time.monotonic() < end:
                await _churned_session(http, server, speech, next(counter), figures, live_peers)

        lanes = [asyncio.create_task(lane()) for _ in range(concurrent)]
        next_sample = start
        try:
            while not all(t.done() for t in lanes):
                if time.monotonic() >= next_sample:
                    mem = process_memory(server)
                    drifts = [abs(d) for d in map(av_drift_ms, list(live_peers)) if d is not None]
                    worst = max(drifts) if drifts else float("nan")
                    if drifts:
                        figures.drift_ms.append(worst)
                    t = time.monotonic() - start
                    live = await _live(http, server)
                    samples.add(
                        round(t), figures.started, live, mem.api_mb, _workers(mem), mem.total_mb, worst
                    )
                    log(
                        f"soak {t:.0f}/{duration:.0f} s: {figures.started} sessions, {live} live, "
                        f"RSS {mem.total_mb:.0f} MB, worst drift {worst:.0f} ms, "
                        f"{len(figures.failures)} failures"
                    )
                    next_sample += sample_s
                await asyncio.sleep(0.25)
        finally:
            for t in lanes:
                t.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        live = await _wait_idle(http, server, IDLE_TIMEOUT_S + 30)
        await asyncio.sleep(SETTLE_S)
        after = process_memory(server)
    summary = Table(
        "Soak summary",
        ["figure", "value"],
    )
    growth = after.total_mb - base.total_mb
    summary.add("sessions started", figures.started)
    summary.add("stopped / abandoned", f"{figures.stopped} / {figures.abandoned}")
    summary.add("utterances spoken", figures.utterances)
    summary.add("speech errors", figures.speech_errors)
    summary.add("failures", len(figures.failures))
    summary.add("RSS baseline MB (after one session)", base.total_mb)
    summary.add("RSS at the end, nothing live, MB", after.total_mb)
    summary.add("growth MB", growth)
    summary.add("live sessions at the end", live)
    summary.add(
        "max |A/V drift| ms over samples", max(figures.drift_ms) if figures.drift_ms else float("nan")
    )
    summary.notes += [
        f"target: growth within +{MAX_GROWTH_MB:.0f} MB ({'met' if growth <= MAX_GROWTH_MB else 'NOT met'})",
        *figures.failures[:10],
    ]
    return [samples, summary]
