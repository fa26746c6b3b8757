"""A talking avatar in your browser: Pipecat + Facecast, rendered on the CPU of this machine.

Two bots in one file:

- **typed** (needs no key and no internet): type a message in the browser's text box; espeak-ng
  speaks it and the avatar lip-syncs to it. Type again while it talks to interrupt it.
- **agent** (needs ``OPENAI_API_KEY``, and the internet to reach OpenAI): a voice conversation,
  microphone → OpenAI speech-to-text → LLM → text-to-speech → avatar. Talk over it to interrupt it.

Run it (from the repository root)::

    pip install -e . -e plugins/pipecat "pipecat-ai[webrtc,runner,silero,openai]>=1.14"
    python examples/pipecat/bot.py                 # agent if OPENAI_API_KEY is set, typed otherwise
    python examples/pipecat/bot.py --typed         # force the key-less bot
    python examples/pipecat/bot.py --avatar leo --quality medium

then open http://localhost:7860/ and press Connect. That page (``client/index.html`` beside this file) is
served by the bot itself and loads nothing from the internet; Pipecat's prebuilt UI, which does, stays at
/client when its package is installed. The transport is ``SmallWebRTCTransport`` (peer-to-peer WebRTC).
The avatar runs at 30 fps because aiortc, under SmallWebRTC, stamps video at a fixed 30 fps; at 25 fps the
picture would drift from the sound.

Other services: replace the three OpenAI services in ``agent_pipeline`` with any Pipecat STT, LLM and
TTS (e.g. ``DeepgramSTTService``, ``AnthropicLLMService``, ``CartesiaTTSService``); the avatar takes any
TTS audio at any sample rate. Keep ``avatar`` right after the TTS and before ``transport.output()``.

Other transports:

- **Daily** (``DailyTransport``, ``pipecat-ai[daily]``): the same ``video_out_*`` parameters; Daily
  sends the avatar as the bot's camera (a custom video source without timestamps, paced by the
  transport at ``video_out_framerate``, so use the avatar's fps there).
- **LiveKit** (``LiveKitTransport``, ``pipecat-ai[livekit]``, video out since Pipecat 1.11): the same
  parameters; it accepts RGB and RGBA, so ``background="transparent"`` works there.

In both, keep ``video_out_is_live=True`` and ``video_out_width``/``video_out_height`` equal to
``avatar.video_size``. The dev runner serves them too: ``python bot.py -t daily`` / ``-t livekit`` once
you add their branches to ``transport_for`` (see ``pipecat.runner.utils.create_transport``).

To render on a Facecast server instead of in this process, pass ``--server https://your-server`` and set
``FACECAST_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from loguru import logger
from pipecat.frames.frames import Frame, LLMMessagesAppendFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.processors.frameworks.rtvi.frames import RTVISendTextFrame
from pipecat.runner.types import RunnerArguments, SmallWebRTCRunnerArguments
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner
from pipecat_facecast import FacecastVideoService
from pipecat_facecast.tts import EspeakTTSService

CLIENT_PAGE = Path(__file__).with_name("client") / "index.html"
GREETING = "Hello! I am a Facecast avatar. Type something and I will say it."
SYSTEM_PROMPT = (
    "You are a friendly assistant shown as a talking face in a video call. Your replies are spoken "
    "aloud: answer in one to three short sentences, in plain words, without lists, markdown or emoji."
)


class TypedTextToSpeech(FrameProcessor):
    """Turns the text typed in the browser (RTVI ``send-text``) into speech for the TTS.

    A new message interrupts whatever the avatar is saying. With no LLM in the pipeline, the message is
    spoken as typed and the LLM context update that RTVI sends along with it is dropped.
    """

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Speak typed text, drop the LLM context update, pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, RTVISendTextFrame):
            await self.push_frame(frame, direction)
            await self.broadcast_interruption()
            await self.push_frame(TTSSpeakFrame(frame.text))
        elif not isinstance(frame, LLMMessagesAppendFrame):
            await self.push_frame(frame, direction)


def make_avatar(args: argparse.Namespace) -> FacecastVideoService:
    """The avatar service, in-process or on a Facecast server (``--server``)."""
    settings = FacecastVideoService.Settings(avatar=args.avatar, quality=args.quality, fps=30)
    if args.server:
        return FacecastVideoService(
            settings=settings, server_url=args.server, api_key=os.environ["FACECAST_API_KEY"]
        )
    return FacecastVideoService(settings=settings)


def transport_for(runner_args: RunnerArguments, avatar: FacecastVideoService) -> BaseTransport:
    """SmallWebRTC with video out at the avatar's size and frame rate."""
    if not isinstance(runner_args, SmallWebRTCRunnerArguments):
        raise SystemExit("this example runs with the WebRTC transport: python bot.py -t webrtc")
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

    width, height = avatar.video_size
    return SmallWebRTCTransport(
        webrtc_connection=runner_args.webrtc_connection,
        params=TransportParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            video_out_enabled=True,
            video_out_is_live=True,
            video_out_width=width,
            video_out_height=height,
            video_out_framerate=30,
        ),
    )


