"""Soak: many sessions started and stopped in one server leave nothing behind. Every record ends as
`stopped`, no session stays live, no engine worker thread or asyncio task is left over, and the
process's memory stops growing once warmed up. Behaviour only: nothing here depends on wall-clock speed."""

from __future__ import annotations

import asyncio
import gc
import statistics
import threading
from pathlib import Path

import psutil
import pytest

from facecast import protocol as p
from tests.server_harness import RunningServer, running_server

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

SESSIONS = 60
WARM_UP = 15  # the first sessions load models, codecs and allocator arenas once
SAMPLES = 15  # RSS swings by ~25 MB from one session to the next (a freed renderer may or may not go
# back to the OS), so the medians of the first and the last SAMPLES after warm-up are compared
MAX_GROWTH_MB = 30.0  # generous: a leak of 1 MB per session would grow the median by 30 MB


def _rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def _avatar_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("facecast-avatar")]


def _server_tasks(server: RunningServer) -> list[str]:
    """Names of the tasks alive on the server's event loop, this probe excluded."""

    async def names() -> list[str]:
        return sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())

    return asyncio.run_coroutine_threadsafe(names(), server.loop).result(10)


def test_sessions_started_and_stopped_leave_nothing_behind(tmp_path: Path) -> None:
    ids: list[str] = []
    with running_server(tmp_path) as server, server.client() as http:
        key = server.store.create_key("soak")[1]
        rss: list[float] = []
        tasks_after_warm_up = 0
        for i in range(1, SESSIONS + 1):
            r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={})
            assert r.status_code == 200, r.text
            token = r.json()["data"]["session_token"]
            bearer = {"Authorization": f"Bearer {token}"}
            assert http.post("/v1/sessions/start", headers=bearer).status_code == 200
            stopped = http.post("/v1/sessions/stop", headers=bearer)
            assert stopped.status_code == 200 and stopped.json()["data"]["end_reason"] == p.END_STOPPED
            ids.append(r.json()["data"]["session_id"])
            if i == WARM_UP:
                tasks_after_warm_up = len(_server_tasks(server))
            if i > WARM_UP:
                rss.append(_rss_mb())
        manager = server.app.state.manager
        first, last = statistics.median(rss[:SAMPLES]), statistics.median(rss[-SAMPLES:])
        print(f"\n[soak] median RSS {first:.1f} MB after session {WARM_UP}, {last:.1f} MB at the end")
        assert last - first < MAX_GROWTH_MB, f"RSS grew {last - first:.1f} MB over {len(rss)} sessions"
        assert manager.live == {}
        assert _avatar_threads() == [], "stopped sessions left engine worker threads running"
        tasks = _server_tasks(server)
        assert not [name for name in tasks if name.startswith("facecast-avatar")], tasks
        assert len(tasks) == tasks_after_warm_up, f"asyncio tasks leaked: {tasks}"
        records = [server.session(session_id) for session_id in ids]
    assert {(r.state, r.end_reason) for r in records} == {(p.STATE_ENDED, p.END_STOPPED)}
    assert _avatar_threads() == []
