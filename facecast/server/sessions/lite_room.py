"""LITE sessions whose avatar plays in a LiveKit room, as LiveAvatar's LITE mode does.

The agent's audio arrives over the LITE WebSocket (`agent.speak` ...), exactly as for a WebRTC session:
`LiveSession` still maps the LITE commands. Only its speech target differs: `SocketAudio` hands the audio
to a `RoomAvatar` as that worker's `AudioReceiver`, so the worker's runner paces, renders and publishes
it in the room like audio from `lk.audio_stream`, and its playback reports (`playback_started` /
`playback_finished`, one per segment) come back as the engine's segment events, which `LiveSession`
turns into `agent.speak_started` / `agent.speak_ended` / `agent.speak_interrupted`.

The room is the caller's (`livekit_config`, the avatar joining with `livekit_client_token`) or one this
server made on its own LiveKit server for the session (see facecast.server.sessions.tokens).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np
from livekit import api, rtc
from livekit.agents.voice.avatar import AudioReceiver, AudioSegmentEnd

from facecast import protocol as p
from facecast.engine.types import PhoneTiming, SegmentEnded, SegmentEvent, SegmentStarted, SegmentTag
from facecast.hosts.livekit.worker import RoomAvatar
from facecast.server.errors import ApiError
from facecast.server.session_stats import SessionStats
from facecast.server.sessions import LiveSession
from facecast.server.sessions.livekit import new_room_avatar, room_stats
from facecast.server.store import SessionRecord

if TYPE_CHECKING:
    from facecast.server.sessions import SessionManager

AUDIO_RATE = p.LITE_AUDIO_RATE  # the worker's output rate: agent.speak audio plays without resampling


def participant_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    kind: Literal["standard", "agent"] = "standard",
    ttl: timedelta = timedelta(hours=6),
) -> str:
    """A token to join `room` that publishes and subscribes: the user's frontend, or the agent."""
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_kind(kind)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(grants)
        .with_ttl(ttl)
        .to_jwt()
    )


class SocketAudio(AudioReceiver):
    """The LITE socket's speech as a RoomAvatar's audio input.

    Segments are numbered here. Audio and segment ends queue until the worker's runner reads them; the
    runner reports every segment it has read exactly once, oldest first, so its reports are matched to
    segments in order. On a clear the runner reports (synchronously) the segments it has read, and the
    ones still queued here are reported by this class."""

    def __init__(self, on_event: Callable[[SegmentEvent], None]) -> None:
        super().__init__()
        self._on_event = on_event
        self._items: deque[tuple[int, rtc.AudioFrame | AudioSegmentEnd]] = deque()
        self._ready = asyncio.Event()
        self._next_id = 0
        self._open: int | None = None  # the segment receiving audio
        self._with_audio: set[int] = set()
        self._read: deque[int] = deque()  # segments the runner has read from and not yet reported
        self._started: set[int] = set()
        self._unread: list[int] = []  # segments queued here and not yet read by the runner
        self._tags: dict[int, SegmentTag | None] = {}  # what LiveSession named each unreported segment
        self._closed = False
        self.listening: Callable[[bool], None] | None = None  # set by the session once the worker runs

    # -- what LiveSession drives (facecast.server.sessions.SpeechTarget) --------------------------------
    async def open_segment(self, tag: SegmentTag | None = None) -> int:
        if self._open is not None:  # LiveSession opens a segment per utterance, after the last one
            await self.end_segment()
        self._next_id += 1
        self._open = self._next_id
        self._tags[self._open] = tag
        self._unread.append(self._open)
        return self._open

    async def push_audio(
        self,
        pcm: bytes | bytearray | memoryview | np.ndarray,
        sample_rate: int,
        *,
        channels: int = 1,
        text: str | None = None,
    ) -> int:
        """Queue int16 PCM (interleaved if `channels` > 1) for the open segment (opened if none is).
        `text` is not used: the worker's engine aligns the mouth from the audio."""
        segment = self._open if self._open is not None else await self.open_segment()
        data = pcm.astype(np.int16).tobytes() if isinstance(pcm, np.ndarray) else bytes(pcm)
        samples = len(data) // (2 * channels)
        if samples:
            self._with_audio.add(segment)
            self._put(segment, rtc.AudioFrame(data[: samples * 2 * channels], sample_rate, channels, samples))
        return segment

    async def push_phones(self, timings: Sequence[PhoneTiming]) -> int:
        return self._open if self._open is not None else await self.open_segment()

    async def end_segment(self) -> None:
        segment, self._open = self._open, None
        if segment is None:
            return
        if segment in self._with_audio:
            self._put(segment, AudioSegmentEnd())
        else:  # nothing to play: the runner never hears of it
            self._unread.remove(segment)
            self._ended(segment, 0.0, interrupted=False)

    async def clear(self) -> None:
        self._open = None
        self.emit("clear_buffer")  # the runner answers for every segment it has read, right here
        self._items.clear()
        unread, self._unread = self._unread, []
        for segment in unread:
            self._with_audio.discard(segment)
            self._ended(segment, 0.0, interrupted=True)

    async def set_listening(self, listening: bool) -> None:
        if self.listening is not None:
            self.listening(listening)

    async def aclose(self) -> None:
        self._closed = True
        self._ready.set()

    # -- AudioReceiver (read by the worker's runner) -----------------------------------------------------
    def _put(self, segment: int, item: rtc.AudioFrame | AudioSegmentEnd) -> None:
        self._items.append((segment, item))
        self._ready.set()

    def __aiter__(self) -> SocketAudio:
        return self

    async def __anext__(self) -> rtc.AudioFrame | AudioSegmentEnd:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        segment, item = self._items.popleft()
        if segment in self._unread:
            self._unread.remove(segment)
            self._read.append(segment)
        return item

    def notify_playback_started(self) -> None:
        segment = next((s for s in self._read if s not in self._started), None)
        if segment is not None:
            self._started.add(segment)
            self._on_event(SegmentStarted(segment, self._tags.get(segment)))

    def notify_playback_finished(self, playback_position: float, interrupted: bool) -> None:
        if not self._read:
            return
        segment = self._read.popleft()
        self._started.discard(segment)
        self._with_audio.discard(segment)
        self._ended(segment, float(playback_position), interrupted=interrupted)

    def _ended(self, segment: int, played_s: float, *, interrupted: bool) -> None:
        self._on_event(SegmentEnded(segment, played_s, interrupted, self._tags.pop(segment, None)))