def typed_pipeline(transport: BaseTransport, avatar: FacecastVideoService) -> Pipeline:
    """Typed text → espeak-ng → avatar. No keys."""
    return Pipeline([transport.input(), TypedTextToSpeech(), EspeakTTSService(), avatar, transport.output()])


def agent_pipeline(transport: BaseTransport, avatar: FacecastVideoService) -> Pipeline:
    """Microphone → STT → LLM → TTS → avatar, with OpenAI for all three (one key)."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.stt import OpenAISTTService
    from pipecat.services.openai.tts import OpenAITTSService

    key = os.environ["OPENAI_API_KEY"]
    stt = OpenAISTTService(api_key=key)
    llm = OpenAILLMService(api_key=key, settings=OpenAILLMService.Settings(system_instruction=SYSTEM_PROMPT))
    tts = OpenAITTSService(api_key=key)
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    return Pipeline(
        [
            transport.input(),
            stt,
            aggregators.user(),
            llm,
            tts,
            avatar,
            transport.output(),
            aggregators.assistant(),
        ]
    )


async def bot(runner_args: RunnerArguments) -> None:
    """Entry point the Pipecat runner calls for each browser that connects."""
    args = runner_args.cli_args or parse_args([])
    agent = bool(os.environ.get("OPENAI_API_KEY")) and not args.typed
    avatar = make_avatar(args)
    transport = transport_for(runner_args, avatar)
    pipeline = agent_pipeline(transport, avatar) if agent else typed_pipeline(transport, avatar)
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        logger.info(f"Client connected ({'agent' if agent else 'typed'} bot)")
        if agent:
            context_greeting = {"role": "user", "content": "Say hello and offer to help, in one sentence."}
            await worker.queue_frame(LLMMessagesAppendFrame(messages=[context_greeting], run_llm=True))
        else:
            await worker.queue_frame(TTSSpeakFrame(GREETING))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info("Client disconnected")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


def parser() -> argparse.ArgumentParser:
    """This bot's options; the Pipecat runner adds its own (--host, --port, -t, ...)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--typed", action="store_true", help="the key-less bot even if OPENAI_API_KEY is set")
    p.add_argument("--avatar", default="ava", help="built-in avatar: ava, leo, mira or noah")
    p.add_argument("--quality", default="high", help="low, medium, high (512×512) or very_high")
    p.add_argument("--server", help="render on this Facecast server (needs FACECAST_API_KEY)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse only this bot's options (for a bot started without the runner's arguments)."""
    return parser().parse_known_args(argv)[0]


def serve_client_page() -> None:
    """Serve this example's own page at / on the runner's app: registered before the runner adds its
    routes, it answers / in place of the redirect to the prebuilt UI, which needs the internet."""
    from fastapi.responses import FileResponse
    from pipecat.runner.run import app

    @app.get("/", include_in_schema=False)
    async def client_page() -> FileResponse:
        return FileResponse(CLIENT_PAGE, media_type="text/html")


if __name__ == "__main__":
    from pipecat.runner.run import main

    serve_client_page()
    main(parser())
