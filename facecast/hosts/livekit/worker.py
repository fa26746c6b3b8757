"""The avatar worker: joins a LiveKit room next to an agent and plays its speech as a talking face.

One `RoomAvatar` per room. The agent streams audio to it on `lk.audio_stream` (the `DataStreamAudioOutput`
of livekit-agents); the worker answers the avatar protocol through `DataStreamAudioReceiver` and
`FacecastAvatarRunner`, and tells the room how it is doing with `session.state` data packets.

    avatar = RoomAvatar(url, worker_token, avatar="ava", max_duration_s=600, on_end=print)
    await avatar.start()            # connected, audio track published
    reason = await avatar.ended     # stopped | max_duration | client_gone | error
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents import utils
from livekit.agents.voice.avatar import AudioReceiver, DataStreamAudioReceiver

from facecast.avatars import DEFAULT_AVATAR, AvatarLibrary, AvatarRef, Look, find_avatar
from facecast.bounded_json import MessageRefused, parse_message
from facecast.engine import EngineConfig
from facecast.engine.config import DEFAULT_LOOKAHEAD_MS, TrackerMode
from facecast.hosts.live import LiveStats
from facecast.hosts.livekit.generator import FacecastVideoGenerator
from facecast.hosts.livekit.names import (
    ATTRIBUTE_AGENT_STATE,
    ATTRIBUTE_PUBLISH_ON_BEHALF,
    AUDIO_STREAM_TOPIC,
    RPC_CLEAR_BUFFER,
    RPC_PLAYBACK_FINISHED,
    RPC_PLAYBACK_STARTED,
    SESSION_STATE_TOPIC,
    STATE_CONNECTED,
    STATE_DISCONNECTED,
    STATE_ERROR,
    TOPIC_AGENT_SESSION,
    TOPIC_TRANSCRIPTION,
    TRANSCRIBED_TRACK,
)
from facecast.hosts.livekit.runner import FacecastAvatarRunner, TranscriptPiece
from facecast.protocol import END_CLIENT_GONE, END_ERROR, END_MAX_DURATION, END_STOPPED

logger = logging.getLogger("facecast.livekit")

RECEIVE_FRAME_MS = 20

# The server ends the participant's session on purpose: the room's owner is done with the avatar.
_GONE_REASONS = frozenset(
    {
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
        rtc.DisconnectReason.ROOM_DELETED,
        rtc.DisconnectReason.ROOM_CLOSED,
        rtc.DisconnectReason.DUPLICATE_IDENTITY,
    }
)


def transcript_delta(chunk: str) -> list[TranscriptPiece]:
    """The pieces of one delta of an agent's transcript stream: plain text, or, with the agent's
    `TextOutputOptions(json_format=True)`, one TimedString JSON object per line, with the times its TTS
    gave (`start_time` / `end_time`, from `use_tts_aligned_transcript` and a TTS that times words)."""
    if not chunk.lstrip().startswith("{"):
        return [TranscriptPiece(chunk)]
    pieces = []
    for line in chunk.splitlines():
        if not line.strip():
            continue
        try:
            value = parse_message(line)
        except MessageRefused:
            return [TranscriptPiece(chunk)]
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            return [TranscriptPiece(chunk)]
        pieces.append(
            TranscriptPiece(value["text"], _seconds(value.get("start_time")), _seconds(value.get("end_time")))
        )
    return pieces


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _PlaybackStartedIsOptional(logging.Filter):
    """livekit-agents' receiver logs an ERROR on every utterance whose sender did not register
    lk.playback_started, which a stock agent's DataStreamAudioOutput registers only with
    wait_playback_start=True. The protocol makes it optional and the avatar plays on, so the first is
    said once at INFO with what it means, the rest at DEBUG."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR:
            return True  # checked first: the other records are not formatted here
        text = record.getMessage()
        if RPC_PLAYBACK_STARTED not in text or "register" not in text:
            return True
        if self.said:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        self.said = True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = (
            "the agent did not register lk.playback_started, so it is not told when the avatar starts "
            "playing its speech (optional; pass wait_playback_start=True to DataStreamAudioOutput to get "
            "it); said once",
            (),
        )
        return True


# On livekit-agents' own logger, where its receiver logs (livekit/agents/log.py).
_PLAYBACK_STARTED_FILTER = _PlaybackStartedIsOptional()


