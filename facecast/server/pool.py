"""Live WebRTC sessions in worker processes, so a server's capacity is its cores rather than one GIL.

The API process keeps REST, signalling, the LITE WebSocket and the store. Each worker process owns its
sessions' engine, pacing, encoder and aiortc peer, on its own asyncio loop. The two sides talk over one
socketpair per worker: length-prefixed pickles of the small message types below (audio travels as raw
bytes or arrays, never base64).

In the API process a session sees two proxies: `RemoteAvatar` (the `SpeechTarget` LITE commands drive)
and `RemotePeer` (offer/answer, events to the data channel, stats). Segment events, the peer's
connected/closed changes, its data-channel messages, (every STATS_PUSH_S) the live stats and, for
sessions with the mouth track, each frame's `avatar.mouth_track` event (for the LITE WebSocket; the worker
sends it to the data channel itself) come back as `Notice`s.

A worker that dies (crash, OOM kill) ends only its own sessions: their `on_lost` callbacks fire, every call
waiting on it fails with AvatarClosed, and a fresh process takes its place. Workers exit when the API
process asks, or when their socket closes (the API process is gone): no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from facecast import protocol as p
from facecast import settings
from facecast.avatars import AvatarLibrary, load_renderer
from facecast.avatars.bundle import Bundle
from facecast.avatars.kinds import open_bundle, renderer_from_bundle
from facecast.avatars.look import Look
from facecast.avatars.procedural import ProceduralRenderer
from facecast.avatars.refs import BuiltinAvatar, LibraryAvatar, parse_avatar_id
from facecast.engine import Engine
from facecast.engine.mouth_track import mouth_track_record
from facecast.engine.types import FrameMeta, PhoneTiming, SegmentEvent, SegmentTag
from facecast.hosts.live import AvatarClosed, EngineThread, LiveCore, LiveStats
from facecast.hosts.native_threads import limit_native_threads
from facecast.server.memory import MemoryReleaser, fix_mmap_threshold, freeze_long_lived
from facecast.server.session_settings import DEFAULT_LIP_SYNC, LipSync, SessionSettings

log = logging.getLogger(__name__)

WEBRTC_AUDIO_RATE = 48000  # Opus runs at 48 kHz; rendering at that rate avoids a second resampler
WORKER_READY_TIMEOUT_S = 60.0  # a fresh process imports aiortc, PyAV, OpenCV and warms an engine
WORKER_EXIT_TIMEOUT_S = 10.0
# A session's live stats reach the API process this often, so the record of a session whose worker died
# keeps what it did up to then.
STATS_PUSH_S = 1.0
BUNDLES_CACHED = 16  # avatar bundles a process keeps read (a few MB each)
_HEADER = struct.Struct("!I")


# -- what builds a session's avatar (in whichever process runs it) --------------------------------------
@dataclass(frozen=True)
class AvatarSpec:
    """What a worker needs to build a session's engine: the session's look and lip-sync."""

    look: Look
    lip_sync: LipSync = DEFAULT_LIP_SYNC
    library_root: str | None = None  # the server's AvatarLibrary (avatars made through the API)
    video: bool = True  # False: a track-only session, whose engine draws nothing (no renderer)

    @staticmethod
    def from_settings(settings: SessionSettings, library: AvatarLibrary | None) -> AvatarSpec:
        return AvatarSpec(
            look=settings.look,
            lip_sync=settings.lip_sync,
            library_root=str(library.root) if library is not None else None,
            video=settings.video,
        )


@functools.lru_cache(maxsize=BUNDLES_CACHED)
def _read_bundle(path: str, mtime_ns: int, size: int) -> Bundle:
    """A library bundle read and validated once per process (and again if its file changes): a bundle is
    immutable in memory, and reading one costs ~40 ms of a session's start (a 512² portrait)."""
    return open_bundle(path)


