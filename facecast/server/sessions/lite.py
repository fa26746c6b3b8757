"""A LITE session: the LITE protocol mapped onto one avatar. Client events come in from the WebSocket or
the WebRTC data channel, session events go out to both; the manager starts, limits and ends it."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from facecast import protocol as p
from facecast.engine.types import (
    FrameMeta,
    PhoneTiming,
    SegmentEnded,
    SegmentEvent,
    SegmentStarted,
    SegmentTag,
)
from facecast.hosts.live import LiveCore
from facecast.hosts.webrtc import AvatarPeer
from facecast.server.errors import ApiError
from facecast.server.pool import RemoteAvatar, RemotePeer, mouth_track_event
from facecast.server.session_stats import SessionStats
from facecast.server.store import SessionRecord
from facecast.tts import TTSError

if TYPE_CHECKING:
    from facecast.server.sessions.manager import SessionManager

log = logging.getLogger(__name__)

MAX_SPEAK_TEXT_CHARS = 2000
# avatar.mouth_track events waiting for the WebSocket clients: a lossy stream, so a client that falls
# this far behind (1 s at 30 fps) loses the oldest records instead of getting later and later.
TRACK_BACKLOG = 30

EventSink = Callable[[dict[str, Any]], Awaitable[None]]


class SpeechTarget(Protocol):
    """What LITE commands drive: a `LiveCore` (WebRTC sessions in this process), a `RemoteAvatar`
    (WebRTC sessions in a worker process, facecast.server.pool), or the LITE socket's audio feeding
    an avatar in a LiveKit room (sessions.lite_room.SocketAudio). Segment events come back through
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
        self.deadline = time.monotonic() + record.settings.max_session_duration
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
        self._track_out: deque[dict[str, Any]] = deque(maxlen=TRACK_BACKLOG)
        self._track_sending = False

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
        self.send_on_transport(event)
        for sink in list(self._sinks):
            try:
                await sink(event)
            except Exception:  # a client that went away is dropped, the session goes on
                self._sinks.discard(sink)

    # -- the mouth track (sessions minted with mouth_track) ---------------------------------------------
    def on_frame(self, meta: FrameMeta) -> None:
        """A frame of this process's avatar was released (its audio starts playing): its record goes to
        the data channel once the peer is connected, and to the WebSocket clients."""
        event = mouth_track_event(self.id, meta)
        if self.peer is not None and self.connected_at is not None:
            self.peer.send_event(event)
        self.send_track(event)

    def send_track(self, event: dict[str, Any]) -> None:
        """Queue an avatar.mouth_track event for the WebSocket clients; one task sends them in frame
        order (a task per record could reorder them when a socket waits to drain)."""
        if self.ending or not self._sinks:
            return
        self._track_out.append(event)
        if not self._track_sending:
            self._track_sending = True
            self._manager.spawn(self._send_tracks())

    async def _send_tracks(self) -> None:
        try:
            while self._track_out and not self.ending:
                event = self._track_out.popleft()
                for sink in list(self._sinks):
                    try:
                        await sink(event)
                    except Exception:  # a client that went away is dropped, the session goes on
                        self._sinks.discard(sink)
        finally:
            self._track_sending = False

    def send_on_transport(self, event: dict[str, Any]) -> None:
        """An event to the clients of the session's media transport: the WebRTC peer's data channel (a
        FULL session in a LiveKit room sends data packets instead)."""
        if self.peer is not None:
            self.peer.send_event(event)

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
            speech = await self._manager.synthesize(text, voice=self.record.settings.voice_id)
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
    async def stats(self) -> SessionStats:
        """The live core's stats, the peer's, and which process runs it."""
        worker_pid = None
        if isinstance(self.avatar, RemoteAvatar):
            live, _ = await self.avatar.fetch_stats()
            worker_pid = self.avatar.worker.pid
        else:
            assert isinstance(self.avatar, LiveCore)
            live = self.avatar.stats
        transport: dict[str, Any] = {}
        if self.peer is not None:
            transport = await self.peer.stats()
            transport.pop("first_video_sent_at", None)
        return SessionStats(time.monotonic() - self.started_mono, live, worker_pid, transport)

    async def close(self, reason: str) -> SessionStats | None:
        """Stop everything this session owns; returns its final stats (None: they could not be read).
        Called once, by the manager."""
        stats = await self._begin_close()
        await self.emit(p.SESSION_STOPPED, end_reason=reason)
        if self.peer is not None:
            await self.peer.aclose()
        await self.avatar.aclose()
        await self._finish_close()
        return stats

    async def _begin_close(self) -> SessionStats | None:
        """The first steps of every close: no more commands, the final stats, the socket told so."""
        self.ending = True
        self._track_out.clear()
        stats = None
        with contextlib.suppress(Exception):
            stats = await self.stats()
        await self.set_ws_state(p.WS_STATE_CLOSING)
        return stats

    async def _finish_close(self) -> None:
        """The last steps of every close, once the stop event is out: the socket's sinks and closers go."""
        await self.set_ws_state(p.WS_STATE_CLOSED)
        self._sinks.clear()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        self._closers.clear()