class _RoomScopedReceiver(DataStreamAudioReceiver):
    """The stock receiver, with three fixes for a worker process that serves many rooms of a real server.

    - livekit-agents keeps lk.clear_buffer handlers in one process-wide table keyed by the sender's
      identity, so two senders with the same identity in two rooms would get each other's interrupts:
      bind this room's RPC method to this receiver's own handler.
    - The stock receiver starts listening for audio streams only once LiveKit reports the sender
      *active*. A sender that joins after the avatar and streams at once (`facecast say`) has its first
      stream arrive before that, and it was dropped ("no callback attached"). Hold the streams that
      arrive before start() and hand them over.
    - An agent that does not register lk.playback_started costs an ERROR line per utterance in the
      stock receiver: said once, at INFO (_PlaybackStartedIsOptional)."""

    def __init__(self, room: rtc.Room, **kwargs: Any) -> None:
        super().__init__(room, **kwargs)
        agents_logger = logging.getLogger("livekit.agents")
        if _PLAYBACK_STARTED_FILTER not in agents_logger.filters:
            agents_logger.addFilter(_PLAYBACK_STARTED_FILTER)
        self._early: list[tuple[rtc.ByteStreamReader, str]] = []
        room.register_byte_stream_handler(AUDIO_STREAM_TOPIC, self._hold_early)

    def _hold_early(self, reader: rtc.ByteStreamReader, sender: str) -> None:
        self._early.append((reader, sender))

    async def start(self) -> None:
        await utils.wait_for_participant(
            self._room,
            identity=self._sender_identity,
            kind=None if self._sender_identity else rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        )
        # The sender is active now, so super().start() registers its handler without yielding to the
        # loop in between: no stream falls into the gap.
        self._room.unregister_byte_stream_handler(AUDIO_STREAM_TOPIC)
        await super().start()
        sender = self._remote_participant.identity if self._remote_participant else None
        # Written against livekit-agents 1.8; if these internals change shape, the stock behaviour stays.
        early, self._early = self._early, []
        readers = getattr(self, "_stream_readers", None)
        changed = getattr(self, "_stream_reader_changed", None)
        if readers is not None and changed is not None:
            for reader, identity in early:
                if identity == sender:
                    readers.append(reader)
                    changed.set()
        handler = getattr(DataStreamAudioReceiver, "_clear_buffer_handlers", {}).get(sender)
        if handler is not None:
            self._room.local_participant.register_rpc_method(RPC_CLEAR_BUFFER, handler)


