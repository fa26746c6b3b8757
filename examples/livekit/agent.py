"""A conversational voice agent with a Facecast avatar: STT -> LLM -> TTS -> lip-synced face.

    python agent.py dev        # then open the LiveKit Agents Playground and connect to your project

Reads .env (see .env.example). FACECAST_MODE=remote (default) asks your Facecast server for an avatar
worker; FACECAST_MODE=local renders in this process.
"""

from __future__ import annotations

import logging
import os

from dotenv import load_dotenv
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli
from livekit.plugins import facecast

load_dotenv()
logger = logging.getLogger("facecast-example")

INSTRUCTIONS = (
    "You are Ava, a friendly assistant with a face. Keep answers short and conversational: one or two "
    "sentences, no lists or markdown, because everything you write is spoken aloud."
)

server = AgentServer()


def build_session() -> AgentSession:
    # The avatar's audio path cannot pause, so a false interruption is not resumed.
    turn_handling = {"interruption": {"resume_false_interruption": False}}
    if os.environ.get("OPENAI_API_KEY"):
        try:
            from livekit.plugins import openai, silero
        except ImportError:
            logger.warning("OPENAI_API_KEY is set but livekit-plugins-openai / -silero are not installed")
        else:
            return AgentSession(
                stt=openai.STT(),
                llm=openai.LLM(model="gpt-4.1-mini"),
                tts=openai.TTS(voice="alloy"),
                vad=silero.VAD.load(),
                turn_handling=turn_handling,  # type: ignore[arg-type]
            )
    # LiveKit Inference: models served through your LiveKit Cloud project, no other keys needed.
    return AgentSession(
        stt="assemblyai/universal-streaming",
        llm="openai/gpt-4.1-mini",
        tts="cartesia/sonic-3",
        turn_handling=turn_handling,  # type: ignore[arg-type]
    )


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session = build_session()
    mode = os.environ.get("FACECAST_MODE", "remote")
    avatar = facecast.AvatarSession(aspect_ratio="4:3", mode=mode)  # type: ignore[arg-type]
    await avatar.start(session, room=ctx.room)  # before session.start(): the avatar takes the audio
    await session.start(agent=Agent(instructions=INSTRUCTIONS), room=ctx.room)
    logger.info("avatar %s (%s mode), session %s", avatar.avatar_identity, mode, avatar.session_id)
    await session.generate_reply(instructions="Greet the user and offer your help.")


if __name__ == "__main__":
    cli.run_app(server)
