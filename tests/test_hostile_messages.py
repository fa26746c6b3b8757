"""Hostile and broken client messages on a live session, over real WebRTC and the LITE WebSocket on
loopback: each is answered with an `error` event in the documented shape, and the session, its socket and
its data channel go on speaking (issue 15, D3, D4 and D6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from server_harness import RunningServer, running_server
from session_client import SessionClient, started_client

from facecast import protocol as p
from facecast.client import ServerError

pytestmark = pytest.mark.slow  # a long end-to-end run: pytest -m "not slow" leaves it out

NESTED_4KB = "[" * 2000 + "]" * 2000
HOSTILE_WS_MESSAGES = [
    ("[" * 1100 + "]" * 1100, "nested deeper"),
    ('{"type": "agent.speak", "event_id": "big", "audio": ' + "9" * 5000 + "}", "5000 digits"),
    ('{"type": "agent.speak_text", "event_id": "lone", "text": "\\ud800"}', "surrogate"),
    ('{"type": "agent.speak", "event_id": "\\ud800", "audio": "AAAA"}', "surrogate"),
]


@pytest.fixture(params=[0, 2], ids=["in-process", "pool"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(tmp_path, live_workers=request.param) as running:
        yield running


async def started(server: RunningServer) -> SessionClient:
    return await started_client(server, video_settings={"quality": "low"})


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[SessionClient]:
    c = await started(server)
    await c.connect()
    yield c
    await c.close()


async def test_a_malformed_offer_is_refused_and_the_session_takes_a_good_one(server: RunningServer) -> None:
    c = await started(server)
    probe = RTCPeerConnection()  # a well-formed offer to break in the ways below
    probe.addTransceiver("video", direction="recvonly")
    await probe.setLocalDescription(await probe.createOffer())
    good = probe.localDescription.sdp
    await probe.close()
    bad_offers = [
        ("x", "must begin with the line v=0"),
        ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", "no media sections"),
        (good.replace("a=fingerprint", "a=x-fingerprint"), "no DTLS fingerprint"),
        (good.replace("a=ice-ufrag", "a=x-ufrag"), "no ICE credentials"),
        (good.replace("m=video 9 ", "m=video nine "), "could not answer the WebRTC offer"),
    ]
    for sdp, needle in bad_offers:
        with pytest.raises(ServerError) as refused:
            await c.lite.offer(c.started, sdp)
        assert refused.value.status == 400 and refused.value.code == p.CODE_BAD_REQUEST
        assert refused.value.body["data"] is None
        assert needle in refused.value.message and "createOffer()" in refused.value.message
    assert server.session(c.start["session_id"]).end_reason is None
    try:
        await c.connect()  # the same session answers a good offer and plays
        await c.send({"type": p.AGENT_SPEAK_TEXT, "event_id": "ok", "text": "Connected."})
        await c.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED and e["event_id"] == "ok", 60)
    finally:
        await c.close()


def assert_error_shape(event: dict[str, Any], needle: str) -> None:
    assert event["type"] == p.ERROR and event["code"] == p.CODE_BAD_REQUEST
    assert isinstance(event["event_id"], str) and event["event_id"]
    assert needle in event["message"], event["message"]


async def wait_channel_event(client: SessionClient, match: Any, timeout: float = 20.0) -> dict[str, Any]:
    for _ in range(int(timeout / 0.01)):
        for event in client.channel_events:
            if match(event):
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"no matching data channel event in {client.channel_events}")


async def next_ws_error(client: SessionClient, after: int, timeout: float = 20.0) -> dict[str, Any]:
    """The first `error` event on the WebSocket after its first `after` events."""
    for _ in range(int(timeout / 0.01)):
        errors = [event for _, event in client.events[after:] if event["type"] == p.ERROR]
        if errors:
            return errors[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no error event after {client.events[:after]}")


async def test_hostile_messages_get_errors_and_the_session_goes_on(
    client: SessionClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="facecast.server.app")
    for _ in range(2000):  # the data channel opens a little after the peer connects
        if client.channel.readyState == "open":
            break
        await asyncio.sleep(0.01)
    client.channel.send(NESTED_4KB)
    refused = await wait_channel_event(client, lambda e: e["type"] == p.ERROR)
    assert_error_shape(refused, "nested deeper")

    for message, needle in HOSTILE_WS_MESSAGES:
        before = len(client.events)
        await client.socket.send_text(message)
        assert_error_shape(await next_ws_error(client, before), needle)
    refusals = [r for r in caplog.records if "refused a LITE WebSocket message" in r.getMessage()]
    assert len(refusals) == len(HOSTILE_WS_MESSAGES)

    # The socket and the channel still carry speech, commanded from either.
    await client.send({"type": p.AGENT_SPEAK_TEXT, "event_id": "after", "text": "Still here."})
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_STARTED and e["event_id"] == "after")
    await client.wait_event(lambda e: e["type"] == p.AGENT_SPEAK_ENDED and e["event_id"] == "after", 60)
    client.channel.send('{"type": "agent.speak_text", "event_id": "by-channel", "text": "And here."}')
    await wait_channel_event(
        client, lambda e: e["type"] == p.AGENT_SPEAK_ENDED and e["event_id"] == "by-channel", 60
    )
    assert client.server.session(client.start["session_id"]).end_reason is None
