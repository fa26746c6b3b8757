"""One FULL session's conversation: a Pipecat pipeline from the user's microphone to the avatar, and the
LiveAvatar commands that steer it.

    Microphone → VADProcessor(Silero) → STT → UserEvents → user aggregator → LLM → TTS → AvatarSpeech
    → assistant aggregator

Turn taking and barge-in are Pipecat's: the user aggregator starts a user turn on the VAD's start (and
broadcasts the interruption that makes `AvatarSpeech` drop the avatar's speech), and ends it a short
while after the VAD's stop once the transcript is in; the LLM then answers from the shared context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    LLMMessagesAppendFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from facecast.conversation import events as ev
from facecast.conversation.processors import AvatarSpeech, Emit, Microphone, TurnTimer
from facecast.conversation.services import (
    STT_RATE,
    PauseTrackingSileroVAD,
    PausingVADProcessor,
    PocketSphinxSTTService,
    SpeechChoice,
    stt_service,
    tts_service,
)
from facecast.hosts.live import LiveCore

log = logging.getLogger(__name__)

VAD_STOP_SECS = 0.2  # silence that ends the user's speech (Silero; what Pipecat recommends)
USER_SPEECH_TIMEOUT_S = 0.1  # after the VAD stop, how long the user may resume (see docs/full-mode.md)
USER_TURN_STOP_TIMEOUT_S = 15.0
MAX_COMMAND_TEXT_CHARS = 2000
DEFAULT_STT = SpeechChoice("pocketsphinx")
DEFAULT_TTS = SpeechChoice("espeak")
STOP_TIMEOUT_S = 15.0  # a pipeline's cleanup (the decoder process's exit included) on a busy CPU


@dataclass(frozen=True)
class LlmEndpoint:
    """An OpenAI-compatible chat endpoint; `api_key` is the decrypted secret (never logged)."""

    model: str
    base_url: str | None
    api_key: str | None

    def __repr__(self) -> str:  # keeps the key out of any log line that prints it
        return f"LlmEndpoint(model={self.model!r}, base_url={self.base_url!r})"


@dataclass(frozen=True)
class Persona:
    """What the session says and how: the context's prompt and opening text (variables substituted),
    the espeak-ng voice, and the interactivity type."""

    prompt: str
    opening_text: str
    voice: str
    language: str
    interactivity: str  # events.CONVERSATIONAL | events.PUSH_TO_TALK


class CommandError(ValueError):
    """A command the conversation cannot apply; the message says why and what to send instead."""


class UserEvents(FrameProcessor):
    """Reports the user's side (speech start and end, transcripts) as agent-response events."""

    def __init__(self, emit: Emit, on_activity: Callable[[], None], timer: TurnTimer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._emit = emit
        self._on_activity = on_activity
        self._timer = timer

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self._on_activity()
                self._emit(ev.USER_SPEAK_STARTED)
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                self._timer.mark("vad_stop")
                self._emit(ev.USER_SPEAK_ENDED)
            elif isinstance(frame, TranscriptionFrame):
                self._timer.mark("transcript")
                self._emit(ev.USER_TRANSCRIPTION, text=frame.text)
        await self.push_frame(frame, direction)


class Conversation:
    """Owns one FULL session's pipeline: `start()` runs it, `aclose()` stops it (idempotent)."""

    def __init__(
        self,
        core: LiveCore,
        persona: Persona,
        llm: LlmEndpoint,
        emit: Emit,
        *,
        on_activity: Callable[[], None],
        on_error: Callable[[str], None],
        stt: SpeechChoice = DEFAULT_STT,
        tts: SpeechChoice = DEFAULT_TTS,
    ) -> None:
        self.persona = persona
        self._emit = emit
        push_to_talk = persona.interactivity == ev.PUSH_TO_TALK
        self.microphone = Microphone(open_=not push_to_talk)
        self.push_to_talk_active = False
        self.timer = TurnTimer(VAD_STOP_SECS)
        self.avatar = AvatarSpeech(core, emit, self.timer)
        self.user_events = UserEvents(emit, on_activity, self.timer)
        self.stt = stt_service(stt)
        messages: list[Any] = []
        if persona.opening_text:
            messages.append({"role": "assistant", "content": persona.opening_text})
        context = LLMContext(messages)
        aggregators = LLMContextAggregatorPair(
            context,
            user_params=LLMUserAggregatorParams(
                # A turn whose transcript is late is still the user's: PocketSphinx on a busy CPU takes
                # seconds (Pipecat's default gives up after 5 s and drops the late transcript).
                user_turn_stop_timeout=USER_TURN_STOP_TIMEOUT_S,
                user_turn_strategies=UserTurnStrategies(
                    start=[VADUserTurnStartStrategy()],
                    stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=USER_SPEECH_TIMEOUT_S)],
                ),
            ),
        )
        llm_service = OpenAILLMService(
            api_key=llm.api_key or "not-needed",  # the client insists on one; local servers ignore it
            base_url=llm.base_url,
            settings=OpenAILLMService.Settings(model=llm.model, system_instruction=persona.prompt),
        )
        pipeline = Pipeline(
            [
                self.microphone,
                PausingVADProcessor(
                    vad_analyzer=PauseTrackingSileroVAD(params=VADParams(stop_secs=VAD_STOP_SECS))
                ),
                self.stt,
                self.user_events,
                aggregators.user(),
                llm_service,
                tts_service(tts, persona.voice),
                self.avatar,
                aggregators.assistant(),
            ]
        )
        self._worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=STT_RATE, audio_out_sample_rate=24000),
            idle_timeout_secs=None,  # the session's own idle timeout governs
            enable_rtvi=False,
        )
        self._started = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._worker_runner: WorkerRunner | None = None

        @self._worker.event_handler("on_pipeline_started")
        async def _on_started(worker: Any, frame: Any) -> None:
            self._started.set()

        @self._worker.event_handler("on_pipeline_error")
        async def _on_error(worker: Any, frame: ErrorFrame) -> None:
            # Pipecat logs the error (credentials masked); the client hears which service failed and how,
            # not the provider's text.
            service = frame.processor.name if frame.processor is not None else "pipeline"
            category = getattr(frame.category, "value", frame.category) or "unknown"
            on_error(f"the conversation's {service} failed ({category}); the server log has the details")

    async def start(self, timeout: float = 30.0) -> None:
        """Run the pipeline and wait until it has started (Silero and PocketSphinx loaded)."""
        if isinstance(self.stt, PocketSphinxSTTService):
            await self.stt.load()
        self._worker_runner = WorkerRunner(handle_sigint=False)
        await self._worker_runner.add_workers(self._worker)
        self._runner = asyncio.create_task(self._worker_runner.run(), name="facecast-conversation")
        started = asyncio.create_task(self._started.wait())
        done, _ = await asyncio.wait(
            {started, self._runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if started not in done:
            started.cancel()
            await self.aclose()
            raise RuntimeError("the conversation pipeline did not start")

    async def greet(self) -> None:
        """Say the context's opening text (once the user can hear it)."""
        if self.persona.opening_text:
            await self._worker.queue_frame(TTSSpeakFrame(self.persona.opening_text, append_to_context=False))

    def attach_microphone(self, track: Any) -> None:
        self.microphone.attach(track)

    def on_segment_event(self, event: Any) -> None:
        self.avatar.on_segment_event(event)

    # -- commands -----------------------------------------------------------------------------------
    async def command(self, event_type: str, payload: dict[str, Any]) -> None:
        """Apply one agent-control command; CommandError when it cannot be."""
        if event_type in (ev.AVATAR_SPEAK_TEXT, ev.AVATAR_SPEAK_RESPONSE):
            text = payload.get("text")
            if not isinstance(text, str) or not text.strip():
                raise CommandError(f'{event_type} needs payload {{"text": "..."}} with non-empty text')
            if len(text) > MAX_COMMAND_TEXT_CHARS:
                raise CommandError(f"{event_type} text is over {MAX_COMMAND_TEXT_CHARS} characters")
            if event_type == ev.AVATAR_SPEAK_TEXT:
                await self._worker.queue_frame(TTSSpeakFrame(text))
            else:
                message = {"role": "user", "content": text}
                await self._worker.queue_frame(LLMMessagesAppendFrame(messages=[message], run_llm=True))
        elif event_type == ev.AVATAR_INTERRUPT:
            await self.microphone.broadcast_interruption()
        elif event_type in (ev.AVATAR_START_LISTENING, ev.AVATAR_STOP_LISTENING):
            await self.avatar.set_listening(event_type == ev.AVATAR_START_LISTENING)
        elif event_type == ev.USER_START_PUSH_TO_TALK:
            await self._start_push_to_talk()
        elif event_type == ev.USER_STOP_PUSH_TO_TALK:
            self._stop_push_to_talk()
        else:
            known = ", ".join(sorted(ev.COMMANDS))
            raise CommandError(f"unknown command {event_type!r}; expected one of {known}")

    async def _start_push_to_talk(self) -> None:
        if self.persona.interactivity != ev.PUSH_TO_TALK:
            self._emit(
                ev.USER_PUSH_TO_TALK_START_FAILED,
                reason="this session's interactivity_type is CONVERSATIONAL: the microphone is always on; "
                "mint the token with interactivity_type PUSH_TO_TALK to use push-to-talk",
            )
            return
        if self.push_to_talk_active:
            self._emit(ev.USER_PUSH_TO_TALK_START_FAILED, reason="push-to-talk is already on")
            return
        self.push_to_talk_active = True
        self.microphone.open = True
        # Talking over the avatar cuts it off, as the VAD does in conversational sessions.
        await self.microphone.broadcast_interruption()
        self._emit(ev.USER_PUSH_TO_TALK_STARTED)

    def _stop_push_to_talk(self) -> None:
        if not self.push_to_talk_active:
            reason = (
                "push-to-talk is not on: send user.start_push_to_talk first"
                if self.persona.interactivity == ev.PUSH_TO_TALK
                else "this session's interactivity_type is CONVERSATIONAL: there is no push-to-talk"
            )
            self._emit(ev.USER_PUSH_TO_TALK_STOP_FAILED, reason=reason)
            return
        self.push_to_talk_active = False
        self.microphone.open = False  # silence from now on: the VAD ends the user's speech
        self._emit(ev.USER_PUSH_TO_TALK_STOPPED)

    # -- shutdown -----------------------------------------------------------------------------------
    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            if isinstance(self.stt, PocketSphinxSTTService):
                await self.stt.unload()  # loaded by start() before the pipeline ran
            return
        assert self._worker_runner is not None
        with contextlib.suppress(Exception):  # the runner cancels its worker and stops its bus
            await self._worker_runner.cancel(reason="session ended")
        try:
            await asyncio.wait_for(asyncio.shield(runner), STOP_TIMEOUT_S)
        except Exception:  # TimeoutError included
            log.warning("the conversation pipeline did not stop within %.0f s; cancelling it", STOP_TIMEOUT_S)
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner
        if isinstance(self.stt, PocketSphinxSTTService):
            await self.stt.unload()  # the pipeline's cleanup did, unless it was cut short
