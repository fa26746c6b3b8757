"""Two API servers sharing one PostgreSQL database: a session minted on one starts on the other, a stop
on either ends it everywhere, and a restarting server ends only the sessions it owned."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from server_harness import RunningServer, running_server

from facecast import protocol as p
from facecast.server.store import open_store


def _post(
    server: RunningServer,
    path: str,
    *,
    key: str | None = None,
    token: str | None = None,
    json: dict | None = None,
) -> httpx.Response:
    headers = {"X-API-KEY": key} if key else {"Authorization": f"Bearer {token}"}
    with server.client() as http:
        return http.post(path, headers=headers, json=json or {})


def _wait(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_servers_share_sessions_through_postgres(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    store_a, store_b = open_store(postgres_url, tmp_path), open_store(postgres_url, tmp_path)
    _, key = store_a.create_key("shared", max_concurrent=2)
    with (
        running_server(tmp_path / "a", store=store_a, server_id="a") as a,
        running_server(tmp_path / "b", store=store_b, server_id="b") as b,
    ):
        minted = _post(a, "/v1/sessions/token", key=key, json={"video_settings": {"quality": "low"}}).json()[
            "data"
        ]
        started = _post(b, "/v1/sessions/start", token=minted["session_token"])
        assert started.status_code == 200
        session_id = minted["session_id"]
        assert session_id in b.app.state.manager.live
        assert b.session(session_id).owner == "b"
        # The per-key cap counts sessions on every server.
        _post(b, "/v1/sessions/token", key=key)
        assert _post(a, "/v1/sessions/token", key=key).status_code == 429
        # Keep-alive must reach the owner; another server says where the session runs.
        other = _post(a, "/v1/sessions/keep-alive", token=minted["session_token"])
        assert other.status_code == 409 and "another server (b)" in other.json()["message"]
        # A stop through server a ends the session that server b runs.
        assert _post(a, "/v1/sessions/stop", token=minted["session_token"]).status_code == 200
        _wait(lambda: session_id not in b.app.state.manager.live)
        assert b.session(session_id).end_reason == p.END_STOPPED
    store_a.close()
    store_b.close()


def test_restart_ends_only_the_restarting_servers_sessions(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    store_b = open_store(postgres_url, tmp_path)
    _, key = store_b.create_key("shared")
    with running_server(tmp_path / "b", store=store_b, server_id="b") as b:
        minted = _post(b, "/v1/sessions/token", key=key, json={"video_settings": {"quality": "low"}}).json()[
            "data"
        ]
        assert _post(b, "/v1/sessions/start", token=minted["session_token"]).status_code == 200
        store_a = open_store(postgres_url, tmp_path)
        with running_server(tmp_path / "a", store=store_a, server_id="a"):
            pass  # server a starts (recovering its own sessions: none) and stops
        store_a.close()
        assert b.session(minted["session_id"]).state == p.STATE_STARTED
        assert minted["session_id"] in b.app.state.manager.live
    store_b.close()