class LiteRoomSession(LiveSession):
    """A LITE session (commands and events on the WebSocket) whose media goes to a LiveKit room."""

    def __init__(
        self,
        record: SessionRecord,
        audio: SocketAudio,
        worker: RoomAvatar,
        *,
        manager: SessionManager,
        started_mono: float,
    ) -> None:
        super().__init__(record, audio, manager=manager, started_mono=started_mono)
        self.audio = audio
        self.worker = worker

    @property
    def room(self) -> str | None:
        assert self.record.settings.livekit is not None
        return self.record.settings.livekit.room

    def on_worker_started(self) -> None:
        """The avatar is in the room with its audio track published: LITE commands are taken now."""
        runner = self.worker.runner
        if runner is not None:
            self.audio.listening = runner.generator.set_listening
        self.connected_at = time.monotonic()
        self.ws_state = p.WS_STATE_CONNECTED
        self._manager.spawn(self.emit(p.SESSION_STATE_UPDATED, state=p.WS_STATE_CONNECTED))

    async def stats(self) -> SessionStats:
        return room_stats(self.worker, self.started_mono)

    async def close(self, reason: str) -> SessionStats | None:
        stats = await self._begin_close()
        # Leaving answers every segment still playing (agent.speak_interrupted) before the socket closes.
        await self.worker.aclose(reason)
        await self.audio.aclose()
        await asyncio.sleep(0)  # let those answers go out
        await self.emit(p.SESSION_STOPPED, end_reason=reason)
        await self._finish_close()
        return stats


async def fed_room_avatar(
    manager: SessionManager, record: SessionRecord, on_event: Callable[[SegmentEvent], None]
) -> tuple[SocketAudio, RoomAvatar]:
    """`record`'s avatar worker for its LiveKit room, fed through a `SocketAudio` (which reports its
    segment events to `on_event`); a look that does not load ends the session with an error."""
    audio = SocketAudio(on_event)
    try:
        worker = new_room_avatar(manager, record, sample_rate=AUDIO_RATE, audio_receiver=audio)
    except ValueError as exc:
        await manager.end(record.id, p.END_ERROR)
        raise ApiError(500, p.CODE_INTERNAL, f"could not load avatar {record.avatar_id!r}: {exc}") from None
    return audio, worker


async def join_room(manager: SessionManager, record: SessionRecord, worker: RoomAvatar) -> None:
    """Start `record`'s avatar worker in its LiveKit room; one that cannot join ends the session with an
    error that says what to check."""
    lk = record.settings.livekit
    assert lk is not None
    try:
        await worker.start()
    except Exception as exc:
        await manager.end(record.id, p.END_ERROR)
        raise ApiError(
            502,
            p.CODE_INTERNAL,
            f"the avatar could not join the LiveKit room {lk.room!r} at {lk.url}: {exc}; check the "
            "URL and that the avatar's token (livekit_client_token) grants joining that room",
        ) from None


async def start_lite_room(manager: SessionManager, record: SessionRecord) -> LiveSession:
    """Start `record`'s avatar in its LiveKit room, fed from the LITE WebSocket."""
    started_mono = time.monotonic()
    session: LiteRoomSession | None = None

    def on_event(event: SegmentEvent) -> None:
        if session is not None:
            session.on_segment_event(event)

    audio, worker = await fed_room_avatar(manager, record, on_event)
    session = LiteRoomSession(record, audio, worker, manager=manager, started_mono=started_mono)
    manager.mark_started(record, session, time.time())
    await join_room(manager, record, worker)
    session.on_worker_started()
    return session
