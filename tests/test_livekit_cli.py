"""`facecast worker` / `facecast say` plumbing: the parsers, dispatch metadata and job handling, and the
external-audio sender, over the in-memory room double (tests/livekit_room.py) with the real worker."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from livekit_room import URL, MemoryRoom, MemoryServer

from facecast.avatars import AvatarLibrary
from facecast.avatars.procedural import bundle_from_style
from facecast.cli.livekit import add_livekit_parsers, run_say_command, run_worker_command
from facecast.hosts.livekit.dispatch import (
    AvatarJob,
    _session_load,
    avatar_entrypoint,
    build_agent_server,
    handle_request,
    parse_dispatch_metadata,
    worker_label,
)
from facecast.hosts.livekit.say import load_pcm, say_file
from facecast.hosts.livekit.tokens import mint_sender_token, mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar

HANG_S = 20.0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="facecast")
    add_livekit_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_parsers() -> None:
    args = parse(["worker", "--agent-name", "faces", "--aspect", "4:3", "--max-duration", "60"])
    assert (args.command, args.agent_name, args.aspect, args.avatar, args.max_duration) == (
        "worker",
        "faces",
        "4:3",
        "ava",
        60.0,
    )
    args = parse(["say", "--room", "r1", "hello.wav"])
    assert (args.command, args.room, args.audio, args.to, args.identity) == (
        "say",
        "r1",
        "hello.wav",
        "facecast-avatar",
        "facecast-say",
    )


def test_missing_credentials_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="LIVEKIT_URL"):
        run_say_command(parse(["say", "--room", "r1", "hello.wav"]))
    monkeypatch.setenv("LIVEKIT_URL", "ws://localhost:7880")
    with pytest.raises(ValueError, match="LIVEKIT_API_KEY"):
        run_worker_command(parse(["worker"]))
    with pytest.raises(ValueError, match="unknown avatar"):
        run_worker_command(parse(["worker", "--avatar", "nobody"]))


def test_worker_port_in_use_says_to_pass_http_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def in_use(*_a: Any, **_kw: Any) -> None:
        raise OSError(errno.EADDRINUSE, "address already in use")

    monkeypatch.setattr("facecast.hosts.livekit.dispatch.run_agent_server", in_use)
    argv = ["worker", "--url", "ws://x", "--api-key", "k", "--api-secret", "s", "--max-sessions", "2"]
    assert run_worker_command(parse(argv)) == 1
    assert "--http-port" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--max-sessions"):
        run_worker_command(parse([*argv[:-1], "0"]))


def test_dispatch_metadata() -> None:
    defaults = AvatarJob(avatar="leo", quality="low")
    assert parse_dispatch_metadata("", defaults) == defaults
    job = parse_dispatch_metadata(json.dumps({"agent_identity": "ag", "aspect": "4:3", "fps": 25}), defaults)
    assert (job.avatar, job.quality, job.aspect, job.fps, job.agent_identity) == (
        "leo",
        "low",
        "4:3",
        25,
        "ag",
    )
    assert job.mouth_track is False
    assert parse_dispatch_metadata(json.dumps({"mouth_track": True}), defaults).mouth_track is True
    for bad in (
        "[1]",
        "{",
        json.dumps({"colour": "red"}),
        json.dumps({"fps": "30"}),
        json.dumps({"fps": True}),
        json.dumps({"mouth_track": 1}),
        json.dumps({"mouth_track": "yes"}),
    ):
        with pytest.raises(ValueError):
            parse_dispatch_metadata(bad, defaults)


def test_agent_server_is_registered_for_explicit_dispatch() -> None:
    server = build_agent_server("faces", url="ws://x", api_key="k", api_secret="s")
    assert server._agent_name == "faces"
    with pytest.raises(ValueError):
        build_agent_server("")


def test_max_sessions_makes_the_load_the_share_of_sessions_in_use() -> None:
    server = build_agent_server(
        "faces", url="ws://x", api_key="k", api_secret="s", max_sessions=2, http_port=0
    )
    assert server._port == 0
    threshold = server._load_threshold
    assert isinstance(threshold, float) and threshold < 1.0  # livekit-agents wants a threshold below 1

    def load(jobs: int) -> float:
        return _session_load(2, type("Server", (), {"active_jobs": [None] * jobs})())  # type: ignore[arg-type]

    assert load(0) == 0.0 and load(1) < threshold <= load(2)  # full at two sessions, not at one
    with pytest.raises(ValueError, match="max_sessions"):
        build_agent_server("faces", max_sessions=0)


class _Request:
    """The parts of livekit.agents.JobRequest that handle_request uses."""

    def __init__(self, metadata: str) -> None:
        self.job = type("Job", (), {"metadata": metadata})()
        self.room = type("Room", (), {"name": "room-1"})()
        self.accepted: dict[str, Any] | None = None
        self.rejected = False

    async def accept(self, **kw: Any) -> None:
        self.accepted = kw

    async def reject(self) -> None:
        self.rejected = True


async def test_dispatch_request_accepts_as_the_agents_avatar() -> None:
    req = _Request(json.dumps({"agent_identity": "agent-7", "avatar_identity": "face-7"}))
    await handle_request(AvatarJob(), req)  # type: ignore[arg-type]
    assert req.accepted == {
        "identity": "face-7",
        "name": "Facecast avatar",
        "attributes": {"lk.publish_on_behalf": "agent-7", "facecast.worker": worker_label()},
    }
    assert worker_label().endswith(f":{os.getpid()}")
    bad = _Request("not json")
    await handle_request(AvatarJob(), bad)  # type: ignore[arg-type]
    assert bad.rejected and bad.accepted is None


def _library_with_bob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AvatarLibrary:
    """The worker's library ($FACECAST_AVATARS_DIR) in a temporary folder, holding `bob`."""
    monkeypatch.setenv("FACECAST_AVATARS_DIR", str(tmp_path / "avatars"))
    manifest, files = bundle_from_style("noah")
    library = AvatarLibrary()
    library.save(dataclasses.replace(manifest, name="bob"), files)
    return library


