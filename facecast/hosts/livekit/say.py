"""External audio: stream a file to an avatar in a LiveKit room, with no AgentSession.

The same wire protocol an agent uses: one byte stream on `lk.audio_stream` per utterance (24 kHz int16
mono PCM, written in 20 ms frames), then wait for the avatar's `lk.playback_finished`. Cancelling sends
`lk.clear_buffer`, so the avatar stops speaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import utils

from facecast.hosts.file import read_audio
from facecast.hosts.livekit.names import (
    AUDIO_STREAM_TOPIC,
    RPC_CLEAR_BUFFER,
    RPC_PLAYBACK_FINISHED,
    RPC_PLAYBACK_STARTED,
)

logger = logging.getLogger("facecast.livekit")

SAY_RATE = 24000
SAY_FRAME_MS = 20
# Our "ok" to the avatar's lk.playback_finished is sent after the handler returns. Leaving the room at
# once raced it: livekit rtc 1.1.21 logged "Failed to send RPC v2 response stream" and aborted the process
# (a Rust panic that cannot unwind; seen in CI on a real server). Give the reply this long to go out.
RPC_REPLY_GRACE_S = 0.3


def load_pcm(path: str | Path, sample_rate: int = SAY_RATE) -> np.ndarray:
    """Decode any audio file to int16 mono at `sample_rate`."""
    samples, rate = read_audio(path)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples.astype(np.float64)
    pcm = np.clip(np.round(mono), -32768, 32767).astype(np.int16)
    if rate == sample_rate:
        return pcm
    resampler = rtc.AudioResampler(rate, sample_rate, num_channels=1)
    frames = resampler.push(rtc.AudioFrame(pcm.tobytes(), rate, 1, len(pcm))) + resampler.flush()
    return np.concatenate([np.frombuffer(bytes(f.data), np.int16) for f in frames] or [np.zeros(0, np.int16)])


async def stream_pcm(
    room: rtc.Room,
    pcm: np.ndarray,
    destination_identity: str,
    *,
    sample_rate: int = SAY_RATE,
    frame_ms: int = SAY_FRAME_MS,
    playback_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Send one utterance to the avatar and wait until it has played. Returns the avatar's
    `playback_finished` payload plus `duration_s` (what was sent)."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[dict[str, Any]] = loop.create_future()

    def on_finished(data: rtc.RpcInvocationData) -> str:
        if data.caller_identity != destination_identity:
            return "reject"
        if not finished.done():
            finished.set_result(json.loads(data.payload))
        return "ok"

    local = room.local_participant
    local.register_rpc_method(RPC_PLAYBACK_FINISHED, on_finished)
    local.register_rpc_method(RPC_PLAYBACK_STARTED, lambda _data: "ok")
    duration_s = len(pcm) / sample_rate
    try:
        writer = await local.stream_bytes(
            name=f"AUDIO_{uuid.uuid4().hex[:12]}",
            topic=AUDIO_STREAM_TOPIC,
            destination_identities=[destination_identity],
            attributes={"sample_rate": str(sample_rate), "num_channels": "1"},
        )
        step = sample_rate * frame_ms // 1000
        data = pcm.astype("<i2").tobytes()
        for start in range(0, len(pcm), step):
            await writer.write(data[start * 2 : (start + step) * 2])
        await writer.aclose()
        timeout = playback_timeout_s if playback_timeout_s is not None else duration_s + 30.0
        result = await asyncio.wait_for(asyncio.shield(finished), timeout)
    except asyncio.CancelledError:
        # The caller gave up (Ctrl+C): stop the avatar rather than leave it talking.
        with contextlib.suppress(Exception):
            await local.perform_rpc(
                destination_identity=destination_identity,
                method=RPC_CLEAR_BUFFER,
                payload="",
                response_timeout=2.0,
            )
        raise
    finally:
        local.unregister_rpc_method(RPC_PLAYBACK_FINISHED)
        local.unregister_rpc_method(RPC_PLAYBACK_STARTED)
    return {**result, "duration_s": round(duration_s, 3)}


async def say_file(
    url: str,
    token: str,
    path: str | Path,
    destination_identity: str,
    *,
    room: rtc.Room | None = None,
    join_timeout_s: float = 30.0,
    playback_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Join the room with `token`, wait for the avatar `destination_identity` to publish video, stream
    the file to it as 24 kHz PCM in 20 ms frames, and wait until it has been played. Returns
    `{playback_position, interrupted, duration_s, ...}`."""
    pcm = load_pcm(path)
    room = room if room is not None else rtc.Room()
    owns_connection = not room.isconnected()
    if owns_connection:
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    try:
        try:
            await asyncio.wait_for(
                utils.wait_for_track_publication(
                    room, identity=destination_identity, kind=rtc.TrackKind.KIND_VIDEO
                ),
                join_timeout_s,
            )
        except TimeoutError:
            raise TimeoutError(
                f"avatar {destination_identity!r} did not publish video in room {room.name!r} "
                f"within {join_timeout_s:g} s"
            ) from None
        result = await stream_pcm(room, pcm, destination_identity, playback_timeout_s=playback_timeout_s)
        if owns_connection:
            await asyncio.sleep(RPC_REPLY_GRACE_S)
        return result
    finally:
        if owns_connection:
            await room.disconnect()
