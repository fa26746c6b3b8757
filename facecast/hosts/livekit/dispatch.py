"""`facecast worker`: a fleet of avatar workers behind LiveKit's own job dispatch.

Each worker process registers with the LiveKit server under one agent name (explicit dispatch only) and
reports its load; LiveKit hands each dispatch to one worker, which joins the room as the avatar of the
agent named in the dispatch metadata. Start as many workers, on as many machines, as you need.

Dispatch an avatar into a room (from an agent, a backend, or `lk dispatch create`):

    await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
        agent_name="facecast-avatar", room="my-room",
        metadata=json.dumps({"agent_identity": "agent-AJ_xyz", "avatar": "ava", "aspect": "4:3"})))

Metadata keys, all optional: avatar, aspect, quality, fps, max_duration_s, agent_identity, avatar_identity,
avatar_name. The worker joins with `lk.publish_on_behalf` = agent_identity, so frontends show it as the
agent's avatar.

`avatar` is a built-in name or the id of an avatar in the worker's library ($FACECAST_AVATARS_DIR, default
~/.local/share/facecast/avatars; add avatars with `facecast avatar create`). A dispatch cannot name a file:
only the worker's own `--avatar` default may be a `.facecast` path. A dispatch naming an avatar the worker
does not have is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import multiprocessing.connection as mp_connection
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobProcess, JobRequest

from facecast.avatars import DEFAULT_AVATAR, AvatarLibrary, find_avatar
from facecast.avatars.refs import AvatarRefError, parse_avatar_id
from facecast.bounded_json import MessageRefused, parse_message
from facecast.hosts.livekit.names import (
    ATTRIBUTE_JOB_PROCESS,
    ATTRIBUTE_PUBLISH_ON_BEHALF,
    ATTRIBUTE_WORKER,
    DEFAULT_AGENT_NAME,
    DEFAULT_AVATAR_IDENTITY,
    DEFAULT_AVATAR_NAME,
    SESSION_STATE_TOPIC,
    STATE_DISCONNECTED,
    STATE_ERROR,
)
from facecast.hosts.livekit.worker import RoomAvatar, run_room_avatar
from facecast.hosts.native_threads import limit_native_threads
from facecast.protocol import END_ERROR, END_SERVER_SHUTDOWN

logger = logging.getLogger("facecast.livekit")

ORPHAN_LEAVE_TIMEOUT_S = 5.0  # per step (session.state + leave) when the worker process has died


@dataclass(frozen=True)
class AvatarJob:
    """What one dispatched avatar should look like and whom it serves. The worker's defaults, overridden
    by the dispatch metadata."""

    avatar: str = DEFAULT_AVATAR
    aspect: str = "1:1"
    quality: str = "high"
    fps: int = 30
    max_duration_s: float | None = 3600.0
    agent_identity: str | None = None
    avatar_identity: str = DEFAULT_AVATAR_IDENTITY
    avatar_name: str = DEFAULT_AVATAR_NAME
    mouth_track: bool = False  # also send the mouth track on MOUTH_TRACK_TOPIC (docs/mouth-track.md)


_TYPES: dict[str, tuple[type, ...]] = {
    "avatar": (str,),
    "aspect": (str,),
    "quality": (str,),
    "fps": (int,),
    "max_duration_s": (int, float),
    "agent_identity": (str,),
    "avatar_identity": (str,),
    "avatar_name": (str,),
    "mouth_track": (bool,),
}


def parse_dispatch_metadata(metadata: str, defaults: AvatarJob | None = None) -> AvatarJob:
    """The job for a dispatch: `defaults` with the metadata's JSON object applied. Unknown keys and wrong
    types raise ValueError (a typo should fail the dispatch, not render the wrong avatar)."""
    base = defaults or AvatarJob()
    if not metadata.strip():
        return base
    try:
        data = parse_message(metadata)
    except MessageRefused as exc:
        raise ValueError(f"dispatch metadata refused: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("dispatch metadata must be a JSON object")
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TYPES:
            raise ValueError(f"unknown dispatch metadata key {key!r}; known: {', '.join(_TYPES)}")
        if value is None and key in ("max_duration_s", "agent_identity"):
            changes[key] = None
        elif isinstance(value, bool) != (_TYPES[key] == (bool,)) or not isinstance(value, _TYPES[key]):
            raise ValueError(f"dispatch metadata {key!r} has the wrong type: {value!r}")
        else:
            changes[key] = value
    if "avatar" in changes:
        try:
            parse_avatar_id(changes["avatar"])
        except AvatarRefError as exc:
            # A dispatcher names avatars; files are the worker operator's to choose (--avatar).
            raise ValueError(
                "dispatch metadata 'avatar' must be a built-in name or an avatar id in the worker's library, "
                f"not a path, photo or URL: {exc}"
            ) from None
    return dataclasses.replace(base, **changes)


async def handle_request(defaults: AvatarJob, req: JobRequest) -> None:
    """Accept a dispatch as the avatar of the agent it names; reject metadata we cannot serve."""
    try:
        job = parse_dispatch_metadata(req.job.metadata, defaults)
        find_avatar(job.avatar, AvatarLibrary())
    except ValueError as exc:
        logger.warning("rejecting dispatch to room %s: %s", req.room.name, exc)
        await req.reject()
        return
    attributes = {ATTRIBUTE_WORKER: worker_label()}
    if job.agent_identity:
        attributes[ATTRIBUTE_PUBLISH_ON_BEHALF] = job.agent_identity
    await req.accept(identity=job.avatar_identity, name=job.avatar_name, attributes=attributes)


def worker_label() -> str:
    """Which worker process serves a session: `host:pid` of the worker's main process, published as the
    avatar participant's `facecast.worker` attribute (logs and dashboards can tell the fleet apart)."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def avatar_entrypoint(defaults: AvatarJob, ctx: JobContext) -> None:
    """One dispatched avatar: join the room, serve the agent until it leaves, then end the job."""
    job = parse_dispatch_metadata(ctx.job.metadata, defaults)
    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
    avatar = RoomAvatar(
        "",
        "",
        room=ctx.room,
        avatar=job.avatar,
        aspect=job.aspect,
        quality=job.quality,
        fps=job.fps,
        max_duration_s=job.max_duration_s,
        agent_identity=job.agent_identity,
        mouth_track=job.mouth_track,
    )

    async def on_shutdown() -> None:
        await avatar.aclose(END_SERVER_SHUTDOWN)

    ctx.add_shutdown_callback(on_shutdown)
    with contextlib.suppress(Exception):  # informative only (which process to look at)
        await ctx.room.local_participant.set_attributes({ATTRIBUTE_JOB_PROCESS: str(os.getpid())})
    stop_watching = _leave_if_orphaned(avatar, ctx.room)
    try:
        reason = await run_room_avatar(avatar)
    finally:
        stop_watching()
    logger.info("avatar job in room %s ended: %s (%s)", ctx.room.name, reason, avatar.stats())
    ctx.shutdown(reason)


