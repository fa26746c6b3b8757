"""The mouth track as a session stream (docs/mouth-track.md): a real server, a real aiortc peer and the
real LITE WebSocket. Records arrive on both, in frame order, as the frames play; an interrupt stops the
utterance's; a track-only session (video false) sends audio and records and encodes no video. The
sessions run in the server's own process and in a worker pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_harness import RunningServer, running_server
from session_client import SessionClient, started_client

from facecast import protocol as p
from facecast.engine.mouth_track import BLENDSHAPE_NAMES, MOUTH_TRACK_VERSION
from facecast.server.config import Limits

FPS = 25


@pytest.fixture(params=[0, 2], ids=["in-process", "pool"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(tmp_path, live_workers=request.param) as running:
        yield running


async def _client(server: RunningServer, **fields: Any) -> SessionClient:
    c = await started_client(server, fps=FPS, video_settings={"quality": "low"}, mouth_track=True, **fields)
    await c.connect()
    return c


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[SessionClient]:
    c = await _client(server)
    yield c
    await c.close()


@pytest.fixture
async def track_only(server: RunningServer) -> AsyncIterator[SessionClient]:
    c = await _client(server, video=False)
    yield c
    await c.close()


def socket_tracks(c: SessionClient) -> list[tuple[float, dict[str, Any]]]:
    return [(t, e) for t, e in c.events if e["type"] == p.AVATAR_MOUTH_TRACK]


def channel_tracks(c: SessionClient) -> list[tuple[float, dict[str, Any]]]:
    return [(t, e) for t, e in c.peer.channel_events if e["type"] == p.AVATAR_MOUTH_TRACK]


def check_speech_track(tracks: list[tuple[float, dict[str, Any]]], event_id: str, where: str) -> None:
    """In frame order; the utterance's frames carry its event_id and an open jaw; before it the mouth
    rests (idle frames carry no event_id)."""
    records = [e["track"] for _, e in tracks]
    assert len(records) > 50, f"too few records on the {where}: {len(records)}"
    assert all(
        r["v"] == MOUTH_TRACK_VERSION and list(r["blendshapes"]) == list(BLENDSHAPE_NAMES) for r in records
    )
    frames = [r["frame"] for r in records]
    assert frames == sorted(set(frames)), f"records on the {where} are not in frame order"
    assert all(r["t"] == pytest.approx(r["frame"] / FPS, abs=1e-5) for r in records)
    spoken = [i for i, (_, e) in enumerate(tracks) if e["event_id"] == event_id]
    assert spoken, f"no record of {event_id} on the {where}"
    assert all(records[i]["speaking"] for i in spoken)
    jaw = [records[i]["blendshapes"]["jawOpen"] for i in spoken]
    assert max(jaw) > 0.3, f"the jaw never opened during speech on the {where} (max {max(jaw):.2f})"
    before = records[: spoken[0]]
    assert len(before) >= 10, "no idle records before the speech"
    assert all(e["event_id"] is None for _, e in tracks[: spoken[0]])
    assert max(r["blendshapes"]["jawOpen"] for r in before) < 0.05, "the mouth was not at rest before speech"


async def test_records_arrive_in_frame_order_on_socket_and_channel(
    client: SessionClient, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, _, _ = speech
    await asyncio.sleep(1.0)  # idle first
    await client.speak(pcm, "hello-1")
    started_at, _ = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED, timeout=30)
    await asyncio.sleep(0.3)
    check_speech_track(socket_tracks(client), "hello-1", "WebSocket")
    check_speech_track(channel_tracks(client), "hello-1", "data channel")
    # Sent as the frame plays: the first record of the utterance comes with agent.speak_started.
    first = next(t for t, e in socket_tracks(client) if e["event_id"] == "hello-1")
    print(f"\n[mouth track] first speech record {1000 * (first - started_at):+.0f} ms from speak_started")
    assert abs(first - started_at) < 0.5
    assert client.received.video, "a session with video and the track still sends video"


async def test_interrupt_stops_the_utterances_records(
    client: SessionClient, speech: tuple[np.ndarray, int, str]
) -> None:
    pcm, _, _ = speech
    await client.speak(np.concatenate([pcm, pcm, pcm]), "long")
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED)
    await asyncio.sleep(1.0)
    await client.send({"type": p.AGENT_INTERRUPT})
    interrupted_at, _ = await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_INTERRUPTED)
    await asyncio.sleep(1.0)
    for where, tracks in (("WebSocket", socket_tracks(client)), ("data channel", channel_tracks(client))):
        spoken = [t for t, e in tracks if e["event_id"] == "long"]
        assert spoken, f"no record of the utterance on the {where}"
        after = [e["track"] for t, e in tracks if t > interrupted_at + 0.3]
        assert len(after) >= 10, f"records stopped altogether on the {where} after the interrupt"
        assert max(spoken) < interrupted_at + 0.3, f"the utterance's records went on on the {where}"
        assert not any(r["speaking"] for r in after)
        assert max(r["blendshapes"]["jawOpen"] for r in after) < 0.05, "the mouth did not come to rest"


async def test_track_only_session_sends_audio_and_records_without_video(
    track_only: SessionClient, speech: tuple[np.ndarray, int, str]
) -> None:
    c = track_only
    sections = c.pc.remoteDescription.sdp.split("\r\nm=")
    video = [section for section in sections if section.startswith("video")]
    audio = [section for section in sections if section.startswith("audio")]
    assert audio and "a=sendonly" in audio[0], "the answer sends no audio"
    assert all("a=sendonly" not in v and "a=sendrecv" not in v for v in video), "the answer sends video"
    pcm, _, _ = speech
    await asyncio.sleep(0.5)
    await c.speak(pcm, "only-track")
    await c.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED, timeout=30)
    await asyncio.sleep(0.3)
    check_speech_track(socket_tracks(c), "only-track", "WebSocket")
    check_speech_track(channel_tracks(c), "only-track", "data channel")
    assert not c.received.video, "a track-only session sent video frames"
    loud = [rms for _, _, rms in c.received.audio if rms > 500]
    assert len(loud) > 20, "the speech's audio did not arrive"
    stats = await c.lite.stats(c.started.session_id)
    assert stats["video_frames_sent"] == 0 and stats["encode_ms"] is None, stats
    assert stats["audio_frames_sent"] > 50
    session = await c.lite.session(c.started.session_id)
    assert session["settings"]["video"] is False and session["settings"]["mouth_track"] is True


@pytest.mark.parametrize("server", [0], indirect=True, ids=["in-process"])
async def test_a_session_without_the_track_sends_no_records(
    server: RunningServer, speech: tuple[np.ndarray, int, str]
) -> None:
    c = await started_client(server, fps=FPS, video_settings={"quality": "low"})
    await c.connect()
    try:
        await c.speak(speech[0][:16000], "plain")
        await c.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED, timeout=30)
        assert not socket_tracks(c) and not channel_tracks(c)
        assert (await c.lite.session(c.started.session_id))["settings"]["mouth_track"] is False
    finally:
        await c.close()


@pytest.mark.parametrize("server", [0], indirect=True, ids=["in-process"])
@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"video": False}, "set mouth_track true"),
        ({"mode": "FULL", "mouth_track": True}, "for LITE sessions"),
        ({"video": False, "mouth_track": True, "transport": "livekit"}, "set transport webrtc"),
        ({"mouth_track": 1}, "mouth_track"),
    ],
)
async def test_bad_track_combinations_are_refused_saying_why(
    server: RunningServer, fields: dict[str, Any], says: str
) -> None:
    key = server.store.create_key("track")[1]
    with server.client() as http:
        refused = http.post("/v1/sessions/token", json=fields, headers={"X-API-KEY": key})
    assert refused.status_code == 400 and says in refused.json()["message"], refused.text


def test_track_only_sessions_count_less_of_the_capacity(tmp_path: Path) -> None:
    with running_server(tmp_path, limits=Limits(max_live_sessions=3)) as server:
        key = server.store.create_key("track", max_concurrent=8)[1]
        with server.client(headers={"X-API-KEY": key}) as http:

            def mint(**fields: Any) -> str:
                minted = http.post("/v1/sessions/token", json=fields)
                assert minted.status_code == 200, minted.text
                return str(minted.json()["data"]["session_token"])

            def start(token: str) -> Any:
                return http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"}, json={})

            track_only = [mint(mouth_track=True, video=False) for _ in range(6)]
            with_video = mint()
            for token in track_only[:5]:  # 5 x 0.6: the capacity of 3 sessions with video
                assert start(token).status_code == 200
            for token in (track_only[5], with_video):
                refused = start(token)
                assert refused.status_code == 503 and "at capacity" in refused.json()["message"]
                assert "track-only session counts 0.6" in refused.json()["message"]
            stopped = http.post(
                "/v1/sessions/stop", headers={"Authorization": f"Bearer {track_only[0]}"}, json={}
            )
            assert stopped.status_code == 200
            assert start(with_video).status_code == 503  # 2.4 + 1 is over 3
            assert start(track_only[5]).status_code == 200  # 2.4 + 0.6 is not
