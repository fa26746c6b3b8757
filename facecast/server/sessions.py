"""Live sessions and their owner.

`SessionManager` is the one owner of every session this server runs: it mints tokens, starts sessions,
enforces their limits (maximum duration, idle timeout, token expiry, a peer that never connects) and ends
them, exactly once, with a reason written to the store. `LiveSession` maps the LITE protocol onto one
engine: client events in (from the WebSocket or the WebRTC data channel), session events out (to both)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

import numpy as np

from facecast import protocol as p
from facecast.avatars.style import style_names
from facecast.bounded_json import MessageRefused, parse_message
from facecast.engine.types import PhoneTiming, SegmentEnded, SegmentEvent, SegmentStarted, SegmentTag
from facecast.hosts.live import AvatarClosed, LiveCore
from facecast.hosts.webrtc import OFFER_HINT, AvatarPeer, check_offer_sdp
from facecast.server.auth import hash_secret, new_session_token
from facecast.server.avatars import AvatarService
from facecast.server.config import ServerConfig
from facecast.server.errors import ApiError
from facecast.server.memory import MemoryReleaser
from facecast.server.pool import (
    AvatarSpec,
    LivePool,
    RemoteAvatar,
    RemotePeer,
    build_engine,
    new_live_avatar,
)
from facecast.server.schemas import TokenRequest
from facecast.server.store import UNREACHABLE_ERRORS, ApiKey, SessionRecord, Store, new_session_id
from facecast.tts import EspeakTTS, TTSError

log = logging.getLogger(__name__)

MAX_SPEAK_TEXT_CHARS = 2000
REAP_INTERVAL_S = 0.25
# Participants of a room this server makes for a session (LiveAvatar's shape): the avatar, the holder of
# `livekit_agent_token` (the agent's pipeline) and the holder of `livekit_client_token` (the user).
OWNED_ROOM_AVATAR = "facecast-avatar"
OWNED_ROOM_AGENT = "facecast-agent"
OWNED_ROOM_USER = "user"
OWNED_ROOM_MAX_PARTICIPANTS = 8
STORE_SYNC_EVERY = 4  # reaper rounds between checks for sessions another server ended


def livekit_extra_missing(exc: ImportError) -> ApiError:
    return ApiError(
        501,
        p.CODE_NOT_IMPLEMENTED,
        f"transport livekit needs the LiveKit extra: pip install 'facecast[livekit]' ({exc})",
    )


EventSink = Callable[[dict[str, Any]], Awaitable[None]]


class SpeechTarget(Protocol):
    """What LITE commands drive: a `LiveCore` (WebRTC sessions in this process), a `RemoteAvatar`
    (WebRTC sessions in a worker process, facecast.server.pool), or the LITE socket's audio feeding
    an avatar in a LiveKit room (facecast.server.lite_room.SocketAudio). Segment events come back through
    the callback the target was made with."""

    async def open_segment(self, tag: SegmentTag | None = None) -> int: ...

    async def push_audio(
        self, pcm: bytes | bytearray | memoryview | np.ndarray, sample_rate: int, *, text: str | None = None
    ) -> int: ...

    async def push_phones(self, timings: Sequence[PhoneTiming]) -> int: ...

    async def end_segment(self) -> None: ...

    async def clear(self) -> None: ...

    async def set_listening(self, listening: bool) -> None: ...

    async def aclose(self) -> None: ...


class LiveSession:
    """One started session: an engine paced in real time, its transport, and the clients listening."""

    # FULL sessions listen to the client's microphone (facecast.server.full_mode); LITE ones do not.
    on_audio_track: Callable[[Any], None] | None = None

    def __init__(
        self,
        record: SessionRecord,
        avatar: SpeechTarget,
        *,
        manager: SessionManager,
        started_mono: float,
    ) -> None:
        self.record = record
        self.id = record.id
        self.avatar = avatar
        self.peer: AvatarPeer | RemotePeer | None = None
        self._manager = manager
        self._limits = manager.config.limits
        self.started_mono = started_mono  # the start request: time to first frame counts from here
        # The duration counts from the moment the record says the session started (set by the manager).
        self.deadline = time.monotonic() + int(record.settings["max_session_duration"])
        self.last_activity = started_mono
        self.connected_at: float | None = None
        self.ws_state = p.WS_STATE_CONNECTING
        self._sinks: set[EventSink] = set()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        # event_id of the utterance still receiving agent.speak audio: the id its first chunk carried. An
        # utterance runs until agent.speak_end (or an interrupt), whatever ids its later chunks carry:
        # LiveAvatar's LiveKit plugin gives every chunk a fresh one.
        self._open: str | None = None
        # When the speech accepted so far will have played out (monotonic), if it plays without gaps.
        self._speech_ends_at = 0.0
        self._interrupts = 0  # agent.interrupt count: speech synthesised across one is dropped
        self._playing: set[int] = set()  # segments started and not yet ended
        self._listening = False
        self.agent_state = p.AGENT_IDLE
        self.ending = False

    @property
    def room(self) -> str | None:
        """The LiveKit room the media goes to, when it does not go to a WebRTC peer of this server."""
        return None

    # -- clients ----------------------------------------------------------------------------------------
    def add_sink(self, sink: EventSink, close: Callable[[], Awaitable[None]] | None = None) -> None:
        """Send this client every session event; `close` disconnects it when the session ends."""
        self._sinks.add(sink)
        if close is not None:
            self._closers.append(close)

    def remove_sink(self, sink: EventSink) -> None:
        self._sinks.discard(sink)

    async def emit(self, event_type: str, event_id: str | None = None, **fields: Any) -> None:
        event = {"type": event_type, "event_id": event_id or uuid.uuid4().hex, "session_id": self.id}
        event.update(fields)
        if self.peer is not None:
            self.peer.send_event(event)
        for sink in list(self._sinks):
            try:
                await sink(event)
            except Exception:  # a client that went away is dropped, the session goes on
                self._sinks.discard(sink)

    async def set_ws_state(self, state: str) -> None:
        self.ws_state = state
        await self.emit(p.SESSION_STATE_UPDATED, state=state)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    # -- transport --------------------------------------------------------------------------------------
    def on_peer_connected(self) -> None:
        if self.connected_at is None:
            self.connected_at = time.monotonic()
            self._manager.spawn(self.set_ws_state(p.WS_STATE_CONNECTED))

    def on_peer_closed(self) -> None:
        self._manager.spawn(self._manager.end(self.id, p.END_CLIENT_GONE))

    async def _open_utterance(self, event_id: str) -> int:
        """Open a segment tagged `event_id` before any of its audio is pushed: once audio is in, its first
        frame may be released (and its start reported) before the push returns."""
        return await self.avatar.open_segment(event_id)

    def on_segment_event(self, event: SegmentEvent) -> None:
        event_id = event.tag
        if not isinstance(event_id, str):
            return  # not an utterance of this session's clients
        if isinstance(event, SegmentStarted):
            self._playing.add(event.segment_id)
            self._manager.spawn(self.emit(p.AGENT_SPEAK_STARTED, event_id))
        elif isinstance(event, SegmentEnded):
            self._playing.discard(event.segment_id)
            kind = p.AGENT_SPEAK_INTERRUPTED if event.interrupted else p.AGENT_SPEAK_ENDED
            self._manager.spawn(self.emit(kind, event_id, played_s=round(event.played_s, 3)))
        self._update_agent_state()

    def _update_agent_state(self) -> None:
        """Announce `agent.state_updated` when the avatar starts or stops talking or listening."""
        resting = p.AGENT_LISTENING if self._listening else p.AGENT_IDLE
        state = p.AGENT_TALKING if self._playing else resting
        if state != self.agent_state:
            previous, self.agent_state = self.agent_state, state
            self._manager.spawn(self.emit(p.AGENT_STATE_UPDATED, previous_state=previous, new_state=state))

    # -- LITE commands ----------------------------------------------------------------------------------
    async def handle(self, message: Any, reply: EventSink) -> None:
        """Apply one client message; problems go back to its sender (`reply`) as an `error` event and
        never end the session."""
        event_id = message.get("event_id") if isinstance(message, dict) else None
        try:
            await self._dispatch(message)
        except ApiError as exc:
            await self.reply_error(
                reply, exc.code, exc.message, event_id if isinstance(event_id, str) else None
            )
        except Exception as exc:  # a defect: reported, logged, and the session and its socket go on
            log.exception("session %s: a LITE message failed", self.id)
            await self.reply_error(
                reply,
                p.CODE_INTERNAL,
                f"the server failed on this message ({type(exc).__name__}); the session goes on",
                event_id if isinstance(event_id, str) else None,
            )

    async def reply_error(
        self, reply: EventSink, code: int, message: str, event_id: str | None = None
    ) -> None:
        event: dict[str, Any] = {
            "type": p.ERROR,
            "event_id": event_id or uuid.uuid4().hex,
            "session_id": self.id,
        }
        event.update(code=code, message=message)
        with contextlib.suppress(Exception):  # the sender may be gone already
            await reply(event)

    async def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ApiError(400, p.CODE_BAD_REQUEST, "a message must be a JSON object with a string 'type'")
        kind = message["type"]
        if kind not in p.CLIENT_EVENTS:
            known = ", ".join(sorted(p.CLIENT_EVENTS))
            raise ApiError(400, p.CODE_BAD_REQUEST, f"unknown message type {kind!r}; expected one of {known}")
        if kind == p.SESSION_KEEP_ALIVE:
            self.touch()
            return
        if self.ws_state != p.WS_STATE_CONNECTED:
            raise ApiError(
                409,
                p.CODE_CONFLICT,
                f"{kind} arrived while the session is {self.ws_state}; wait for "
                f"session.state_updated {{state: connected}} (the video peer must connect first)",
            )
        self.touch()
        if kind == p.AGENT_SPEAK:
            await self._speak(message)
        elif kind == p.AGENT_SPEAK_END:
            await self._speak_end(message)
        elif kind == p.AGENT_SPEAK_TEXT:
            await self._speak_text(message)
        elif kind == p.AGENT_INTERRUPT:
            self._interrupts += 1
            self._open = None
            self._speech_ends_at = 0.0
            await self.avatar.clear()
        elif kind in (p.AGENT_START_LISTENING, p.AGENT_STOP_LISTENING):
            self._listening = kind == p.AGENT_START_LISTENING
            await self.avatar.set_listening(self._listening)
            self._update_agent_state()

    @staticmethod
    def _event_id(message: dict[str, Any], *, required: bool) -> str | None:
        event_id = message.get("event_id")
        if event_id is None and not required:
            return None
        if not isinstance(event_id, str) or not event_id or len(event_id) > 128:
            raise ApiError(
                400, p.CODE_BAD_REQUEST, f"{message['type']} needs an 'event_id' string (1-128 chars)"
            )
        return event_id

    def _admit(self, seconds: float) -> None:
        if seconds > self._limits.max_audio_chunk_s:
            raise ApiError(
                413,
                p.CODE_BAD_REQUEST,
                f"one message carries {seconds:.1f} s of audio; send at most "
                f"{self._limits.max_audio_chunk_s:g} s per message",
            )
        now = time.monotonic()
        ends_at = max(now, self._speech_ends_at) + seconds
        if ends_at - now > self._limits.max_queued_speech_s:
            raise ApiError(
                429,
                p.CODE_LIMIT,
                f"this would queue more than {self._limits.max_queued_speech_s:g} s of speech ahead of "
                "playback; send audio closer to real time",
            )
        self._speech_ends_at = ends_at

    async def _speak(self, message: dict[str, Any]) -> None:
        event_id = self._event_id(message, required=True)
        assert event_id is not None
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise ApiError(400, p.CODE_BAD_REQUEST, "agent.speak needs 'audio': base64 PCM16 mono 24 kHz")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, p.CODE_BAD_REQUEST, "agent.speak 'audio' is not valid base64") from None
        if len(pcm) % 2:
            raise ApiError(
                400, p.CODE_BAD_REQUEST, "agent.speak audio has an odd byte count; PCM16 needs 2 per sample"
            )
        self._admit(len(pcm) / 2 / p.LITE_AUDIO_RATE)
        if self._open is None:
            await self._open_utterance(event_id)
            self._open = event_id
        await self.avatar.push_audio(pcm, p.LITE_AUDIO_RATE)

    async def _speak_end(self, message: dict[str, Any]) -> None:
        self._event_id(message, required=False)  # checked if given; it need not match the utterance's
        if self._open is None:
            # Nothing to end: an utterance already cut by agent.interrupt, or one that had no audio.
            # Clients send these (LiveAvatar's plugin does after an interrupt), so it is no error.
            return
        self._open = None
        await self.avatar.end_segment()

    async def _speak_text(self, message: dict[str, Any]) -> None:
        event_id = self._event_id(message, required=False) or uuid.uuid4().hex
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, p.CODE_BAD_REQUEST, "agent.speak_text needs non-empty 'text'")
        if len(text) > MAX_SPEAK_TEXT_CHARS:
            raise ApiError(
                400, p.CODE_BAD_REQUEST, f"agent.speak_text 'text' is over {MAX_SPEAK_TEXT_CHARS} chars"
            )
        interrupts = self._interrupts
        try:
            speech = await self._manager.synthesize(text)
        except TTSError as exc:
            raise ApiError(500, p.CODE_INTERNAL, f"text-to-speech failed: {exc}") from None
        if self.ending:
            return
        if interrupts != self._interrupts:  # interrupted while synthesising: the text is not spoken
            await self.emit(p.AGENT_SPEAK_INTERRUPTED, event_id, played_s=0.0)
            return
        self._admit(len(speech.audio) / speech.sample_rate)
        if self._open is not None:
            await self.avatar.end_segment()
            self._open = None
        # Timings from the synthesiser beat recognition, so they go in before the audio that makes the
        # segment playable; the text still lets the engine align if they fail.
        await self._open_utterance(event_id)
        await self.avatar.push_phones(speech.phones)
        await self.avatar.push_audio(speech.audio, speech.sample_rate, text=text)
        await self.avatar.end_segment()

    # -- stats ------------------------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """The live core's stats (LiveStats: the same names in every host), the peer's, the duration, and
        which process runs it (`worker_pid`; None: this one)."""
        out: dict[str, Any] = {"duration_s": round(time.monotonic() - self.started_mono, 3)}
        if isinstance(self.avatar, RemoteAvatar):
            stats, _ = await self.avatar.fetch_stats()
            out["worker_pid"] = self.avatar.worker.pid
        else:
            assert isinstance(self.avatar, LiveCore)
            stats = self.avatar.stats
            out["worker_pid"] = None
        out.update(stats.as_dict())
        if self.peer is not None:
            peer_stats = await self.peer.stats()
            peer_stats.pop("first_video_sent_at", None)
            out.update(peer_stats)
        return out

    async def close(self, reason: str) -> dict[str, Any]:
        """Stop everything this session owns; returns its final stats. Called once, by the manager."""
        self.ending = True
        stats: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            stats = await self.stats()
        await self.set_ws_state(p.WS_STATE_CLOSING)
        await self.emit(p.SESSION_STOPPED, end_reason=reason)
        if self.peer is not None:
            await self.peer.aclose()
        await self.avatar.aclose()
        await self.set_ws_state(p.WS_STATE_CLOSED)
        self._sinks.clear()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        self._closers.clear()
        return stats


class RoomSession:
    """A started session with transport `livekit`: a worker in the user's LiveKit room plays the agent's
    speech; audio arrives over LiveKit's avatar protocol, so there is no WebRTC peer and no LITE socket."""

    def __init__(self, record: SessionRecord, worker: Any, *, started_mono: float) -> None:
        self.record = record
        self.id = record.id
        self.worker = worker  # facecast.hosts.livekit.worker.RoomAvatar (imported only when used)
        self.started_mono = started_mono
        self.deadline = time.monotonic() + int(record.settings["max_session_duration"])
        self.connected_at: float | None = started_mono  # connected before start() returned
        self._kept_alive = started_mono
        self.ending = False

    @property
    def last_activity(self) -> float:
        """Latest of a keep-alive and the last audio the agent streamed."""
        idle_s = self.worker.stats().get("idle_s")
        heard = time.monotonic() - idle_s if idle_s is not None else self.started_mono
        return max(self._kept_alive, heard)

    def touch(self) -> None:
        self._kept_alive = time.monotonic()

    async def stats(self) -> dict[str, Any]:
        return room_stats(self.worker, self.started_mono)

    async def close(self, reason: str) -> dict[str, Any]:
        self.ending = True
        stats = await self.stats()
        await self.worker.aclose(reason)
        return stats


