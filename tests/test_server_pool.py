"""Live sessions in worker processes (facecast/server/pool.py), end to end over loopback: real aiortc client
peers against a real server whose WebRTC sessions run in a pool of worker processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server_harness import RunningServer, running_server
from session_client import SessionClient, started_client

from facecast import protocol as p
from facecast.avatars.bundle import write_bundle
from facecast.avatars.look import Look
from facecast.avatars.procedural import bundle_from_style
from facecast.server import pool
from facecast.server.config import Limits
from facecast.server.pool import AvatarSpec, build_engine

FPS = 25


async def _start(http: httpx.AsyncClient, key: str) -> tuple[str, httpx.Response]:
    minted = await http.post(
        "/v1/sessions/token",
        headers={"X-API-KEY": key},
        json={"fps": FPS, "video_settings": {"quality": "low"}},
    )
    token = minted.json()["data"]["session_token"]
    return token, await http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})


async def _connect(server: RunningServer, key: str) -> SessionClient:
    client = await started_client(server, key, fps=FPS, video_settings={"quality": "low"})
    await client.connect()
    return client


async def _stats(http: httpx.AsyncClient, key: str, session_id: str) -> dict[str, Any]:
    r = await http.get(f"/v1/sessions/{session_id}", headers={"X-API-KEY": key})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"]["stats"])


async def _frames_within(client: SessionClient, seconds: float) -> int:
    before = len(client.received.video)
    await asyncio.sleep(seconds)
    return len(client.received.video) - before


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ...); None when there is no process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _gone(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is None or stat[0] == "Z"  # exited (a zombie has exited, its parent has not reaped it)


async def test_a_crashed_worker_ends_only_its_sessions_and_is_replaced(
    tmp_path: Path, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, _, _ = speech
    clients: list[SessionClient] = []
    with running_server(tmp_path, live_workers=2) as server:
        key = server.store.create_key("pool")[1]
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            try:
                a = await _connect(server, key)
                clients.append(a)
                b = await _connect(server, key)
                clients.append(b)
                a_id, b_id = a.start["session_id"], b.start["session_id"]
                pid_a = (await _stats(http, key, a_id))["worker_pid"]
                pid_b = (await _stats(http, key, b_id))["worker_pid"]
                assert pid_a != pid_b and os.getpid() not in (pid_a, pid_b), "not one session per worker"
                assert await _frames_within(a, 1.0) >= FPS // 2
                assert await _frames_within(b, 1.0) >= FPS // 2

                os.kill(pid_a, signal.SIGKILL)
                record = await asyncio.to_thread(server.wait_ended, a_id, 15.0)
                assert record.end_reason == p.END_ERROR
                # Two seconds of frames since anyone asked for its stats: the worker's pushes kept them.
                assert record.stats["frames"] >= 1.6 * FPS, "the session's last stats were not kept"

                # The other worker's session streams on, and still speaks (segment events come back). Its
                # replacement is starting beside it meanwhile (imports and warm-up, a core's worth on a
                # 2-core machine): over 2 s it must keep at least a quarter of its rate (a CI run read
                # 11 frames in the first second, where one of 1 s asked for half).
                assert server.session(b_id).state == p.STATE_STARTED
                assert await _frames_within(b, 2.0) >= FPS // 2
                await b.speak(pcm, "after-the-crash")
                _, ended = await b.wait_event(
                    lambda e: e["type"] == p.AGENT_SPEAK_ENDED and e["event_id"] == "after-the-crash", 30
                )
                assert ended["played_s"] > 1.0

                deadline = time.monotonic() + 60
                while True:
                    metrics = (await http.get("/metrics")).text
                    if _metric(metrics, "facecast_live_workers") == 2:
                        break
                    assert time.monotonic() < deadline, "no replacement worker process started"
                    await asyncio.sleep(0.2)
                assert _metric(metrics, "facecast_live_workers_replaced_total") == 1
                c = await _connect(server, key)
                clients.append(c)
                pid_c = (await _stats(http, key, c.start["session_id"]))["worker_pid"]
                assert pid_c not in (pid_a, pid_b), "the new session did not go to the replacement"
                assert await _frames_within(c, 1.0) >= FPS // 2
                metrics = (await http.get("/metrics")).text
                assert re.search(rf'facecast_live_worker_sessions{{worker="\d",pid="{pid_c}"}} 1', metrics)
            finally:
                for client in clients:
                    await client.close()
    # Closing the server stopped its worker processes: none is left behind.
    assert _gone(pid_b) and _gone(pid_c) and _gone(pid_a)


async def test_admission_counts_the_pool_and_places_on_the_least_loaded_worker(tmp_path: Path) -> None:
    with running_server(tmp_path, live_workers=2, limits=Limits(max_live_sessions=2)) as server:
        key = server.store.create_key("pool")[1]
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            tokens, pids = [], []
            for _ in range(2):
                token, started = await _start(http, key)
                assert started.status_code == 200, started.text
                tokens.append(token)
                pids.append((await _stats(http, key, started.json()["data"]["session_id"]))["worker_pid"])
            assert len(set(pids)) == 2, "two sessions were put on one of two idle workers"
            _, refused = await _start(http, key)
            assert refused.status_code == 503 and "at capacity" in refused.json()["message"]

            stopped = await http.post("/v1/sessions/stop", headers={"Authorization": f"Bearer {tokens[0]}"})
            assert stopped.status_code == 200
            _, again = await _start(http, key)
            assert again.status_code == 200, again.text
            pid = (await _stats(http, key, again.json()["data"]["session_id"]))["worker_pid"]
            assert pid == pids[0], "the new session did not go to the worker left idle"
            metrics = (await http.get("/metrics")).text
            for worker_pid in pids:
                rss = re.search(
                    rf'facecast_live_worker_resident_memory_bytes{{worker="\d",pid="{worker_pid}"}} (\d+)',
                    metrics,
                )
                assert rss and int(rss.group(1)) > 50 * 2**20
            assert "facecast_live_worker_memory_per_session_bytes" in metrics


def test_workers_exit_when_the_server_process_is_killed(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECAST_")}
    serve = ["serve", "--port", str(port), "--data-dir", str(tmp_path), "--live-workers", "2"]
    server = subprocess.Popen([sys.executable, "-m", "facecast", *serve, "--log-level", "warning"], env=env)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2:
            assert server.poll() is None and time.monotonic() < deadline, "facecast serve did not start"
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                workers = [
                    int(pid)
                    for pid in re.findall(r'facecast_live_worker_sessions{worker="\d",pid="(\d+)"}', text)
                ]
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert all((_proc_stat(pid) or ["", ""])[1] == str(server.pid) for pid in workers)
        server.kill()  # no shutdown at all: the workers see their socket close
        server.wait(10)
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in workers):
            assert time.monotonic() < deadline, "worker processes outlived the server process"
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_a_process_reads_a_library_bundle_once_until_its_file_changes(tmp_path: Path) -> None:
    manifest, files = bundle_from_style("mira")
    path = write_bundle(tmp_path / "av_cached.facecast", manifest, files)
    spec = AvatarSpec(Look(avatar="av_cached", quality="low", fps=FPS), library_root=str(tmp_path))
    pool._read_bundle.cache_clear()
    first, second = build_engine(spec), build_engine(spec)
    assert pool._read_bundle.cache_info().misses == 1 and pool._read_bundle.cache_info().hits == 1
    assert first.next_frame().video is not None and second.next_frame().video is not None
    os.utime(path, ns=(1, 1))  # replaced: read again
    build_engine(spec)
    assert pool._read_bundle.cache_info().misses == 2
    path.unlink()  # deleted: never served from the cache
    with pytest.raises(ValueError, match="av_cached"):
        build_engine(spec)


def test_sessions_of_a_built_in_avatar_draw_with_forks_of_one_renderer_per_look() -> None:
    from facecast.avatars import load_renderer
    from facecast.engine import FaceState

    look = Look(avatar="mira", quality="low", background="green")
    first, second = (build_engine(AvatarSpec(look)).renderer for _ in range(2))
    other = build_engine(AvatarSpec(Look(avatar="mira", quality="low"))).renderer
    assert first is not second and first._bgs is second._bgs  # type: ignore[union-attr]
    assert other._bgs is not first._bgs  # type: ignore[union-attr]  # another look, another renderer
    fresh = load_renderer("mira", quality="low", background="green")
    for state in (FaceState(), FaceState(head_yaw=4.0, blink=0.6, speaking=True)):
        assert np.array_equal(first.render(state), fresh.render(state))  # type: ignore[union-attr]
        assert np.array_equal(second.render(state), fresh.render(state))  # type: ignore[union-attr]


async def test_a_spare_engine_is_taken_only_for_its_spec_and_built_again_after() -> None:
    built: list[AvatarSpec] = []

    def build(spec: AvatarSpec) -> Any:
        built.append(spec)
        return object()

    spare = pool.SpareEngine(build)
    ava, mira = AvatarSpec(Look(avatar="ava")), AvatarSpec(Look(avatar="mira"))
    assert spare.take(ava) is None  # nothing built yet
    await spare.refill(ava)
    await spare.refill(ava)  # already there: not built twice
    assert built == [ava]
    assert spare.take(mira) is None
    engine = spare.take(ava)
    assert engine is not None and spare.take(ava) is None  # taken once
    await spare.refill(mira)  # another spec replaces it
    assert spare.take(ava) is None and spare.take(mira) is not None
    assert built == [ava, mira]

    def broken(spec: AvatarSpec) -> Any:
        raise ValueError("no such avatar")

    failing = pool.SpareEngine(broken)
    await failing.refill(ava)  # logged, not raised: a session's start never waits on it
    assert failing.take(ava) is None