def _leave_if_orphaned(avatar: RoomAvatar, room: rtc.Room) -> Callable[[], None]:
    """Watch the worker's main process from a job process; returns a function that stops watching.

    livekit-agents runs each job in a child of the worker. If the worker dies (SIGKILL, OOM), its jobs
    are orphans: livekit-agents cancels the job, but nothing leaves the room (the job's room is the
    job's to disconnect), so the avatar would stay in the room, frozen, and the process would linger.
    Here the orphan tells the room (session.state error, then disconnected/error), leaves it, and exits.
    A job run in a thread (no parent process) is not watched."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return lambda: None
    loop = asyncio.get_running_loop()
    sentinel = parent.sentinel  # readable once the parent has exited
    if mp_connection.wait([sentinel], timeout=0):
        raise RuntimeError(f"the worker process {parent.pid} is gone; not starting the avatar")

    def lost() -> None:
        loop.remove_reader(sentinel)
        logger.error(
            "the worker process %s died; the avatar in room %s leaves and this job process exits",
            parent.pid,
            room.name,
        )
        avatar.fail(f"the worker process serving this avatar died (pid {parent.pid}); the avatar left")
        # livekit-agents tears the job down as well, cancelling tasks: keep a reference, finish anyway
        _orphan_exits.add(loop.create_task(_leave_and_exit(avatar, room), name="facecast-orphan-exit"))

    loop.add_reader(sentinel, lost)
    return lambda: loop.remove_reader(sentinel)


_orphan_exits: set[asyncio.Task[None]] = set()


async def _leave_and_exit(avatar: RoomAvatar, room: rtc.Room) -> None:
    for step in (avatar.wait_closed, room.disconnect):
        try:
            await asyncio.wait_for(step(), ORPHAN_LEAVE_TIMEOUT_S)
        except (asyncio.CancelledError, Exception) as exc:
            logger.debug("while leaving an orphaned job: %r", exc)
    logging.shutdown()
    os._exit(1)  # no supervisor to report to; the interpreter's own exit would wait on the room's FFI


def _report_dead_jobs(server: AgentServer, credentials: tuple[str | None, str | None, str | None]) -> None:
    """In the worker's main process: when a job process dies under a running avatar (SIGKILL, the OOM
    killer, a crash in native code), the avatar could not say goodbye, and LiveKit would notice the
    silent participant only after its timeout. Tell the room on the avatar's behalf, through the server
    API (session.state packets from the server, with no sender), and remove the participant."""
    pool = getattr(server, "_proc_pool", None)  # livekit-agents 1.8: created by run(), before this event
    if pool is None:
        logger.warning("cannot watch job processes (livekit-agents changed); crashed jobs are not reported")
        return
    tasks: set[asyncio.Task[None]] = set()

    def closed(proc: Any) -> None:
        info = getattr(proc, "running_job", None)
        exitcode = getattr(proc, "exitcode", None)
        if info is None or not exitcode:
            return  # an idle process, or a job that ended normally
        task = asyncio.get_running_loop().create_task(_report_dead_job(info, exitcode, credentials))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    pool.on("process_closed", closed)


async def _report_dead_job(
    info: Any, exitcode: int, credentials: tuple[str | None, str | None, str | None]
) -> None:
    room, identity = info.job.room.name, info.accept_arguments.identity
    error = f"the avatar's job process died (exit code {exitcode}); the avatar left"
    logger.error("avatar job in room %s: the job process died (exit code %s)", room, exitcode)
    url, key, secret = credentials
    try:
        async with api.LiveKitAPI(url or info.url, key, secret) as lk:
            try:
                await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity=identity))
            except api.TwirpError as exc:
                if exc.code == api.TwirpErrorCode.NOT_FOUND:
                    return  # the avatar had left (or the room ended) before its process died
                raise
            for state in (
                {"state": STATE_ERROR, "reason": error},
                {"state": STATE_DISCONNECTED, "reason": END_ERROR},
            ):
                await lk.room.send_data(
                    api.SendDataRequest(
                        room=room,
                        data=json.dumps(state).encode(),
                        kind=api.DataPacket.Kind.RELIABLE,
                        topic=SESSION_STATE_TOPIC,
                    )
                )
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))
    except Exception as exc:  # the room may be gone already
        logger.warning("could not tell room %s that its avatar's job died: %s", room, exc)


def _prewarm(_proc: JobProcess) -> None:
    # Idle job processes import the engine and renderer ahead of the dispatch.
    import facecast.hosts.livekit.generator  # noqa: F401

    limit_native_threads()


def _session_load(max_sessions: int, server: AgentServer) -> float:
    return min(1.0, len(server.active_jobs) / max_sessions)


def build_agent_server(
    agent_name: str = DEFAULT_AGENT_NAME,
    *,
    defaults: AvatarJob | None = None,
    url: str | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    max_sessions: int | None = None,
    http_port: int | None = None,
) -> AgentServer:
    """An AgentServer that serves explicit dispatches to `agent_name` with Facecast avatars. Credentials
    default to LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET.

    The load the worker reports to LiveKit (which hands each job to an available worker, at random
    weighted by 1 - load) is by default livekit-agents' own: the machine's CPU use, full at 70 %. With
    `max_sessions` it is the share of that many sessions in use: the worker declares itself full, and
    refuses further jobs, at `max_sessions` running avatars whatever the CPU does. Use it when workers
    share a machine (they would all report the same CPU) or when you know a session's cost.

    `http_port` is the port of the worker's health-check HTTP server (livekit-agents' default: 8081, or
    any free port in development mode); 0 picks a free port. Workers on one machine need distinct ports."""
    if not agent_name:
        raise ValueError("agent_name must not be empty: avatars are dispatched explicitly, by name")
    defaults = defaults or AvatarJob()
    options: dict[str, Any] = {}
    if max_sessions is not None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        options = {
            "load_fnc": functools.partial(_session_load, max_sessions),
            # full once the running sessions reach max_sessions (livekit-agents wants a threshold < 1)
            "load_threshold": (max_sessions - 0.5) / max_sessions,
            "num_idle_processes": min(max_sessions, 4),
        }
    if http_port is not None:
        options["port"] = http_port
    server = AgentServer(ws_url=url, api_key=api_key, api_secret=api_secret, setup_fnc=_prewarm, **options)
    server.on("worker_started", functools.partial(_report_dead_jobs, server, (url, api_key, api_secret)))
    # partials of module-level functions pickle, so jobs can run in separate processes
    server.rtc_session(
        functools.partial(avatar_entrypoint, defaults),
        agent_name=agent_name,
        on_request=functools.partial(handle_request, defaults),
    )
    return server


def run_agent_server(
    agent_name: str = DEFAULT_AGENT_NAME,
    *,
    defaults: AvatarJob | None = None,
    url: str | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    max_sessions: int | None = None,
    http_port: int | None = None,
    devmode: bool = False,
) -> None:
    """Run a worker until SIGINT/SIGTERM, then drain: running avatars finish before the process exits."""
    server = build_agent_server(
        agent_name,
        defaults=defaults,
        url=url,
        api_key=api_key,
        api_secret=api_secret,
        max_sessions=max_sessions,
        http_port=http_port,
    )
    asyncio.run(_serve(server, devmode=devmode))


async def _serve(server: AgentServer, *, devmode: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(server.run(devmode=devmode))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    try:
        if run.done():
            run.result()  # the server stopped on its own: surface why
        else:
            logger.info("draining: waiting for running avatars to end (signal again to force)")
            draining = asyncio.current_task()
            assert draining is not None
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, draining.cancel)
            if not devmode:
                await server.drain()
    finally:
        stopping.cancel()
        await server.aclose()