def room_stats(worker: Any, started_mono: float) -> dict[str, Any]:
    """A session's stats from its avatar worker in a LiveKit room (a RoomAvatar)."""
    stats = worker.stats()
    out: dict[str, Any] = {"duration_s": round(time.monotonic() - started_mono, 3)}
    out.update({k: v for k, v in stats.items() if k not in ("room", "agent_identity")})
    out["livekit"] = {k: stats.get(k) for k in ("room", "agent_identity")}
    return out


Session = LiveSession | RoomSession


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
        self._pending: dict[str, float] = {}  # minted here, not started: session id -> token expiry (unix)
        # Starts in progress, claimed before their first await: parallel starts of one session conflict.
        self._starting: set[str] = set()
        self._admitted: set[str] = set()  # starting and past the capacity check: they count as live
        self._unrecorded: dict[str, tuple[str, float, dict[str, Any] | None]] = {}  # ends the store missed
        self._lease_renewed = 0.0  # monotonic
        self._tasks: set[asyncio.Task[Any]] = set()
        self._memory = MemoryReleaser()  # what ended sessions leave in reference cycles, freed
        self._reaper: asyncio.Task[None] | None = None
        self._reaps = 0
        self._tts: EspeakTTS | None = None
        self._tts_lock = asyncio.Lock()
        self._closed = False
        self.ended_total: dict[str, int] = {reason: 0 for reason in p.END_REASONS}
        self.started_total = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    async def open(self) -> int:
        """Recover from a crash: sessions this server left live are ended now, and avatar builds it left
        running are failed. Returns how many sessions were ended."""
        self._renew_lease()
        recovered = self.store.end_live_sessions(p.END_SERVER_SHUTDOWN, time.time(), owner=self.server_id)
        if recovered:
            log.warning(
                "marked %d session(s) left live by a previous run as ended (server_shutdown)", recovered
            )
        self.avatars.open()
        if self.pool is not None:
            await self.pool.open()
        self._reaper = asyncio.create_task(self._reap_forever(), name="facecast-session-reaper")
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
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session_id in list(self.live):
            await self.end(session_id, p.END_SERVER_SHUTDOWN)
        for session_id in list(self._pending):
            await self.end(session_id, p.END_SERVER_SHUTDOWN)
        # Ends already under way (a peer that left) finish before their tasks are cancelled below.
        for closing in list(self._closing.values()):
            await asyncio.shield(closing)
        if self.pool is not None:
            await self.pool.close()
        self._record_missed_ends()
        with contextlib.suppress(*UNREACHABLE_ERRORS):  # the database is gone: the lease just expires
            self.store.release_lease(self.server_id)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._memory.aclose()

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
        limits = self.config.limits
        session_id = new_session_id()
        # FULL sessions run over this server's WebRTC peer unless the body names a room or a transport.
        full_default = body.mode == "FULL" and body.transport is None and body.livekit_config is None
        transport = "webrtc" if full_default else self._transport(body)
        full = None
        if body.mode == "FULL":
            from facecast.server.full_mode import full_settings

            full = full_settings(self, key, body, transport)
        video_settings = self._video_settings(body)
        livekit = self._livekit_settings(body, session_id) if transport == "livekit" else None
        if body.avatar_image_url is not None:
            if body.avatar_id is not None:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    "give avatar_id or avatar_image_url, not both: avatar_image_url builds a new avatar",
                )
            if body.is_sandbox:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    "sandbox sessions use the sandbox avatar; drop avatar_image_url or is_sandbox",
                )
        avatar_id = limits.sandbox_avatar if body.is_sandbox else (body.avatar_id or limits.sandbox_avatar)
        custom = body.avatar_image_url is not None or avatar_id not in style_names()
        if custom and body.avatar_image_url is None:
            self.avatars.check_usable(key.id, avatar_id)  # 404 for unknown ids, 400 for failed builds
        if body.is_sandbox:
            duration = limits.sandbox_duration
        else:
            duration = body.max_session_duration or limits.default_session_duration
            if duration > limits.max_session_duration:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    f"max_session_duration {duration} s is over this server's limit of "
                    f"{limits.max_session_duration} s",
                )
        cap = key.max_concurrent if key.max_concurrent is not None else limits.max_concurrent_per_key
        built = None
        if body.avatar_image_url is not None:
            # Built like POST /v1/avatars {image_url}; /start waits for it.
            built = self.avatars.create_from_url(key, body.avatar_image_url, display_name=None, consent=None)
            avatar_id = built.avatar_id
        now = time.time()
        token = new_session_token()
        record = SessionRecord(
            id=session_id,
            key_id=key.id,
            mode=body.mode,
            avatar_id=avatar_id,
            is_sandbox=body.is_sandbox,
            transport=transport,
            settings={
                "video_settings": video_settings,
                "aspect_ratio": body.aspect_ratio,
                "fps": body.fps,
                "max_session_duration": duration,
                "interactivity_type": body.interactivity_type,
                **({"livekit": livekit} if livekit is not None else {}),
                **({"full": full} if full is not None else {}),
            },
            state=p.STATE_CREATED,
            token_hash=hash_secret(token),
            token_expires_at=now + limits.token_ttl,
            created_at=now,
            owner=self.server_id,
        )
        if not self.store.insert_session(record, max_active=cap):
            if built is not None:  # no session will use it
                self.avatars.delete(key, built.avatar_id)
            raise ApiError(
                429,
                p.CODE_LIMIT,
                f"this API key already has {cap} active session(s), its limit is {cap}; stop one "
                "(POST /v1/sessions/stop) or wait for it to end",
            )
        self._pending[record.id] = record.token_expires_at
        return record, token

    def _transport(self, body: TokenRequest) -> str:
        """The body's transport; left out: `livekit` when it brings a room (LiveAvatar's clients never
        name a transport) or this server knows a LiveKit server to make one on, else `webrtc`."""
        if body.transport is not None:
            if body.transport == "webrtc" and body.livekit_config is not None:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    "livekit_config needs transport livekit; drop transport or livekit_config",
                )
            return body.transport
        if body.livekit_config is not None or self.config.livekit.configured:
            return "livekit"
        return "webrtc"

    @staticmethod
    def _video_settings(body: TokenRequest) -> dict[str, Any]:
        settings = body.video_settings.model_dump()
        if body.video_quality is not None:
            quality_given = "quality" in body.video_settings.model_fields_set
            if quality_given and settings["quality"] != body.video_quality:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    f"video_quality {body.video_quality!r} and video_settings.quality "
                    f"{settings['quality']!r} disagree; give one of them",
                )
            settings["quality"] = body.video_quality
        return settings

    def _livekit_keys(self) -> tuple[str, str] | None:
        """Credentials to mint tokens with: this server's LiveKit server (FACECAST_LIVEKIT_*), else
        LIVEKIT_API_KEY / LIVEKIT_API_SECRET."""
        lk = self.config.livekit
        if lk.configured:
            assert lk.api_key is not None and lk.api_secret is not None
            return lk.api_key, lk.api_secret
        key, secret = os.environ.get("LIVEKIT_API_KEY"), os.environ.get("LIVEKIT_API_SECRET")
        return (key, secret) if key and secret else None

    def _livekit_settings(self, body: TokenRequest, session_id: str) -> dict[str, Any]:
        """Where the avatar joins and with which token, and where the agent's audio comes from: the LITE
        WebSocket (`websocket`) or LiveKit's avatar protocol in the room (`data_stream`)."""
        cfg = body.livekit_config
        if cfg is None:
            return self._owned_room_settings(body, session_id)
        if not cfg.livekit_url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ApiError(
                400, p.CODE_BAD_REQUEST, f"livekit_config.livekit_url {cfg.livekit_url!r} is not a URL"
            )
        tokens = [t for t in (cfg.livekit_worker_token, cfg.livekit_client_token) if t]
        if len(tokens) > 1:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                "livekit_config.livekit_client_token and livekit_worker_token both name the avatar's join "
                "token; give one of them",
            )
        facecast_shape = cfg.livekit_worker_token is not None or cfg.agent_identity is not None
        audio_source = body.audio_source or ("data_stream" if facecast_shape else "websocket")
        token = tokens.pop() if tokens else None
        # A token given decides who the avatar is in the room (LiveAvatar's plugin names it itself).
        identity = (token and _token_identity(token)) or cfg.avatar_identity or "facecast-avatar"
        if token is None:
            keys = self._livekit_keys()
            if not (keys and cfg.agent_identity):
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    "livekit_config has no avatar token; pass livekit_client_token (or "
                    "livekit_worker_token), or give agent_identity and run the server with "
                    "FACECAST_LIVEKIT_API_KEY / _API_SECRET (or LIVEKIT_API_KEY / LIVEKIT_API_SECRET) set "
                    "so it can mint one",
                )
            token = _mint_worker_token(
                *keys,
                room=cfg.livekit_room,
                identity=identity,
                name=cfg.avatar_name or identity,
                agent_identity=cfg.agent_identity,
            )
        return {
            "url": cfg.livekit_url,
            "room": cfg.livekit_room,
            "worker_token": token,
            "agent_identity": cfg.agent_identity,
            "avatar_identity": identity,
            "audio_source": audio_source,
            "owned": False,
        }

    def _owned_room_settings(self, body: TokenRequest, session_id: str) -> dict[str, Any]:
        """A room on this server's LiveKit server, made for the session at /start and deleted at its
        end, as LiveAvatar does: the answer to /start carries tokens for the user and the agent."""
        lk = self.config.livekit
        if not lk.configured:
            raise ApiError(
                400,
                p.CODE_BAD_REQUEST,
                "transport livekit needs livekit_config {livekit_url, livekit_room, livekit_client_token} "
                "naming your room, or a LiveKit server known to this server (facecast serve --livekit-url "
                "with FACECAST_LIVEKIT_API_KEY / FACECAST_LIVEKIT_API_SECRET) to make one",
            )
        assert lk.api_key is not None and lk.api_secret is not None
        room = f"facecast-{session_id}"
        token = _mint_worker_token(
            lk.api_key,
            lk.api_secret,
            room=room,
            identity=OWNED_ROOM_AVATAR,
            name=OWNED_ROOM_AVATAR,
            agent_identity=OWNED_ROOM_AGENT,
        )
        return {
            "url": lk.ws_url,
            "room": room,
            "worker_token": token,
            "agent_identity": OWNED_ROOM_AGENT,
            "avatar_identity": OWNED_ROOM_AVATAR,
            "audio_source": body.audio_source or "websocket",
            "owned": True,
        }

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
            self._admitted.discard(record.id)

    async def _start(self, record: SessionRecord) -> Session:
        if record.avatar_id not in style_names():
            await self._wait_for_avatar(record)
        capacity = self.config.live_capacity
        # Starts still building their engine count too, or parallel starts would all pass.
        if len(self.live.keys() | self._admitted) >= capacity:
            # Refused rather than admitted: one session too many makes every session on the machine drop
            # frames. The token stays valid, so the client may retry or go to another server.
            raise ApiError(
                503,
                p.CODE_LIMIT,
                f"this server is at capacity ({capacity} live sessions, FACECAST_MAX_LIVE_SESSIONS); "
                "retry shortly or start the session on another server",
            )
        self._admitted.add(record.id)
        if record.mode == "FULL":
            from facecast.server.full_mode import start_full_session

            return await start_full_session(self, record)
        if record.transport == "livekit":
            if record.settings["livekit"].get("owned"):
                await self._create_owned_room(record)
            if record.settings["livekit"].get("audio_source") == "websocket":
                return await self._start_lite_in_room(record)
            return await self._start_in_room(record)
        if self.pool is not None:
            return await self._start_in_pool(record, self.pool)
        started_mono = time.monotonic()
        spec = AvatarSpec.from_settings(record.avatar_id, record.settings, self.avatars.library)
        try:
            engine = await asyncio.to_thread(build_engine, spec)
        except ValueError as exc:  # a bundle that cannot be rendered (AvatarNotFoundError, BundleError)
            raise await self._unloadable(record, exc) from None
        session: LiveSession | None = None

        def on_event(event: SegmentEvent) -> None:
            if session is not None:
                session.on_segment_event(event)

        avatar = new_live_avatar(engine, on_event)
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
        spec = AvatarSpec.from_settings(record.avatar_id, record.settings, self.avatars.library)
        session: LiveSession | None = None

        def on_event(event: SegmentEvent) -> None:
            if session is not None:
                session.on_segment_event(event)

        def on_lost() -> None:
            log.error("session %s ended: the worker process running it exited", record.id)
            self.spawn(self.end(record.id, p.END_ERROR))

        try:
            avatar = await RemoteAvatar.start(
                pool, record.id, spec, started_at=started_mono, on_event=on_event, on_lost=on_lost
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
        expires = now + int(record.settings["max_session_duration"]) + self.config.limits.token_ttl
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
        self._pending.pop(record.id, None)
        self.live[record.id] = session
        self.started_total += 1

    def new_room_avatar(self, record: SessionRecord, **options: Any) -> Any:
        """The avatar worker for `record`'s LiveKit room, from its settings; `options` go to RoomAvatar
        (a LITE room's audio receiver and rate). Ending it ends the session."""
        try:
            from facecast.hosts.livekit.worker import RoomAvatar
        except ImportError as exc:
            raise livekit_extra_missing(exc) from None
        settings = record.settings
        lk = settings["livekit"]

        def on_end(reason: str) -> None:
            self.spawn(self.end(record.id, reason))

        return RoomAvatar(
            lk["url"],
            lk["worker_token"],
            avatar=record.avatar_id,
            aspect=settings["aspect_ratio"],
            quality=settings["video_settings"]["quality"],
            fps=int(settings["fps"]),
            max_duration_s=None,  # the manager enforces the duration, like every other limit
            agent_identity=lk["agent_identity"],
            on_end=on_end,
            room=self.livekit_room_factory() if self.livekit_room_factory is not None else None,
            library=self.avatars.library,
            **options,
        )

    async def _start_in_room(self, record: SessionRecord) -> RoomSession:
        started_mono = time.monotonic()
        worker = self.new_room_avatar(record)
        now = time.time()
        session = RoomSession(record, worker, started_mono=started_mono)
        self.mark_started(record, session, now)
        try:
            await worker.start()
        except Exception as exc:
            await self.end(record.id, p.END_ERROR)
            raise ApiError(
                502, p.CODE_INTERNAL, f"the avatar worker could not join the LiveKit room: {exc}"
            ) from None
        return session

    async def _start_lite_in_room(self, record: SessionRecord) -> LiveSession:
        """A LITE session whose avatar plays in a LiveKit room: the agent's audio arrives over the LITE
        WebSocket and the avatar worker publishes the face and voice in the room."""
        try:
            from facecast.server.lite_room import start_lite_room
        except ImportError as exc:
            raise livekit_extra_missing(exc) from None
        return await start_lite_room(self, record)

    def livekit_start_details(self, record: SessionRecord) -> dict[str, Any]:
        """The LiveKit part of a /start answer, in LiveAvatar's names: for a room this server made,
        fresh tokens for the user's frontend (`livekit_client_token`) and the agent
        (`livekit_agent_token`); for the caller's own room, empty strings (the caller mints its own)."""
        lk = record.settings["livekit"]
        client_token = agent_token = ""
        if lk.get("owned"):
            from facecast.server.lite_room import participant_token

            keys = self._livekit_keys()
            assert keys is not None
            # A LiveKit server cannot revoke a token: these die with the session's longest life.
            ttl = timedelta(
                seconds=int(record.settings["max_session_duration"]) + self.config.limits.token_ttl
            )
            client_token = participant_token(*keys, room=lk["room"], identity=OWNED_ROOM_USER, ttl=ttl)
            agent_token = participant_token(
                *keys, room=lk["room"], identity=OWNED_ROOM_AGENT, kind="agent", ttl=ttl
            )
        return {
            "livekit_url": lk["url"],
            "livekit_room": lk["room"],
            "livekit_client_token": client_token,
            "livekit_agent_token": agent_token,
            "avatar_identity": lk["avatar_identity"],
        }

    async def _create_owned_room(self, record: SessionRecord) -> None:
        """Make the room for a session that asked this server for one (its avatar then joins it)."""
        from livekit import api

        settings = self.config.livekit
        lk = record.settings["livekit"]
        try:
            async with api.LiveKitAPI(settings.url, settings.api_key, settings.api_secret) as client:
                await client.room.create_room(
                    api.CreateRoomRequest(
                        name=lk["room"],
                        empty_timeout=60,
                        max_participants=OWNED_ROOM_MAX_PARTICIPANTS,
                        # the avatar's two tracks reach subscribers as one stream, so browsers lip-sync them
                        sync_streams=True,
                    )
                )
        except Exception as exc:
            await self.end(record.id, p.END_ERROR)
            raise ApiError(
                502,
                p.CODE_INTERNAL,
                f"could not create the session's room on the LiveKit server {settings.url}: {exc}; check "
                "FACECAST_LIVEKIT_URL / _API_KEY / _API_SECRET and that the server is reachable",
            ) from None

    async def _delete_owned_room(self, record: SessionRecord) -> None:
        """Delete the room this server made for a session: everyone in it is disconnected."""
        lk = record.settings.get("livekit") or {}
        if not lk.get("owned") or not self.config.livekit.configured:
            return
        from livekit import api

        settings = self.config.livekit
        try:
            async with api.LiveKitAPI(settings.url, settings.api_key, settings.api_secret) as client:
                await client.room.delete_room(api.DeleteRoomRequest(room=lk["room"]))
        except Exception as exc:  # gone already, or the LiveKit server is unreachable: it empties itself
            log.warning("could not delete LiveKit room %s of session %s: %s", lk["room"], record.id, exc)

    async def connect_peer(self, session: LiveSession, sdp: str, sdp_type: str) -> tuple[str, str]:
        if session.peer is not None:
            raise ApiError(
                409, p.CODE_CONFLICT, "this session already has a WebRTC peer; start a new session"
            )
        try:
            check_offer_sdp(sdp)
        except ValueError as exc:
            raise ApiError(400, p.CODE_BAD_REQUEST, str(exc)) from None
        encoding = session.record.settings["video_settings"]["encoding"]

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
        self._pending.pop(session_id, None)
        stats: dict[str, Any] | None = None
        if session is not None:
            done = self._closing[session_id] = asyncio.get_running_loop().create_future()
            try:
                stats = await session.close(reason)
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
            self._unrecorded[session_id] = (reason, ended_at, stats)
            ended = True
        if session is not None:
            await self._delete_owned_room(session.record)
            self._memory.request()
        if ended:
            self.ended_total[reason] = self.ended_total.get(reason, 0) + 1
            log.info("session %s ended: %s", session_id, reason)
        return ended

    async def _reap_forever(self) -> None:
        unreachable = False  # logged once per outage, not four times a second
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.reap()
                if unreachable:
                    log.warning("the session database is reachable again")
                unreachable = False
            except UNREACHABLE_ERRORS as exc:
                if not unreachable:
                    log.warning("the session database is unreachable (%s); live sessions go on", exc)
                unreachable = True
            except Exception:
                log.exception("session reaper failed; retrying")

    async def reap(self) -> None:
        """End every session past one of its limits."""
        mono, now = time.monotonic(), time.time()
        limits = self.config.limits
        for session_id, session in list(self.live.items()):
            reason = None
            if mono >= session.deadline:
                reason = p.END_MAX_DURATION
            elif mono - session.last_activity >= limits.idle_timeout:
                reason = p.END_IDLE
            elif session.connected_at is None and mono - session.started_mono >= limits.connect_timeout:
                reason = p.END_CLIENT_GONE
            if reason is not None:
                await self.end(session_id, reason)
        self._reaps += 1
        if time.monotonic() - self._lease_renewed >= limits.server_lease_s / 3:
            self._renew_lease()
        if self._reaps % STORE_SYNC_EVERY == 0:
            self._record_missed_ends()
            swept = self.store.sweep_sessions(now, server=self.server_id)
            for reason, count in swept.items():
                if count:
                    log.warning("ended %d session(s) of the shared database as %s", count, reason)
            await self._sync_with_store()
        for session_id, expires in list(self._pending.items()):
            if now < expires:
                continue
            record = self.store.get_session(session_id)
            if record is None or record.state != p.STATE_CREATED:
                self._pending.pop(session_id, None)  # started (perhaps by another server) or ended
            else:
                await self.end(session_id, p.END_TOKEN_EXPIRED)

    def _renew_lease(self) -> None:
        """Tell servers sharing the database that this one is alive and still runs its sessions. Failing
        (the database is down), the reaper retries each round; past the lease the others end them."""
        self.store.renew_lease(self.server_id, time.time(), self.config.limits.server_lease_s)
        self._lease_renewed = time.monotonic()

    def _record_missed_ends(self) -> None:
        """Write the ends the database missed while it was unreachable."""
        for session_id, (reason, ended_at, stats) in list(self._unrecorded.items()):
            try:
                self.store.end_session(session_id, reason, ended_at, stats=stats)
            except UNREACHABLE_ERRORS:
                return  # still down; the next round retries
            del self._unrecorded[session_id]

    async def _sync_with_store(self) -> None:
        """With a shared database another server may stop one of our sessions: close it here too."""
        for session_id in list(self.live):
            record = self.store.get_session(session_id)
            if record is not None and record.state == p.STATE_ENDED and record.end_reason is not None:
                await self.end(session_id, record.end_reason)

    # -- speech -----------------------------------------------------------------------------------------
    async def synthesize(self, text: str) -> Any:
        """Server-side text to speech, off the event loop; one synthesis at a time (espeak-ng is global)."""
        async with self._tts_lock:
            if self._tts is None:
                self._tts = await asyncio.to_thread(EspeakTTS)
            return await asyncio.to_thread(self._tts.synthesize_timed, text)

    # -- views ------------------------------------------------------------------------------------------
    async def describe(self, record: SessionRecord) -> dict[str, Any]:
        live = self.live.get(record.id)
        stats = await live.stats() if live is not None else record.stats
        return {
            "session_id": record.id,
            "state": record.state,
            "mode": record.mode,
            "avatar_id": record.avatar_id,
            "is_sandbox": record.is_sandbox,
            "transport": record.transport,
            "settings": _public_settings(record.settings),
            "created_at": record.created_at,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "end_reason": record.end_reason,
            "duration_s": record.duration_s,
            "stats": stats,
        }


def _token_identity(token: str) -> str | None:
    """The participant identity (`sub`) a LiveKit token was minted for; None if it is not a JWT. Read
    without verifying: the LiveKit server verifies it when the avatar joins."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = parse_message(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (MessageRefused, binascii.Error):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) and sub else None


def _livekit_tokens() -> Any:
    """facecast.hosts.livekit.tokens, or a 501 that says which extra to install."""
    try:
        from facecast.hosts.livekit import tokens
    except ImportError as exc:
        raise ApiError(
            501,
            p.CODE_NOT_IMPLEMENTED,
            f"transport livekit needs the LiveKit extra: pip install 'facecast[livekit]' ({exc})",
        ) from None
    return tokens


def _mint_worker_token(api_key: str, api_secret: str, **claims: Any) -> str:
    return str(_livekit_tokens().mint_worker_token(api_key, api_secret, **claims))


def _public_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A session's settings without secrets (the LiveKit worker token)."""
    if "livekit" not in settings:
        return settings
    livekit = {k: v for k, v in settings["livekit"].items() if k != "worker_token"}
    return {**settings, "livekit": livekit}