async def test_dispatch_accepts_library_avatars_and_rejects_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = _library_with_bob(tmp_path, monkeypatch)
    for avatar in ("leo", "bob"):
        req = _Request(json.dumps({"avatar": avatar}))
        await handle_request(AvatarJob(), req)  # type: ignore[arg-type]
        assert req.accepted is not None and not req.rejected
    for avatar in ("nobody", str(library.path("bob")), "../bob.facecast", "https://example.com/me.jpg"):
        req = _Request(json.dumps({"avatar": avatar}))
        await handle_request(AvatarJob(), req)  # type: ignore[arg-type]
        assert req.rejected and req.accepted is None, avatar
    with pytest.raises(ValueError, match="not a path"):
        parse_dispatch_metadata(json.dumps({"avatar": str(library.path("bob"))}))

    # The worker's own default may be a library id or a bundle path (its operator's choice).
    monkeypatch.delenv("LIVEKIT_URL", raising=False)
    for avatar in ("bob", str(library.path("bob"))):
        with pytest.raises(ValueError, match="LIVEKIT_URL"):  # past the avatar check
            run_worker_command(parse(["worker", "--avatar", avatar]))
    with pytest.raises(ValueError, match="is a photo"):
        run_worker_command(parse(["worker", "--avatar", "me.jpg"]))


async def test_room_avatar_renders_a_library_avatar_and_fails_fast_on_a_damaged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = _library_with_bob(tmp_path, monkeypatch)
    server = MemoryServer()
    agent = await server.connect("agent-7", "room-1", kind="agent")
    token = mint_worker_token(
        server.api_key, server.api_secret, room="room-1", identity="face", name="F", agent_identity="agent-7"
    )
    avatar = RoomAvatar(URL, token, avatar="bob", quality="low", room=server.new_room())  # type: ignore[arg-type]
    await avatar.start()
    async with asyncio.timeout(HANG_S):
        while len(agent.remote_participants["face"].track_publications) < 1:
            await asyncio.sleep(0.01)
    await avatar.aclose()

    library.path("bob").write_bytes(b"damaged")
    avatar = RoomAvatar(URL, token, avatar="bob", quality="low", room=server.new_room())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid zip"):
        await avatar.start()
    assert await asyncio.wait_for(avatar.ended, HANG_S) == "error"
    await agent.disconnect()


class _JobContext:
    """The parts of livekit.agents.JobContext that avatar_entrypoint uses, around a room double."""

    def __init__(self, room: MemoryRoom, metadata: str) -> None:
        self.room = room
        self.job = type("Job", (), {"metadata": metadata})()
        self.shutdown_reason: str | None = None
        self.callbacks: list[Any] = []

    async def connect(self, **_: Any) -> None:
        assert self.room.isconnected()

    def add_shutdown_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def shutdown(self, reason: str = "") -> None:
        self.shutdown_reason = reason


