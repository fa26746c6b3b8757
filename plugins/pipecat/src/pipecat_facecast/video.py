"""Facecast talking-avatar video service for Pipecat.

`FacecastVideoService` sits between the TTS service and the output transport. It swallows the TTS audio,
renders a lip-synced face for it and pushes paced (`TTSAudioRawFrame`, `OutputImageRawFrame`) pairs: the
avatar is the A/V master clock, so audio and video leave together and stay in sync. Between utterances it
keeps pushing idle video (breathing, blinking, listening) and no audio at all, so the output transport's
bot-speaking state follows the speech exactly.

Rendering runs in-process by default; with `server_url` it uses a session on a Facecast server instead and
pushes that server's audio and video into the pipeline (see `pipecat_facecast.remote`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import aiohttp
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    OutputTransportReadyFrame,
    ServiceUpdateSettingsFrame,
    StartFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings
from pipecat.utils.types import NOT_GIVEN, NotGiven

from facecast.protocol import BACKGROUNDS, DEFAULT_AVATAR, FPS_CHOICES, frame_size
from pipecat_facecast._playout import SEGMENT_DONE, PlayoutGate, Position

# Remote mode (server_url) runs without the engine and the avatars: local mode imports them when it is used.
if TYPE_CHECKING:
    from facecast.avatars import Look
    from facecast.engine import PhoneTiming, Renderer
    from facecast.engine.config import TrackerMode
    from pipecat_facecast._local import LocalAvatar

PHONES_METADATA_KEY = "facecast.phones"
"""`TTSAudioRawFrame.metadata` key for phone timings (a list of `facecast.engine.PhoneTiming`, in seconds
from the frame's first sample). A TTS that knows its phones can attach them: the mouth then follows them
exactly instead of recognising the speech (`EspeakTTSService` does)."""

AUTO_END_SECS = 0.35  # audio without TTSStartedFrame/TTSStoppedFrame: a pause this long ends the utterance
DRAIN_GRACE_SECS = 2.0  # EndFrame: how long past the queued speech to wait for it to play out


@dataclass
class FacecastVideoSettings(ServiceSettings):
    """Runtime settings for `FacecastVideoService`.

    Update them while running with
    ``ServiceUpdateSettingsFrame(delta=FacecastVideoService.Settings(avatar="leo"))``: the look changes
    from the next frame, the frame rate at the next pause in the speech. A new size needs a transport
    whose ``video_out_width``/``video_out_height`` match (Pipecat resizes other sizes, at a CPU cost).

    Parameters:
        avatar: A built-in avatar (ava, leo, mira, noah), the id of an avatar in the local avatar library
            (``facecast avatar create``; ``$FACECAST_AVATARS_DIR``, default
            ``~/.local/share/facecast/avatars``), or the path of a ``.facecast`` file. In remote mode, an
            avatar id on the server (checked by the server).
        fps: Video frame rate, 25 or 30. Use 30 with ``SmallWebRTCTransport``, which stamps video at a
            fixed 30 fps.
        aspect: Frame aspect ratio: "1:1", "4:3" or "3:4".
        quality: Frame size preset: "low", "medium", "high" or "very_high" (1:1: 256, 384, 512, 768 px).
        background: "scene", "green" (chroma key) or "transparent" (RGBA frames, e.g. for LiveKit).
    """

    avatar: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    fps: int | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    aspect: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    quality: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    background: str | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class _Avatar(Protocol):
    """What renders: the in-process engine or a Facecast server session."""

    running: bool
    pending_speech: bool

    async def setup(self, sample_rate: int) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def speak(
        self, pcm: bytes, sample_rate: int, channels: int, phones: list[PhoneTiming] | None
    ) -> int: ...
    async def add_text(self, text: str) -> None: ...
    async def add_words(self, text: str, start: float, duration: float | None) -> None: ...
    async def end_speech(self, text: str | None) -> None: ...
    async def interrupt(self) -> None: ...
    async def set_listening(self, listening: bool) -> None: ...


@dataclass
class _Utterance:
    """The TTS audio of one response as it arrives: one engine segment."""

    explicit: bool  # opened by a TTSStartedFrame (so a TTSStoppedFrame will close it)
    context_id: str | None
    segment_id: int | None = None  # set by the first audio
    samples: int = 0  # input samples so far
    sample_rate: int = 0
    text: str = ""
    text_sent: int = 0  # characters of `text` already given to the engine
    # Pipecat's clock time the TTS times this utterance's words from (their `pts`), set by the first audio.
    words_clock_ns: int | None = None
    # The latest word the TTS timed, with its start: it goes to the engine once the next word ends it.
    timed_word: tuple[str, float] | None = None
    last_audio: float = 0.0  # time.monotonic() of the latest audio


@dataclass
class _Segment:
    """An engine segment on its way out."""

    context_id: str | None
    seconds: float = 0.0


class FacecastVideoService(AIService):
    """Lip-synced avatar video for the bot's speech, rendered on the CPU by Facecast.

    Place it right after the TTS service, before ``transport.output()``; the transport needs
    ``video_out_enabled=True``, ``video_out_is_live=True``, ``video_out_width/height`` equal to
    `video_size` and ``video_out_framerate`` equal to the settings' fps.

    Frames in → out:

    - ``TTSAudioRawFrame`` (any rate, mono or stereo) is swallowed; pairs of ``TTSAudioRawFrame`` (at the
      pipeline's output rate, one frame's worth) + ``OutputImageRawFrame`` come out every 1/fps.
    - Idle ``OutputImageRawFrame``s come out from the moment the output transport is ready
      (``OutputTransportReadyFrame``), with no audio.
    - Frames that arrive behind TTS audio (``TTSStoppedFrame``, ``TTSTextFrame``, ...) come out after
      that audio's pair, so the transport's ``BotStoppedSpeakingFrame`` fires when the speech ends.
    - ``InterruptionFrame`` drops all pending speech at once; the mouth closes within two frames.
    - ``TTSTextFrame`` text is passed to the engine, which aligns it to the audio as the audio arrives.
      Words a TTS with word timestamps timed (their ``pts``) go with their times: each word is aligned
      inside its own span of the audio.
    - ``UserStartedSpeakingFrame``/``UserStoppedSpeakingFrame`` switch the attentive listening pose.

    Event handlers: none beyond `AIService`'s. Metrics: TTFB is the time from the first TTS audio of an
    utterance to its first video frame.
    """

    Settings = FacecastVideoSettings
    _settings: Settings

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        sample_rate: int | None = None,
        lookahead_ms: int | None = None,
        tracker: TrackerMode = "auto",
        language: str = "en",
        align_text: bool = True,
        seed: int = 0,
        renderer: Renderer | None = None,
        server_url: str | None = None,
        api_key: str | None = None,
        aiohttp_session: aiohttp.ClientSession | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialize the Facecast video service.

        Args:
            settings: Runtime settings (avatar, fps, aspect, quality, background); unset fields take the
                defaults ava, 30 fps, 1:1, high (512×512), scene.
            sample_rate: Output audio rate in Hz; defaults to the pipeline's ``audio_out_sample_rate``.
            lookahead_ms: Audio the engine reads ahead to decide the mouth (0–200 ms; default 100, the
                accuracy knee). It delays speech by that much and is the main part of the first-frame
                latency.
            tracker: Mouth tracker: "auto" (phone recognition for English, energy otherwise), "phones" or
                "energy".
            language: Language of the speech, for the tracker ("en", "de", ...).
            align_text: Pass the TTS text (``TTSTextFrame``, with its word times where the TTS gives
                them) to the engine, which aligns it to the audio: the most accurate mouth tracking.
                The alignment runs on the engine's worker thread but holds the GIL for about 12–30 ms
                per second of speech; set False to track from the audio alone.
            seed: Seed of the idle motion (blinks, gaze, sway), for reproducible output.
            renderer: Your own avatar: any ``facecast.engine.Renderer`` (``width``, ``height``,
                ``channels`` and ``render(FaceState) -> HxWxC uint8``). It replaces the built-in avatars;
                the avatar, aspect, quality and background settings are then not used.
            server_url: Base URL of a Facecast server (e.g. "https://avatars.example.com"). When given,
                the avatar is rendered there (a LITE session) and its media is received over WebRTC;
                nothing is rendered in this process. The server then decides the look-ahead and the
                tracker, the background is its scene, and phone timings and text are not sent.
            api_key: The server's API key (remote mode).
            aiohttp_session: HTTP session for the server's REST API (remote mode); one is created and
                closed by the service when omitted.
            **kwargs: Additional arguments passed to `AIService`.
        """
        default_settings = self.Settings(
            model=None, avatar=DEFAULT_AVATAR, fps=30, aspect="1:1", quality="high", background="scene"
        )
        if settings is not None:
            default_settings.apply_update(settings)
        _validate(default_settings, remote=bool(server_url))
        if not server_url:
            from facecast.engine import EngineConfig
            from facecast.engine.config import DEFAULT_LOOKAHEAD_MS

            lookahead_ms = DEFAULT_LOOKAHEAD_MS if lookahead_ms is None else lookahead_ms
            # Checks the look-ahead, tracker and language now rather than when the pipeline starts.
            EngineConfig(lookahead_ms=lookahead_ms, tracker=tracker, language=language)
        super().__init__(settings=default_settings, **kwargs)

        self._init_sample_rate = sample_rate
        self._sample_rate = 0
        self._align_text = align_text
        s = self._settings
        self._avatar: _Avatar
        if server_url:
            if renderer is not None:
                raise ValueError("a custom renderer draws in-process; it cannot be used with server_url")
            if not api_key:
                raise ValueError("remote mode (server_url) needs the server's api_key")
            from pipecat_facecast.remote import RemoteAvatar

            self._avatar = RemoteAvatar(
                self,
                self._avatar_frame,
                server_url=server_url,
                api_key=api_key,
                session=aiohttp_session,
                avatar=s.avatar,
                fps=s.fps,
                aspect=s.aspect,
                quality=s.quality,
            )
        else:
            from pipecat_facecast._local import LocalAvatar

            assert lookahead_ms is not None
            self._avatar = LocalAvatar(
                self,
                self._avatar_frame,
                look=_look(s),
                lookahead_ms=lookahead_ms,
                tracker=tracker,
                language=language,
                seed=seed,
                align_text=align_text,
                renderer=renderer,
            )
        self._remote = bool(server_url)
        self._custom_renderer = renderer
        self._started = False
        self._transport_ready = False
        self._gate = PlayoutGate()
        self._utterance: _Utterance | None = None
        self._behind: Position | None = None  # where the latest TTS audio ends
        self._segments: dict[int, _Segment] = {}  # segments not yet played out
        # The pts of the latest word the TTS timed, and of the latest one an interruption cannot drop:
        # the TTS times the next utterance's words from the later of that and its first audio.
        self._word_pts = 0
        self._uninterruptible_word_pts = 0
        self._auto_end_task: asyncio.Task | None = None
        self._drained: asyncio.Event | None = None

    @property
    def video_size(self) -> tuple[int, int]:
        """(width, height) of the video frames for the current settings (or the custom renderer)."""
        if self._custom_renderer is not None:
            return self._custom_renderer.width, self._custom_renderer.height
        return frame_size(self._settings.aspect, self._settings.quality)

    def can_generate_metrics(self) -> bool:
        """Check if this service can generate processing metrics.

        Returns:
            True: the service reports TTFB (first TTS audio → first avatar frame).
        """
        return True

    # -- lifecycle ------------------------------------------------------------------------------------
    async def setup(self, setup: FrameProcessorSetup) -> None:
        """Load the avatar for the pipeline's output rate.

        Args:
            setup: Configuration object containing setup parameters.
        """
        await super().setup(setup)
        self._sample_rate = self._init_sample_rate or setup.audio_out_sample_rate
        await self._avatar.setup(self._sample_rate)

    async def start(self, frame: StartFrame) -> None:
        """Start the service; the avatar starts once the output transport is ready too.

        Args:
            frame: The start frame.
        """
        await super().start(frame)
        self._started = True
        await self._maybe_start_avatar()

    async def stop(self, frame: EndFrame) -> None:
        """Let the queued speech play out, then stop.

        Args:
            frame: The end frame.
        """
        await super().stop(frame)
        await self._play_out()
        await self._teardown()

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop at once.

        Args:
            frame: The cancel frame.
        """
        await super().cancel(frame)
        await self._teardown()

    async def cleanup(self) -> None:
        """Release the avatar."""
        await super().cleanup()
        await self._teardown()

    async def _teardown(self) -> None:
        """Idempotent teardown shared by stop(), cancel() and cleanup()."""
        if self._auto_end_task is not None:
            await self.cancel_task(self._auto_end_task)
            self._auto_end_task = None
        await self._avatar.stop()

    async def _maybe_start_avatar(self) -> None:
        if self._started and self._transport_ready and not self._avatar.running:
            await self._avatar.start()

    async def _play_out(self) -> None:
        """Graceful end: finish the open utterance and wait until everything queued has been played."""
        if self._avatar.running:
            await self._end_utterance()
        if self._avatar.running and (self._avatar.pending_speech or self._gate.holding):
            self._drained = asyncio.Event()
            pending = sum(segment.seconds for segment in self._segments.values())
            try:
                await asyncio.wait_for(self._drained.wait(), pending + DRAIN_GRACE_SECS)
            except TimeoutError:
                logger.warning(f"{self}: speech did not play out before the end; ending anyway")
            self._drained = None
        for held, direction in self._gate.release_all():
            await self.push_frame(held, direction)

    # -- frames in ------------------------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Swallow TTS audio, keep other frames in order behind it, and drive the avatar.

        Args:
            frame: The frame to process.
            direction: The direction of frame processing.
        """
        await super().process_frame(frame, direction)

        if isinstance(frame, (StartFrame, EndFrame, CancelFrame)):
            await self.push_frame(frame, direction)
        elif isinstance(frame, OutputTransportReadyFrame):
            # It travels upstream from the output transport; frames pushed before it would be dropped.
            self._transport_ready = True
            await self.push_frame(frame, direction)
            await self._maybe_start_avatar()
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt(frame, direction)
        elif isinstance(frame, (UserStartedSpeakingFrame, UserStoppedSpeakingFrame)):
            if self._sample_rate:
                await self._avatar.set_listening(isinstance(frame, UserStartedSpeakingFrame))
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._speak(frame)
        elif isinstance(frame, ServiceUpdateSettingsFrame) and self._settings_for_me(frame):
            await self._apply_settings_frame(frame)
        elif isinstance(frame, SystemFrame) or direction == FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
        else:
            if isinstance(frame, TTSStartedFrame):
                await self._end_utterance()
                self._utterance = _Utterance(explicit=True, context_id=frame.context_id)
            elif isinstance(frame, TTSTextFrame):
                await self._text(frame)
            elif isinstance(frame, TTSStoppedFrame):
                await self._end_utterance()
            await self._push_in_order(frame, direction)

    async def _speak(self, frame: TTSAudioRawFrame) -> None:
        utterance = self._utterance
        if utterance is None:
            utterance = self._utterance = _Utterance(explicit=False, context_id=frame.context_id)
        if utterance.segment_id is None:
            await self.start_ttfb_metrics()
        # A server session takes no phone timings (not part of the LITE protocol).
        offset = utterance.samples / frame.sample_rate if utterance.sample_rate else 0.0
        phones = None if self._remote else _phones(frame, offset)
        try:
            segment_id = await self._avatar.speak(frame.audio, frame.sample_rate, frame.num_channels, phones)
        except ValueError as e:  # facecast.engine.AudioFormatError: an unusable rate or format
            await self.push_error(f"{self}: cannot play TTS audio: {e}", exception=e)
            return
        first_audio = utterance.segment_id is None
        utterance.segment_id = segment_id
        if first_audio:
            utterance.words_clock_ns = max(self._word_pts, self.get_clock().get_time())
            await self._send_text(utterance)  # text that came ahead of the audio
        utterance.sample_rate = frame.sample_rate
        utterance.samples += frame.num_frames
        utterance.last_audio = time.monotonic()
        segment = self._segments.setdefault(segment_id, _Segment(utterance.context_id))
        segment.seconds += frame.num_frames / frame.sample_rate
        self._behind = (segment_id, utterance.samples)
        if not utterance.explicit and self._auto_end_task is None:
            self._auto_end_task = self.create_task(self._auto_end(), "facecast-auto-end")

    async def _end_utterance(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is not None and utterance.segment_id is not None:
            if utterance.timed_word is not None:
                await self._avatar.add_words(*utterance.timed_word, None)
            text = utterance.text[utterance.text_sent :].strip() if self._align_text else ""
            await self._avatar.end_speech(text or None)

    async def _auto_end(self) -> None:
        """End an utterance that came without TTSStartedFrame/TTSStoppedFrame once its audio pauses."""
        while (utterance := self._utterance) is not None and not utterance.explicit:
            idle = time.monotonic() - utterance.last_audio
            if idle >= AUTO_END_SECS:
                await self._end_utterance()
                break
            await asyncio.sleep(AUTO_END_SECS - idle)
        self._auto_end_task = None

    async def _text(self, frame: TTSTextFrame) -> None:
        """Text the TTS spoke: a word it timed (a `pts`) goes to the engine with its time.

        Other text goes as the utterance's words, aligned over all of its audio.
        """
        if frame.pts:
            self._word_pts = max(self._word_pts, frame.pts)
            if not frame.interruptible:
                self._uninterruptible_word_pts = max(self._uninterruptible_word_pts, frame.pts)
        utterance = self._utterance
        if utterance is None:
            return
        if frame.pts and utterance.words_clock_ns is not None and self._align_text and not self._remote:
            await self._add_timed_word(utterance, frame, (frame.pts - utterance.words_clock_ns) / 1e9)
        else:
            self._add_text(utterance, frame)
            await self._send_text(utterance)

    async def _add_timed_word(self, utterance: _Utterance, frame: TTSTextFrame, start: float) -> None:
        """Give the engine the previous word, which this one's start ends.

        Words given one time (those the TTS never timed share the last word's) become one span.
        """
        start = max(0.0, start)
        if utterance.timed_word is None:
            utterance.timed_word = (frame.text, start)
            return
        text, begun = utterance.timed_word
        if start > begun:
            await self._avatar.add_words(text, begun, start - begun)
            utterance.timed_word = (frame.text, start)
        else:
            space = "" if frame.includes_inter_frame_spaces else " "
            utterance.timed_word = (f"{text}{space}{frame.text}", begun)

    async def _send_text(self, utterance: _Utterance) -> None:
        """Give the engine the utterance's complete words as they come.

        It aligns them while the audio plays (inside its look-ahead), not only once the utterance ends.
        Text after the last space may be half a word (word-piece tokens): it waits for the rest.
        """
        if not self._align_text or utterance.segment_id is None:
            return
        boundary = utterance.text.rfind(" ")
        new = utterance.text[utterance.text_sent : max(boundary, utterance.text_sent)]
        if new.strip():
            utterance.text_sent = boundary
            await self._avatar.add_text(new.strip())

    @staticmethod
    def _add_text(utterance: _Utterance, frame: TTSTextFrame) -> None:
        if frame.includes_inter_frame_spaces or not utterance.text:
            utterance.text += frame.text
        else:
            utterance.text += " " + frame.text

    async def _interrupt(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        self._utterance = None
        self._word_pts = self._uninterruptible_word_pts  # as the TTS does: dropped words time nothing
        self._behind = None
        self._segments.clear()
        if self._sample_rate:
            await self._avatar.interrupt()
        kept = self._gate.interrupt()
        await self.push_frame(frame, direction)
        for held, held_direction in kept:
            await self.push_frame(held, held_direction)

    async def _push_in_order(self, frame: Frame, direction: FrameDirection) -> None:
        if not self._avatar.running or self._gate.admit(frame, direction, self._behind):
            await self.push_frame(frame, direction)

    # -- frames out -----------------------------------------------------------------------------------
    async def _avatar_frame(
        self,
        audio: bytes | None,
        image: OutputImageRawFrame | None,
        segment_id: int | None,
        played: Position | None,
        speech_started: bool,
    ) -> None:
        """Push one avatar frame: its audio, then its image, then whatever its audio was holding back."""
        if audio:
            segment = self._segments.get(segment_id) if segment_id is not None else None
            context_id = segment.context_id if segment is not None else None
            await self.push_frame(TTSAudioRawFrame(audio, self._sample_rate, 1, context_id=context_id))
        if speech_started:
            await self.stop_ttfb_metrics()
        if image is not None:
            await self.push_frame(image)
        if played is not None:
            for frame, direction in self._gate.played(played):
                await self.push_frame(frame, direction)
            for done in [s for s in self._segments if (s, SEGMENT_DONE) <= played]:
                del self._segments[done]
        if self._drained is not None and not self._avatar.pending_speech and not self._gate.holding:
            self._drained.set()

    # -- settings -------------------------------------------------------------------------------------
    def _settings_for_me(self, frame: ServiceUpdateSettingsFrame) -> bool:
        if frame.service is not None:
            return frame.service is self
        return isinstance(frame.delta, FacecastVideoSettings)

    async def _apply_settings_frame(self, frame: ServiceUpdateSettingsFrame) -> None:
        if frame.delta is not None:
            await self._update_settings(frame.delta)
        elif frame.settings:
            await self._update_settings(self.Settings.from_mapping(frame.settings))

    async def _update_settings(self, delta: ServiceSettings) -> dict[str, Any]:
        """Apply a settings delta: a new look from the next frame, a new fps at the next pause.

        Args:
            delta: A delta-mode `FacecastVideoSettings`.

        Returns:
            The changed fields with their previous values.
        """
        candidate = self._settings.copy()
        candidate.apply_update(delta)
        try:
            _validate(candidate, remote=self._remote)
        except ValueError as e:
            await self.push_error(f"{self}: settings not applied: {e}", exception=e)
            return {}
        changed = await super()._update_settings(delta)
        if not changed:
            return changed
        look = changed.keys() & {"avatar", "aspect", "quality", "background"}
        if self._remote:
            # A server session is created with its look; another one needs a new session.
            self._warn_unhandled_updated_settings(changed)
            return changed
        avatar = cast("LocalAvatar", self._avatar)  # not remote: the in-process avatar
        s = self._settings
        if look and self._custom_renderer is not None:
            self._warn_unhandled_updated_settings(look)  # a custom renderer has a fixed look
        elif look and self._sample_rate:
            avatar.set_look(_look(s))
        if "fps" in changed:
            avatar.set_fps(s.fps)
        return changed


def _look(settings: FacecastVideoSettings) -> Look:
    """The look of a complete settings object (local mode); ValueError names a field that is wrong."""
    from facecast.avatars import Look

    return Look(
        avatar=settings.avatar,
        aspect=settings.aspect,
        quality=settings.quality,
        background=settings.background,
        fps=settings.fps,
    )


def _validate(settings: FacecastVideoSettings, *, remote: bool = False) -> None:
    """Raise ValueError naming what is wrong with a complete settings object.

    A remote avatar must be an id, which the server checks; a local one must be a built-in, a library id
    or a readable .facecast file.
    """
    frame_size(settings.aspect, settings.quality)
    if settings.fps not in FPS_CHOICES:
        raise ValueError(f"fps must be one of {FPS_CHOICES}, got {settings.fps!r}")
    if settings.background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {settings.background!r}")
    if not remote:
        from facecast.avatars import AvatarLibrary, load_bundle

        load_bundle(_look(settings).avatar, AvatarLibrary())  # unknown: ValueError listing what exists


def _phones(frame: TTSAudioRawFrame, offset: float) -> list[PhoneTiming] | None:
    """Phone timings attached to a TTS audio frame, moved to the utterance's timeline."""
    phones = frame.metadata.get(PHONES_METADATA_KEY)
    if not phones:
        return None
    from facecast.engine import PhoneTiming

    return [PhoneTiming(p.phone, p.start + offset, p.end + offset) for p in map(PhoneTiming._make, phones)]
