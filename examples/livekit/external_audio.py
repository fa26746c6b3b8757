"""External audio: stream a WAV/MP3 file to a Facecast avatar over LiveKit, with no AgentSession.

    python external_audio.py --room demo speech.mp3              # avatar from the Facecast server
    python external_audio.py --room demo --dispatch speech.mp3   # avatar from a `facecast worker` fleet

This script joins the room as the avatar's "agent" (a participant of kind agent), has an avatar sent into
the room on its behalf, streams the file on `lk.audio_stream` (24 kHz PCM in 20 ms frames), waits for the
avatar's `lk.playback_finished`, and ends the avatar. Watch the room in the LiveKit Agents Playground or
any LiveKit client. Reads .env (see .env.example).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from dotenv import load_dotenv
from livekit import api, rtc
from livekit.agents import utils
from livekit.plugins import facecast

from facecast.hosts.livekit.say import load_pcm, stream_pcm
from facecast.hosts.livekit.tokens import mint_sender_token

load_dotenv()
SENDER = "external-audio"
AVATAR = "facecast-avatar"


async def avatar_from_server(
    room: str, url: str, key: str, secret: str
) -> tuple[facecast.FacecastAPI, str, str]:
    """Create and start a Facecast session whose worker follows SENDER; returns (client, token, id)."""
    client = facecast.FacecastAPI(
        api_url=os.environ["FACECAST_API_URL"], api_key=os.environ["FACECAST_API_KEY"]
    )
    worker_token = facecast.mint_worker_token(
        key, secret, room=room, identity=AVATAR, name="Facecast avatar", agent_identity=SENDER
    )
    created = await client.create_session_token(
        {
            "mode": "LITE",
            "avatar_id": os.environ.get("FACECAST_AVATAR", "ava"),
            "aspect_ratio": "4:3",
            "video_settings": {"quality": "high"},
            "transport": "livekit",
            "livekit_config": {
                "livekit_url": url,
                "livekit_room": room,
                "livekit_worker_token": worker_token,
                "agent_identity": SENDER,
                "avatar_identity": AVATAR,
                "avatar_name": "Facecast avatar",
            },
        }
    )
    started = await client.start_session(created["session_token"])
    return client, created["session_token"], started["session_id"]


async def avatar_from_dispatch(room: str, agent_name: str) -> None:
    """Ask LiveKit to dispatch a `facecast worker` into the room as SENDER's avatar."""
    async with api.LiveKitAPI() as lk:
        metadata = json.dumps({"agent_identity": SENDER, "avatar_identity": AVATAR})
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)
        )


async def main(args: argparse.Namespace) -> None:
    url, key, secret = (
        os.environ["LIVEKIT_URL"],
        os.environ["LIVEKIT_API_KEY"],
        os.environ["LIVEKIT_API_SECRET"],
    )
    pcm = load_pcm(args.audio)
    room = rtc.Room()
    await room.connect(url, mint_sender_token(key, secret, room=args.room, identity=SENDER))
    session: tuple[facecast.FacecastAPI, str, str] | None = None
    try:
        if args.dispatch:
            await avatar_from_dispatch(args.room, args.agent_name)
        else:
            session = await avatar_from_server(args.room, url, key, secret)
        print(f"waiting for the avatar in room {args.room!r} (it shows video once someone watches)...")
        await utils.wait_for_track_publication(room, identity=AVATAR, kind=rtc.TrackKind.KIND_VIDEO)
        result = await stream_pcm(room, pcm, AVATAR)
        print(f"avatar played {result['playback_position']:.2f} s of {result['duration_s']:.2f} s")
    finally:
        if session is not None:
            client, token, session_id = session
            await client.stop_session(token, session_id)
            await client.aclose()
        await room.disconnect()  # the avatar leaves when the participant it follows has gone


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="WAV, MP3 or any file FFmpeg reads")
    parser.add_argument("--room", required=True)
    parser.add_argument("--dispatch", action="store_true", help="use a `facecast worker` fleet")
    parser.add_argument("--agent-name", default="facecast-avatar", help="the workers' agent name")
    asyncio.run(main(parser.parse_args()))
