"""Remote mode: the avatar is rendered by a Facecast server (a LITE session), not in the bot's process.

`FacecastVideoService(server_url=..., api_key=...)` uses this. The session is created over the server's
REST API, the TTS audio goes up its LITE WebSocket (``agent.speak``, 24 kHz PCM16), and the avatar's audio
(Opus) and video come back over WebRTC to an aiortc peer in the bot, which pushes them into the pipeline
as (``TTSAudioRawFrame``, ``OutputImageRawFrame``) pairs, as the in-process avatar does.

Keeping audio and video together: aiortc delays received audio by its jitter buffer (about 80 ms) but
not video, so the video is held back by the difference, measured from the RTCP sender reports (the way
a browser lines the tracks up). Only speech audio is pushed: the server streams silence while idle,
which would keep the transport's bot-speaking state on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import OutputImageRawFrame
from pipecat.processors.frame_processor import FrameProcessor

from facecast import protocol as p
from facecast.client import LiteClient, LiteSocket, MintedSession, ReceivingPeer, ServerError
from pipecat_facecast._playout import SEGMENT_DONE, ImagePacer, OutputResampler, Position

if TYPE_CHECKING:  # remote mode runs without the engine: these are only types here
    from facecast.engine import PhoneTiming
    from pipecat_facecast._local import EmitFrame

SILENCE_LEVEL = 64  # int16 peak below which decoded Opus counts as the server's idle silence
SPEECH_END_QUIET_SECS = 0.12  # after the server reports the end, this much silence ends the speech run
DEFAULT_AUDIO_LAG_SECS = 0.07  # aiortc's audio jitter buffer (4 packets) until sender reports say more
MAX_VIDEO_HOLD_SECS = 0.3
CONNECT_TIMEOUT_SECS = 20.0
KEEP_ALIVE_SECS = 60.0
SERVER_RATE = 48000  # Opus

# The Facecast server refused a request; the message is the server's (this module's name for it).
FacecastServerError = ServerError


class RemoteAvatar:
    """A LITE session on a Facecast server, seen by the service as an avatar."""

    def __init__(
        self,
        owner: FrameProcessor,
        emit: EmitFrame,
        *,
        server_url: str,
        api_key: str,
        session: aiohttp.ClientSession | None,
        avatar: str,
        fps: int,
        aspect: str,
        quality: str,
    ) -> None:
        """Describe the session; nothing is contacted until `setup()`.

        Args:
            owner: The processor whose task manager runs the session's tasks.
            emit: Called with every (audio, image) pair received.
            server_url: The server's base URL.
            api_key: The server's API key.
            session: HTTP session to use; one is created (and closed) when None.
            avatar: Avatar id on the server.
            fps: Frame rate of the session.
            aspect: Aspect ratio of the session.
            quality: Quality preset of the session.
        """
        self._owner = owner
        self._emit = emit
        self._client = LiteClient(server_url, api_key, http=session)
        self._token_body = {
            "mode": "LITE",
            "avatar_id": avatar,
            "aspect_ratio": aspect,
            "fps": fps,
            "video_settings": {"quality": quality, "encoding": "VP8"},
            "transport": "webrtc",
        }
        self._minted: MintedSession | None = None
        self._peer: ReceivingPeer | None = None
        self._ws: LiteSocket | None = None
        self._connect_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._connected = asyncio.Event()
        self._up = create_stream_resampler(clear_after_secs=None)  # TTS → 24 kHz for agent.speak
        self._down: OutputResampler | None = None  # 48 kHz Opus → the pipeline's rate
        self._video: deque[tuple[float, OutputImageRawFrame]] = deque()
        self._video_ready = asyncio.Event()
        self._pacer = ImagePacer(fps)
        self._audio: list[np.ndarray] = []  # speech received since the last video frame went out
        self._running = False
        self._failed = False  # the session could not be set up: nothing will play
        self._stopping = False
        # Utterances: segment ids are ours; the server knows them by event id.
        self._next_segment = 0
        self._open: tuple[int, str] | None = None  # (segment id, event id) being sent
        self._event_segments: dict[str, int] = {}  # sent and not reported finished
        self._finished: deque[tuple[float, int]] = deque()  # (when its end reaches us, segment id)
        self._speaking = False  # a speech run is being pushed
        self._quiet_secs = 0.0
        self._discarding = False  # after an interruption, until the server's audio is silent again
        self._started_run = False

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether received media is being pushed into the pipeline."""
        return self._running and not self._failed

    @property
    def pending_speech(self) -> bool:
        """Whether speech was sent that has not been played out yet."""
        return bool(self._event_segments) or self._speaking or bool(self._finished)

    async def setup(self, sample_rate: int) -> None:
        """Start creating the session while the rest of the pipeline sets up."""
        self._down = OutputResampler(SERVER_RATE, sample_rate)
        self._connect_task = self._owner.create_task(self._connect(), "facecast-connect")

    async def start(self) -> None:
        """The output transport is ready: push the avatar's media from now on."""
        self._running = True

    async def stop(self) -> None:
        """End the session and close everything; idempotent."""
        self._running = False
        self._stopping = True  # the server's session.stopped for our own stop is no error
        tasks = [t for t in (self._connect_task, *self._tasks) if t is not None]
        self._connect_task, self._tasks = None, []
        for task in tasks:
            await self._owner.cancel_task(task)
        if self._minted is not None:
            with contextlib.suppress(aiohttp.ClientError, ServerError, TimeoutError):
                await self._client.stop(self._minted)
            self._minted = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._peer is not None:
            await self._peer.close()
            self._peer = None
        await self._client.close()

    # -- speech up ------------------------------------------------------------------------------------
    async def speak(
        self, pcm: bytes, sample_rate: int, channels: int, phones: Sequence[PhoneTiming] | None
    ) -> int:
        """Send TTS audio (phone timings are not part of the LITE protocol and are not sent)."""
        if self._connect_task is not None and not self._connected.is_set():
            await asyncio.wait([self._connect_task])  # speech waits for the session: it cannot play before
        if self._failed:
            return self._next_segment
        if self._open is None:
            self._open = (self._next_segment, uuid.uuid4().hex)
            self._next_segment += 1
            self._event_segments[self._open[1]] = self._open[0]
        segment_id, event_id = self._open
        if channels > 1:
            pcm = np.frombuffer(pcm, np.int16).reshape(-1, channels).mean(axis=1).astype(np.int16).tobytes()
        audio = await self._up.resample(pcm, sample_rate, p.LITE_AUDIO_RATE)
        if audio:
            await self._send(lambda ws: ws.speak(event_id, audio), wait=True)
        return segment_id

    async def add_text(self, text: str) -> None:
        """Words of the utterance: not part of the LITE protocol, so the server recognises the audio."""

    async def add_words(self, text: str, start: float, duration: float | None) -> None:
        """Timed words: not part of the LITE protocol either."""

    async def end_speech(self, text: str | None) -> None:
        """The utterance is complete (the text is not part of the LITE protocol)."""
        if self._open is None:
            return
        _, event_id = self._open
        self._open = None
        tail = await self._up.flush()
        if tail:
            await self._send(lambda ws: ws.speak(event_id, tail), wait=True)
        await self._send(lambda ws: ws.speak_end(event_id), wait=True)

    async def interrupt(self) -> None:
        """Stop the avatar speaking and drop the speech still on its way to us."""
        self._open = None
        self._event_segments.clear()
        self._finished.clear()
        self._audio.clear()
        self._speaking = False
        self._discarding = True
        await self._up.reset()
        if self._down is not None:
            await self._down.reset()
        await self._send(LiteSocket.interrupt)

    async def set_listening(self, listening: bool) -> None:
        """Show the attentive pose while the user talks."""
        await self._send(lambda ws: ws.set_listening(listening))

    # -- session --------------------------------------------------------------------------------------
    async def _connect(self) -> None:
        try:
            self._minted = await self._client.mint(self._token_body)
            started = await self._client.start(self._minted)
            if started.webrtc is None or started.ws_url is None:
                raise ValueError(f"session {started.session_id} is not a WebRTC session")
            channel = started.webrtc
            self._peer = ReceivingPeer(
                # No ICE servers from the server: aiortc's default (a public STUN server), as browsers do.
                ice_servers=channel.ice_servers or None,
                data_channel=(channel.data_channel_label, channel.data_channel_id),
                on_audio=self._receive_audio,
                on_video=self._receive_video,
                sender_clocks=True,
            )
            await self._peer.connect(self._client, started)
            self._ws = await LiteSocket.connect(
                self._client.http, started.ws_url, on_event=self._on_event, keep_events=False
            )
            self._tasks.append(self._owner.create_task(self._pump_video(), "facecast-video"))
            idle = started.idle_timeout or KEEP_ALIVE_SECS * 3
            self._tasks.append(self._owner.create_task(self._keep_alive(min(KEEP_ALIVE_SECS, idle / 3))))
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_SECS)
            logger.info(f"Facecast session {started.session_id} connected")
        except (aiohttp.ClientError, ServerError, TimeoutError, KeyError, ValueError) as e:
            # pydantic's ValidationError is a ValueError: a bad setting, named by the server's own model.
            self._failed = True
            await self._owner.push_error(
                f"Facecast server session failed: {e}", exception=e, force_treat_as_permanent=True
            )

    async def _send(self, send: Callable[[LiteSocket], Awaitable[float]], *, wait: bool = False) -> None:
        """Send a LITE message (`send(socket)` does) once the session is connected.

        With `wait`, wait for the connection first (speech must not be lost); otherwise drop the message
        if the session is not connected (a pose or an interrupt is moot then).
        """
        if wait and self._connect_task is not None and not self._connected.is_set():
            await asyncio.wait([self._connect_task])
        if self._ws is None or self._ws.closed or not self._connected.is_set():
            return
        await send(self._ws)

    async def _keep_alive(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self._send(LiteSocket.keep_alive)

    async def _on_event(self, event: dict[str, Any]) -> None:
        if self._stopping:
            return
        kind = event.get("type")
        if kind == p.SESSION_STATE_UPDATED and event.get("state") == p.WS_STATE_CONNECTED:
            self._connected.set()
        elif kind in (p.AGENT_SPEAK_ENDED, p.AGENT_SPEAK_INTERRUPTED):
            segment = self._event_segments.pop(event.get("event_id"), None)
            if segment is not None:
                # The event leaves with the utterance's last frame, whose audio is still on its way,
                # behind the video by about as much as the video is held back.
                self._finished.append((time.monotonic() + self._video_hold(), segment))
        elif kind == p.ERROR:
            logger.warning(f"Facecast server: {event.get('message')}")
        elif kind == p.SESSION_STOPPED:
            await self._owner.push_error(
                f"Facecast session ended by the server ({event.get('end_reason')})",
                force_treat_as_permanent=True,
            )

    # -- media down -----------------------------------------------------------------------------------
    def _receive_audio(self, frame: Any, arrival: float) -> None:
        if not self._running:
            return
        samples = frame.to_ndarray().reshape(-1)[:: len(frame.layout.channels)].astype(np.int16)
        self._take_audio(samples, frame.samples / frame.sample_rate)

    def _take_audio(self, samples: np.ndarray, seconds: float) -> None:
        loud = int(np.abs(samples.astype(np.int32)).max(initial=0)) > SILENCE_LEVEL
        if self._discarding:
            self._discarding = loud  # the interrupted speech still arriving
            return
        if not self._speaking:
            if not (loud and self._event_segments):
                return  # idle silence, never pushed
            self._speaking, self._started_run, self._quiet_secs = True, True, 0.0
        self._audio.append(samples)
        self._quiet_secs = 0.0 if loud else self._quiet_secs + seconds
        if not self._event_segments and self._quiet_secs >= SPEECH_END_QUIET_SECS:
            self._speaking = False  # everything sent has been reported played, and it went quiet

    def _receive_video(self, frame: Any, arrival: float) -> None:
        if not self._running:
            return
        image = OutputImageRawFrame(
            image=frame.to_ndarray(format="rgb24").tobytes(), size=(frame.width, frame.height), format="RGB"
        )
        self._video.append((arrival + self._video_hold(), image))
        self._video_ready.set()

    def _video_hold(self) -> float:
        clocks = self._peer.clocks if self._peer is not None else {}
        audio = clocks["audio"].latency if "audio" in clocks else None
        video = clocks["video"].latency if "video" in clocks else None
        if audio is None or video is None:
            return DEFAULT_AUDIO_LAG_SECS
        return min(max(audio - video, 0.0), MAX_VIDEO_HOLD_SECS)

    async def _pump_video(self) -> None:
        """Push each video frame when its audio has caught up, with the speech received up to then."""
        while True:
            while not self._video:
                self._video_ready.clear()
                await self._video_ready.wait()
            due, image = self._video.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            # After a hold-up the frames received meanwhile come in a burst: their audio all goes, their
            # images only as fast as the output transport draws them.
            await self._push_pair(image if self._pacer.admit(time.monotonic()) else None)

    async def _push_pair(self, image: OutputImageRawFrame | None) -> None:
        assert self._down is not None
        # The audio belongs to the oldest utterance not yet played out (its end event may be here already).
        playing = [segment for _, segment in self._finished] + list(self._event_segments.values())
        segment = min(playing, default=None)
        audio_bytes: bytes | None = None
        run_ended = not self._speaking and bool(self._audio)
        if self._audio:
            samples = np.concatenate(self._audio)
            self._audio.clear()
            audio_bytes = await self._down.convert(samples, segment_end=run_ended) or None
        played: Position | None = None
        now = time.monotonic()
        while self._finished and (
            self._finished[0][0] <= now and (self._event_segments or not self._speaking)
        ):
            played = (self._finished.popleft()[1], SEGMENT_DONE)
        if run_ended:
            while self._finished:
                played = (self._finished.popleft()[1], SEGMENT_DONE)
        started, self._started_run = self._started_run, False
        await self._emit(audio_bytes, image, segment, played, started)
