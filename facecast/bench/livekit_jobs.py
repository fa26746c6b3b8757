"""`facecast bench livekit --jobs N`: what a `facecast worker` costs per session, with its jobs run as
livekit-agents job processes (its default on Linux) and as threads of the worker process.

For each executor a fresh worker (build_agent_server, as `facecast worker --max-sessions N` builds it)
registers with a local livekit-server; N rooms each get an agent participant and a dispatched avatar
(512x512 @ 30 fps), and a viewer that subscribes to nothing (LiveKit closes a room that only agents are in).
The agent subscribes without decoding. CPU and resident memory are summed
over the worker's process tree: idle (every avatar silent), then with every agent streaming espeak-ng
speech in a loop (`lk.audio_stream`, as `facecast livekit say` sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facecast.bench.proctree import cpu_between, sample_tree
from facecast.bench.report import Log, Table

EXECUTORS = ("PROCESS", "THREAD")
AGENT = "agent"
REGISTER_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 60.0
SETTLE_S = 3.0
SENTENCES = (
    "Hello there, my name is Ava and I can help you plan your trip.",
    "The weather in Lisbon is sunny, with a light breeze from the ocean.",
)

# The worker, in a child process. build_agent_server leaves the executor at livekit-agents' default
# (job processes on Linux); the bench sets it on the AgentServer before it runs.
_WORKER = """
import asyncio, logging, sys
from livekit.agents import JobExecutorType
from facecast.hosts.livekit.dispatch import _serve, build_agent_server
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
name, url, key, secret, sessions, executor = sys.argv[1:]
server = build_agent_server(name, url=url, api_key=key, api_secret=secret, max_sessions=int(sessions),
                            http_port=0)
