"""FULL sessions whose avatar plays in a LiveKit room, as LiveAvatar's FULL mode does over LiveKit.

The conversation is the WebRTC session's (facecast.server.full_mode, facecast.conversation); only its two
ends and its events travel differently. The avatar worker (a `RoomAvatar`, fed through `SocketAudio` as
a LITE room session is) subscribes to the user participant's microphone, which becomes the pipeline's
input, and publishes the avatar's video and voice. Commands arrive as data packets on `agent-control`;
events (the same JSON the WebRTC data channel carries) go out as reliable data packets on
`agent-response`, in order.

The user is the first participant that is not an agent and publishes a microphone; when that one
leaves, the next such participant is heard. The room is the caller's (`livekit_config`) or one this
server made for the session (the user joins with `livekit_client_token` from /start).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from livekit import rtc

from facecast import protocol as p
from facecast.bounded_json import MessageRefused, parse_message
from facecast.conversation.events import TOPIC_CONTROL, TOPIC_RESPONSE
from facecast.conversation.sphinx_worker import STT_RATE
from facecast.engine.types import SegmentEvent
from facecast.server.full_mode import FullAgent, NewConversation, conversation_failed
from facecast.server.session_stats import SessionStats
from facecast.server.sessions.lite_room import LiteRoomSession, fed_room_avatar, join_room
from facecast.server.sessions.livekit import create_owned_room
from facecast.server.store import SessionRecord

if TYPE_CHECKING:
    from facecast.server.sessions import SessionManager

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16_384  # a command carries at most MAX_COMMAND_TEXT_CHARS of text


def _is_user(participant: rtc.RemoteParticipant) -> bool:
    return participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


def _is_microphone(publication: rtc.TrackPublication) -> bool:
    return (
        publication.kind == rtc.TrackKind.KIND_AUDIO
        and publication.source == rtc.TrackSource.SOURCE_MICROPHONE
    )


async def _pcm(stream: rtc.AudioStream) -> AsyncIterator[bytes]:
    """A LiveKit audio stream (16 kHz mono, LiveKit resamples) as PCM chunks for the microphone."""
    async for event in stream:
        yield bytes(event.frame.data)


class FullRoomSession(FullAgent, LiteRoomSession):
    """A FULL session whose media and events go through a LiveKit room."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user_identity: str | None = None  # whose microphone the conversation hears
        self._user_stream: rtc.AudioStream | None = None
        self._inbox: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue()  # agent-control packets
        self._outbox: asyncio.Queue[tuple[dict[str, Any], list[str]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._room_handlers: dict[str, Any] = {}

    # -- the room -------------------------------------------------------------------------------------
    def listen_to_room(self) -> None:
        """Follow the room (the worker has joined it): the user's microphone, commands, and the greeting
        once someone hears the avatar."""
        room = self.worker.room
        self._room_handlers = {
            "track_published": self._on_track_published,
            "track_subscribed": self._on_track_subscribed,
            "track_unsubscribed": self._on_track_unsubscribed,
            "participant_disconnected": self._on_participant_disconnected,
            "data_received": self._on_data,
        }
        for name, handler in self._room_handlers.items():
            room.on(name, handler)
        self._spawn(self._send_events(), "facecast-full-room-events")
        self._spawn(self._take_commands(), "facecast-full-room-commands")
        self._spawn(self._greet_when_heard(), "facecast-full-room-greet")
        self._subscribe_next_user()

    def _subscribe_next_user(self, leaving: str | None = None) -> None:
        """Subscribe to a microphone of the user (or, with none yet, of any user in the room but the one
        `leaving`: it may still be listed while it goes)."""
        for participant in self.worker.room.remote_participants.values():
            if participant.identity == leaving or not _is_user(participant):
                continue
            if self.user_identity not in (None, participant.identity):
                continue
            for publication in participant.track_publications.values():
                if _is_microphone(publication) and not publication.subscribed:
                    assert isinstance(publication, rtc.RemoteTrackPublication)
                    publication.set_subscribed(True)
                    return

    def _on_track_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if (
            _is_microphone(publication)
            and _is_user(participant)
            and self.user_identity in (None, participant.identity)
        ):
            publication.set_subscribed(True)

    def _on_track_subscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if not _is_microphone(publication) or self.conversation is None or self.ending:
            return
        if self.user_identity not in (None, participant.identity):
            publication.set_subscribed(False)  # subscribed while another user was chosen
            return
        log.info("session %s: hearing %s in room %s", self.id, participant.identity, self.room)
        self.user_identity = participant.identity
        self._close_user_stream()
        self._user_stream = rtc.AudioStream.from_track(track=track, sample_rate=STT_RATE, num_channels=1)
        self.conversation.microphone.attach_pcm(_pcm(self._user_stream))

    def _on_track_unsubscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if participant.identity == self.user_identity and _is_microphone(publication):
            self._user_gone(participant.identity)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self.user_identity:
            self._user_gone(participant.identity)

    def _user_gone(self, identity: str) -> None:
        self.user_identity = None
        self._close_user_stream()
        if not self.ending:
            self._subscribe_next_user(leaving=identity)

    def _close_user_stream(self) -> None:
        stream, self._user_stream = self._user_stream, None
        if stream is not None:  # closing it ends the microphone's reading of it
            self._spawn(stream.aclose(), "facecast-full-room-stream-close")

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC_CONTROL and not self.ending:
            sender = packet.participant.identity if packet.participant is not None else None
            self._inbox.put_nowait((packet.data, sender))

    async def _take_commands(self) -> None:
        """Apply the `agent-control` packets one at a time, in the order they came."""
        while True:
            data, sender = await self._inbox.get()

            async def reply(event: dict[str, Any], to: str | None = sender) -> None:
                if to is not None:  # to the sender only
                    self._outbox.put_nowait((event, [to]))

            if len(data) > MAX_COMMAND_BYTES:
                await self.reply_error(
                    reply, p.CODE_BAD_REQUEST, f"a command is at most {MAX_COMMAND_BYTES} bytes of JSON"
                )
                continue
            try:
                message = parse_message(data)
            except MessageRefused as exc:
                await self.reply_error(
                    reply, p.CODE_BAD_REQUEST, f"an {TOPIC_CONTROL} packet must be one JSON object: {exc}"
                )
                continue
            try:
                await self.handle(message, reply)
            except Exception as exc:  # a defect: reported and logged, and the next command is taken
                log.exception("session %s: an %s command failed", self.id, TOPIC_CONTROL)
                await self.reply_error(
                    reply, p.CODE_INTERNAL, f"the server failed on this command ({type(exc).__name__})"
                )

    def send_on_transport(self, event: dict[str, Any]) -> None:
        """Everyone in the room hears the session's events, on `agent-response`, in order."""
        self._outbox.put_nowait((event, []))

    async def _send_events(self) -> None:
        local = self.worker.room.local_participant
        while True:
            event, to = await self._outbox.get()
            if not self.worker.room.isconnected():
                continue
            try:
                await local.publish_data(
                    json.dumps(event), reliable=True, topic=TOPIC_RESPONSE, destination_identities=to
                )
            except Exception as exc:  # the room going away; the worker ends the session then
                log.debug("session %s: could not publish %s: %s", self.id, event.get("event_type"), exc)

    async def _greet_when_heard(self) -> None:
        runner = self.worker.runner
        if runner is None or runner.audio_publication is None or self.conversation is None:
            return
        await runner.audio_publication.wait_for_subscription()
        await self.conversation.greet()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the session ----------------------------------------------------------------------------------
    async def stats(self) -> SessionStats:
        stats = await super().stats()
        return replace(stats, livekit={**(stats.livekit or {}), "user_identity": self.user_identity})

    async def close(self, reason: str) -> SessionStats | None:
        # The conversation stops first (FullAgent), then the worker leaves the room (LiteRoomSession).
        stats = await super().close(reason)
        room = self.worker.room
        for name, handler in self._room_handlers.items():
            room.off(name, handler)
        stream, self._user_stream = self._user_stream, None
        if stream is not None:
            await stream.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stats


async def start_full_room(
    manager: SessionManager, record: SessionRecord, new_conversation: NewConversation, *, started_mono: float
) -> FullRoomSession:
    """Start `record`'s avatar in its LiveKit room (made first when it is this server's) with its
    conversation; returns once the avatar is in the room and the pipeline runs."""
    lk = record.settings.livekit
    assert lk is not None
    if lk.owned:
        await create_owned_room(manager, record)
    session: FullRoomSession | None = None

    def on_event(event: SegmentEvent) -> None:
        if session is not None:
            session.on_segment_event(event)

    audio, worker = await fed_room_avatar(manager, record, on_event)
    session = FullRoomSession(record, audio, worker, manager=manager, started_mono=started_mono)
    session.conversation = new_conversation(audio, session)
    manager.mark_started(record, session, time.time())
    await join_room(manager, record, worker)
    try:
        await session.conversation.start()
    except Exception as exc:
        raise await conversation_failed(manager, record, exc) from None
    session.on_worker_started()
    session.listen_to_room()
    return session