class RoomAvatar:
    """One avatar in one LiveKit room, from joining to leaving. Construct it inside the event loop.

    `agent_identity` is whom to listen to; by default the `lk.publish_on_behalf` attribute of the worker
    token, else the first agent participant. `room` lets a caller supply the `rtc.Room` (an agent job's
    already-connected room, or a test double); a connected room is used as it is. `avatar` is a built-in
    name, an id in `library` (default: `AvatarLibrary()`, $FACECAST_AVATARS_DIR or
    ~/.local/share/facecast/avatars) or a `.facecast` path.

    `audio_receiver` replaces the agent's `lk.audio_stream` as the source of speech (the Facecast server
    feeds it from a LITE WebSocket); the worker then does not wait for the agent to join, and reports
    playback to that receiver only. `mouth_track` also sends each frame's mouth-track record
    (docs/mouth-track.md) as data packets on topic `facecast.mouth_track`, as the frame plays.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        avatar: str | AvatarRef = DEFAULT_AVATAR,
        aspect: str = "1:1",
        quality: str = "high",
        fps: int = 30,
        tracker: TrackerMode = "auto",
        language: str = "en",
        lookahead_ms: int = DEFAULT_LOOKAHEAD_MS,
        max_duration_s: float | None = None,
        on_end: Callable[[str], None] | None = None,
        agent_identity: str | None = None,
        agent_join_timeout_s: float = 60.0,
        sample_rate: int = 24000,
        room: rtc.Room | None = None,
        library: AvatarLibrary | None = None,
        audio_receiver: AudioReceiver | None = None,
        mouth_track: bool = False,
    ) -> None:
        self._audio_receiver = audio_receiver
        self._mouth_track = mouth_track
        self._library = library if library is not None else AvatarLibrary()
        found = find_avatar(avatar, self._library)
        look = Look(str(found), aspect, quality, fps=fps)  # checks the look's fields
        # validates the clock and the lip-sync
        EngineConfig(
            fps=fps, out_rate=sample_rate, tracker=tracker, language=language, lookahead_ms=lookahead_ms
        )
        if max_duration_s is not None and max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive, got {max_duration_s!r}")
        self._url = url
        self._token = token
        self._avatar, self._look = found, look
        self._tracker, self._language, self._lookahead_ms = tracker, language, lookahead_ms
        self._sample_rate = sample_rate
        self._max_duration_s = max_duration_s
        self._on_end = on_end
        self._agent_identity = agent_identity
        self._agent_join_timeout_s = agent_join_timeout_s
        self._room = room if room is not None else rtc.Room()
        self._owns_connection = not self._room.isconnected()

        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._runner: FacecastAvatarRunner | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._max_timer: asyncio.TimerHandle | None = None
        self._drain_tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._start_done = asyncio.Event()
        self._start_at: float | None = None
        self._error: str | None = None
        self._state: dict[str, str] | None = None  # the last session.state broadcast

    # -- public ----------------------------------------------------------------------------------------
    @property
    def room(self) -> rtc.Room:
        return self._room

    @property
    def agent_identity(self) -> str | None:
        return self._agent_identity

    @property
    def live_stats(self) -> LiveStats | None:
        """The live core's stats, once started; `stats()` has them as plain values, with the room's."""
        return self._runner.live_stats if self._runner is not None else None

    @property
    def runner(self) -> FacecastAvatarRunner | None:
        """The runner publishing the media, once started (for measurements)."""
        return self._runner

    async def start(self) -> None:
        """Connect, publish the audio track, announce `connected` and start serving. Raises (after
        ending the session with reason `error`) if any of that fails."""
        if self._started:
            raise RuntimeError("RoomAvatar.start() called twice")
        self._started = True
        self._start_at = time.monotonic()
        try:
            if not self._room.isconnected():
                # The worker consumes data streams only; subscribing to media would waste bandwidth.
                await self._room.connect(self._url, self._token, rtc.RoomOptions(auto_subscribe=False))
            local = self._room.local_participant
            self._agent_identity = self._agent_identity or local.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF)
            self._room.on("participant_disconnected", self._on_participant_disconnected)
            self._room.on("participant_connected", self._on_participant_connected)
            self._room.on("participant_attributes_changed", self._on_attributes_changed)
            self._room.on("disconnected", self._on_disconnected)
            # The agent broadcasts these to everyone; read them so the streams are consumed and closed.
            self._room.register_text_stream_handler(TOPIC_TRANSCRIPTION, self._drain_text)
            self._room.register_byte_stream_handler(TOPIC_AGENT_SESSION, self._drain_bytes)

            generator = FacecastVideoGenerator(
                avatar=self._avatar,
                aspect=self._look.aspect,
                quality=self._look.quality,
                fps=self._look.fps,
                sample_rate=self._sample_rate,
                tracker=self._tracker,
                language=self._language,
                lookahead_ms=self._lookahead_ms,
                library=self._library,
            )
            try:
                await generator.wait_ready()  # a damaged bundle fails the start, not the first frame
            except BaseException:
                await generator.aclose()
                raise
            # 20 ms frames rather than 100: a stream interrupted early has still shown us its audio.
            receiver = self._audio_receiver
            if receiver is None:
                receiver = _RoomScopedReceiver(
                    self._room, sender_identity=self._agent_identity, frame_size_ms=RECEIVE_FRAME_MS
                )
            self._runner = FacecastAvatarRunner(
                self._room, audio_recv=receiver, generator=generator, mouth_track=self._mouth_track
            )
            await self._runner.start(started_at=self._start_at)
            # Announced once the audio track is published, not at join: a real server relays data
            # packets sooner than the news of a new participant, and a packet sent right at join reaches
            # the others from a sender they do not know yet (DataPacket.participant is None).
            await self._publish_state(STATE_CONNECTED)
        except Exception as exc:
            self._error = f"start failed: {exc}"
            self._start_done.set()
            self._end(END_ERROR)
            await self.wait_closed()
            raise
        self._start_done.set()
        if self._shutdown_task is not None:
            return  # closed while starting; the shutdown waited for this and cleans up
        self._main_task = asyncio.create_task(self._main(), name="facecast-room-avatar")
        if self._max_duration_s is not None:
            self._max_timer = asyncio.get_running_loop().call_later(
                self._max_duration_s, self._end, END_MAX_DURATION
            )
        logger.info(
            "avatar joined room %s as %s, following %s",
            self._room.name,
            local.identity,
            self._agent_identity or "the first agent",
        )

    def fail(self, error: str) -> None:
        """End the session as `error`, telling the room why: session.state {"state": "error", "reason":
        error}, then {"state": "disconnected", "reason": "error"}. Returns at once; await `ended` or
        `wait_closed()` for the leave. A no-op when the session is already ending."""
        if self._shutdown_task is None:
            self._error = error
            self._end(END_ERROR)

    async def aclose(self, reason: str = END_STOPPED) -> None:
        """End the session (idempotent: the first reason wins) and wait until it has left the room."""
        self._end(reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self._shutdown_task is not None:
            await asyncio.shield(self._shutdown_task)

    def stats(self) -> dict[str, Any]:
        """Counters and latencies, JSON-serialisable; see FacecastAvatarRunner.stats for the fields."""
        out: dict[str, Any] = {
            "state": "ended" if self.ended.done() else ("running" if self._started else "created"),
            "end_reason": self.ended.result() if self.ended.done() else None,
            "room": self._room.name,
            "agent_identity": self._agent_identity,
            "uptime_s": round(time.monotonic() - self._start_at, 3) if self._start_at else 0.0,
        }
        if self._runner is not None:
            out.update(self._runner.stats())
        return out

    # -- lifecycle -------------------------------------------------------------------------------------
    async def _main(self) -> None:
        assert self._runner is not None
        if self._audio_receiver is not None:  # speech comes from elsewhere: no agent to wait for
            await self._run_runner()
            return
        try:
            agent = await asyncio.wait_for(
                utils.wait_for_participant(
                    self._room,
                    identity=self._agent_identity,
                    kind=None if self._agent_identity else rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
                ),
                self._agent_join_timeout_s,
            )
        except TimeoutError:
            logger.warning("agent %s never joined room %s", self._agent_identity, self._room.name)
            self._end(END_CLIENT_GONE)
            return
        except RuntimeError:
            return  # the room disconnected; _on_disconnected ends the session
        self._agent_identity = agent.identity
        self._set_listening(agent)
        await self._run_runner()

    async def _run_runner(self) -> None:
        assert self._runner is not None
        try:
            await self._runner.wait()
        except Exception as exc:
            logger.exception("avatar runner failed in room %s", self._room.name)
            self._error = str(exc) or type(exc).__name__
            self._end(END_ERROR)

    def _end(self, reason: str) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(reason), name="facecast-room-avatar-end")

    async def _shutdown(self, reason: str) -> None:
        if self._started:
            await self._start_done.wait()  # a close during start() cleans up what start() made
        if self._max_timer is not None:
            self._max_timer.cancel()
        if self._main_task is not None and self._main_task is not asyncio.current_task():
            self._main_task.cancel()
        try:
            if reason == END_ERROR and self._error:
                await self._publish_state(STATE_ERROR, self._error)
            if self._runner is not None and self._audio_receiver is None:
                await self._release_agent(self._runner.interrupt_pending())
            await self._publish_state(STATE_DISCONNECTED, reason)
            if self._runner is not None:
                await self._runner.aclose()
            for task in self._drain_tasks:
                task.cancel()
            self._room.off("participant_disconnected", self._on_participant_disconnected)
            self._room.off("participant_connected", self._on_participant_connected)
            self._room.off("participant_attributes_changed", self._on_attributes_changed)
            self._room.off("disconnected", self._on_disconnected)
            if self._owns_connection and self._room.isconnected():
                await self._room.disconnect()
        except Exception:
            logger.exception("error while leaving room %s", self._room.name)
        finally:
            logger.info("avatar left room %s: %s", self._room.name, reason)
            if not self.ended.done():
                self.ended.set_result(reason)
            if self._on_end is not None:
                try:
                    self._on_end(reason)
                except Exception:
                    logger.exception("on_end callback failed")

    async def _release_agent(self, positions: list[float]) -> None:
        """Answer the segments still playing while we leave, so the agent does not wait for them."""
        if not positions or not self._agent_identity or not self._room.isconnected():
            return
        for position in positions:
            payload = json.dumps(
                {
                    "playback_position": round(position, 3),
                    "interrupted": True,
                    "synchronized_transcript": None,
                }
            )
            try:
                await self._room.local_participant.perform_rpc(
                    destination_identity=self._agent_identity,
                    method=RPC_PLAYBACK_FINISHED,
                    payload=payload,
                    response_timeout=2.0,
                )
            except Exception as exc:
                logger.debug("could not tell the agent about an unfinished segment: %s", exc)

    async def _publish_state(self, state: str, reason: str = "", to: list[str] | None = None) -> None:
        if to is None:
            self._state = {"state": state, "reason": reason}
        if not self._room.isconnected():
            return
        payload = json.dumps({"state": state, "reason": reason})
        try:
            await self._room.local_participant.publish_data(
                payload, reliable=True, topic=SESSION_STATE_TOPIC, destination_identities=to or []
            )
        except Exception as exc:
            logger.debug("could not publish session.state %s: %s", state, exc)

    # -- room events -----------------------------------------------------------------------------------
    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        # A frontend that joins later has missed the broadcast: tell it the current state.
        if self._state is not None and self._shutdown_task is None:
            self._track(self._publish_state(**self._state, to=[participant.identity]))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._agent_identity:
            logger.info("agent %s left room %s", participant.identity, self._room.name)
            self._end(END_CLIENT_GONE)
        elif not self._room.remote_participants:
            self._end(END_CLIENT_GONE)

    def _on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        self._error = f"disconnected from the room ({rtc.DisconnectReason.Name(reason)})"
        self._end(END_CLIENT_GONE if reason in _GONE_REASONS else END_ERROR)

    def _on_attributes_changed(self, changed: list[str], participant: rtc.Participant) -> None:
        if participant.identity == self._agent_identity and ATTRIBUTE_AGENT_STATE in changed:
            self._set_listening(participant)

    def _set_listening(self, agent: rtc.Participant) -> None:
        if self._runner is not None:
            self._runner.generator.set_listening(agent.attributes.get(ATTRIBUTE_AGENT_STATE) == "listening")

    def _drain_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        runner = self._runner
        audio = runner.audio_publication if runner is not None else None
        if (
            runner is None
            or audio is None
            or not self._is_agent_speech(reader.info.attributes, sender, audio.sid)
        ):
            self._track(reader.read_all())
            return

        async def feed() -> None:
            leads: bool | None = None  # decided when the stream's first words come
            async for chunk in reader:
                if leads is None:
                    leads = runner.transcript_leads_playback()
                if leads:
                    runner.add_transcript(transcript_delta(chunk))
            if leads:
                runner.end_transcript()

        self._track(feed())

    def _is_agent_speech(self, attributes: dict[str, str], sender: str, audio_sid: str) -> bool:
        """Whether a transcript stream is of the speech this avatar plays: its words go to the engine.

        livekit-agents (1.8.9) sends users' transcripts as the user and the agent's as the agent. It
        stamps the agent's text stream with `lk.transcribed_track_id` only when the agent publishes the
        audio itself: for an avatar that publishes on its behalf the attribute is absent (the deprecated
        transcription API gets the avatar's track). So: sent as our agent, stamped with our track or none.
        """
        track = attributes.get(TRANSCRIBED_TRACK)
        return sender == self._agent_identity and (track is None or track == audio_sid)

    def _drain_bytes(self, reader: rtc.ByteStreamReader, _sender: str) -> None:
        async def drain() -> None:
            async for _ in reader:
                pass

        self._track(drain())

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._drain_tasks.add(task)
        task.add_done_callback(self._drain_tasks.discard)
        # a failed drain is harmless; retrieve the exception so it is not reported as unhandled
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def __aenter__(self) -> RoomAvatar:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


async def run_room_avatar(avatar: RoomAvatar) -> str:
    """Start `avatar` and wait until it ends; returns the end reason. Cancelling ends it as stopped."""
    await avatar.start()
    try:
        return await asyncio.shield(avatar.ended)
    finally:
        with contextlib.suppress(Exception):
            await avatar.aclose()
