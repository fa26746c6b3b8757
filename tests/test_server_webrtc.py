"""End to end over loopback: a real aiortc peer receives a session's audio and video from the server while
the LITE WebSocket sends speech, interrupts it, and the session's expiry closes the peer."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from server_harness import RunningServer, running_server
from session_client import SessionClient, started_client

from facecast import protocol as p

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

FPS = 25


@pytest.fixture(params=[0, 2], ids=["in-process", "pool"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The server with its WebRTC sessions in its own process, and in two worker processes."""
    with running_server(tmp_path, live_workers=request.param) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer, request: pytest.FixtureRequest) -> AsyncIterator[SessionClient]:
    encoding = getattr(request, "param", "VP8")
    c = await started_client(server, fps=FPS, video_settings={"quality": "low", "encoding": encoding})
    await c.connect()
    yield c
    await c.close()


@pytest.mark.parametrize("client", ["VP8", "H264"], indirect=True)
async def test_peer_receives_paced_video_and_audio_and_speech_moves_the_mouth(
    client: SessionClient, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, rate, _ = speech
    assert rate == 16000
    await asyncio.sleep(1.0)  # idle video first: the face is alive before anyone speaks
    idle_frames = len(client.received.video)
    first_send = await client.speak(pcm, "hello-1")
    started_at, _ = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
    _, ended = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED, timeout=30)
    await asyncio.sleep(0.5)

    video = client.received.video
    assert idle_frames >= 10, "no idle video before speech"
    assert client.received.video_size == (256, 256)
    steps = np.diff([pts for _, pts, _ in video])
    assert np.median(steps) == 90000 // FPS, "video is not stamped at the session's frame rate"
    assert len(client.received.audio) > 50
    assert ended["event_id"] == "hello-1" and ended["played_s"] == pytest.approx(len(pcm) / rate, abs=0.05)

    motion = client.mouth_motion()
    arrivals = np.array([t for t, _, _ in video])
    speaking = (arrivals > started_at) & (arrivals < started_at + len(pcm) / rate)
    idle_motion = np.percentile(motion[2:idle_frames], 95)
    speaking_motion = np.percentile(motion[speaking], 90)
    print(f"\n[webrtc] mouth motion idle p95 {idle_motion:.2f}, speaking p90 {speaking_motion:.2f}")
    assert speaking_motion > 4 * max(idle_motion, 0.25), "the mouth did not move"

    # Latency: first agent.speak sent -> first received frame whose mouth left rest.
    moving = np.flatnonzero((arrivals > first_send) & (motion > 3 * max(idle_motion, 0.25)))
    latency_ms = (arrivals[moving[0]] - first_send) * 1000
    # A/V offset at the receiver: audio onset (first loud packet) vs mouth onset, by arrival time.
    audio = client.received.audio
    loud = [t for t, _, rms in audio if t > first_send and rms > 500]
    offset_ms = (arrivals[moving[0]] - loud[0]) * 1000
    windows = pcm[: len(pcm) // 320 * 320].astype(np.float32).reshape(-1, 320)
    lead_ms = int(np.argmax(np.sqrt((windows**2).mean(axis=1)) > 500)) * 20  # silence before the first word
    print(
        f"\n[webrtc] speech onset ({lead_ms} ms in) -> moving mouth {latency_ms - lead_ms:.0f} ms, "
        f"-> speech audio {(loud[0] - first_send) * 1000 - lead_ms:.0f} ms; "
        f"mouth-audio arrival offset {offset_ms:+.0f} ms"
    )
    assert client.channel_events, "no events on the data channel"
    assert {e["type"] for e in client.channel_events} >= {p.AGENT_SPEAK_STARTED, p.AGENT_SPEAK_ENDED}


async def test_interrupt_stops_speech_video_within_a_few_frames(
    client: SessionClient, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, _, _ = speech
    await client.speak(np.concatenate([pcm, pcm, pcm]), "long")
    started_at, _ = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
    await asyncio.sleep(1.2)
    interrupt_sent = await client.send({"type": "agent.interrupt"})
    _, interrupted = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_INTERRUPTED)
    await asyncio.sleep(1.0)
    assert interrupted["event_id"] == "long" and 0.5 < interrupted["played_s"] < 3.0

    motion = client.mouth_motion()
    arrivals = np.array([t for t, _, _ in client.received.video])
    after = np.flatnonzero(arrivals > interrupt_sent)
    peak = motion[(arrivals > started_at) & (arrivals < interrupt_sent)].max()
    still_moving = [i for i in after if motion[i] > 0.15 * peak]
    frames_to_rest = 0 if not still_moving else still_moving[-1] - after[0] + 1
    print(f"\n[webrtc] interrupt -> mouth at rest after {frames_to_rest} received frames")
    # Two engine frames plus the pacing queue (2) and frames already on the wire on loopback.
    assert frames_to_rest <= 8
    quiet = [rms for t, _, rms in client.received.audio if t > interrupt_sent + 0.4]
    assert quiet and max(quiet) < 200, "speech audio kept playing after the interrupt"


async def test_session_end_closes_the_peer_and_socket(client: SessionClient, server: RunningServer) -> None:
    assert await client.lite.stop(client.started) == p.END_STOPPED
    _, stopped = await client.wait_event(lambda e: e["type"] == p.SESSION_STOPPED)
    assert stopped["end_reason"] == p.END_STOPPED
    await client.wait_event(lambda e: e.get("state") == p.WS_STATE_CLOSED)
    deadline = time.monotonic() + 15
    while (
        client.pc.connectionState not in ("closed", "failed", "disconnected") and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.05)
    assert client.pc.connectionState in ("closed", "failed", "disconnected")


async def test_peer_leaving_ends_the_session_as_client_gone(
    client: SessionClient, server: RunningServer
) -> None:
    session_id = client.start["session_id"]
    while len(client.received.video) < 5:
        await asyncio.sleep(0.05)
    await client.pc.close()
    received = len(client.received.video)
    record = await asyncio.to_thread(server.wait_ended, session_id, 30.0)
    assert record.end_reason == p.END_CLIENT_GONE
    # The record counts what was sent: at least every frame this peer got, and the session lived on
    # until the server saw the peer go (idle video at 25 fps meanwhile).
    assert record.stats["frames"] >= received >= 5
    ttff = record.stats["time_to_first_frame_ms"]
    assert ttff is not None and 0 < ttff < 1000 * (record.ended_at - record.started_at)


async def test_speech_limits_answer_with_errors_and_the_session_goes_on(client: SessionClient) -> None:
    ten_s = base64.b64encode(np.zeros(p.LITE_AUDIO_RATE * 10, "<i2").tobytes()).decode()
    too_long = base64.b64encode(np.zeros(p.LITE_AUDIO_RATE * 11, "<i2").tobytes()).decode()
    await client.send({"type": "agent.speak", "event_id": "big", "audio": too_long})
    _, error = await client.wait_event(lambda e: e["type"] == p.ERROR)
    assert error["event_id"] == "big" and "at most 10 s per message" in error["message"]
    limit = int(client.server.config.limits.max_queued_speech_s // 10)
    for _ in range(limit):
        await client.send({"type": "agent.speak", "event_id": "flood", "audio": ten_s})
    await client.send({"type": "agent.speak", "event_id": "flood", "audio": ten_s})
    _, queued = await client.wait_event(lambda e: e["type"] == p.ERROR and e["event_id"] == "flood")
    assert "ahead of playback" in queued["message"]
    await client.send({"type": "agent.interrupt"})
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_INTERRUPTED)
    await client.send({"type": "agent.speak", "event_id": "after", "audio": ten_s[:6400]})
    await client.send({"type": "agent.speak_end", "event_id": "after"})
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED and e["event_id"] == "after")
    errors = [e for _, e in client.events if e["type"] == p.ERROR]
    assert len(errors) == 2
