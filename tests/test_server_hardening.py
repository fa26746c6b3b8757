"""Session lifecycle under abuse (issue 15): parallel starts of one token, out-of-range pages, a server
killed and replaced elsewhere (leases), a revoked key, graceful shutdown with LITE clients connected,
PostgreSQL restarted mid-session, and a client that vanishes without closing. Real servers on loopback,
real PostgreSQL, a real SIGKILLed `facecast serve` process."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg import LocalPostgres, find_bindir, postgres_server, postgres_url  # noqa: F401  (fixtures)
from server_harness import RunningServer, running_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from facecast import protocol as p
from facecast.server.config import Limits, LiveKitSettings
from facecast.server.sessions.livekit import livekit_start_details
from facecast.server.store import open_store

PARALLEL_STARTS = 5


def _wait(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def _mint(server: RunningServer, key: str, **body: Any) -> dict[str, Any]:
    with server.client() as http:
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json=body)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _avatar_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("facecast-avatar")]


def _parallel_starts(server: RunningServer, tokens: list[str]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(tokens))

    def start(token: str) -> httpx.Response:
        with server.client() as http:
            barrier.wait()
            return http.post("/v1/sessions/start", headers=_bearer(token))

    with ThreadPoolExecutor(len(tokens)) as pool:
        return list(pool.map(start, tokens))


def _assert_error_shape(r: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "data", "message"} and body["code"] == code and body["data"] is None
    assert isinstance(body["message"], str) and body["message"]
    return body


# -- D1: one token, parallel starts -----------------------------------------------------------------------
@pytest.mark.parametrize("live_workers", [0, 1], ids=["in-process", "worker-pool"])
def test_parallel_starts_of_one_token_start_one_engine(tmp_path: Path, live_workers: int) -> None:
    baseline_threads = len(_avatar_threads())
    with running_server(tmp_path, live_workers=live_workers) as server:
        key = server.store.create_key("d1")[1]
        minted = _mint(server, key, video_settings={"quality": "low"})
        answers = _parallel_starts(server, [minted["session_token"]] * PARALLEL_STARTS)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] + [409] * (PARALLEL_STARTS - 1), [r.text for r in answers]
        for r in answers:
            if r.status_code == 409:
                assert "already started" in _assert_error_shape(r, 409, p.CODE_CONFLICT)["message"]
        manager = server.app.state.manager
        assert list(manager.live) == [minted["session_id"]]
        if live_workers:
            assert [w["sessions"] for w in manager.pool.describe()] == [1]
        else:
            assert len(_avatar_threads()) == baseline_threads + 1
        with server.client() as http:
            stopped = http.post("/v1/sessions/stop", headers=_bearer(minted["session_token"]))
        assert stopped.status_code == 200
        assert manager.live == {}
        if live_workers:
            _wait(lambda: [w["sessions"] for w in manager.pool.describe()] == [0], what="worker idle")
        _wait(lambda: len(_avatar_threads()) == baseline_threads, what="engine threads gone")


def test_a_stop_racing_the_start_leaves_nothing_running(tmp_path: Path) -> None:
    baseline_threads = len(_avatar_threads())
    with running_server(tmp_path) as server:
        key = server.store.create_key("race")[1]
        minted = _mint(server, key)
        barrier = threading.Barrier(2)

        def call(path: str) -> httpx.Response:
            with server.client() as http:
                barrier.wait()
                return http.post(path, headers=_bearer(minted["session_token"]))

        with ThreadPoolExecutor(2) as pool:
            start, stop = pool.map(call, ["/v1/sessions/start", "/v1/sessions/stop"])
        assert stop.status_code == 200, stop.text
        assert start.status_code in (200, 410), start.text  # started then stopped, or refused as ended
        assert server.session(minted["session_id"]).end_reason == p.END_STOPPED
        assert server.app.state.manager.live == {}
        _wait(lambda: len(_avatar_threads()) == baseline_threads, what="engine threads gone")


def test_parallel_starts_never_pass_the_server_capacity(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(max_live_sessions=1)) as server:
        key = server.store.create_key("cap", max_concurrent=PARALLEL_STARTS)[1]
        tokens = [_mint(server, key)["session_token"] for _ in range(PARALLEL_STARTS)]
        answers = _parallel_starts(server, tokens)
        assert sorted(r.status_code for r in answers) == [200] + [503] * (PARALLEL_STARTS - 1)
        for r in answers:
            if r.status_code == 503:
                assert "FACECAST_MAX_LIVE_SESSIONS" in _assert_error_shape(r, 503, p.CODE_LIMIT)["message"]
        assert len(server.app.state.manager.live) == 1


# -- D2: pages out of range -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query",
    [
        "status=history&page=9223372036854775807",
        "status=active&page=9223372036854775808",
        "page=1000001",
        "page=0",
        "page=-1",
        "page_size=0",
        "page_size=101",
        "page_size=99999999999999999999999",
        "page=abc",
    ],
)
def test_out_of_range_pages_are_a_400_in_the_documented_shape(tmp_path: Path, query: str) -> None:
    with running_server(tmp_path) as server, server.client() as http:
        key = server.store.create_key("d2")[1]
        r = http.get(f"/v1/sessions?{query}", headers={"X-API-KEY": key})
        _assert_error_shape(r, 400, p.CODE_BAD_REQUEST)


def test_the_store_refuses_offsets_past_64_bits(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    try:
        with pytest.raises(ValueError, match="past the last row"):
            store.list_sessions(None, active=False, page=2**62, page_size=100)
    finally:
        store.close()


# -- D5: a killed server's sessions end once its lease expires -------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigkilled_server_sessions_end_as_server_lost_elsewhere(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    lease_s = 2.0
    store = open_store(postgres_url, tmp_path)
    _, key = store.create_key("d5", max_concurrent=3)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACECAST_")}
    env["FACECAST_SERVER_LEASE"] = str(lease_s)
    serve = ["serve", "--port", str(port), "--data-dir", str(tmp_path / "a"), "--live-workers", "0"]
    serve += ["--database-url", postgres_url, "--log-level", "warning"]
    killed = subprocess.Popen([sys.executable, "-m", "facecast", *serve], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _healthy(url) or killed.poll() is not None, 60, "facecast serve up")
        assert killed.poll() is None, "facecast serve exited"
        with httpx.Client(base_url=url, timeout=30) as http:
            minted = [
                http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json={}).json()["data"]
                for _ in range(3)
            ]
            for m in minted[:2]:
                assert http.post("/v1/sessions/start", headers=_bearer(m["session_token"])).status_code == 200
        ids = [m["session_id"] for m in minted]
        assert [store.get_session(i).state for i in ids] == ["started", "started", "created"]  # type: ignore[union-attr]
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(10)
    other = open_store(postgres_url, tmp_path)
    with running_server(
        tmp_path / "b", store=other, server_id="b", limits=Limits(server_lease_s=lease_s)
    ) as b:
        _wait(lambda: all(b.session(i).state == p.STATE_ENDED for i in ids), 30, "lost sessions ended")
        assert {b.session(i).end_reason for i in ids} == {p.END_SERVER_LOST}
        assert other.count_active(store.authenticate_key(key).id) == 0  # type: ignore[union-attr]
        for _ in range(3):  # the key has its three slots back
            _mint(b, key)
        # The dead server's tokens: a stop answers (the session had ended), a start says it has ended.
        with b.client() as http:
            stopped = http.post("/v1/sessions/stop", headers=_bearer(minted[2]["session_token"]))
            assert stopped.status_code == 200 and stopped.json()["data"]["end_reason"] == p.END_SERVER_LOST
            _assert_error_shape(
                http.post("/v1/sessions/start", headers=_bearer(minted[0]["session_token"])), 410, p.CODE_GONE
            )
    other.close()
    store.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_live_server_keeps_its_sessions_while_it_renews_its_lease(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    lease = Limits(server_lease_s=4.0)  # renewed every 1.3 s: only a 2.7 s stall of its loop loses it
    store_a, store_b = open_store(postgres_url, tmp_path), open_store(postgres_url, tmp_path)
    _, key = store_a.create_key("lease")
    with (
        running_server(tmp_path / "a", store=store_a, server_id="a", limits=lease) as a,
        running_server(tmp_path / "b", store=store_b, server_id="b", limits=lease),
    ):
        minted = _mint(a, key)
        with a.client() as http:
            assert (
                http.post("/v1/sessions/start", headers=_bearer(minted["session_token"])).status_code == 200
            )
        time.sleep(2.5 * lease.server_lease_s)  # past two leases: server b sweeps all along
        assert a.session(minted["session_id"]).state == p.STATE_STARTED
    store_a.close()
    store_b.close()


def test_an_unstarted_session_of_a_vanished_server_is_reaped_when_its_token_expires(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        key = server.store.create_key("ttl")[1]
        minted = _mint(server, key)
        # As if minted by a server that died before its lease row was ever written.
        assert server.store.update_session(minted["session_id"], owner="gone:1", token_expires_at=time.time())
        server.app.state.manager.pending.clear()  # this server no longer tracks it either
        _wait(lambda: server.session(minted["session_id"]).end_reason == p.END_TOKEN_EXPIRED, 10)


def test_an_expired_token_still_stops_its_session(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        key = server.store.create_key("expired")[1]
        minted = _mint(server, key)
        manager = server.app.state.manager
        manager.pending.clear()  # as on a server that is gone: nothing here reaps it
        assert server.store.update_session(minted["session_id"], token_expires_at=time.time() - 1)
        record = manager.authenticate_token(minted["session_token"], allow_expired=True)
        assert record.id == minted["session_id"] and record.state == p.STATE_CREATED
        with server.client() as http:
            refused = http.post("/v1/sessions/start", headers=_bearer(minted["session_token"]))
            assert "expired" in _assert_error_shape(refused, 401, p.CODE_UNAUTHORIZED)["message"]
            stopped = http.post("/v1/sessions/stop", headers=_bearer(minted["session_token"]))
        assert stopped.status_code == 200, stopped.text
        # Stopped by the call, or swept as token_expired just before it: ended either way, slot freed.
        assert stopped.json()["data"]["end_reason"] in (p.END_STOPPED, p.END_TOKEN_EXPIRED)
        assert server.store.count_active(server.session(minted["session_id"]).key_id) == 0


# -- D7: revoking a key -----------------------------------------------------------------------------------
def test_revoking_a_key_cuts_off_its_tokens_and_ends_its_sessions(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        key = server.store.create_key("d7")[1]
        live, unstarted = _mint(server, key), _mint(server, key)
        with server.client() as http:
            started = http.post("/v1/sessions/start", headers=_bearer(live["session_token"]))
        assert started.status_code == 200
        events: list[dict[str, Any]] = []
        with connect(started.json()["data"]["ws_url"], open_timeout=10) as ws:
            events.append(json.loads(ws.recv(timeout=10)))
            revoked = subprocess.run(
                [sys.executable, "-m", "facecast", "keys", "revoke", key[:12], "--data-dir", str(tmp_path)],
                capture_output=True,
                text=True,
                env={k: v for k, v in os.environ.items() if k != "FACECAST_DATABASE_URL"},
                check=True,
            )
            assert "no longer work" in revoked.stdout and "2 session(s)" in revoked.stdout, revoked.stdout
            with pytest.raises(ConnectionClosed):  # the server closes the socket once it ends the session
                while True:
                    events.append(json.loads(ws.recv(timeout=10)))
        stopped = [e for e in events if e["type"] == p.SESSION_STOPPED]
        assert [e["end_reason"] for e in stopped] == [p.END_KEY_REVOKED]
        _wait(lambda: server.app.state.manager.live == {}, 10, "revoked session closed")
        assert {server.session(m["session_id"]).end_reason for m in (live, unstarted)} == {p.END_KEY_REVOKED}
        with server.client() as http:
            for path, token in (
                ("/v1/sessions/start", unstarted["session_token"]),
                ("/v1/sessions/keep-alive", live["session_token"]),
            ):
                body = _assert_error_shape(http.post(path, headers=_bearer(token)), 401, p.CODE_UNAUTHORIZED)
                assert "revoked" in body["message"]
        with connect(started.json()["data"]["ws_url"], open_timeout=10) as ws:
            refused = json.loads(ws.recv(timeout=10))
            assert refused["type"] == p.ERROR and "revoked" in refused["message"]


def test_a_key_revoked_outside_the_cli_ends_its_live_sessions_within_seconds(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        key_record, key = server.store.create_key("d7-store")
        minted = _mint(server, key)
        with server.client() as http:
            assert (
                http.post("/v1/sessions/start", headers=_bearer(minted["session_token"])).status_code == 200
            )
        server.store.revoke_key(key_record.id)  # the bare store: no session is ended by the revocation
        _wait(lambda: server.app.state.manager.live == {}, 10, "session of the revoked key closed")
        assert server.session(minted["session_id"]).end_reason == p.END_KEY_REVOKED


# -- D9: graceful shutdown tells LITE clients why -----------------------------------------------------------
def test_graceful_shutdown_sends_session_stopped_to_every_websocket(tmp_path: Path) -> None:
    clients = 2
    events: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    readers: list[threading.Thread] = []

    def read(ws: Any, out: list[dict[str, Any]]) -> None:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                out.append(json.loads(ws.recv(timeout=30)))

    with contextlib.ExitStack() as sockets:
        with running_server(tmp_path) as server:
            key = server.store.create_key("d9", max_concurrent=clients)[1]
            for received in events:
                minted = _mint(server, key)
                with server.client() as http:
                    started = http.post("/v1/sessions/start", headers=_bearer(minted["session_token"]))
                ws = sockets.enter_context(connect(started.json()["data"]["ws_url"], open_timeout=10))
                received.append(json.loads(ws.recv(timeout=10)))
                readers.append(threading.Thread(target=read, args=(ws, received)))
                readers[-1].start()
        for reader in readers:  # the server has shut down: every socket is closed
            reader.join(30)
    for received in events:
        stopped = [e["end_reason"] for e in received if e["type"] == p.SESSION_STOPPED]
        assert stopped == [p.END_SERVER_SHUTDOWN], received


# -- faults -------------------------------------------------------------------------------------------------
@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test alone, so that restarting it disturbs no other test."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries: run scripts/install-postgres")
    server = LocalPostgres(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_postgres_restarted_mid_session(tmp_path: Path, own_postgres: LocalPostgres) -> None:
    store = open_store(own_postgres.url, tmp_path)
    _, key = store.create_key("pg-restart")
    statuses: list[int] = []
    with running_server(tmp_path, store=store) as server:
        minted = _mint(server, key)
        bearer = _bearer(minted["session_token"])
        with server.client() as http:
            assert http.post("/v1/sessions/start", headers=bearer).status_code == 200
            own_postgres.stop_server()
            try:
                # While it is down, calls are answered in the documented shape, never 500.
                for _ in range(3):
                    r = http.post("/v1/sessions/keep-alive", headers=bearer)
                    statuses.append(r.status_code)
                    assert "database" in _assert_error_shape(r, 503, p.CODE_INTERNAL)["message"]
                ws_url = f"{server.url.replace('http', 'ws')}/v1/sessions/{minted['session_id']}/ws"
                with connect(f"{ws_url}?token={minted['session_token']}", open_timeout=10) as ws:
                    refused = json.loads(ws.recv(timeout=10))
                    assert refused["type"] == p.ERROR and "database" in refused["message"]
                time.sleep(1.5)  # the reaper meets the outage too, and must go on
            finally:
                own_postgres.start_server()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = http.post("/v1/sessions/keep-alive", headers=bearer)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
                _assert_error_shape(r, 503, p.CODE_INTERNAL)
                time.sleep(0.1)
            assert statuses[-1] == 200, statuses
            for _ in range(5):
                assert http.post("/v1/sessions/keep-alive", headers=bearer).status_code == 200
                assert (
                    http.get(f"/v1/sessions/{minted['session_id']}", headers={"X-API-KEY": key}).status_code
                    == 200
                )
            assert server.session(minted["session_id"]).state == p.STATE_STARTED  # it went on
            stopped = http.post("/v1/sessions/stop", headers=bearer)
            assert stopped.status_code == 200 and stopped.json()["data"]["end_reason"] == p.END_STOPPED
        assert server.app.state.manager.live == {}
    assert 500 not in statuses
    store.close()


def test_postgres_down_when_a_session_ends_records_the_end_once_it_is_back(
    tmp_path: Path, own_postgres: LocalPostgres
) -> None:
    store = open_store(own_postgres.url, tmp_path)
    _, key = store.create_key("pg-down")
    with running_server(tmp_path, store=store, limits=Limits(idle_timeout=5)) as server:
        minted = _mint(server, key)
        with server.client() as http:
            assert (
                http.post("/v1/sessions/start", headers=_bearer(minted["session_token"])).status_code == 200
            )
        own_postgres.stop_server()
        try:
            assert minted["session_id"] in server.app.state.manager.live  # it ends during the outage
            _wait(lambda: server.app.state.manager.live == {}, 15, "idle session closed while the db is down")
        finally:
            own_postgres.start_server()
        _wait(lambda: server.session(minted["session_id"]).end_reason == p.END_IDLE, 15, "end recorded")
    store.close()


def test_a_client_that_vanishes_without_closing_is_reaped(tmp_path: Path) -> None:
    baseline_threads = len(_avatar_threads())
    with running_server(tmp_path, limits=Limits(idle_timeout=2, connect_timeout=2)) as server:
        key = server.store.create_key("vanish")[1]
        minted = _mint(server, key)
        with server.client() as http:
            started = http.post("/v1/sessions/start", headers=_bearer(minted["session_token"])).json()["data"]
        with connect(started["ws_url"], open_timeout=10) as ws:
            ws.recv(timeout=10)
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone, no close frame: like a killed browser tab
            ws.socket.close()
        record = server.wait_ended(minted["session_id"], timeout=20)
        assert record.end_reason in (p.END_IDLE, p.END_CLIENT_GONE)
        assert server.app.state.manager.live == {}
        _wait(lambda: len(_avatar_threads()) == baseline_threads, what="engine threads gone")


def test_livekit_tokens_for_a_session_room_expire_with_the_session(tmp_path: Path) -> None:
    pytest.importorskip("livekit.api")
    lk = LiveKitSettings(url="ws://127.0.0.1:7880", api_key="devkey", api_secret="s" * 32)
    with running_server(tmp_path, livekit=lk) as server:
        key = server.store.create_key("lk")[1]
        minted = _mint(server, key, max_session_duration=120)
        details = livekit_start_details(server.config, server.session(minted["session_id"]))
        longest = 120 + server.config.limits.token_ttl  # the session token's own longest life
        for name in ("livekit_client_token", "livekit_agent_token"):
            payload = details[name].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            assert claims["exp"] - time.time() <= longest + 5, (name, claims["exp"] - time.time())


VANISHING_PEER = """
import asyncio, json, sys
import httpx, websockets
from aiortc import RTCPeerConnection, RTCSessionDescription