async def test_dispatched_job_serves_until_the_agent_leaves() -> None:
    server = MemoryServer()
    agent = await server.connect("agent-7", "room-1", kind="agent")
    # LiveKit joins the job with the identity and attributes handle_request accepted with.
    worker_room = await server.connect(
        "face-7", "room-1", kind="agent", attributes={"lk.publish_on_behalf": "agent-7"}, auto_subscribe=False
    )
    ctx = _JobContext(worker_room, json.dumps({"agent_identity": "agent-7", "quality": "low"}))
    job = asyncio.create_task(avatar_entrypoint(AvatarJob(), ctx))  # type: ignore[arg-type]
    async with asyncio.timeout(HANG_S):
        while len(agent.remote_participants["face-7"].track_publications) < 1:
            await asyncio.sleep(0.01)
    await agent.disconnect()
    await asyncio.wait_for(job, HANG_S)
    assert ctx.shutdown_reason == "client_gone"
    assert len(ctx.callbacks) == 1


@pytest.fixture
async def avatar_for_say() -> AsyncIterator[tuple[MemoryServer, RoomAvatar]]:
    server = MemoryServer()
    token = mint_worker_token(
        server.api_key, server.api_secret, room="r1", identity="facecast-avatar", name="A", agent_identity="x"
    )
    # The worker follows the sender below (a worker told nobody follows the first agent to join).
    avatar = RoomAvatar(URL, token, quality="low", agent_identity="facecast-say", room=server.new_room())  # type: ignore[arg-type]
    await avatar.start()
    viewer = await server.connect("viewer", "r1")  # the avatar publishes video once someone listens
    yield server, avatar
    await avatar.aclose()
    await viewer.disconnect()


async def test_say_file_streams_a_file_to_the_avatar(
    avatar_for_say: tuple[MemoryServer, RoomAvatar], tmp_path: Path
) -> None:
    server, _ = avatar_for_say
    path = tmp_path / "speech.wav"
    t = np.arange(16000 * 6 // 10) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert len(load_pcm(path)) == pytest.approx(24000 * 0.6, abs=50)  # 24 kHz for the wire

    token = mint_sender_token(server.api_key, server.api_secret, room="r1", identity="facecast-say")
    result = await asyncio.wait_for(
        say_file(URL, token, path, "facecast-avatar", room=server.new_room()),  # type: ignore[arg-type]
        HANG_S,
    )
    assert result["interrupted"] is False
    assert result["playback_position"] == pytest.approx(0.6, abs=1 / 30)
    assert result["duration_s"] == pytest.approx(0.6, abs=0.01)
    stream = server.stream_log[-1]
    assert (stream.topic, stream.attributes) == (
        "lk.audio_stream",
        {"sample_rate": "24000", "num_channels": "1"},
    )
    assert "facecast-say" not in server.participants("r1")  # it left after playing


async def test_cancelling_say_interrupts_the_avatar(
    avatar_for_say: tuple[MemoryServer, RoomAvatar], tmp_path: Path
) -> None:
    server, avatar = avatar_for_say
    path = tmp_path / "long.wav"
    sf.write(path, np.full(16000 * 3, 0.2, np.float32), 16000)
    token = mint_sender_token(server.api_key, server.api_secret, room="r1", identity="facecast-say")
    room = server.new_room()
    saying = asyncio.create_task(say_file(URL, token, path, "facecast-avatar", room=room))  # type: ignore[arg-type]
    async with asyncio.timeout(HANG_S):
        while avatar.stats()["speech_frames"] < 5:
            await asyncio.sleep(0.01)
    saying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saying
    assert [r.method for r in server.rpc_log if r.caller == "facecast-say"] == ["lk.clear_buffer"]
    assert avatar.stats()["interrupts"] == 1


async def test_say_file_is_heard_when_the_sender_becomes_active_late(tmp_path: Path) -> None:
    """On a real server `facecast say` streams before LiveKit reports it active; the stock receiver
    listens only from then on and dropped the stream (the worker must hold it)."""
    server = MemoryServer(activation_delay_s=0.3)
    token = mint_worker_token(
        server.api_key, server.api_secret, room="r1", identity="facecast-avatar", name="A", agent_identity="x"
    )
    avatar = RoomAvatar(URL, token, quality="low", agent_identity="facecast-say", room=server.new_room())  # type: ignore[arg-type]
    await avatar.start()
    viewer = await server.connect("viewer", "r1")
    try:
        path = tmp_path / "speech.wav"
        t = np.arange(16000 * 4 // 10) / 16000
        sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
        sender = mint_sender_token(server.api_key, server.api_secret, room="r1", identity="facecast-say")
        result = await asyncio.wait_for(
            say_file(URL, sender, path, "facecast-avatar", room=server.new_room()),  # type: ignore[arg-type]
            HANG_S,
        )
        assert result["interrupted"] is False
        assert result["playback_position"] == pytest.approx(0.4, abs=1 / 30)
    finally:
        await avatar.aclose()
        await viewer.disconnect()
