"""facecast.client against a real server on loopback: the session API, the LITE WebSocket and a receiving
WebRTC peer (decoding, and counting without decoding); and that the package imports without the engine,
the avatars or the server's web stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import get_args

import numpy as np
import pydantic
import pytest
from scipy.signal import resample_poly
from server_harness import RunningServer

from facecast import protocol as p
from facecast.client import LiteClient, LiteSocket, ReceivingPeer, ServerError
from facecast.client.lite_socket import pcm_chunks

ROOT = Path(__file__).resolve().parent.parent


def test_the_wire_value_sets_are_the_avatars_and_the_engines() -> None:
    from facecast.avatars import ASPECTS, QUALITIES
    from facecast.engine.config import DEFAULT_LOOKAHEAD_MS, FPS_CHOICES, MAX_LOOKAHEAD_MS, TrackerMode

    assert set(p.ASPECTS) == set(ASPECTS) and len(p.ASPECTS) == len(ASPECTS)
    assert p.QUALITIES == QUALITIES and p.FPS_CHOICES == FPS_CHOICES
    assert get_args(TrackerMode) == p.TRACKERS
    assert (p.DEFAULT_LOOKAHEAD_MS, p.MAX_LOOKAHEAD_MS) == (DEFAULT_LOOKAHEAD_MS, MAX_LOOKAHEAD_MS)


def test_the_client_imports_without_the_engine_avatars_server_or_web_stack() -> None:
    code = (
        "import sys\n"
        "BLOCKED = ('facecast.engine', 'facecast.avatars', 'facecast.hosts', 'facecast.bench', 'fastapi',"
        " 'uvicorn', 'scipy', 'cv2')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith(BLOCKED):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import facecast.client\n"
        "print(sorted(m for m in sys.modules if m.startswith('facecast')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "facecast.client.peer" in done.stdout


async def test_a_bad_request_fails_before_it_is_sent_and_a_refusal_carries_the_servers_message(
    server: RunningServer,
) -> None:
    async with LiteClient(server.url, "not-a-key") as client:
        with pytest.raises(pydantic.ValidationError, match="fps"):
            await client.mint({"fps": 24})
        with pytest.raises(pydantic.ValidationError, match="avatar"):
            await client.mint({"avatar": "ava"})  # a typo of avatar_id is refused, as by the server
        with pytest.raises(ServerError) as refused:
            await client.mint({"fps": 25})
    assert refused.value.status == 401 and refused.value.code == p.CODE_UNAUTHORIZED
    assert "API key" in refused.value.message


async def test_a_session_through_the_client_speaks_and_ends_as_stopped(
    server: RunningServer, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm16k, rate, _ = speech
    pcm = resample_poly(pcm16k.astype(np.float32), 3, 2).clip(-32768, 32767).astype("<i2").tobytes()
    key = server.store.create_key("client")[1]
    loud: list[float] = []
    async with LiteClient(server.url, key) as client:
        minted = await client.mint({"fps": 25, "video_settings": {"quality": "low"}})
        started = await client.start(minted)
        assert started.webrtc is not None and started.ws_url is not None
        peer = ReceivingPeer(
            on_audio=lambda frame, _: loud.append(float(np.abs(frame.to_ndarray()).max())), sender_clocks=True
        )
        socket = await LiteSocket.connect(client.http, started.ws_url)
        try:
            await peer.connect(client, started)
            await peer.wait_first_video()
            await socket.wait_connected()
            for chunk in pcm_chunks(pcm):
                await socket.speak("u1", chunk)
            await socket.speak_end("u1")
            _, ended = await socket.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED)
            await peer.wait_channel_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED)
            received = peer.video_frames
            stats = await client.stats(minted.session_id)
            assert await client.stop(started) == p.END_STOPPED
            _, stopped = await socket.wait_event(lambda e: e["type"] == p.SESSION_STOPPED)
        finally:
            await socket.close()
            await peer.close()
    assert ended["event_id"] == "u1" and ended["played_s"] == pytest.approx(len(pcm16k) / rate, abs=0.05)
    assert stopped["end_reason"] == p.END_STOPPED
    assert max(loud) > 3000, "the speech never came back as audio"
    assert peer.clocks["video"].ready and peer.clocks["audio"].ready, "no RTCP sender report was seen"
    # Every frame received was sent; the rest of those sent were on their way (at most a second of them).
    assert received > 25 and received <= stats["frames"] <= received + 25
    # Decoded frames carry media time from the stream's start at the session's 25 fps.
    steps = Counter(np.diff(peer.video_arrivals.rtp_timestamps).tolist())
    assert steps.most_common(1)[0][0] == 90000 // 25, steps


async def test_a_counting_peer_counts_frames_it_never_decodes(server: RunningServer) -> None:
    key = server.store.create_key("client")[1]
    async with LiteClient(server.url, key) as client:
        started = await client.start(await client.mint({"video_settings": {"quality": "low"}}))
        peer = ReceivingPeer(decode=False)
        try:
            await peer.connect(client, started)
            await peer.wait_first_video()
            deadline = time.monotonic() + 30
            while peer.video_frames < 15 or len(peer.audio_arrivals.times) < 10:
                assert time.monotonic() < deadline, "the counting peer stopped receiving"
                await asyncio.sleep(0.05)
        finally:
            await client.stop(started)
            await peer.close()
    # Counted frames carry the RTP timestamps of the wire: 30 fps steps on the 90 kHz clock (a frame the
    # loaded server skipped makes one step longer), 20 ms Opus frames on the 48 kHz clock.
    video_steps = Counter(np.diff(peer.video_arrivals.rtp_timestamps).tolist())
    audio_steps = Counter(np.diff(peer.audio_arrivals.rtp_timestamps).tolist())
    assert video_steps.most_common(1)[0][0] == 90000 // 30, video_steps
    assert audio_steps.most_common(1)[0][0] == 48000 // 50, audio_steps
    with pytest.raises(ValueError, match="decode=True"):
        ReceivingPeer(decode=False, on_video=lambda frame, arrival: None)
