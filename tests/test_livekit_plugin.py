"""livekit-plugins-facecast driven by a real livekit-agents `AgentSession`.

The agent speaks with `session.say(text, audio=...)` (no STT/LLM/TTS). Real: AgentSession, the plugin,
livekit-agents' audio outputs, the Facecast worker or in-process runner and the engine. Stand-ins: the
LiveKit server (tests/livekit_room.py), the job context (`fake_job_context`, with a RoomService that acts
on the room double), and in remote mode a small HTTP server implementing the Facecast endpoints the plugin
calls (the three session calls, and the avatar upload and status), which starts a real `RoomAvatar` for each
session; the last tests run the real Facecast server instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from livekit import api, rtc
from livekit.agents import Agent, AgentSession, APIConnectOptions, APIStatusError, APITimeoutError, JobContext
from livekit.agents.testing import fake_job_context
from livekit.plugins import facecast
from livekit.plugins.facecast import api as plugin_api
from livekit.plugins.facecast import avatar as plugin_avatar
from livekit.plugins.facecast import remote as plugin_remote
from livekit.plugins.facecast._local import photo_avatar_id
from livekit.plugins.facecast.avatar import avatar_source
from livekit_room import URL, MemoryRoom, MemoryServer

from facecast import protocol
from facecast.avatars import DEFAULT_AVATAR, AvatarLibrary
from facecast.avatars.bundle import read_bundle, write_bundle
from facecast.avatars.procedural import bundle_from_style
from facecast.hosts.livekit.names import ATTRIBUTE_PUBLISH_ON_BEHALF
from facecast.hosts.livekit.tokens import mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar

ROOM = "room-1"
AGENT = "agent-1"
RATE = 24000
HANG_S = 20.0  # guards against a hang; never a performance threshold
FAST = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=5.0)


async def speech(seconds: float) -> AsyncIterator[rtc.AudioFrame]:
    samples = (300 + 100 * (np.arange(int(seconds * RATE)) // 480)).clip(max=30000).astype(np.int16)
    for i in range(0, len(samples), 480):
        chunk = samples[i : i + 480]
        yield rtc.AudioFrame(chunk.tobytes(), RATE, 1, len(chunk))


class RoomService:
    """What the job's LiveKitAPI.room does to the room double."""

    def __init__(self, server: MemoryServer) -> None:
        self.server = server
        self.removed: list[str] = []

    async def remove_participant(self, req: api.RoomParticipantIdentity) -> None:
        self.removed.append(req.identity)
        await self.server.remove_participant(req.room, req.identity)


class Rooms:
    def __init__(
        self, server: MemoryServer, agent: MemoryRoom, user: MemoryRoom, service: RoomService
    ) -> None:
        self.server = server
        self.agent = agent
        self.user = user
        self.service = service


@pytest.fixture
async def rooms(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rooms]:
    server = MemoryServer()
    agent = await server.connect(AGENT, ROOM, kind="agent")
    user = await server.connect("user-1", ROOM)  # subscribes to what is published, like a frontend
    service = RoomService(server)
    lkapi = type("LiveKitAPI", (), {"room": service})()
    monkeypatch.setattr(JobContext, "api", property(lambda _self: lkapi))
    yield Rooms(server, agent, user, service)
    await user.disconnect()
    await agent.disconnect()


@pytest.fixture
def job(rooms: Rooms) -> Iterator[JobContext]:
    with fake_job_context(room=rooms.agent, agent_identity=AGENT) as ctx:  # type: ignore[arg-type]
        yield ctx


async def start_session(
    avatar: facecast.AvatarSession, room: MemoryRoom, **kw: Any
) -> tuple[AgentSession[Any], list[str]]:
    session: AgentSession[Any] = AgentSession()
    states: list[str] = []
    session.on("agent_state_changed", lambda ev: states.append(ev.new_state))
    await avatar.start(session, room=room, **kw)  # type: ignore[arg-type]
    await session.start(agent=Agent(instructions="Speak when told."))
    return session, states


async def speak_then_interrupt(session: AgentSession, states: list[str]) -> None:
    """A full utterance, then one cut short; the agent must come back to listening both times."""
    handle = session.say("Hello there.", audio=speech(0.5))
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert handle.interrupted is False
    assert states[-2:] == ["speaking", "listening"]

    handle = session.say("A long story that gets interrupted.", audio=speech(3.0))
    async with asyncio.timeout(HANG_S):
        while states[-1] != "speaking":
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # let some of it play
    handle.interrupt()
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert handle.interrupted is True
    async with asyncio.timeout(HANG_S):
        while states[-1] != "listening":
            await asyncio.sleep(0.01)
    assert states.count("speaking") == 2