server._job_executor_type = JobExecutorType[executor]
asyncio.run(_serve(server, devmode=False))
"""


@dataclass
class JobsRun:
    executor: str
    sessions: int
    reached: int = 0
    processes_before: int = 0
    rss_before_mb: float = float("nan")  # the registered worker, no job yet (idle job processes included)
    processes: int = 0
    job_processes: int = 0  # distinct processes running an avatar
    rss_mb: float = float("nan")
    pss_mb: float = float("nan")  # proportional set size: shared pages split between the processes
    main_rss_mb: float = float("nan")  # the worker's main process alone
    job_process_rss_mb: list[float] = field(default_factory=list)  # each process running an avatar
    cpu_idle_pct: float = float("nan")
    cpu_speaking_pct: float = float("nan")
    notes: list[str] = field(default_factory=list)

    @property
    def rss_per_session_mb(self) -> float:
        return (self.rss_mb - self.rss_before_mb) / self.reached if self.reached else float("nan")

    def per_session(self, value: float) -> float:
        return value / self.reached if self.reached else float("nan")


async def _cpu_pct(pid: int, seconds: float) -> float:
    a, t0 = sample_tree(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100.0 * cpu_between(a, sample_tree(pid)) / (time.monotonic() - t0)


def _pss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total / 2**20


async def _wait(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        await asyncio.sleep(0.05)


async def jobs_run(
    server: Any, executor: str, sessions: int, window_s: float, speech: list[np.ndarray], rate: int, log: Log
) -> JobsRun:
    import psutil
    from livekit import api, rtc

    from facecast.hosts.livekit.names import ATTRIBUTE_JOB_PROCESS, DEFAULT_AVATAR_IDENTITY
    from facecast.hosts.livekit.say import stream_pcm
    from facecast.hosts.livekit.tokens import mint_participant_token

    run = JobsRun(executor.lower(), sessions)
    agent_name = f"facecast-bench-jobs-{uuid.uuid4().hex[:6]}"
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{agent_name}.log"
    argv = [agent_name, server.url, server.api_key, server.api_secret, str(sessions), executor]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, *argv], stdout=out, stderr=subprocess.STDOUT)
    rooms: list[tuple[str, rtc.Room]] = []
    viewers: list[rtc.Room] = []
    talkers: list[asyncio.Task[None]] = []

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    def avatar(room: rtc.Room) -> rtc.RemoteParticipant | None:
        return room.remote_participants.get(DEFAULT_AVATAR_IDENTITY)

    def publishes_video(room: rtc.Room) -> bool:
        p = avatar(room)
        return p is not None and any(
            t.kind == rtc.TrackKind.KIND_VIDEO for t in p.track_publications.values()
        )

    def token(room: str, identity: str, kind: str) -> str:
        return mint_participant_token(
            server.api_key, server.api_secret, room=room, identity=identity, kind=kind
        )

    async def talk(room: rtc.Room, offset: int) -> None:
        for n in range(offset, 10**6):
            await stream_pcm(room, speech[n % len(speech)], DEFAULT_AVATAR_IDENTITY, sample_rate=rate)

    try:
        await _wait(
            lambda: "registered worker" in log_text() or proc.poll() is not None,
            "the worker to register",
            REGISTER_TIMEOUT_S,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log_text()[-3000:]}")
        await asyncio.sleep(SETTLE_S)  # its idle job processes start after it registers
        before = sample_tree(proc.pid)
        run.processes_before, run.rss_before_mb = before.processes, before.rss_bytes / 2**20
        async with api.LiveKitAPI(server.http_url, server.api_key, server.api_secret) as lk:
            for i in range(sessions):
                name = f"facecast-bench-jobs-{uuid.uuid4().hex[:8]}"
                room, viewer = rtc.Room(), rtc.Room()
                await room.connect(server.url, token(name, AGENT, "agent"))
                await viewer.connect(
                    server.url, token(name, "viewer", "standard"), rtc.RoomOptions(auto_subscribe=False)
                )
                rooms.append((name, room))
                viewers.append(viewer)
                await lk.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(
                        agent_name=agent_name, room=name, metadata=json.dumps({"agent_identity": AGENT})
                    )
                )
                try:
                    await _wait(
                        lambda room=room: publishes_video(room), f"avatar {i + 1}'s video", JOIN_TIMEOUT_S
                    )
                except TimeoutError as exc:
                    run.notes.append(f"{run.executor}: {sessions} sessions not reached: {exc}")
                    break
                run.reached = i + 1
                log(f"livekit jobs ({run.executor}): {i + 1}/{sessions} avatars publishing")
            await asyncio.sleep(SETTLE_S)
            tree = sample_tree(proc.pid)
            run.processes, run.rss_mb = tree.processes, tree.rss_bytes / 2**20
            run.main_rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
            run.pss_mb = _pss_mb(proc.pid)
            job_pids = set()
            for _name, room in rooms:
                p = avatar(room)
                if p is not None and p.attributes.get(ATTRIBUTE_JOB_PROCESS, "").isdigit():
                    job_pids.add(int(p.attributes[ATTRIBUTE_JOB_PROCESS]))
            run.job_processes = len(job_pids - {proc.pid})
            for pid in sorted(job_pids - {proc.pid}):
                with contextlib.suppress(psutil.Error):
                    run.job_process_rss_mb.append(psutil.Process(pid).memory_info().rss / 2**20)
            run.cpu_idle_pct = await _cpu_pct(proc.pid, window_s / 2)
            talkers = [asyncio.create_task(talk(room, i)) for i, (_n, room) in enumerate(rooms)]
            await asyncio.sleep(2.0)  # every avatar speaking
            run.cpu_speaking_pct = await _cpu_pct(proc.pid, window_s)
            for task in talkers:
                if task.done() and task.exception() is not None:
                    run.notes.append(f"{run.executor}: an agent failed: {task.exception()!r}")
            log(
                f"livekit jobs ({run.executor}): {run.reached} sessions, RSS {run.rss_mb:.0f} MB, CPU idle "
                f"{run.cpu_idle_pct:.0f}% / speaking {run.cpu_speaking_pct:.0f}%"
            )
            for task in talkers:
                task.cancel()
            await asyncio.gather(*talkers, return_exceptions=True)
            for viewer in viewers:
                await viewer.disconnect()
            for name, room in rooms:
                await room.disconnect()
                with contextlib.suppress(api.TwirpError):
                    await lk.room.delete_room(api.DeleteRoomRequest(room=name))
    finally:
        for task in talkers:
            task.cancel()
        pids = {proc.pid}
        with contextlib.suppress(psutil.Error):
            pids |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGTERM)  # drains: the avatars end with their rooms
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            run.notes.append(f"{run.executor}: the worker did not drain within 20 s of SIGTERM; killed")
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        await asyncio.to_thread(proc.wait)
        with contextlib.suppress(OSError):
            log_path.unlink()
    return run


async def run_jobs(server: Any, sessions: int, window_s: float, log: Log) -> Table:
    from facecast.tts import EspeakTTS

    tts = EspeakTTS()
    speech = [tts.synthesize(text) for text in SENTENCES]
    runs = [await jobs_run(server, e, sessions, window_s, speech, tts.sample_rate, log) for e in EXECUTORS]
    return jobs_table(runs, window_s)


def jobs_table(runs: list[JobsRun], window_s: float) -> Table:
    nan = float("nan")
    table = Table(
        f"`facecast worker` with {runs[0].sessions} avatar jobs (512x512 @ 30 fps): job processes vs threads",
        [
            "",
            *(
                f"jobs as {r.executor}es" if r.executor == "process" else f"jobs as {r.executor}s"
                for r in runs
            ),
        ],
    )
    rows: list[tuple[str, Any]] = [
        ("sessions reached", lambda r: r.reached),
        ("worker processes, before any job", lambda r: r.processes_before),
        ("worker processes, with the sessions", lambda r: r.processes),
        ("processes running an avatar", lambda r: r.job_processes),
        ("RSS MB, before any job (idle job processes included)", lambda r: r.rss_before_mb),
        ("RSS MB, with the sessions", lambda r: r.rss_mb),
        ("RSS MB per session reached (over before)", lambda r: r.rss_per_session_mb),
        ("PSS MB, with the sessions (shared pages split)", lambda r: r.pss_mb),
        ("RSS MB, the worker's main process", lambda r: r.main_rss_mb),
        (
            "RSS MB of a process running an avatar, mean",
            lambda r: float(np.mean(r.job_process_rss_mb)) if r.job_process_rss_mb else nan,
        ),
        ("CPU % idle", lambda r: r.cpu_idle_pct),
        ("CPU % idle, per session", lambda r: r.per_session(r.cpu_idle_pct)),
        ("CPU % speaking", lambda r: r.cpu_speaking_pct),
        ("CPU % speaking, per session", lambda r: r.per_session(r.cpu_speaking_pct)),
    ]
    for name, get in rows:
        table.add(name, *(get(r) for r in runs))
    table.notes += [note for r in runs for note in r.notes]
    table.notes += [
        "CPU and RSS are summed over the worker's process tree (RSS counts pages shared between processes "
        f"once per process); CPU % is of one core over {window_s / 2:.0f} s idle, then {window_s:.0f} s "
        "with every agent streaming speech in a loop; each column is a fresh worker, one after the other",
    ]
    return table