async def main(start, token):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("events", negotiated=True, id=0)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(start["webrtc"]["offer_url"], headers={"Authorization": "Bearer " + token},
                            json={"sdp": pc.localDescription.sdp, "type": "offer"})
    answer = r.json()["data"]
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    async with websockets.connect(start["ws_url"]) as ws:
        async for raw in ws:
            if json.loads(raw).get("state") == "connected":
                print("connected", flush=True)
                await asyncio.sleep(3600)  # until killed: no close, no goodbye

print("ready", flush=True)  # imported: the session may start (its idle timer runs from then)
given = json.loads(sys.stdin.readline())
asyncio.run(main(given["start"], given["token"]))
"""


def test_a_webrtc_client_killed_mid_session_is_reaped(tmp_path: Path) -> None:
    baseline_threads = len(_avatar_threads())
    with running_server(tmp_path, limits=Limits(idle_timeout=5)) as server:
        key = server.store.create_key("killed-peer")[1]
        minted = _mint(server, key, video_settings={"quality": "low"})
        peer = subprocess.Popen(
            [sys.executable, "-c", VANISHING_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert peer.stdin is not None and peer.stdout is not None
            assert peer.stdout.readline().strip() == "ready"
            with server.client() as http:
                start = http.post("/v1/sessions/start", headers=_bearer(minted["session_token"]))
            peer.stdin.write(
                json.dumps({"start": start.json()["data"], "token": minted["session_token"]}) + "\n"
            )
            peer.stdin.flush()
            assert peer.stdout.readline().strip() == "connected"
            assert server.app.state.manager.live[minted["session_id"]].connected_at is not None
            peer.send_signal(signal.SIGKILL)
            peer.wait(10)
        finally:
            if peer.poll() is None:
                peer.kill()
                peer.wait(10)
        record = server.wait_ended(minted["session_id"], timeout=30)
        assert record.end_reason in (p.END_IDLE, p.END_CLIENT_GONE)
        assert server.app.state.manager.live == {}
        _wait(lambda: len(_avatar_threads()) == baseline_threads, what="engine threads gone")