# -- local mode -----------------------------------------------------------------------------------------


async def test_local_mode_with_a_real_agent_session(rooms: Rooms, job: JobContext) -> None:
    avatar = facecast.AvatarSession(mode="local", video_quality="low")
    session, states = await start_session(avatar, rooms.agent)
    assert avatar.avatar_identity == AGENT and avatar.session_id and avatar.provider == "facecast"

    await speak_then_interrupt(session, states)
    # The agent participant itself publishes the avatar's media.
    published = {p.name for p in rooms.user.remote_participants[AGENT].track_publications.values()}
    assert published == {"avatar_audio", "avatar_video"}

    with pytest.raises(RuntimeError):
        await avatar.start(session, room=rooms.agent)  # type: ignore[arg-type]

    await avatar.aclose()
    assert rooms.service.removed == []  # never removes the agent
    assert AGENT in rooms.server.participants(ROOM)
    assert rooms.agent.local_participant.track_publications == {}
    await session.aclose()


async def test_local_mode_starts_before_the_room_connects(rooms: Rooms) -> None:
    """In a job, avatar.start() runs before AgentSession.start() connects the room."""
    late = rooms.server.new_room()
    with fake_job_context(room=late, agent_identity="agent-2"):  # type: ignore[arg-type]
        avatar = facecast.AvatarSession(mode="local", video_quality="low")
        session: AgentSession[Any] = AgentSession()
        states: list[str] = []
        session.on("agent_state_changed", lambda ev: states.append(ev.new_state))
        await avatar.start(session, room=late)  # type: ignore[arg-type]
        await late.connect(URL, rooms.server.token("agent-2", ROOM, kind="agent"))
        await session.start(agent=Agent(instructions="Speak when told."))
        handle = session.say("Hi.", audio=speech(0.4))
        await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
        assert states[-2:] == ["speaking", "listening"]
        assert avatar.avatar_identity == "agent-2"
        published = {p.name for p in rooms.user.remote_participants["agent-2"].track_publications.values()}
        assert published == {"avatar_audio", "avatar_video"}
        await avatar.aclose()
        await session.aclose()
    await late.disconnect()


def make_bundle(folder: Path, name: str, style: str = "noah") -> Path:
    """A procedural bundle file `name`.facecast drawn with a built-in style."""
    manifest, files = bundle_from_style(style)
    return write_bundle(folder / f"{name}.facecast", dataclasses.replace(manifest, name=name), files)


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AvatarLibrary:
    """The default avatar library, moved to a temporary folder, holding `bob` (drawn like noah)."""
    monkeypatch.setenv("FACECAST_AVATARS_DIR", str(tmp_path / "avatars"))
    lib = AvatarLibrary()
    lib.install(make_bundle(tmp_path, "bob"))
    return lib


async def test_local_mode_rejects_unknown_avatars(
    rooms: Rooms, job: JobContext, library: AvatarLibrary
) -> None:
    avatar = facecast.AvatarSession(avatar="nobody", mode="local")
    with pytest.raises(facecast.FacecastException, match=r"unknown avatar 'nobody'.*bob"):
        await avatar.start(AgentSession(), room=rooms.agent)  # type: ignore[arg-type]
    with pytest.raises(facecast.FacecastException, match="no such file"):
        facecast.AvatarSession(avatar="/nowhere/me.jpg", mode="local")


async def test_local_mode_with_a_library_avatar_and_a_bundle_file(
    rooms: Rooms, job: JobContext, library: AvatarLibrary, tmp_path: Path
) -> None:
    for ref in ("bob", str(make_bundle(tmp_path, "carol", "leo"))):
        avatar = facecast.AvatarSession(avatar=ref, mode="local", video_quality="low")
        session, states = await start_session(avatar, rooms.agent)
        assert avatar.avatar_id == ref
        handle = session.say("Hi.", audio=speech(0.4))
        await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
        assert states[-2:] == ["speaking", "listening"]
        await avatar.aclose()
        await session.aclose()
    broken = tmp_path / "broken.facecast"
    broken.write_bytes(b"not a zip")
    avatar = facecast.AvatarSession(avatar=str(broken), mode="local")
    with pytest.raises(facecast.FacecastException, match="not a valid zip"):
        await avatar.start(AgentSession(), room=rooms.agent)  # type: ignore[arg-type]