def build_engine(spec: AvatarSpec) -> Engine:
    """The session's engine. Raises ValueError (AvatarNotFoundError, BundleError) for an avatar that
    cannot be rendered."""
    if not spec.video:  # track-only: the mouth track comes from the animation, nothing is drawn
        return Engine(None, spec.lip_sync.engine_config(spec.look, WEBRTC_AUDIO_RATE))
    library = AvatarLibrary(spec.library_root) if spec.library_root is not None else None
    look = spec.look
    # The id was checked at mint (a built-in, or one of the key's avatars): never a path.
    avatar = parse_avatar_id(look.avatar)
    if library is not None and isinstance(avatar, LibraryAvatar) and avatar.avatar_id in library:
        path = library.path(avatar.avatar_id)
        stat = path.stat()
        bundle = _read_bundle(str(path), stat.st_mtime_ns, stat.st_size)
        renderer = renderer_from_bundle(
            bundle, aspect=look.aspect, quality=look.quality, background=look.background
        )
    elif isinstance(avatar, BuiltinAvatar):
        renderer = _builtin_renderer(avatar.name, look.aspect, look.quality, look.background).fork()
    else:
        renderer = load_renderer(
            avatar, aspect=look.aspect, quality=look.quality, background=look.background, library=library
        )
    return Engine(renderer, spec.lip_sync.engine_config(look, WEBRTC_AUDIO_RATE))


@functools.lru_cache(maxsize=BUNDLES_CACHED)
def _builtin_renderer(name: str, aspect: str, quality: str, background: str) -> ProceduralRenderer:
    """A built-in character's renderer, built once per process and look; sessions draw with forks of it
    (~100 ms of a session's start saved, and its pre-drawn backdrops shared)."""
    renderer = load_renderer(BuiltinAvatar(name), aspect=aspect, quality=quality, background=background)
    assert isinstance(renderer, ProceduralRenderer)  # load_renderer's kind for a built-in
    return renderer


def new_live_avatar(
    engine: Engine,
    on_event: Callable[[SegmentEvent], None],
    on_frame: Callable[[FrameMeta], None] | None = None,
    *,
    engine_thread: EngineThread = "own",
) -> LiveCore:
    """The one place a live session's avatar is made, in-process or in a worker; `on_frame`: the
    session sends the mouth track."""
    return LiveCore(engine, on_event=on_event, on_frame=on_frame, engine_thread=engine_thread)


def mouth_track_event(session_id: str, meta: FrameMeta) -> dict[str, Any]:
    """One frame's `avatar.mouth_track` event (docs/mouth-track.md): `event_id` is the utterance's (its
    segment's tag) while its audio plays, None on idle frames."""
    tag = meta.segment_tag
    return {
        "type": p.AVATAR_MOUTH_TRACK,
        "event_id": tag if isinstance(tag, str) else None,
        "session_id": session_id,
        "track": mouth_track_record(meta),
    }


# -- wire messages ------------------------------------------------------------------------------------
AvatarMethod = Literal["open_segment", "push_audio", "push_phones", "end_segment", "clear", "set_listening"]
AVATAR_METHODS: frozenset[str] = frozenset(get_args(AvatarMethod))


@dataclass(frozen=True)
class Start:
    """Build and start a session's avatar; replies None."""

    session: str
    spec: AvatarSpec
    started_at: float  # time.monotonic() of the start request: CLOCK_MONOTONIC is one clock per machine
    mouth_track: bool = False  # send each frame's avatar.mouth_track event (data channel and Notice)


@dataclass(frozen=True)
class AvatarCall:
    """One SpeechTarget call on a session's avatar; replies with its result."""

    session: str
    method: AvatarMethod
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Offer:
    """Make the session's aiortc peer and answer the client's offer; replies (sdp, type)."""

    session: str
    sdp: str
    sdp_type: str
    codec: str
    ice_servers: tuple[dict[str, Any], ...]
    video: bool = True  # False: a track-only peer (AvatarPeer(video=False))


