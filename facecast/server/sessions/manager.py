"""The owner of every session this server runs.

`SessionManager` mints tokens, starts sessions (LITE over WebRTC here or in a worker process, into a
LiveKit room, FULL), enforces their limits through its reaper and ends them, exactly once, with a reason
written to the store. What one session does is in facecast.server.sessions.lite (LITE) and .livekit
(LiveKit rooms); minting is in .tokens, the limits in .reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from facecast import protocol as p
from facecast.avatars.refs import is_builtin
from facecast.engine.types import FrameMeta, SegmentEvent
from facecast.hosts.live import AvatarClosed, LiveCore
from facecast.hosts.webrtc import OFFER_HINT, AvatarPeer, check_offer_sdp
from facecast.server.auth import hash_secret
from facecast.server.avatars import AvatarService
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.server.memory import MemoryReleaser
from facecast.server.pool import AvatarSpec, LivePool, RemoteAvatar, RemotePeer, build_engine, new_live_avatar
from facecast.server.schemas import TokenRequest
from facecast.server.sessions.lite import LiveSession
from facecast.server.sessions.livekit import (
    RoomSession,
    create_owned_room,
    delete_owned_room,
    start_in_room,
    start_lite_in_room,
)
from facecast.server.sessions.reaper import SessionReaper
from facecast.server.sessions.tokens import mint_session
from facecast.server.store import UNREACHABLE_ERRORS, ApiKey, SessionRecord, Store
from facecast.tts import EspeakTTS

log = logging.getLogger(__name__)

Session = LiveSession | RoomSession

# What a track-only session (video false) takes of the capacity, a session with video taking 1: it
# draws and encodes nothing, which `facecast bench frames` puts at ~45 % of a speaking session's CPU
# (render, colour, VP8, video RTP); rounded up, so a server full of them is not overloaded
# (docs/benchmarks.md § Track-only sessions).
TRACK_ONLY_COST = 0.6


def capacity_cost(record: SessionRecord) -> float:
    """How much of FACECAST_MAX_LIVE_SESSIONS a session takes."""
    return 1.0 if record.settings.video else TRACK_ONLY_COST


class SessionManager:
    """Owns every session of this server process, and every background task they need."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        server_id: str,
        *,
        avatars: AvatarService,
        livekit_room_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.server_id = server_id
        self.avatars = avatars  # avatars made through the API, and the library sessions render them from
        # Where LiveKit rooms come from: None means a real `rtc.Room()`; tests pass an in-memory double.
        self.livekit_room_factory = livekit_room_factory
        self.live: dict[str, Session] = {}
        # Worker processes that run WebRTC sessions; None: they run in this process.
        self.pool: LivePool | None = LivePool(config.live_workers) if config.live_workers > 0 else None
        self._closing: dict[str, asyncio.Future[None]] = {}  # ends in progress, so a second waits
        self.pending: dict[str, float] = {}  # minted here, not started: session id -> token expiry (unix)
        # Starts in progress, claimed before their first await: parallel starts of one session conflict.
        self._starting: set[str] = set()
        # Starting and past the capacity check: they count as live (session id -> capacity_cost).
        self._admitted: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._memory = MemoryReleaser()  # what ended sessions leave in reference cycles, freed
        self._reaper = SessionReaper(self)
        self._tts: EspeakTTS | None = None
        self._tts_lock = asyncio.Lock()
        self._closed = False
        self.ended_total: dict[str, int] = {reason: 0 for reason in p.END_REASONS}
        self.started_total = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    async def open(self) -> int:
        """Recover from a crash: sessions this server left live are ended now, and avatar builds it left
        running are failed. Returns how many sessions were ended."""
        self._reaper.renew_lease()
        recovered = self.store.end_live_sessions(p.END_SERVER_SHUTDOWN, time.time(), owner=self.server_id)
        if recovered:
            log.warning(
                "marked %d session(s) left live by a previous run as ended (server_shutdown)", recovered
            )
        self.avatars.open()
        if self.pool is not None:
            await self.pool.open()
        self._reaper.start()
        return recovered

    async def close(self) -> None:
        """Server shutdown: every live and pending session ends with reason server_shutdown; queued avatar
        builds are cancelled and a running one is waited for (a bounded time). Idempotent: the server
        calls it before it closes its connections (so clients hear why), the lifespan once more."""
        if self._closed:
            return
        self._closed = True
        if self.pool is not None:
            self.pool.stop_replacing()
        await asyncio.to_thread(self.avatars.close)
        await self._reaper.stop()
        for session_id in list(self.live):
            await self.end(session_id, p.END_SERVER_SHUTDOWN)
        for session_id in list(self.pending):
            await self.end(session_id, p.END_SERVER_SHUTDOWN)
        # Ends already under way (a peer that left) finish before their tasks are cancelled below.
        for closing in list(self._closing.values()):
            await asyncio.shield(closing)
        if self.pool is not None:
            await self.pool.close()
        self._reaper.record_missed_ends()
        with contextlib.suppress(*UNREACHABLE_ERRORS):  # the database is gone: the lease just expires
            self.store.release_lease(self.server_id)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._memory.aclose()

    def load(self) -> float:
        """The capacity the live and admitted sessions take (capacity_cost each)."""
        live = sum(capacity_cost(s.record) for sid, s in self.live.items() if sid not in self._admitted)
        return live + sum(self._admitted.values())

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a short task the manager owns (cancelled at shutdown, errors logged)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task failed", exc_info=task.exception())

    # -- minting and starting ---------------------------------------------------------------------------
    def mint(self, key: ApiKey, body: TokenRequest) -> tuple[SessionRecord, str]:
        record, token = mint_session(self, key, body)
        self.pending[record.id] = record.token_expires_at
        return record, token

    def authenticate_token(self, token: str | None, *, allow_expired: bool = False) -> SessionRecord:
        """The session a bearer token names. Refused: unknown tokens, tokens of a revoked key, and expired
        ones unless `allow_expired` (a stop: ending a session is never harmful, and a client must be able
        to free its key's slot)."""
        if not token:
            raise ApiError(
                401,
                p.CODE_UNAUTHORIZED,
                "missing session token: send 'Authorization: Bearer <session_token>'",
            )
        record = self.store.session_by_token_hash(hash_secret(token))
        if record is None:
            raise ApiError(401, p.CODE_UNAUTHORIZED, "invalid session token")
        key = self.store.get_key(record.key_id)
        if key is None or key.revoked:
            raise ApiError(
                401,
                p.CODE_UNAUTHORIZED,
                "the API key that minted this session token was revoked; its tokens no longer work",
            )
        if not allow_expired and record.state != p.STATE_ENDED and time.time() >= record.token_expires_at:
            raise ApiError(
                401, p.CODE_UNAUTHORIZED, "session token expired; mint a new one with /v1/sessions/token"
            )
        return record

    async def start(self, record: SessionRecord) -> Session:
        if record.state == p.STATE_ENDED:
            raise ApiError(410, p.CODE_GONE, f"session {record.id} has ended ({record.end_reason})")
        # Checked and claimed with no await in between: of parallel starts of one session, one gets on.
        if record.state == p.STATE_STARTED or record.id in self.live or record.id in self._starting:
            raise ApiError(
                409,
                p.CODE_CONFLICT,
                f"session {record.id} is already started (or starting); use the answer of the first "
                "/v1/sessions/start, or mint a new token for another session",
            )
        if self._closed:
            raise ApiError(503, p.CODE_INTERNAL, "the server is shutting down")
        self._starting.add(record.id)
        try:
            return await self._start(record)
        finally:
            self._starting.discard(record.id)
            self._admitted.pop(record.id, None)

    async def _start(self, record: SessionRecord) -> Session:
        if not is_builtin(record.avatar_id):  # an id parsed when the token was minted
            await self._wait_for_avatar(record)
        capacity = self.config.live_capacity
        # Starts still building their engine count too, or parallel starts would all pass.
        if round(self.load() + capacity_cost(record), 6) > capacity:  # 5 x 0.6 is 3, not 3.0000000000000004
            # Refused rather than admitted: one session too many makes every session on the machine drop
            # frames. The token stays valid, so the client may retry or go to another server.
            raise ApiError(
                503,
                p.CODE_LIMIT,
                f"this server is at capacity ({capacity} live sessions, FACECAST_MAX_LIVE_SESSIONS; a "
                f"track-only session counts {TRACK_ONLY_COST:g}); retry shortly or start the session on "
                "another server",
            )
        self._admitted[record.id] = capacity_cost(record)
        if record.mode == "FULL":
            from facecast.server.full_mode import start_full_session

            return await start_full_session(self, record)
        if record.transport == "livekit":
            lk = record.settings.livekit
            assert lk is not None
            if lk.owned:
                await create_owned_room(self, record)
            if lk.audio_source == "websocket":
                return await start_lite_in_room(self, record)
            return await start_in_room(self, record)
        if self.pool is not None:
            return await self._start_in_pool(record, self.pool)
        started_mono = time.monotonic()
        spec = AvatarSpec.from_settings(record.settings, self.avatars.library)
        try:
            engine = await asyncio.to_thread(build_engine, spec)
        except ValueError as exc:  # a bundle that cannot be rendered (AvatarNotFoundError, BundleError)
            raise await self._unloadable(record, exc) from None
        session: LiveSession | None = None

        def on_event(event: SegmentEvent) -> None:
            if session is not None:
                session.on_segment_event(event)

        def on_frame(meta: FrameMeta) -> None:
            if session is not None:
                session.on_frame(meta)

        avatar = new_live_avatar(engine, on_event, on_frame if record.settings.mouth_track else None)
        now = time.time()  # started_at; the session's deadline is taken just after, so never early
        session = LiveSession(record, avatar, manager=self, started_mono=started_mono)
        try:
            self.mark_started(record, session, now)
        except ApiError:
            await avatar.aclose()
            raise
        try:
            await avatar.start(started_at=started_mono)
        except Exception:
            await self.end(record.id, p.END_ERROR)
            raise
        return session

    async def _unloadable(self, record: SessionRecord, exc: ValueError) -> ApiError:
        await self.end(record.id, p.END_ERROR)
        return ApiError(500, p.CODE_INTERNAL, f"could not load avatar {record.avatar_id!r}: {exc}")

    async def _start_in_pool(self, record: SessionRecord, pool: LivePool) -> LiveSession:
        """A WebRTC session whose engine, encoder and peer run in the least-loaded worker process. Its
        worker dying ends it with reason `error`."""
        started_mono = time.monotonic()
        spec = AvatarSpec.from_settings(record.settings, self.avatars.library)
        session: LiveSession | None = None

        def on_event(event: SegmentEvent) -> None:
            if session is not None:
                session.on_segment_event(event)

        def on_lost() -> None:
            log.error("session %s ended: the worker process running it exited", record.id)
            self.spawn(self.end(record.id, p.END_ERROR))

        def on_track(event: dict[str, Any]) -> None:
            if session is not None:
                session.send_track(event)

        try:
            avatar = await RemoteAvatar.start(
                pool,
                record.id,
                spec,
                started_at=started_mono,
                on_event=on_event,
                on_lost=on_lost,
                on_track=on_track if record.settings.mouth_track else None,
            )
        except ValueError as exc:  # a bundle that cannot be rendered (AvatarNotFoundError, BundleError)
            raise await self._unloadable(record, exc) from None
        except AvatarClosed as exc:
            await self.end(record.id, p.END_ERROR)
            raise ApiError(
                503, p.CODE_INTERNAL, f"the worker process for this session failed ({exc}); start a new one"
            ) from None
        now = time.time()
        session = LiveSession(record, avatar, manager=self, started_mono=started_mono)
        try:
            self.mark_started(record, session, now)
        except ApiError:
            await avatar.aclose()
            raise
        if not avatar.worker.alive:  # died while the start was being recorded: its on_lost came too early
            await self.end(record.id, p.END_ERROR)
            raise ApiError(
                503, p.CODE_INTERNAL, "the worker process for this session failed; start a new one"
            )
        return session

    async def _wait_for_avatar(self, record: SessionRecord) -> None:
        """Hold a start while the session's avatar builds (up to the configured wait). A failed or
        deleted avatar ends the session: it could never start."""
        try:
            await self.avatars.wait_ready(record.key_id, record.avatar_id, self.config.avatars.build_wait_s)
        except ApiError as exc:
            if exc.status in (400, 404):
                await self.end(record.id, p.END_ERROR)
            raise
        if self._closed:
            raise ApiError(503, p.CODE_INTERNAL, "the server is shutting down")
        current = self.store.get_session(record.id)
        if current is None or current.state == p.STATE_ENDED:  # stopped or expired while it waited
            reason = current.end_reason if current is not None else "gone"
            raise ApiError(410, p.CODE_GONE, f"session {record.id} has ended ({reason})")

    def mark_started(self, record: SessionRecord, session: Session, now: float) -> None:
        """Record the start (this server owns the session from now) and count it live."""
        # The token stays valid for the session's life, so stop and keep-alive work until it ends.
        expires = now + record.settings.max_session_duration + self.config.limits.token_ttl
        if not self.store.start_session(
            record.id, started_at=now, token_expires_at=expires, owner=self.server_id
        ):  # ended meanwhile (stopped, its token expired), or started by another server: never twice
            current = self.store.get_session(record.id)
            if current is not None and current.state == p.STATE_STARTED:
                raise ApiError(
                    409,
                    p.CODE_CONFLICT,
                    f"session {record.id} was started on another server ({current.owner})",
                )
            raise ApiError(410, p.CODE_GONE, f"session {record.id} has ended")
        record.state, record.started_at, record.token_expires_at = p.STATE_STARTED, now, expires
        self.pending.pop(record.id, None)
        self.live[record.id] = session
        self.started_total += 1

    async def connect_peer(self, session: LiveSession, sdp: str, sdp_type: str) -> tuple[str, str]:
        if session.peer is not None:
            raise ApiError(
                409, p.CODE_CONFLICT, "this session already has a WebRTC peer; start a new session"
            )
        try:
            check_offer_sdp(sdp)
        except ValueError as exc:
            raise ApiError(400, p.CODE_BAD_REQUEST, str(exc)) from None
        encoding = session.record.settings.encoding

        async def reply(event: dict[str, Any]) -> None:
            peer.send_event(event)

        def on_message(message: dict[str, Any]) -> None:
            self.spawn(session.handle(message, reply=reply))

        peer: AvatarPeer | RemotePeer
        if isinstance(session.avatar, RemoteAvatar):
            peer = session.avatar.peer(
                codec=encoding,
                ice_servers=self.config.ice_servers,
                on_message=on_message,
                on_connected=session.on_peer_connected,
                on_closed=session.on_peer_closed,
                video=session.record.settings.video,
            )
        else:
            assert isinstance(session.avatar, LiveCore)
            peer = AvatarPeer(
                session.avatar,
                codec=encoding,
                ice_servers=list(self.config.ice_servers),
                on_message=on_message,
                on_connected=session.on_peer_connected,
                on_closed=session.on_peer_closed,
                on_audio_track=session.on_audio_track,
                video=session.record.settings.video,
            )
        session.peer = peer
        try:
            answer = await peer.answer(sdp, sdp_type)
        except Exception as exc:
            # A bad offer is the client's mistake: the peer goes, the session waits for a good offer.
            session.peer = None
            await peer.aclose()
            raise ApiError(
                400, p.CODE_BAD_REQUEST, f"could not answer the WebRTC offer: {exc}; {OFFER_HINT}"
            ) from None
        return answer.sdp, answer.type

    # -- ending -----------------------------------------------------------------------------------------
    async def end(self, session_id: str, reason: str) -> bool:
        """End a session once; later calls (and other servers' calls) return False."""
        closing = self._closing.get(session_id)
        if closing is not None:  # already being closed here (e.g. the transport reporting its own end)
            await asyncio.shield(closing)
            return False
        session = self.live.pop(session_id, None)
        self.pending.pop(session_id, None)
        stats: dict[str, Any] | None = None
        if session is not None:
            done = self._closing[session_id] = asyncio.get_running_loop().create_future()
            try:
                final = await session.close(reason)
                stats = final.as_dict() if final is not None else {}  # {}: they could not be read
            except Exception:
                log.exception("closing session %s failed", session_id)
            finally:
                del self._closing[session_id]
                done.set_result(None)
        ended_at = time.time()
        try:
            ended = self.store.end_session(session_id, reason, ended_at, stats=stats)
        except UNREACHABLE_ERRORS as exc:  # the database is down: the session is closed, its record waits
            log.warning("could not record the end of session %s (%s); retrying: %s", session_id, reason, exc)
            self._reaper.unrecorded[session_id] = (reason, ended_at, stats)
            ended = True
        if session is not None:
            await delete_owned_room(self.config, session.record)
            self._memory.request()
        if ended:
            self.ended_total[reason] = self.ended_total.get(reason, 0) + 1
            log.info("session %s ended: %s", session_id, reason)
        return ended

    # -- speech -----------------------------------------------------------------------------------------
    async def synthesize(self, text: str, *, voice: str | None = None) -> Any:
        """Server-side text to speech in `voice` (None: espeak-ng's default), off the event loop; one
        synthesis at a time (espeak-ng is global)."""
        async with self._tts_lock:
            if self._tts is None:
                self._tts = await asyncio.to_thread(EspeakTTS)
            return await asyncio.to_thread(self._tts.synthesize_timed, text, voice)

    # -- views ------------------------------------------------------------------------------------------
    async def describe(self, record: SessionRecord) -> dict[str, Any]:
        live = self.live.get(record.id)
        stats = (await live.stats()).as_dict() if live is not None else record.stats
        return {
            "session_id": record.id,
            "state": record.state,
            "mode": record.mode,
            "avatar_id": record.avatar_id,
            "is_sandbox": record.is_sandbox,
            "transport": record.transport,
            "settings": record.settings.public_json(),
            "created_at": record.created_at,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "end_reason": record.end_reason,
            "duration_s": record.duration_s,
            "stats": stats,
        }