def test_avatar_sources(tmp_path: Path) -> None:
    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"x")
    bundle = make_bundle(tmp_path, "dana")
    assert avatar_source("ava") == "id"
    assert avatar_source("photo-0123456789ab") == "id"
    assert avatar_source("https://example.com/me.jpg?size=2") == "url"
    assert avatar_source("HTTP://example.com/me") == "url"
    assert avatar_source(str(photo)) == "image"
    assert avatar_source(str(bundle)) == "bundle"
    for missing in ("missing.png", str(tmp_path / "missing.facecast"), str(tmp_path / "photo")):
        with pytest.raises(facecast.FacecastException, match="no such file"):
            avatar_source(missing)
    assert photo_avatar_id(b"abc") == "photo-" + hashlib.sha256(b"abc").hexdigest()[:12]


# -- remote mode ----------------------------------------------------------------------------------------


class StandInFacecastServer:
    """The three session endpoints of the Facecast HTTP API, and the two avatar ones. /start runs a real
    RoomAvatar worker over the room double, rendering from the stand-in's avatar library; /stop closes it.
    POST /v1/avatars installs an uploaded bundle at once; a photo (uploaded or by URL) "builds" for
    `build_polls` status requests, then becomes a procedural avatar (drawn like leo) named after the
    photo's hash, or fails when the photo's bytes contain b"no face"."""

    def __init__(self, lk: MemoryServer, library: AvatarLibrary, *, api_key: str = "fc-key") -> None:
        self.lk = lk
        self.api_key = api_key
        self.library = library
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.avatars: dict[str, RoomAvatar] = {}
        self.fail: dict[str, list[int]] = {}  # path -> statuses to answer with, one per request
        self.uploads: list[tuple[str, str, bytes]] = []  # (field or "image_url", file name, content)
        self.builds: dict[str, dict[str, Any]] = {}  # avatar_id -> status data
        self.build_polls = 2
        self._bodies: dict[str, dict[str, Any]] = {}
        app = web.Application()
        app.router.add_post("/v1/sessions/token", self._token)
        app.router.add_post("/v1/sessions/start", self._start)
        app.router.add_post("/v1/sessions/stop", self._stop)
        app.router.add_post("/v1/avatars", self._create_avatar)
        app.router.add_get("/v1/avatars/{avatar_id}", self._get_avatar)
        self.http = TestServer(app)

    @property
    def url(self) -> str:
        return str(self.http.make_url("")).rstrip("/")

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = await request.json()
        self.requests.append((request.path, body, dict(request.headers)))
        if statuses := self.fail.get(request.path):
            status = statuses.pop(0)
            return body, web.json_response(
                {"code": status * 10, "data": None, "message": "no"}, status=status
            )
        return body, None

    def _session_of(self, request: web.Request) -> str | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return token.removeprefix("tok-") if token.startswith("tok-") else None

    async def _token(self, request: web.Request) -> web.Response:
        body, failed = await self._record(request)
        if failed:
            return failed
        if request.headers.get("X-API-KEY") != self.api_key:
            return web.json_response({"code": 4001, "data": None, "message": "bad key"}, status=401)
        session_id = f"s{len(self._bodies) + 1}"
        self._bodies[session_id] = body
        data = {"session_id": session_id, "session_token": f"tok-{session_id}"}
        return web.json_response({"code": 1000, "data": data, "message": "ok"})

    async def _start(self, request: web.Request) -> web.Response:
        _, failed = await self._record(request)
        if failed:
            return failed
        session_id = self._session_of(request)
        if session_id not in self._bodies:
            return web.json_response({"code": 4001, "data": None, "message": "bad token"}, status=401)
        body = self._bodies[session_id]
        lk = body["livekit_config"]
        avatar = RoomAvatar(
            lk["livekit_url"],
            lk["livekit_worker_token"],
            avatar=body["avatar_id"],
            aspect=body["aspect_ratio"],
            quality=body["video_settings"]["quality"],
            max_duration_s=body.get("max_session_duration"),
            agent_identity=lk["agent_identity"],
            room=self.lk.new_room(),  # type: ignore[arg-type]
            library=self.library,
        )
        await avatar.start()
        self.avatars[session_id] = avatar
        return web.json_response({"code": 1000, "data": {"session_id": session_id}, "message": "ok"})

    async def _stop(self, request: web.Request) -> web.Response:
        body, failed = await self._record(request)
        if failed:
            return failed
        avatar = self.avatars.get(self._session_of(request) or "")
        if avatar is None or body.get("session_id") != self._session_of(request):
            return web.json_response({"code": 4004, "data": None, "message": "no such session"}, status=404)
        await avatar.aclose(body.get("reason", "stopped"))
        return web.json_response({"code": 1000, "data": {}, "message": "ok"})

    async def _create_avatar(self, request: web.Request) -> web.Response:
        headers = dict(request.headers)
        if request.headers.get("X-API-KEY") != self.api_key:
            return web.json_response({"code": 4001, "data": None, "message": "bad key"}, status=401)
        if request.content_type == "application/json":
            body = await request.json()
            self.uploads.append(("image_url", "", body["image_url"].encode()))
            content = body["image_url"].encode()
            field = "image_url"
        else:
            form = await request.post()
            (field, upload), *_ = form.items()
            assert isinstance(upload, web.FileField)
            content = upload.file.read()
            self.uploads.append((field, upload.filename, content))
        self.requests.append((request.path, {"field": field}, headers))
        if field == "bundle":
            path = self.library.root / "upload.tmp"
            self.library.root.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            manifest = self.library.install(path, replace=True)
            status = self._status(manifest.name, "ready", 1.0, "done")
            return web.json_response({"code": 1000, "data": status, "message": "avatar created"}, status=201)
        avatar_id = "img-" + hashlib.sha256(content).hexdigest()[:12]
        if avatar_id in self.builds:
            return web.json_response({"code": 1000, "data": self.builds[avatar_id], "message": "exists"})
        self.builds[avatar_id] = self._status(avatar_id, "building", 0.0, "queued")
        self.builds[avatar_id]["_polls"] = 0
        self.builds[avatar_id]["_fails"] = b"no face" in content
        return web.json_response({"code": 1000, "data": self._public(avatar_id), "message": "ok"}, status=202)

    async def _get_avatar(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, {}, dict(request.headers)))
        avatar_id = request.match_info["avatar_id"]
        if request.headers.get("X-API-KEY") != self.api_key:
            return web.json_response({"code": 4001, "data": None, "message": "bad key"}, status=401)
        build = self.builds.get(avatar_id)
        if build is None:
            return web.json_response({"code": 4004, "data": None, "message": "no such avatar"}, status=404)
        build["_polls"] += 1
        if build["status"] == "building" and build["_polls"] >= self.build_polls:
            if build["_fails"]:
                build.update(status="failed", stage="failed", error="no face found in the photo")
            else:
                manifest, files = bundle_from_style("leo")
                self.library.save(dataclasses.replace(manifest, name=avatar_id), files, replace=True)
                build.update(status="ready", progress=1.0, stage="done")
        elif build["status"] == "building":
            build.update(progress=0.5, stage="finding the face")
        return web.json_response({"code": 1000, "data": self._public(avatar_id), "message": "ok"})

    def _public(self, avatar_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.builds[avatar_id].items() if not k.startswith("_")}

    @staticmethod
    def _status(avatar_id: str, status: str, progress: float, stage: str) -> dict[str, Any]:
        return {"avatar_id": avatar_id, "status": status, "progress": progress, "stage": stage, "error": None}


