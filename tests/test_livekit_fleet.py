"""A fleet of two real `facecast worker` processes on LiveKit's own job dispatch, against a real LiveKit
server (the `livekit_server` fixture: tests/livekit_server.py).

LiveKit hands each job to one available worker of the agent name, at random weighted by 1 - load: with
few jobs and equal loads nothing guarantees that both workers get one. What is guaranteed is capacity:
a worker started with `--max-sessions 2` is full at two running avatars and refuses a third, which LiveKit
then gives to another worker. So three dispatches to two such workers must land on both. A dispatch
that no worker can take is dropped, not queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from livekit import api, rtc
from livekit_server import LiveKitServer, LiveRoom

from facecast.client.livekit_viewer import RoomViewer
from facecast.hosts.livekit.names import ATTRIBUTE_JOB_PROCESS, ATTRIBUTE_WORKER, DEFAULT_AVATAR_IDENTITY

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

AVATAR = DEFAULT_AVATAR_IDENTITY
MAX_SESSIONS = 2
REGISTER_TIMEOUT_S = 60.0
HANG_S = 30.0
DISPATCH_RETRY_S = 5.0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def info(self) -> dict[str, object]:
        """livekit-agents' /worker endpoint on the worker's health-check port (active_jobs, worker_load)."""
        port = re.search(r"HTTP server listening on :(\d+)", self.log_text())
        assert port, "the worker has not logged its HTTP port"
        # with port 0 aiohttp binds IPv4 and IPv6 on different free ports and livekit-agents logs one
        for host in ("127.0.0.1", "[::1]"):
            url = f"http://{host}:{port[1]}/worker"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                info: dict[str, object] = json.loads(response.read())
                return info
        raise AssertionError(f"nothing answers on the worker's HTTP port {port[1]}")


@dataclass
class Room:
    room: LiveRoom
    agent: rtc.Room
    viewer: RoomViewer

    def avatar(self) -> rtc.RemoteParticipant | None:
        return self.viewer.room.remote_participants.get(AVATAR)

    def worker_pid(self) -> int:
        avatar = self.avatar()
        assert avatar is not None, f"no avatar in room {self.room.name}"
        return int(avatar.attributes[ATTRIBUTE_WORKER].rsplit(":", 1)[1])


def _start_worker(server: LiveKitServer, agent_name: str, log: Path) -> Worker:
    command = [
        sys.executable, "-m", "facecast", "worker",
        "--agent-name", agent_name,
        "--url", server.url, "--api-key", server.api_key, "--api-secret", server.api_secret,
        "--quality", "low", "--fps", "25", "--max-duration", "120",
        "--max-sessions", str(MAX_SESSIONS), "--http-port", "0",
    ]  # fmt: skip
    with open(log, "wb") as out:
        # the same interpreter and PYTHONPATH as the tests: the worker imports this source tree
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    return Worker(proc, log)


def _kill_tree(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
    return alive


async def _wait(predicate: object, what: str, timeout: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def fleet(livekit_server: LiveKitServer, tmp_path: Path) -> Iterator[tuple[str, list[Worker], set[int]]]:
    """Two workers under one fresh agent name; every process they start is killed afterwards."""
    agent_name = f"facecast-fleet-{uuid.uuid4().hex[:6]}"
    workers = [_start_worker(livekit_server, agent_name, tmp_path / f"worker{i}.log") for i in range(2)]
    started: set[int] = {w.pid for w in workers}  # grows with each worker's children (job processes)
    try:
        yield agent_name, workers, started
    finally:
        for w in workers:
            with contextlib.suppress(psutil.Error):
                started |= {c.pid for c in psutil.Process(w.pid).children(recursive=True)}
        _kill_tree(started)
        for w in workers:
            w.proc.wait(10)


@pytest.fixture
async def rooms(livekit_server: LiveKitServer) -> AsyncIterator[list[Room]]:
    made: list[Room] = []
    yield made
    for r in made:
        await r.viewer.aclose()
        await r.agent.disconnect()
        await r.room.delete()


async def _open_room(server: LiveKitServer, rooms: list[Room]) -> Room:
    """A room with an agent participant (kind agent) and a viewer, as a dispatch would find it."""
    live = LiveRoom(server, f"facecast-fleet-{uuid.uuid4().hex[:8]}")
    agent = rtc.Room()
    await agent.connect(live.url, live.token("agent", kind="agent"))
    viewer = RoomViewer(publisher=AVATAR)
    await viewer.connect(live.url, live.token("viewer"))
    room = Room(live, agent, viewer)
    rooms.append(room)
    return room


async def _dispatch(lk: api.LiveKitAPI, agent_name: str, room: Room, attempts: int = 1) -> None:
    """Dispatch an avatar into `room` and wait for its video. With `attempts` > 1, a dispatch that no
    avatar answers within DISPATCH_RETRY_S is made again: the worker's status reaches LiveKit every 0.5 s,
    and a dispatch made while every worker still reads as full is dropped."""
    metadata = json.dumps({"agent_identity": "agent"})
    frames = len(room.viewer.video)
    for attempt in range(attempts):
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room.room.name, metadata=metadata)
        )
        last = attempt == attempts - 1
        try:
            await _wait(
                lambda: room.avatar() is not None,
                f"an avatar in {room.room.name}",
                HANG_S if last else DISPATCH_RETRY_S,
            )
            break
        except TimeoutError:
            if last:
                raise
    await _wait(lambda: len(room.viewer.video) >= frames + 5, f"the avatar's video in {room.room.name}")


async def test_fleet_spreads_sessions_and_survives_a_killed_worker(
    livekit_server: LiveKitServer,
    fleet: tuple[str, list[Worker], set[int]],
    rooms: list[Room],
) -> None:
    agent_name, workers, started = fleet
    for w in workers:
        await _wait(
            lambda w=w: "registered worker" in w.log_text() or w.proc.poll() is not None,
            "the workers to register",
            REGISTER_TIMEOUT_S,
        )
        assert w.proc.poll() is None, f"worker exited:\n{w.log_text()[-3000:]}"

    async with api.LiveKitAPI(
        livekit_server.http_url, livekit_server.api_key, livekit_server.api_secret
    ) as lk:
        # 1. three sessions on two workers full at two each: both get at least one
        for _ in range(3):
            await _dispatch(lk, agent_name, await _open_room(livekit_server, rooms))
        served = {r.room.name: r.worker_pid() for r in rooms}
        per_worker = {w.pid: [r for r in rooms if served[r.room.name] == w.pid] for w in workers}
        assert sorted(len(v) for v in per_worker.values()) == [1, 2], served
        for r in rooms:
            # no sender filter: the first packet can arrive before the viewer knows the avatar joined
            assert r.viewer.state_values() == [{"state": "connected", "reason": ""}]

        # 2. SIGKILL the worker serving two: the realistic crash of its main process
        victim = next(w for w in workers if len(per_worker[w.pid]) == 2)
        survivor = next(w for w in workers if w is not victim)
        children = {c.pid for c in psutil.Process(victim.pid).children(recursive=True)}
        started |= children
        assert len(children) >= 2, "livekit-agents runs each job in a child process of the worker"
        lost, kept = per_worker[victim.pid], per_worker[survivor.pid]
        kept_frames = len(kept[0].viewer.video)
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(10)

        for r in lost:
            await r.viewer.wait_for(lambda r=r: r.avatar() is None, HANG_S, "the orphaned avatar to leave")
            states = r.viewer.state_values(AVATAR)
            assert states[-1] == {"state": "disconnected", "reason": "error"}, states
            assert states[-2]["state"] == "error" and "worker process" in states[-2]["reason"], states
            # the agent's side learns it too (each participant hears of the leave on its own)
            await _wait(lambda r=r: AVATAR not in r.agent.remote_participants, "the agent to see it leave")
        # the orphaned job processes (and the forkserver) exit: nothing lingers
        await _wait(lambda: not _alive(children), f"the killed worker's children {children} to exit")
        # the survivor's session is untouched
        await _wait(lambda: len(kept[0].viewer.video) > kept_frames + 10, "the survivor's video")
        assert kept[0].avatar() is not None

        # 3. new sessions land on the survivor, including one replacing a lost avatar
        await _dispatch(lk, agent_name, lost[0])
        assert lost[0].worker_pid() == survivor.pid
        assert survivor.proc.poll() is None

        # 4. SIGKILL one job process of the survivor (the OOM killer's pick): the worker's main process
        # tells the room through the server API (packets with no sender) and removes the avatar
        room = kept[0]
        await _wait(lambda: ATTRIBUTE_JOB_PROCESS in room.avatar().attributes, "the job process attribute")
        job_pid = int(room.avatar().attributes[ATTRIBUTE_JOB_PROCESS])
        assert job_pid in {c.pid for c in psutil.Process(survivor.pid).children(recursive=True)}
        started.add(job_pid)
        os.kill(job_pid, signal.SIGKILL)
        await room.viewer.wait_for(lambda: room.avatar() is None, HANG_S, "the dead job's avatar to go")
        states = room.viewer.state_values()
        assert states[-1] == {"state": "disconnected", "reason": "error"}, states
        assert states[-2]["state"] == "error" and "job process died" in states[-2]["reason"], states
        assert survivor.proc.poll() is None and lost[0].avatar() is not None  # the rest carries on
        # LiveKit drops a dispatch no worker can take (no queue): wait until the survivor has room again
        await _wait(
            lambda: survivor.info()["active_jobs"] < MAX_SESSIONS, "the survivor to count the job gone"
        )
        await _dispatch(lk, agent_name, room, attempts=3)
        assert room.worker_pid() == survivor.pid
