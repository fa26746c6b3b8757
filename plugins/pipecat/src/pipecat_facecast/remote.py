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
import base64
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import OutputImageRawFrame
from pipecat.processors.frame_processor import FrameProcessor

from facecast import protocol as p
from facecast.client.sender_clock import SenderClock
from facecast.engine import PhoneTiming
from pipecat_facecast._local import EmitFrame
from pipecat_facecast._playout import SEGMENT_DONE, ImagePacer, OutputResampler, Position

SILENCE_LEVEL = 64  # int16 peak below which decoded Opus counts as the server's idle silence
SPEECH_END_QUIET_SECS = 0.12  # after the server reports the end, this much silence ends the speech run
DEFAULT_AUDIO_LAG_SECS = 0.07  # aiortc's audio jitter buffer (4 packets) until sender reports say more
MAX_VIDEO_HOLD_SECS = 0.3
CONNECT_TIMEOUT_SECS = 20.0
KEEP_ALIVE_SECS = 60.0
SERVER_RATE = 48000  # Opus
VIDEO_CLOCK = 90000


class FacecastServerError(RuntimeError):
    """The Facecast server refused a request; the message is the server's."""


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
        self._base = server_url.rstrip("/")
        self._api_key = api_key
        self._http = session
        self._own_http = session is None
        self._token_body = {
            "mode": "LITE",
            "avatar_id": avatar,
            "aspect_ratio": aspect,
            "fps": fps,
            "video_settings": {"quality": quality, "encoding": "VP8"},
            "transport": "webrtc",
        }
        self._session_id: str | None = None
        self._token: str | None = None
        self._pc: RTCPeerConnection | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connect_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._connected = asyncio.Event()
        self._clocks = {"audio": SenderClock(SERVER_RATE), "video": SenderClock(VIDEO_CLOCK)}
        self._up = create_stream_resampler(clear_after_secs=None)  # TTS → 24 kHz for agent.speak
        self._down: OutputResampler | None = None  # 48 kHz Opus → the pipeline's rate
        self._video: deque[tuple[float, OutputImageRawFrame]] = deque()
        self._video_ready = asyncio.Event()
        self._pacer = ImagePacer(fps)
        self._audio: list[np.ndarray] = []  # speech received since the last video frame went out
        self._running = False
        self._failed = False  # the session could not be set up: nothing will play
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
        tasks = [t for t in (self._connect_task, *self._tasks) if t is not None]
        self._connect_task, self._tasks = None, []
        for task in tasks:
            await self._owner.cancel_task(task)
        if self._token is not None:
            with contextlib.suppress(aiohttp.ClientError, FacecastServerError, TimeoutError):
                await self._post(f"{p.API_PREFIX}/sessions/stop", {"session_id": self._session_id})
            self._token = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._pc is not None:
            await self._pc.close()
            self._pc = None
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

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
            await self._send({"type": p.AGENT_SPEAK, "event_id": event_id, "audio": _b64(audio)}, wait=True)
        return segment_id

    async def add_text(self, text: str) -> None:
        """Words of the utterance: not part of the LITE protocol, so the server recognises the audio."""

    async def end_speech(self, text: str | None) -> None:
        """The utterance is complete (the text is not part of the LITE protocol)."""
        if self._open is None:
            return
        _, event_id = self._open
        self._open = None
        tail = await self._up.flush()
        if tail:
            await self._send({"type": p.AGENT_SPEAK, "event_id": event_id, "audio": _b64(tail)}, wait=True)
        await self._send({"type": p.AGENT_SPEAK_END, "event_id": event_id}, wait=True)

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
        await self._send({"type": p.AGENT_INTERRUPT})

    async def set_listening(self, listening: bool) -> None:
        """Show the attentive pose while the user talks."""
        await self._send({"type": p.AGENT_START_LISTENING if listening else p.AGENT_STOP_LISTENING})

    # -- session --------------------------------------------------------------------------------------
    async def _connect(self) -> None:
        try:
            if self._http is None:
                self._http = aiohttp.ClientSession()
            minted = await self._post(f"{p.API_PREFIX}/sessions/token", self._token_body, api_key=True)
            self._session_id, self._token = minted["session_id"], minted["session_token"]
            started = await self._post(f"{p.API_PREFIX}/sessions/start", {"session_id": self._session_id})
            await self._connect_peer(started["webrtc"])
            self._ws = await self._http.ws_connect(started["ws_url"], max_msg_size=0)
            self._tasks.append(self._owner.create_task(self._receive_events(), "facecast-events"))
            self._tasks.append(self._owner.create_task(self._pump_video(), "facecast-video"))
            idle = float(started.get("idle_timeout") or KEEP_ALIVE_SECS * 3)
            self._tasks.append(self._owner.create_task(self._keep_alive(min(KEEP_ALIVE_SECS, idle / 3))))
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_SECS)
            logger.info(f"Facecast session {self._session_id} connected")
        except (aiohttp.ClientError, FacecastServerError, TimeoutError, KeyError, ValueError) as e:
            self._failed = True
            await self._owner.push_error(
                f"Facecast server session failed: {e}", exception=e, force_treat_as_permanent=True
            )

    async def _connect_peer(self, webrtc: dict[str, Any]) -> None:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in webrtc.get("ice_servers", [])
        ]
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        for kind in ("audio", "video"):
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            self._clocks[kind].watch(transceiver.receiver)
        channel = webrtc.get("data_channel") or {}
        # The server creates the same negotiated channel; the offer must carry its m-line.
        pc.createDataChannel(
            channel.get("label", p.DATA_CHANNEL_LABEL), negotiated=True, id=channel.get("id", 0)
        )
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self._post(webrtc["offer_url"], {"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def _post(self, path: str, body: dict[str, Any], *, api_key: bool = False) -> dict[str, Any]:
        assert self._http is not None
        url = path if path.startswith("http") else self._base + path
        headers = {"X-API-KEY": self._api_key} if api_key else {"Authorization": f"Bearer {self._token}"}
        async with self._http.post(url, json=body, headers=headers) as response:
            payload = await response.json(content_type=None)
        if response.status >= 400 or not isinstance(payload, dict) or payload.get("code") != p.CODE_OK:
            message = payload.get("message") if isinstance(payload, dict) else payload
            raise FacecastServerError(f"{path}: HTTP {response.status}: {message}")
        return payload["data"]

    async def _send(self, message: dict[str, Any], *, wait: bool = False) -> None:
        """Send a LITE message once the session is connected.

        With `wait`, wait for the connection first (speech must not be lost); otherwise drop the message
        if the session is not connected (a pose or an interrupt is moot then).
        """
        if wait and self._connect_task is not None and not self._connected.is_set():
            await asyncio.wait([self._connect_task])
        if self._ws is None or self._ws.closed or not self._connected.is_set():
            return
        await self._ws.send_str(json.dumps(message))

    async def _keep_alive(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self._send({"type": p.SESSION_KEEP_ALIVE})

    async def _receive_events(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(message.data)
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
                break

    # -- media down -----------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        receive = self._receive_audio if track.kind == "audio" else self._receive_video
        self._tasks.append(self._owner.create_task(receive(track), f"facecast-{track.kind}"))

    async def _receive_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._clocks["audio"].note_arrival(frame.pts, time.monotonic())
            if not self._running:
                continue
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

    async def _receive_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = time.monotonic()
            self._clocks["video"].note_arrival(frame.pts, arrival)
            if not self._running:
                continue
            image = OutputImageRawFrame(
                image=frame.to_ndarray(format="rgb24").tobytes(),
                size=(frame.width, frame.height),
                format="RGB",
            )
            self._video.append((arrival + self._video_hold(), image))
            self._video_ready.set()

    def _video_hold(self) -> float:
        audio, video = self._clocks["audio"].latency, self._clocks["video"].latency
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


def _b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")