@pytest.fixture
async def facecast_server(rooms: Rooms, tmp_path: Path) -> AsyncIterator[StandInFacecastServer]:
    server = StandInFacecastServer(rooms.server, AvatarLibrary(tmp_path / "server-avatars"))
    await server.http.start_server()
    yield server
    for avatar in server.avatars.values():
        await avatar.aclose()
    await server.http.close()


def remote_avatar(server: StandInFacecastServer, **kw: Any) -> facecast.AvatarSession:
    kw.setdefault("api_key", server.api_key)
    kw.setdefault("avatar", "leo")
    return facecast.AvatarSession(
        aspect_ratio="1:1", api_url=server.url, video_quality="low", conn_options=FAST, **kw
    )


LK = {
    "livekit_url": URL,
    "livekit_api_key": "devkey",
    "livekit_api_secret": "memory-room-secret-that-is-long-enough",
}


async def test_remote_mode_with_a_real_agent_session_and_a_stand_in_server(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer
) -> None:
    avatar = remote_avatar(facecast_server, max_duration_seconds=120)
    session, states = await start_session(avatar, rooms.agent, **LK)
    assert avatar.session_id == "s1" and avatar.avatar_identity == "facecast-avatar"

    path, body, headers = facecast_server.requests[0]
    assert path == "/v1/sessions/token" and headers["X-API-KEY"] == "fc-key"
    assert {k: v for k, v in body.items() if k != "livekit_config"} == {
        "mode": "LITE",
        "avatar_id": "leo",
        "aspect_ratio": "1:1",
        "video_settings": {"quality": "low"},
        "max_session_duration": 120,
        "transport": "livekit",
    }
    lk = body["livekit_config"]
    assert (lk["livekit_url"], lk["livekit_room"], lk["agent_identity"]) == (URL, ROOM, AGENT)
    assert (lk["avatar_identity"], lk["avatar_name"]) == ("facecast-avatar", "Facecast avatar")
    claims = api.TokenVerifier(rooms.server.api_key, rooms.server.api_secret).verify(
        lk["livekit_worker_token"]
    )
    assert claims.kind == "agent" and claims.attributes == {"lk.publish_on_behalf": AGENT}
    assert facecast_server.requests[1][0] == "/v1/sessions/start"
    assert facecast_server.requests[1][2]["Authorization"] == "Bearer tok-s1"

    await speak_then_interrupt(session, states)
    worker = rooms.user.remote_participants["facecast-avatar"]
    assert worker.attributes["lk.publish_on_behalf"] == AGENT
    assert {p.name for p in worker.track_publications.values()} == {"avatar_audio", "avatar_video"}

    with pytest.raises(RuntimeError):
        await avatar.start(session, room=rooms.agent, **LK)  # type: ignore[arg-type]

    await avatar.aclose()
    assert facecast_server.requests[-1][0] == "/v1/sessions/stop"
    assert facecast_server.requests[-1][1] == {"session_id": "s1", "reason": "stopped"}
    assert await asyncio.wait_for(facecast_server.avatars["s1"].ended, HANG_S) == "stopped"
    assert rooms.service.removed == ["facecast-avatar"]
    assert "facecast-avatar" not in rooms.server.participants(ROOM)
    await session.aclose()