@dataclass(frozen=True)
class StatsRequest:
    """Replies (LiveStats, the peer's stats dict or None)."""

    session: str


@dataclass(frozen=True)
class Close:
    """Close a session's peer and avatar; replies None."""

    session: str


@dataclass(frozen=True)
class SendEvent:
    """A session event for the client's data channel; no reply."""

    session: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Shutdown:
    """Close every session and exit; no reply."""


Request = Start | AvatarCall | Offer | StatsRequest | Close


@dataclass(frozen=True)
class Call:
    id: int
    request: Request


@dataclass(frozen=True)
class Reply:
    id: int
    value: Any = None
    error: tuple[str, str] | None = None  # (exception type name, message)


NoticeKind = Literal["segment", "connected", "closed", "message", "stats", "track"]


@dataclass(frozen=True)
class Notice:
    """Worker → API: something happened to a session (payload: the SegmentEvent, the client's
    data-channel message, the avatar's LiveStats, sent every STATS_PUSH_S, or a frame's
    avatar.mouth_track event)."""

    session: str
    kind: NoticeKind
    payload: Any = None


@dataclass(frozen=True)
class Ready:
    pid: int
    warm_s: float


class Answer(NamedTuple):
    sdp: str
    type: str


class _Channel:
    """Length-prefixed pickles over a stream socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @staticmethod
    async def open(sock: socket.socket) -> _Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return _Channel(reader, writer)

    def send(self, message: Any) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.write(_HEADER.pack(len(payload)) + payload)

    async def receive(self) -> Any:
        """The next message; asyncio.IncompleteReadError when the other side is gone."""
        (size,) = _HEADER.unpack(await self.reader.readexactly(_HEADER.size))
        return pickle.loads(await self.reader.readexactly(size))

    def close(self) -> None:
        self.writer.close()


_ERRORS: dict[str, type[Exception]] = {"AvatarClosed": AvatarClosed, "ValueError": ValueError}


def _error_from(error: tuple[str, str]) -> Exception:
    kind, message = error
    return _ERRORS.get(kind, RuntimeError)(message)


# -- the worker process -------------------------------------------------------------------------------
def _warm_up() -> None:
    """Load what every session needs (aiortc, PyAV, the recogniser's models, a built-in avatar) once,
    so the first session in this process starts as fast as the next."""
    from facecast.hosts import webrtc

    webrtc.tune_encoders()
    # The default look: its renderer is then built (see _builtin_renderer) before any session asks.
    engine = build_engine(AvatarSpec(Look()))
    engine.push_audio(np.zeros(WEBRTC_AUDIO_RATE // 2, np.int16), WEBRTC_AUDIO_RATE)
    engine.end_segment()
    for _ in range(15):
        engine.next_frame()


# A spare engine is built this long after the start that took the last one: by then the new session's
# signalling and first frames are done, and building (~35 ms, mostly PocketSphinx loading its model)
# does not delay them.
SPARE_AFTER_S = 1.0


class SpareEngine:
    """One engine built ahead for the avatar spec that sessions last asked for, so that the next session's
    start takes it instead of building one. It is a plain object: nothing to close."""

    def __init__(self, build: Callable[[AvatarSpec], Engine] = build_engine) -> None:
        self._build = build
        self._ready: tuple[AvatarSpec, Engine] | None = None

    def take(self, spec: AvatarSpec) -> Engine | None:
        """The spare, if it was built for `spec` (then there is none until the next refill)."""
        if self._ready is None or self._ready[0] != spec:
            return None
        engine, self._ready = self._ready[1], None
        return engine

    async def refill(self, spec: AvatarSpec, *, after_s: float = 0.0) -> None:
        """Build a spare for `spec` (after `after_s`), replacing one for another spec; errors are logged."""
        await asyncio.sleep(after_s)
        if self._ready is not None and self._ready[0] == spec:
            return
        try:
            engine = await asyncio.to_thread(self._build, spec)
        except Exception:
            log.exception("building a spare engine failed")
            return
        self._ready = (spec, engine)


class _WorkerSession:
    def __init__(self, avatar: LiveCore) -> None:
        self.avatar = avatar
        self.peer: Any = None  # facecast.hosts.webrtc.AvatarPeer, once the client's offer came


class _Worker:
    """The worker process's side: runs requests as tasks (calls for one session keep their order: each
    task hands its engine call to the avatar's worker thread, or makes it on the loop, before it first
    yields)."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.sessions: dict[str, _WorkerSession] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.memory = MemoryReleaser()
        self.spare = SpareEngine()

    async def serve(self) -> None:
        pushing = asyncio.create_task(self._push_stats_forever())
        while True:
            try:
                message = await self.channel.receive()
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the API process is gone
            if isinstance(message, Shutdown):
                break
            if isinstance(message, SendEvent):
                session = self.sessions.get(message.session)
                if session is not None and session.peer is not None:
                    session.peer.send_event(message.event)
                continue
            task = asyncio.create_task(self._answer(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        pushing.cancel()
        for session_id in list(self.sessions):
            await self._close(session_id)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.memory.aclose()

    async def _push_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(STATS_PUSH_S)
            for session_id, session in list(self.sessions.items()):
                self.channel.send(Notice(session_id, "stats", session.avatar.stats))

    async def _answer(self, call: Call) -> None:
        try:
            value = await self._run(call.request)
        except Exception as exc:
            self.channel.send(Reply(call.id, error=(type(exc).__name__, str(exc))))
        else:
            self.channel.send(Reply(call.id, value))

    async def _run(self, request: Request) -> Any:
        if isinstance(request, Start):
            return await self._start(request)
        if isinstance(request, Close):
            return await self._close(request.session)
        session = self.sessions.get(request.session)
        if session is None:
            raise AvatarClosed(f"session {request.session} is not running in this worker")
        if isinstance(request, AvatarCall):
            if request.method not in AVATAR_METHODS:
                raise ValueError(f"unknown avatar method {request.method!r}")
            return await getattr(session.avatar, request.method)(*request.args, **request.kwargs)
        if isinstance(request, Offer):
            return await self._offer(request, session)
        if isinstance(request, StatsRequest):
            peer_stats = await session.peer.stats() if session.peer is not None else None
            return session.avatar.stats, peer_stats
        raise ValueError(f"unknown request {request!r}")

    async def _start(self, request: Start) -> None:
        session_id = request.session
        engine = self.spare.take(request.spec) or await asyncio.to_thread(build_engine, request.spec)
        # Built-ins only: a library avatar's file may change or go before the spare would be taken.
        if isinstance(parse_avatar_id(request.spec.look.avatar), BuiltinAvatar):
            refill = asyncio.create_task(self.spare.refill(request.spec, after_s=SPARE_AFTER_S))
            self.tasks.add(refill)
            refill.add_done_callback(self.tasks.discard)

        def on_event(event: SegmentEvent) -> None:
            self.channel.send(Notice(session_id, "segment", event))

        def on_frame(meta: FrameMeta) -> None:
            event = mouth_track_event(session_id, meta)
            peer = session.peer
            if peer is not None and peer.connection_state == "connected":
                peer.send_event(event)
            self.channel.send(Notice(session_id, "track", event))

        # On the worker's loop by default (FACECAST_LIVE_ENGINE_THREAD): two thread hand-offs per frame
        # and the loop's waits for the GIL saved; on a quiet 2-core machine 6 sessions ran clean on it
        # and not on own threads (docs/benchmarks.md § Engine on the loop).
        avatar = new_live_avatar(
            engine,
            on_event,
            on_frame if request.mouth_track else None,
            engine_thread=settings.LIVE_ENGINE_THREAD.get(),
        )
        session = self.sessions[session_id] = _WorkerSession(avatar)
        await avatar.start(started_at=request.started_at)

    async def _offer(self, request: Offer, session: _WorkerSession) -> Answer:
        from facecast.hosts.webrtc import AvatarPeer

        if session.peer is not None:
            raise ValueError("this session already has a WebRTC peer")
        sid = request.session

        def notify(kind: NoticeKind) -> Callable[[], None]:
            return lambda: self.channel.send(Notice(sid, kind))

        session.peer = AvatarPeer(
            session.avatar,
            codec=request.codec,  # type: ignore[arg-type]  # checked by AvatarPeer
            ice_servers=list(request.ice_servers),
            on_message=lambda message: self.channel.send(Notice(sid, "message", message)),
            on_connected=notify("connected"),
            on_closed=notify("closed"),
            video=request.video,
        )
        try:
            answer = await session.peer.answer(request.sdp, request.sdp_type)
        except BaseException:  # a bad offer: this peer goes, the session stays for a good one
            peer, session.peer = session.peer, None
            await peer.aclose()
            raise
        return Answer(answer.sdp, answer.type)

    async def _close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        if session.peer is not None:
            await session.peer.aclose()
        await session.avatar.aclose()
        self.memory.request()


async def _worker_loop(sock: socket.socket, warm: bool) -> None:
    started = time.monotonic()
    if warm:
        await asyncio.to_thread(_warm_up)
    freeze_long_lived()
    channel = await _Channel.open(sock)
    channel.send(Ready(os.getpid(), time.monotonic() - started))
    try:
        await _Worker(channel).serve()
    finally:
        channel.close()


def worker_main(sock: socket.socket, warm: bool, log_level: int) -> None:
    """A worker process's entry point (multiprocessing "spawn": nothing of the API process is inherited
    but this socket)."""
    # Ctrl-C reaches the whole process group; the API process decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fix_mmap_threshold()
    limit_native_threads()
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s[worker %(process)d]: %(message)s")
    asyncio.run(_worker_loop(sock, warm))


# -- the API process's side ---------------------------------------------------------------------------
@dataclass
class _Handlers:
    """Where a remote session's notices go in the API process."""

    on_event: Callable[[SegmentEvent], None]
    on_lost: Callable[[], None]
    on_connected: Callable[[], None] | None = None
    on_closed: Callable[[], None] | None = None
    on_message: Callable[[dict[str, Any]], None] | None = None
    on_stats: Callable[[LiveStats], None] | None = None
    on_track: Callable[[dict[str, Any]], None] | None = None  # avatar.mouth_track events


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


class WorkerProcess:
    """One worker process, seen from the API process."""

    def __init__(self, index: int, process: BaseProcess, channel: _Channel, ready: Ready) -> None:
        self.index = index
        self.process = process
        self.pid = ready.pid
        self.warm_s = ready.warm_s
        self._channel = channel
        self.sessions: dict[str, _Handlers] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.alive = True
        self.idle_rss = _rss_bytes(self.pid)  # after warming, before any session
        self.on_exit: Callable[[WorkerProcess], None] | None = None
        self._reader = asyncio.create_task(self._read_forever(), name=f"facecast-pool-reader-{index}")

    @property
    def load(self) -> int:
        return len(self.sessions)

    def rss(self) -> int | None:
        return _rss_bytes(self.pid) if self.alive else None

    async def call(self, request: Request) -> Any:
        if not self.alive:
            raise AvatarClosed(f"worker process {self.pid} has exited")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        self._channel.send(Call(call_id, request))
        try:
            await self._channel.writer.drain()
            return await future
        finally:
            self._calls.pop(call_id, None)

    def send(self, message: SendEvent) -> None:
        if self.alive:
            self._channel.send(message)

    async def _read_forever(self) -> None:
        try:
            while True:
                message = await self._channel.receive()
                if isinstance(message, Reply):
                    future = self._calls.get(message.id)
                    if future is not None and not future.done():
                        if message.error is None:
                            future.set_result(message.value)
                        else:
                            future.set_exception(_error_from(message.error))
                elif isinstance(message, Notice):
                    self._notice(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("reading from worker process %d failed", self.pid)
        self._lost()

    def _notice(self, notice: Notice) -> None:
        handlers = self.sessions.get(notice.session)
        if handlers is None:
            return
        callback: Callable[..., None] | None
        if notice.kind == "segment":
            callback, args = handlers.on_event, (notice.payload,)
        elif notice.kind == "message":
            callback, args = handlers.on_message, (notice.payload,)
        elif notice.kind == "stats":
            callback, args = handlers.on_stats, (notice.payload,)
        elif notice.kind == "track":
            callback, args = handlers.on_track, (notice.payload,)
        else:
            callback = handlers.on_connected if notice.kind == "connected" else handlers.on_closed
            args = ()
        if callback is not None:
            try:
                callback(*args)
            except Exception:
                log.exception("%s callback of session %s failed", notice.kind, notice.session)

    def _lost(self) -> None:
        """The process is gone (or its channel broke): fail its calls, end its sessions."""
        if not self.alive:
            return
        self.alive = False
        self._channel.close()
        for future in self._calls.values():
            if not future.done():
                future.set_exception(AvatarClosed(f"worker process {self.pid} exited"))
        lost, self.sessions = self.sessions, {}
        for session_id, handlers in lost.items():
            try:
                handlers.on_lost()
            except Exception:
                log.exception("on_lost callback of session %s failed", session_id)
        if self.on_exit is not None:
            self.on_exit(self)

    async def reap(self) -> None:
        """Wait for a process whose channel broke to exit (killing it if it hangs on): no zombie stays."""
        await asyncio.to_thread(self.process.join, WORKER_EXIT_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, WORKER_EXIT_TIMEOUT_S)

    async def stop(self) -> None:
        """Ask the process to exit; kill it if it does not within WORKER_EXIT_TIMEOUT_S."""
        if self.alive:
            with contextlib.suppress(Exception):
                self._channel.send(Shutdown())
                await self._channel.writer.drain()
        await asyncio.to_thread(self.process.join, WORKER_EXIT_TIMEOUT_S)
        if self.process.is_alive():
            log.warning("worker process %d did not exit; killing it", self.pid)
            await self.reap()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._lost()


class LivePool:
    """The worker processes live sessions run in: `size` of them, each replaced when it dies.

    `warm`: each process loads the engine's models and a built-in avatar before it takes sessions (else
    its first session pays for the imports and model loads)."""

    def __init__(self, size: int, *, warm: bool = True) -> None:
        if size < 1:
            raise ValueError(f"a live pool needs at least one worker process, got {size}")
        self.size = size
        self.warm = warm
        self.workers: list[WorkerProcess | None] = [None] * size
        self.replaced = 0  # workers started after one died
        self._context = multiprocessing.get_context("spawn")
        self._starting: dict[int, asyncio.Task[WorkerProcess]] = {}
        self._closed = False

    async def open(self) -> None:
        """Start every worker and wait until each is ready."""
        await asyncio.gather(*(self._start(i) for i in range(self.size)))

    async def _start(self, index: int) -> WorkerProcess:
        task = self._starting.get(index)
        if task is None:
            task = self._starting[index] = asyncio.create_task(self._spawn(index))
            task.add_done_callback(lambda _: self._starting.pop(index, None))
        return await asyncio.shield(task)

    async def _spawn(self, index: int) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        process = self._context.Process(
            target=worker_main,
            args=(theirs, self.warm, logging.getLogger().getEffectiveLevel()),
            name=f"facecast-live-{index}",
            daemon=True,
        )
        try:
            await asyncio.to_thread(process.start)
        finally:
            theirs.close()
        channel = await _Channel.open(ours)
        try:
            ready = await asyncio.wait_for(channel.receive(), WORKER_READY_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            channel.close()
            process.kill()
            await asyncio.to_thread(process.join, WORKER_EXIT_TIMEOUT_S)
            raise RuntimeError(
                f"live worker process {index} did not start (exit code {process.exitcode}); see the log "
                "above for its error"
            ) from exc
        worker = WorkerProcess(index, process, channel, ready)
        worker.on_exit = self._worker_exited
        self.workers[index] = worker
        log.info("live worker %d: pid %d, ready in %.2f s", index, worker.pid, ready.warm_s)
        return worker

    def _worker_exited(self, worker: WorkerProcess) -> None:
        if self._closed or self.workers[worker.index] is not worker:
            return
        log.error(
            "live worker process %d (pid %d) exited with code %s; starting a new one",
            worker.index,
            worker.pid,
            worker.process.exitcode,
        )
        self.workers[worker.index] = None
        self.replaced += 1
        for task in (asyncio.ensure_future(self._start(worker.index)), asyncio.ensure_future(worker.reap())):
            task.add_done_callback(_log_failure)

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None and w.alive]

    async def place(self, session_id: str, handlers: _Handlers) -> WorkerProcess:
        """Put a session on the least-loaded live worker (it counts there from now on)."""
        while not self.alive():
            if self._closed:
                raise AvatarClosed("the live pool is closed")
            # Every worker died at once: wait for a replacement.
            await self._start(next(iter(self._starting), 0))
        worker = min(self.alive(), key=lambda w: (w.load, w.index))
        worker.sessions[session_id] = handlers
        return worker

    def stop_replacing(self) -> None:
        """From now on a worker that exits is not replaced: the server is shutting down (a SIGTERM sent
        to its whole process group must not start new workers while the sessions end)."""
        self._closed = True

    async def close(self) -> None:
        """Stop every worker process (and any still starting)."""
        self._closed = True
        starting = list(self._starting.values())
        for task in starting:
            with contextlib.suppress(Exception):
                await task
        await asyncio.gather(*(w.stop() for w in self.workers if w is not None))

    def describe(self) -> list[dict[str, Any]]:
        """Per worker: pid, sessions, resident memory, and memory per session above its idle size."""
        out = []
        for worker in self.alive():
            rss = worker.rss()
            per_session = None
            if rss is not None and worker.idle_rss is not None and worker.load:
                per_session = max(0, rss - worker.idle_rss) // worker.load
            out.append(
                {
                    "worker": worker.index,
                    "pid": worker.pid,
                    "sessions": worker.load,
                    "rss_bytes": rss,
                    "idle_rss_bytes": worker.idle_rss,
                    "rss_per_session_bytes": per_session,
                }
            )
        return out


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("starting a live worker process failed", exc_info=task.exception())


class RemoteAvatar:
    """A session's avatar running in a worker process: the SpeechTarget LITE commands drive."""

    def __init__(self, worker: WorkerProcess, session_id: str) -> None:
        self.worker = worker
        self.session_id = session_id
        self.last_stats = LiveStats()
        self.last_peer_stats: dict[str, Any] | None = None
        self._closed = False
        handlers = worker.sessions.get(session_id)
        if handlers is not None:
            handlers.on_stats = self._stats_pushed

    def _stats_pushed(self, stats: LiveStats) -> None:
        self.last_stats = stats

    @staticmethod
    async def start(
        pool: LivePool,
        session_id: str,
        spec: AvatarSpec,
        *,
        started_at: float,
        on_event: Callable[[SegmentEvent], None],
        on_lost: Callable[[], None],
        on_track: Callable[[dict[str, Any]], None] | None = None,
    ) -> RemoteAvatar:
        """Start a session's avatar on the least-loaded worker. ValueError: the avatar cannot be
        rendered; AvatarClosed: the worker died meanwhile. `on_track`: the session sends the mouth
        track, and this receives each frame's avatar.mouth_track event."""
        handlers = _Handlers(on_event=on_event, on_lost=on_lost, on_track=on_track)
        worker = await pool.place(session_id, handlers)
        try:
            await worker.call(Start(session_id, spec, started_at, mouth_track=on_track is not None))
        except Exception:
            worker.sessions.pop(session_id, None)
            with contextlib.suppress(Exception):
                await worker.call(Close(session_id))
            raise
        return RemoteAvatar(worker, session_id)

    async def _call(self, method: AvatarMethod, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise AvatarClosed("the avatar is closed")
        return await self.worker.call(AvatarCall(self.session_id, method, args, kwargs))

    async def open_segment(self, tag: SegmentTag | None = None) -> int:
        return int(await self._call("open_segment", tag))

    async def push_audio(
        self, pcm: bytes | bytearray | memoryview | np.ndarray, sample_rate: int, *, text: str | None = None
    ) -> int:
        data = bytes(pcm) if isinstance(pcm, (bytearray, memoryview)) else pcm
        return int(await self._call("push_audio", data, sample_rate, text=text))

    async def push_phones(self, timings: Sequence[PhoneTiming]) -> int:
        return int(await self._call("push_phones", list(timings)))

    async def end_segment(self) -> None:
        await self._call("end_segment")

    async def clear(self) -> None:
        await self._call("clear")

    async def set_listening(self, listening: bool) -> None:
        await self._call("set_listening", listening)

    async def fetch_stats(self) -> tuple[LiveStats, dict[str, Any] | None]:
        """The avatar's and its peer's stats; the last ones seen once the worker is gone."""
        if not self._closed and self.worker.alive:
            with contextlib.suppress(AvatarClosed):
                self.last_stats, self.last_peer_stats = await self.worker.call(StatsRequest(self.session_id))
        return self.last_stats, self.last_peer_stats

    def peer(
        self,
        *,
        codec: str,
        ice_servers: Sequence[dict[str, Any]],
        on_message: Callable[[dict[str, Any]], None],
        on_connected: Callable[[], None],
        on_closed: Callable[[], None],
        video: bool = True,
    ) -> RemotePeer:
        handlers = self.worker.sessions.get(self.session_id)
        if handlers is not None:
            handlers.on_message, handlers.on_connected, handlers.on_closed = (
                on_message,
                on_connected,
                on_closed,
            )
        return RemotePeer(self, codec, tuple(ice_servers), video=video)

    async def aclose(self) -> None:
        """Close the session in its worker. Idempotent; a no-op once the worker is gone."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.worker.call(Close(self.session_id))
        except AvatarClosed:
            pass
        finally:
            self.worker.sessions.pop(self.session_id, None)


class RemotePeer:
    """The session's aiortc peer in its worker process."""

    def __init__(
        self, avatar: RemoteAvatar, codec: str, ice_servers: tuple[dict[str, Any], ...], *, video: bool = True
    ) -> None:
        self._avatar = avatar
        self.codec = codec
        self._ice_servers = ice_servers
        self._video = video

    async def answer(self, offer_sdp: str, offer_type: str = "offer") -> Answer:
        worker = self._avatar.worker
        sdp, sdp_type = await worker.call(
            Offer(self._avatar.session_id, offer_sdp, offer_type, self.codec, self._ice_servers, self._video)
        )
        return Answer(sdp, sdp_type)

    def send_event(self, event: dict[str, Any]) -> None:
        self._avatar.worker.send(SendEvent(self._avatar.session_id, event))

    async def stats(self) -> dict[str, Any]:
        _, peer_stats = await self._avatar.fetch_stats()
        return dict(peer_stats or {}, worker_pid=self._avatar.worker.pid)

    async def aclose(self) -> None:
        """The peer closes with the session's avatar (RemoteAvatar.aclose) in the worker."""
