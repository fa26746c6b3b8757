"""The session API over real HTTP on loopback: auth, bodies, tokens, limits, expiry, listing, persistence,
and the LITE WebSocket's behaviour before the video peer connects."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from server_harness import RunningServer, running_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from facecast import protocol as p
from facecast.avatars.look import Look
from facecast.server.auth import hash_secret
from facecast.server.config import Limits
from facecast.server.session_settings import SessionSettings
from facecast.server.store import SessionRecord, open_store


def mint(server: RunningServer, key: str, **body: Any) -> dict[str, Any]:
    with server.client() as http:
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json=body)
    assert r.status_code == 200, r.text
    envelope = r.json()
    assert envelope["code"] == p.CODE_OK
    return envelope["data"]


def start(server: RunningServer, token: str) -> dict[str, Any]:
    with server.client() as http:
        r = http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def call(server: RunningServer, path: str, token: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    with server.client() as http:
        r = http.post(path, headers={"Authorization": f"Bearer {token}"} if token else {}, json=body)
    return r.status_code, r.json()


# -- API keys ---------------------------------------------------------------------------------------------
def test_token_needs_a_valid_unrevoked_key(server: RunningServer, key: str) -> None:
    with server.client() as http:
        missing = http.post("/v1/sessions/token", json={})
        wrong = http.post("/v1/sessions/token", headers={"X-API-KEY": "fck_nope"}, json={})
        assert missing.status_code == wrong.status_code == 401
        assert missing.json()["code"] == p.CODE_UNAUTHORIZED and "X-API-KEY" in missing.json()["message"]
        assert "invalid" in wrong.json()["message"]
        assert http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={}).status_code == 200
        record = server.store.authenticate_key(key)
        assert record is not None
        server.store.revoke_key(record.id)
        revoked = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={})
        assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"fps": 24}, 400, "fps"),
        ({"aspect_ratio": "16:9"}, 400, "aspect_ratio"),
        ({"video_settings": {"encoding": "AV1"}}, 400, "encoding"),
        ({"avatar": "ava"}, 400, "avatar"),  # a typo for avatar_id is refused, not ignored
        ({"max_session_duration": -5}, 400, "max_session_duration"),
        ({"max_session_duration": 10**6}, 400, "limit"),
        ({"avatar_id": "nobody"}, 404, "/v1/avatars"),
        ({"avatar_id": "/srv/alice.facecast"}, 404, "is a bundle file, not an avatar id; create an avatar"),
        ({"avatar_id": "https://example.com/me.jpg"}, 404, "is a photo URL, not an avatar id"),
        ({"avatar_id": "Ava"}, 404, "did you mean 'ava'"),
        ({"mode": "FULL"}, 409, "/v1/llm_configurations"),  # FULL without a language model
        ({"transport": "carrier-pigeon"}, 400, "transport"),
        ({"transport": "livekit"}, 400, "livekit_config"),
        (
            {"transport": "livekit", "livekit_config": {"livekit_url": "ws://lk:7880", "livekit_room": "r"}},
            400,
            "LIVEKIT_API_KEY",
        ),
        (
            {"transport": "livekit", "livekit_config": {"livekit_url": "lk:7880", "livekit_room": "r"}},
            400,
            "not a URL",
        ),
    ],
)
def test_bad_token_bodies_say_what_is_wrong(
    server: RunningServer, key: str, body: dict[str, Any], status: int, needle: str
) -> None:
    with server.client() as http:
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json=body)
    assert r.status_code == status
    envelope = r.json()
    assert envelope["data"] is None and envelope["code"] != p.CODE_OK
    assert needle in envelope["message"]


def test_non_json_body_is_a_400(server: RunningServer, key: str) -> None:
    with server.client() as http:
        r = http.post(
            "/v1/sessions/token",
            headers={"X-API-KEY": key, "Content-Type": "application/json"},
            content=b"{not json",
        )
    assert r.status_code == 400 and r.json()["code"] == p.CODE_BAD_REQUEST


def test_connections_send_without_waiting_for_acks(server: RunningServer) -> None:
    """Nagle is off (TCP_NODELAY) on the server's side of every connection: with it on, a response's
    body waited ~40 ms behind its headers on a kept-alive connection (the client's delayed ACK), which
    cost /start and the WebRTC offer 40 ms each."""
    with server.client() as http:
        assert http.get("/healthz").status_code == 200  # the connection stays open (keep-alive)
        sockets = [c.transport.get_extra_info("socket") for c in server.uvicorn.server_state.connections]
        assert sockets
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


# -- session tokens ---------------------------------------------------------------------------------------
def test_start_returns_connection_details(server: RunningServer, key: str) -> None:
    minted = mint(
        server, key, avatar_id="noah", fps=25, aspect_ratio="4:3", video_settings={"quality": "low"}
    )
    data = start(server, minted["session_token"])
    assert data["session_id"] == minted["session_id"]
    assert data["ws_url"].startswith("ws://127.0.0.1:") and minted["session_token"] in data["ws_url"]
    assert data["webrtc"]["offer_url"].endswith(f"/v1/sessions/{minted['session_id']}/offer")
    assert data["webrtc"]["data_channel"] == {"label": "events", "negotiated": True, "id": 0}
    assert data["video"]["fps"] == 25 and data["video"]["width"] > data["video"]["height"]
    assert data["max_session_duration"] == server.config.limits.default_session_duration
    record = server.session(minted["session_id"])
    assert record.state == p.STATE_STARTED and record.avatar_id == "noah"
    assert record.token_hash == hash_secret(minted["session_token"])
    status, again = call(server, "/v1/sessions/start", minted["session_token"])
    assert status == 409 and "already started" in again["message"]


def test_wrong_tokens_are_refused(server: RunningServer, key: str) -> None:
    a = mint(server, key)
    b = mint(server, key)
    status, body = call(server, "/v1/sessions/start", "fst_wrong")
    assert status == 401 and "invalid session token" in body["message"]
    status, body = call(server, "/v1/sessions/start", "", None)
    assert status == 401 and "Bearer" in body["message"]
    status, body = call(server, "/v1/sessions/start", a["session_token"], {"session_id": b["session_id"]})
    assert status == 403 and "another session" in body["message"]


def test_unstarted_token_expires(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(token_ttl=1)) as server:
        key = server.store.create_key("k")[1]
        minted = mint(server, key)
        ended = server.wait_ended(minted["session_id"])
        assert ended.end_reason == p.END_TOKEN_EXPIRED
        status, body = call(server, "/v1/sessions/start", minted["session_token"])
        assert status == 410 and "ended" in body["message"]


def test_stop_twice_and_keep_alive_after_end(server: RunningServer, key: str) -> None:
    minted = mint(server, key)
    token = minted["session_token"]
    start(server, token)
    assert call(server, "/v1/sessions/keep-alive", token)[0] == 200
    status, body = call(server, "/v1/sessions/stop", token, {"session_id": minted["session_id"]})
    assert status == 200 and body["data"]["end_reason"] == p.END_STOPPED
    status, body = call(server, "/v1/sessions/stop", token)
    assert status == 200 and body["message"] == "session had already ended"
    assert body["data"]["end_reason"] == p.END_STOPPED
    status, body = call(server, "/v1/sessions/keep-alive", token)
    assert status == 410 and body["code"] == p.CODE_GONE and "stopped" in body["message"]
    record = server.session(minted["session_id"])
    assert record.state == p.STATE_ENDED and record.ended_at is not None and record.started_at is not None
    assert record.ended_at >= record.started_at
    assert "frames" in record.stats


def test_stopping_an_unstarted_session_ends_it(server: RunningServer, key: str) -> None:
    minted = mint(server, key)
    status, body = call(server, "/v1/sessions/stop", minted["session_token"])
    assert status == 200 and body["data"]["end_reason"] == p.END_STOPPED
    assert server.session(minted["session_id"]).started_at is None


# -- limits ---------------------------------------------------------------------------------------------
def test_concurrency_cap_per_key(server: RunningServer) -> None:
    _, key = server.store.create_key("capped", max_concurrent=2)
    first = mint(server, key)
    mint(server, key)
    with server.client() as http:
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={})
    assert r.status_code == 429 and r.json()["code"] == p.CODE_LIMIT and "limit is 2" in r.json()["message"]
    call(server, "/v1/sessions/stop", first["session_token"])
    mint(server, key)  # a stopped session frees its slot


def test_server_refuses_sessions_past_its_capacity(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(max_live_sessions=1)) as server:
        key = server.store.create_key("k")[1]
        first, second = mint(server, key), mint(server, key)
        start(server, first["session_token"])
        status, body = call(server, "/v1/sessions/start", second["session_token"])
        assert status == 503 and body["code"] == p.CODE_LIMIT and "at capacity" in body["message"]
        assert server.session(second["session_id"]).state == p.STATE_CREATED  # may retry
        call(server, "/v1/sessions/stop", first["session_token"])
        start(server, second["session_token"])


def test_max_duration_ends_the_session(server: RunningServer, key: str) -> None:
    minted = mint(server, key, max_session_duration=1, video_settings={"quality": "low"})
    start(server, minted["session_token"])
    record = server.wait_ended(minted["session_id"])
    assert record.end_reason == p.END_MAX_DURATION
    assert record.ended_at is not None and record.started_at is not None
    assert record.ended_at - record.started_at >= 1.0


def test_idle_session_ends(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(idle_timeout=1)) as server:
        key = server.store.create_key("k")[1]
        minted = mint(server, key, video_settings={"quality": "low"})
        start(server, minted["session_token"])
        assert server.wait_ended(minted["session_id"]).end_reason == p.END_IDLE


def test_keep_alive_defers_idle_end(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(idle_timeout=2)) as server:
        key = server.store.create_key("k")[1]
        minted = mint(server, key, video_settings={"quality": "low"})
        start(server, minted["session_token"])
        for _ in range(5):  # 3 s in all, longer than the idle timeout
            time.sleep(0.6)
            assert call(server, "/v1/sessions/keep-alive", minted["session_token"])[0] == 200
        assert server.session(minted["session_id"]).end_reason is None
        assert server.wait_ended(minted["session_id"]).end_reason == p.END_IDLE


def test_started_session_whose_peer_never_connects_ends_as_client_gone(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(connect_timeout=1)) as server:
        key = server.store.create_key("k")[1]
        minted = mint(server, key, video_settings={"quality": "low"})
        start(server, minted["session_token"])
        assert server.wait_ended(minted["session_id"]).end_reason == p.END_CLIENT_GONE


def test_sandbox_sessions_are_short_with_a_fixed_avatar(server: RunningServer, key: str) -> None:
    minted = mint(server, key, is_sandbox=True, avatar_id="leo", max_session_duration=3000)
    record = server.session(minted["session_id"])
    assert record.is_sandbox and record.avatar_id == server.config.limits.sandbox_avatar
    assert record.settings.max_session_duration == server.config.limits.sandbox_duration


# -- listing, catalogue, health ---------------------------------------------------------------------------
def test_sessions_list_active_and_history_paginated(server: RunningServer, key: str) -> None:
    minted = [mint(server, key) for _ in range(3)]
    for m in minted[:2]:
        call(server, "/v1/sessions/stop", m["session_token"])
    other_key = server.store.create_key("other")[1]
    mint(server, other_key)
    with server.client(headers={"X-API-KEY": key}) as http:
        active = http.get("/v1/sessions", params={"status": "active"}).json()["data"]
        page1 = http.get("/v1/sessions", params={"status": "history", "page_size": 1}).json()["data"]
        page2 = http.get("/v1/sessions", params={"status": "history", "page_size": 1, "page": 2}).json()[
            "data"
        ]
        bad = http.get("/v1/sessions", params={"status": "someday"})
        one = http.get(f"/v1/sessions/{minted[0]['session_id']}").json()["data"]
        stranger = http.get("/v1/sessions/ses_unknown")
    assert [s["session_id"] for s in active["sessions"]] == [minted[2]["session_id"]]
    assert active["total"] == 1
    assert page1["total"] == page2["total"] == 2
    assert {page1["sessions"][0]["session_id"], page2["sessions"][0]["session_id"]} == {
        m["session_id"] for m in minted[:2]
    }
    assert bad.status_code == 400
    assert one["end_reason"] == p.END_STOPPED and one["state"] == p.STATE_ENDED
    assert stranger.status_code == 404


def test_catalogue_health_metrics_docs_and_client(server: RunningServer, key: str) -> None:
    start(server, mint(server, key, video_settings={"quality": "low"})["session_token"])
    with server.client() as http:
        avatars = http.get("/v1/avatars").json()["data"]["avatars"]
        preview = http.get(avatars[0]["preview_url"])
        health = http.get("/healthz").json()["data"]
        metrics = http.get("/metrics").text
        openapi = http.get("/openapi.json").json()
        page = http.get("/")
        script = http.get("/static/client.js")
    assert {a["avatar_id"] for a in avatars} >= {"ava", "noah", "mira", "leo"}
    assert preview.headers["content-type"] == "image/png" and preview.content[:4] == b"\x89PNG"
    assert health["status"] == "ok" and health["live_sessions"] == 1
    assert "facecast_live_sessions 1" in metrics and "facecast_session_frames{session_id=" in metrics
    assert "/v1/sessions/token" in openapi["paths"] and "/v1/sessions/start" in openapi["paths"]
    assert page.status_code == 200 and "client.js" in page.text and script.status_code == 200


# -- persistence ----------------------------------------------------------------------------------------
def test_restart_keeps_keys_and_records_and_ends_sessions_left_live(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    _, key = store.create_key("persist")
    with running_server(tmp_path, store=store) as server:
        finished = mint(server, key)
        call(server, "/v1/sessions/stop", finished["session_token"])
    store.close()
    # Simulate a crash: a record left `started` by this server, never ended.
    crashed = open_store(None, tmp_path)
    api_key = crashed.authenticate_key(key)
    assert api_key is not None
    now = time.time()
    crashed.insert_session(
        SessionRecord(
            id="ses_crashed",
            key_id=api_key.id,
            mode="LITE",
            avatar_id="ava",
            is_sandbox=False,
            transport="webrtc",
            settings=SessionSettings(
                look=Look(avatar="ava"),
                encoding="VP8",
                max_session_duration=60,
                interactivity_type="CONVERSATIONAL",
            ),
            state=p.STATE_STARTED,
            token_hash="x",
            token_expires_at=now + 60,
            created_at=now,
            started_at=now,
            owner="test-server",
        )
    )
    crashed.close()
    with running_server(tmp_path) as server:
        assert server.store.authenticate_key(key) is not None
        assert server.session(finished["session_id"]).end_reason == p.END_STOPPED
        recovered = server.session("ses_crashed")
        assert recovered.state == p.STATE_ENDED and recovered.end_reason == p.END_SERVER_SHUTDOWN


def test_shutdown_ends_live_sessions(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        key = server.store.create_key("k")[1]
        live = mint(server, key, video_settings={"quality": "low"})
        start(server, live["session_token"])
        pending = mint(server, key)
        store = server.store
    assert store.get_session(live["session_id"]).end_reason == p.END_SERVER_SHUTDOWN  # type: ignore[union-attr]
    assert store.get_session(pending["session_id"]).end_reason == p.END_SERVER_SHUTDOWN  # type: ignore[union-attr]


# -- LITE WebSocket before the peer connects --------------------------------------------------------------
def test_websocket_reports_errors_and_survives(server: RunningServer, key: str) -> None:
    minted = mint(server, key, video_settings={"quality": "low"})
    data = start(server, minted["session_token"])
    with connect(data["ws_url"]) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == p.SESSION_STATE_UPDATED and first["state"] == p.WS_STATE_CONNECTING
        ws.send(json.dumps({"type": "agent.speak", "event_id": "e1", "audio": ""}))
        early = json.loads(ws.recv(timeout=10))
        assert early["type"] == p.ERROR and "connected" in early["message"] and early["event_id"] == "e1"
        ws.send("{not json")
        assert "not JSON" in json.loads(ws.recv(timeout=10))["message"]
        ws.send(json.dumps({"type": "agent.dance"}))
        assert "unknown message type" in json.loads(ws.recv(timeout=10))["message"]
        ws.send(json.dumps(["a", "list"]))
        assert json.loads(ws.recv(timeout=10))["type"] == p.ERROR
        ws.send(b"\x00\x01")
        assert "binary frames" in json.loads(ws.recv(timeout=10))["message"]
        ws.send(json.dumps({"type": "session.keep_alive"}))  # allowed at any time, no reply
    assert server.session(minted["session_id"]).end_reason is None


def test_websocket_refuses_bad_tokens(server: RunningServer, key: str) -> None:
    minted = mint(server, key, video_settings={"quality": "low"})
    data = start(server, minted["session_token"])
    wrong = data["ws_url"].split("?")[0] + "?token=fst_wrong"
    with connect(wrong) as ws:
        message = json.loads(ws.recv(timeout=10))
        assert message["type"] == p.ERROR and "invalid session token" in message["message"]


def test_websocket_is_closed_when_the_session_ends(server: RunningServer, key: str) -> None:
    minted = mint(server, key, video_settings={"quality": "low"})
    data = start(server, minted["session_token"])
    with connect(data["ws_url"]) as ws:
        ws.recv(timeout=10)
        call(server, "/v1/sessions/stop", minted["session_token"])
        seen = []
        with pytest.raises(ConnectionClosed):
            while True:
                seen.append(json.loads(ws.recv(timeout=10)))
    assert [e["state"] for e in seen if e["type"] == p.SESSION_STATE_UPDATED] == ["closing", "closed"]
    assert any(e["type"] == p.SESSION_STOPPED and e["end_reason"] == p.END_STOPPED for e in seen)