async def test_remote_aclose_tolerates_a_failing_stop(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer
) -> None:
    avatar = remote_avatar(facecast_server)
    session, _ = await start_session(avatar, rooms.agent, **LK)
    facecast_server.fail["/v1/sessions/stop"] = [500, 500, 500]
    await avatar.aclose()  # does not raise
    assert [p for p, _, _ in facecast_server.requests].count("/v1/sessions/stop") == 3  # retried
    # The participant is still removed, which ends the worker.
    assert await asyncio.wait_for(facecast_server.avatars["s1"].ended, HANG_S) == "client_gone"
    await session.aclose()


async def test_remote_retries_transient_errors_but_not_refusals(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer
) -> None:
    facecast_server.fail["/v1/sessions/token"] = [503]
    avatar = remote_avatar(facecast_server)
    session, _ = await start_session(avatar, rooms.agent, **LK)
    assert avatar.session_id == "s1"
    await avatar.aclose()
    await session.aclose()

    refused = remote_avatar(facecast_server, api_key="wrong", avatar_participant_identity="other-avatar")
    with pytest.raises(APIStatusError) as err:
        await start_session(refused, rooms.agent, **LK)
    assert err.value.status_code == 401 and not err.value.retryable
    await refused.aclose()


async def test_remote_needs_livekit_credentials(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(facecast.FacecastException, match="livekit_url"):
        await remote_avatar(facecast_server).start(AgentSession(), room=rooms.agent)  # type: ignore[arg-type]
    monkeypatch.setenv("LIVEKIT_URL", LK["livekit_url"])
    monkeypatch.setenv("LIVEKIT_API_KEY", LK["livekit_api_key"])
    monkeypatch.setenv("LIVEKIT_API_SECRET", LK["livekit_api_secret"])
    avatar = remote_avatar(facecast_server)
    session, _ = await start_session(avatar, rooms.agent)
    assert avatar.session_id is not None
    await avatar.aclose()
    await session.aclose()


async def test_remote_mode_uploads_a_photo_and_waits_for_the_build(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer, tmp_path: Path
) -> None:
    photo = tmp_path / "me.png"
    photo.write_bytes(b"\x89PNG a photo of me")
    avatar = remote_avatar(facecast_server, avatar=str(photo))
    session, states = await start_session(avatar, rooms.agent, **LK)
    expected = "img-" + hashlib.sha256(photo.read_bytes()).hexdigest()[:12]
    assert avatar.avatar_id == expected
    assert facecast_server.uploads == [("image", "me.png", photo.read_bytes())]
    paths = [path for path, _, _ in facecast_server.requests]
    assert paths[0] == "/v1/avatars"
    assert paths[1:3] == [f"/v1/avatars/{expected}"] * 2  # polled until ready
    assert all(h["X-API-KEY"] == "fc-key" for path, _, h in facecast_server.requests if "avatars" in path)
    token_body = next(body for path, body, _ in facecast_server.requests if path == "/v1/sessions/token")
    assert token_body["avatar_id"] == expected

    handle = session.say("Hello there.", audio=speech(0.5))
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert states[-2:] == ["speaking", "listening"]
    await avatar.aclose()
    await session.aclose()

    # The same photo again: the server answers 200 with the ready avatar, and nothing is polled.
    again = remote_avatar(facecast_server, avatar=str(photo))
    session, _ = await start_session(again, rooms.agent, **LK)
    assert again.avatar_id == expected
    assert [p for p, _, _ in facecast_server.requests].count(f"/v1/avatars/{expected}") == 2
    await again.aclose()
    await session.aclose()


async def test_remote_mode_uploads_a_bundle_and_sends_a_url(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "erin", "mira")
    avatar = remote_avatar(facecast_server, avatar=str(bundle))
    session, _ = await start_session(avatar, rooms.agent, **LK)
    assert avatar.avatar_id == "erin"
    field, name, content = facecast_server.uploads[-1]
    assert (field, name, content) == ("bundle", "erin.facecast", bundle.read_bytes())
    assert read_bundle(facecast_server.library.path("erin")).manifest.name == "erin"
    await avatar.aclose()
    await session.aclose()

    url = "https://images.example.com/people/me.jpg"
    avatar = remote_avatar(facecast_server, avatar=url)
    session, _ = await start_session(avatar, rooms.agent, **LK)
    assert facecast_server.uploads[-1] == ("image_url", "", url.encode())
    assert avatar.avatar_id == "img-" + hashlib.sha256(url.encode()).hexdigest()[:12]
    await avatar.aclose()
    await session.aclose()


async def test_remote_mode_reports_a_failed_build_and_a_timeout(
    rooms: Rooms, job: JobContext, facecast_server: StandInFacecastServer, tmp_path: Path
) -> None:
    photo = tmp_path / "cup.jpg"
    photo.write_bytes(b"a cup of coffee, no face")
    avatar = remote_avatar(facecast_server, avatar=str(photo))
    with pytest.raises(facecast.FacecastException, match="no face found in the photo"):
        await avatar.start(AgentSession(), room=rooms.agent, **LK)  # type: ignore[arg-type]
    assert not any(p == "/v1/sessions/token" for p, _, _ in facecast_server.requests)
    await avatar.aclose()

    facecast_server.build_polls = 10_000  # never ready
    slow = tmp_path / "slow.webp"
    slow.write_bytes(b"a photo that takes forever")
    avatar = remote_avatar(facecast_server, avatar=str(slow), avatar_build_timeout=0.6)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(APITimeoutError, match="avatar_build_timeout"):
        await avatar.start(AgentSession(), room=rooms.agent, **LK)  # type: ignore[arg-type]
    assert loop.time() - started < 5.0
    await avatar.aclose()

    avatar = remote_avatar(facecast_server, avatar=str(slow), api_key="wrong")
    with pytest.raises(APIStatusError) as err:
        await avatar.start(AgentSession(), room=rooms.agent, **LK)  # type: ignore[arg-type]
    assert err.value.status_code == 401
    await avatar.aclose()


# -- construction ---------------------------------------------------------------------------------------


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FACECAST_API_URL", "FACECAST_API_KEY", "FACECAST_AVATAR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(facecast.FacecastException, match="api_key"):
        facecast.AvatarSession()
    local = facecast.AvatarSession(mode="local")  # no server, no key needed
    assert local._avatar == DEFAULT_AVATAR == "ava"

    monkeypatch.setenv("FACECAST_API_URL", "http://facecast.internal:9000/")
    monkeypatch.setenv("FACECAST_API_KEY", "env-key")
    monkeypatch.setenv("FACECAST_AVATAR", "mira")
    avatar = facecast.AvatarSession()
    assert avatar._avatar == "mira"
    assert avatar._remote is not None
    assert (avatar._remote._api._api_url, avatar._remote._api._api_key) == (
        "http://facecast.internal:9000",
        "env-key",
    )
    explicit = facecast.AvatarSession(avatar="noah", api_url="http://x:1", api_key="k")
    assert explicit._avatar == "noah" and explicit._remote is not None
    assert explicit._remote._api._api_url == "http://x:1"


def test_bad_options() -> None:
    with pytest.raises(facecast.FacecastException):
        facecast.AvatarSession(api_key="k", aspect_ratio="16:9")  # type: ignore[arg-type]
    with pytest.raises(facecast.FacecastException):
        facecast.AvatarSession(api_key="k", video_quality="4k")  # type: ignore[arg-type]
    with pytest.raises(facecast.FacecastException):
        facecast.AvatarSession(api_key="k", mode="cloud")  # type: ignore[arg-type]
    with pytest.raises(facecast.FacecastException, match="avatar_build_timeout"):
        facecast.AvatarSession(api_key="k", avatar_build_timeout=0)


def test_the_plugins_copied_wire_names_equal_the_protocol() -> None:
    """Remote mode copies these so that it runs without facecast installed; they must not drift."""
    copied = (
        plugin_api.API_PREFIX,
        plugin_api.CODE_OK,
        plugin_api.END_STOPPED,
        plugin_api.AVATAR_READY,
        plugin_api.AVATAR_FAILED,
        plugin_api.AVATAR_STATUSES,
        plugin_avatar.SAMPLE_RATE,
        plugin_remote.ATTRIBUTE_PUBLISH_ON_BEHALF,
        plugin_avatar.DEFAULT_AVATAR,
    )
    assert copied == (
        protocol.API_PREFIX,
        protocol.CODE_OK,
        protocol.END_STOPPED,
        protocol.AVATAR_READY,
        protocol.AVATAR_FAILED,
        protocol.AVATAR_STATUSES,
        protocol.LITE_AUDIO_RATE,
        ATTRIBUTE_PUBLISH_ON_BEHALF,
        DEFAULT_AVATAR,
    )


def test_worker_token_claims_match_the_worker_side() -> None:
    key, secret = "key", "a-secret-that-is-long-enough-for-hs256"
    verifier = api.TokenVerifier(key, secret)
    ours = verifier.verify(
        facecast.mint_worker_token(key, secret, room="r", identity="av", name="Ava", agent_identity="ag")
    )
    theirs = verifier.verify(
        mint_worker_token(key, secret, room="r", identity="av", name="Ava", agent_identity="ag")
    )
    assert (ours.identity, ours.name, ours.kind, ours.attributes, ours.video) == (
        theirs.identity,
        theirs.name,
        theirs.kind,
        theirs.attributes,
        theirs.video,
    )
    assert ours.attributes == {"lk.publish_on_behalf": "ag"}


# -- remote mode against the real Facecast server ---------------------------------------------------------


@pytest.fixture
async def real_facecast_server(rooms: Rooms, tmp_path: Any) -> AsyncIterator[tuple[str, str, Any]]:
    """The real Facecast app (routes, session manager, store) served by uvicorn on a loopback port in this
    event loop, so its workers join the room double; yields (url, api key, store)."""
    import uvicorn

    from facecast.server.app import create_app
    from facecast.server.config import ServerConfig
    from facecast.server.run import bind
    from facecast.server.store import open_store

    store = open_store(None, tmp_path)
    _, key = store.create_key("agent-backend")
    app = create_app(
        ServerConfig(port=0, data_dir=tmp_path, server_id="lk-test"),
        store=store,
        livekit_room_factory=rooms.server.new_room,
    )
    sock = bind("127.0.0.1", 0, fallback_to_free_port=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", key, store
    server.should_exit = True
    await asyncio.wait_for(serving, HANG_S)
    sock.close()
    store.close()


async def test_remote_mode_against_the_real_facecast_server(
    rooms: Rooms, job: JobContext, real_facecast_server: tuple[str, str, Any]
) -> None:
    url, key, store = real_facecast_server
    avatar = facecast.AvatarSession(
        avatar="leo", aspect_ratio="1:1", api_url=url, api_key=key, video_quality="low", conn_options=FAST
    )
    session, states = await start_session(avatar, rooms.agent, **LK)
    session_id = avatar.session_id
    assert session_id is not None
    record = store.get_session(session_id)
    assert record is not None and record.state == "started" and record.transport == "livekit"
    assert record.avatar_id == "leo" and record.owner == "lk-test"

    await speak_then_interrupt(session, states)
    worker = rooms.user.remote_participants["facecast-avatar"]
    assert {p.name for p in worker.track_publications.values()} == {"avatar_audio", "avatar_video"}

    await avatar.aclose()
    ended = store.get_session(session_id)
    assert ended is not None and ended.end_reason == "stopped"
    assert ended.stats["frames"] > 0
    await session.aclose()


async def test_avatar_calls_against_the_real_facecast_server(
    real_facecast_server: tuple[str, str, Any], tmp_path: Path
) -> None:
    """The plugin's avatar client and the server agree: upload, poll, dedupe, failures."""
    from photos import skimage_data_dir

    url, key, _ = real_facecast_server
    client = facecast.FacecastAPI(api_url=url, api_key=key, conn_options=FAST)
    try:
        bundle = make_bundle(tmp_path, "erin", "mira")
        status = await client.create_avatar(bundle=bundle)
        assert status["status"] == "ready"  # a bundle is installed at once
        assert await client.wait_avatar_ready(status, timeout=5) == status["avatar_id"]

        photo = skimage_data_dir() / "astronaut.png"
        status = await client.create_avatar(image=photo, timeout=60)
        assert status["status"] in ("building", "ready")
        seen: list[str] = []
        avatar_id = await client.wait_avatar_ready(
            status, timeout=120, on_progress=lambda st: seen.append(st["status"])
        )
        assert avatar_id == status["avatar_id"] and seen[-1] == "ready"
        got = await client.get_avatar(avatar_id)
        assert got["status"] == "ready" and got["progress"] == 1.0
        again = await client.create_avatar(image=photo)
        assert (again["avatar_id"], again["status"]) == (avatar_id, "ready")  # deduped by content

        status = await client.create_avatar(image=skimage_data_dir() / "coffee.png")
        with pytest.raises(facecast.FacecastException, match="face"):
            await client.wait_avatar_ready(status, timeout=120)

        with pytest.raises(APIStatusError) as err:
            await client.get_avatar("no-such-avatar")
        assert err.value.status_code == 404
        wrong = facecast.FacecastAPI(api_url=url, api_key="wrong", conn_options=FAST)
        with pytest.raises(APIStatusError) as err:
            await wrong.create_avatar(image_url="https://images.example.com/me.jpg")
        assert err.value.status_code == 401
        await wrong.aclose()
    finally:
        await client.aclose()


async def test_remote_mode_uploads_a_bundle_to_the_real_facecast_server(
    rooms: Rooms, job: JobContext, real_facecast_server: tuple[str, str, Any], tmp_path: Path
) -> None:
    url, key, store = real_facecast_server
    bundle = make_bundle(tmp_path, "erin", "mira")
    avatar = facecast.AvatarSession(
        avatar=str(bundle),
        aspect_ratio="1:1",
        api_url=url,
        api_key=key,
        video_quality="low",
        conn_options=FAST,
    )
    session, states = await start_session(avatar, rooms.agent, **LK)
    assert avatar.avatar_id is not None and avatar.session_id is not None
    record = store.get_session(avatar.session_id)
    assert record is not None and record.avatar_id == avatar.avatar_id

    handle = session.say("Hello there.", audio=speech(0.5))
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert states[-2:] == ["speaking", "listening"]
    await avatar.aclose()
    await session.aclose()


async def test_remote_mode_builds_a_photo_on_the_real_facecast_server(
    rooms: Rooms, job: JobContext, real_facecast_server: tuple[str, str, Any]
) -> None:
    from photos import skimage_data_dir

    url, key, store = real_facecast_server
    photo = skimage_data_dir() / "astronaut.png"
    avatar = facecast.AvatarSession(
        avatar=str(photo),
        aspect_ratio="1:1",
        api_url=url,
        api_key=key,
        video_quality="low",
        conn_options=FAST,
    )
    session, states = await start_session(avatar, rooms.agent, **LK)
    assert avatar.avatar_id is not None and avatar.session_id is not None
    record = store.get_session(avatar.session_id)
    assert record is not None and record.avatar_id == avatar.avatar_id

    handle = session.say("Hello there.", audio=speech(0.5))
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert states[-2:] == ["speaking", "listening"]
    worker = rooms.user.remote_participants["facecast-avatar"]
    assert {p.name for p in worker.track_publications.values()} == {"avatar_audio", "avatar_video"}
    await avatar.aclose()
    await session.aclose()

    # The same photo again is the same avatar, ready at once (the server dedupes by content).
    again = facecast.AvatarSession(
        avatar=str(photo),
        aspect_ratio="1:1",
        api_url=url,
        api_key=key,
        video_quality="low",
        conn_options=FAST,
    )
    session, _ = await start_session(again, rooms.agent, **LK)
    assert again.avatar_id == avatar.avatar_id
    await again.aclose()
    await session.aclose()


async def test_local_mode_builds_a_photo_into_the_library_once(
    rooms: Rooms, job: JobContext, library: AvatarLibrary
) -> None:
    from photos import skimage_data_dir

    photo = skimage_data_dir() / "astronaut.png"
    expected = photo_avatar_id(photo.read_bytes())
    avatar = facecast.AvatarSession(avatar=str(photo), mode="local", video_quality="low")
    session, states = await start_session(avatar, rooms.agent)
    assert avatar.avatar_id == expected and expected in library
    assert library.load(expected).manifest.kind == "portrait"
    handle = session.say("Hi.", audio=speech(0.4))
    await asyncio.wait_for(handle.wait_for_playout(), HANG_S)
    assert states[-2:] == ["speaking", "listening"]
    await avatar.aclose()
    await session.aclose()

    # Built once: the second session reuses the bundle (same file, not rewritten).
    stamp = library.path(expected).stat().st_mtime_ns
    again = facecast.AvatarSession(avatar=str(photo), mode="local", video_quality="low")
    session, _ = await start_session(again, rooms.agent)
    assert again.avatar_id == expected and library.path(expected).stat().st_mtime_ns == stamp
    await again.aclose()
    await session.aclose()

    coffee = facecast.AvatarSession(avatar=str(skimage_data_dir() / "coffee.png"), mode="local")
    with pytest.raises(facecast.FacecastException, match="face"):
        await coffee.start(AgentSession(), room=rooms.agent)  # type: ignore[arg-type]
