"""Property-based fuzzing (hypothesis, bounded) of every parser a client reaches: LITE WebSocket and
data-channel messages (the bounded JSON parser and the LITE command dispatcher), token request bodies,
.facecast bundles and uploaded image headers. Each must answer any input with its own refusal (an error
event, a 400, BundleError, FetchError), never an unexpected exception (issue 15)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import RunningServer, running_server

from facecast import protocol as p
from facecast.avatars.bundle import BundleError, header_size
from facecast.avatars.fetch import FetchError, check_image_bytes
from facecast.avatars.kinds import open_bundle, renderer_from_bundle
from facecast.avatars.look import Look
from facecast.avatars.procedural import bundle_from_style
from facecast.bounded_json import MAX_DEPTH, MAX_NUMBER_CHARS, MessageRefused, parse_message
from facecast.server.config import ServerConfig
from facecast.server.session_settings import SessionSettings
from facecast.server.sessions import LiveSession, SessionManager
from facecast.server.store import SessionRecord

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

valid_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # no lone surrogates
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | valid_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(valid_text, inner, max_size=5),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


# -- the bounded JSON parser (LITE WebSocket, data channel) -----------------------------------------------
@FAST
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_message_parses_or_is_refused(message: str | bytes) -> None:
    try:
        parse_message(message)
    except MessageRefused as exc:
        assert str(exc)


@FAST
@given(json_values, st.booleans())
def test_json_within_the_bounds_round_trips(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert depth(value) <= MAX_DEPTH
    assert parse_message(text) == value


@FAST
@given(st.integers(MAX_DEPTH + 1, 20_000), st.sampled_from(["[]", "{}"]), st.booleans())
def test_nesting_past_the_limit_is_refused(levels: int, brackets: str, in_object: bool) -> None:
    text = '{"a":' * levels + "1" + "}" * levels if brackets == "{}" else "[" * levels + "]" * levels
    if in_object:
        text = '{"type": "agent.speak", "x": ' + text + "}"
    with pytest.raises(MessageRefused, match="nested deeper"):
        parse_message(text)


@FAST
@given(st.integers(MAX_NUMBER_CHARS + 1, 20_000), st.sampled_from(["", "-", "0.", "1e"]))
def test_long_number_literals_are_refused(digits: int, prefix: str) -> None:
    with pytest.raises(MessageRefused, match="limit"):
        parse_message(f'{{"n": {prefix}{"7" * digits}}}')


@FAST
@given(valid_text, st.integers(0xD800, 0xDFFF))
def test_lone_surrogates_are_refused_anywhere(text: str, surrogate: int) -> None:
    escaped = f"\\u{surrogate:04x}"
    for message in (
        f'{{"text": "{escaped}"}}',
        f'{{"{escaped}": 1}}',
        f'[["{json.dumps(text)[1:-1]}{escaped}"]]',
    ):
        with pytest.raises(MessageRefused, match="surrogate"):
            parse_message(message)


# -- the LITE command dispatcher ---------------------------------------------------------------------------
class Target:
    """Where a session's speech goes, recorded (the live core's interface, SpeechTarget)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.segments = 0

    async def open_segment(self, tag: object = None) -> int:
        self.calls.append("open")
        self.segments += 1
        return self.segments

    async def push_audio(self, pcm: Any, rate: int, text: str | None = None) -> int:
        self.calls.append("audio")
        return 0

    async def push_phones(self, timings: Any) -> int:
        self.calls.append("phones")
        return 0

    async def end_segment(self) -> None:
        self.calls.append("end")

    async def clear(self) -> None:
        self.calls.append("clear")

    async def set_listening(self, listening: bool) -> None:
        self.calls.append("listening")

    async def aclose(self) -> None:
        pass


class Manager:
    """What a LiveSession asks of its manager; speech is synthesised by the real espeak-ng."""

    synthesize = SessionManager.synthesize

    def __init__(self) -> None:
        self.config = ServerConfig()
        self._tts = None
        self._tts_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


def live_session() -> tuple[LiveSession, Manager, Target]:
    record = SessionRecord(
        id="ses_fuzz",
        key_id="key",
        mode="LITE",
        avatar_id="ava",
        is_sandbox=False,
        transport="webrtc",
        settings=SessionSettings(
            look=Look(avatar="ava"),
            encoding="VP8",
            max_session_duration=600,
            interactivity_type="CONVERSATIONAL",
        ),
        state=p.STATE_STARTED,
        token_hash="",
        token_expires_at=0.0,
        created_at=0.0,
    )
    manager, target = Manager(), Target()
    session = LiveSession(record, target, manager=manager, started_mono=0.0)  # type: ignore[arg-type]
    session.ws_state = p.WS_STATE_CONNECTED
    return session, manager, target


pcm_base64 = st.binary(max_size=4800).map(lambda b: base64.b64encode(b).decode())
command_fields = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(p.CLIENT_EVENTS)) | valid_text},
    optional={
        "event_id": json_scalars | st.text(max_size=200),
        "audio": pcm_base64 | json_scalars,
        "text": st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=80) | json_scalars,
        "extra": json_values,
    },
)


@SLOW
@given(st.lists(command_fields | json_values, min_size=1, max_size=6))
def test_lite_commands_are_applied_or_answered_with_an_error_event(messages: list[Any]) -> None:
    async def run() -> list[dict[str, Any]]:
        session, manager, _ = live_session()
        replies: list[dict[str, Any]] = []

        async def reply(event: dict[str, Any]) -> None:
            replies.append(event)

        for message in messages:
            await session.handle(parse_message(json.dumps(message)), reply=reply)
        await asyncio.gather(*manager.tasks)
        return replies

    for event in asyncio.run(run()):
        assert event["type"] == p.ERROR and event["session_id"] == "ses_fuzz"
        assert event["code"] in (p.CODE_BAD_REQUEST, p.CODE_CONFLICT, p.CODE_LIMIT), event
        assert isinstance(event["message"], str) and event["message"]
        json.dumps(event).encode("utf-8")  # it can be sent


# -- token request bodies, over HTTP ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("tokens")) as running:
        yield running


TOKEN_FIELDS = [
    "mode",
    "avatar_id",
    "avatar_persona",
    "is_sandbox",
    "video_settings",
    "video_quality",
    "aspect_ratio",
    "fps",
    "max_session_duration",
    "interactivity_type",
    "transport",
    "livekit_config",
    "audio_source",
]
token_bodies = (
    st.dictionaries(st.sampled_from(TOKEN_FIELDS) | valid_text, json_values, max_size=6) | json_values
)


@SLOW
@given(body=token_bodies)
def test_token_bodies_get_a_token_or_a_clear_400(server: RunningServer, body: Any) -> None:
    key = server.store.create_key("fuzz")[1]
    with server.client() as http:
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, content=json.dumps(body))
    envelope = r.json()
    assert set(envelope) == {"code", "data", "message"}
    assert r.status_code in (200, 400, 404, 501), r.text
    if r.status_code != 200:
        assert envelope["data"] is None and envelope["message"]


# -- bundles -------------------------------------------------------------------------------------------------
AVA = bundle_from_style("ava", created_at="2026-01-01T00:00:00Z")


def zipped(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def read_uploaded(tmp_path: Path, data: bytes) -> None:
    """What the server does with an uploaded bundle: read it whole and make a renderer of it."""
    path = tmp_path / "upload.facecast"
    path.write_bytes(data)
    renderer_from_bundle(open_bundle(path), quality="low")


manifest = json.loads(AVA[0].to_json())
manifest_edits = st.dictionaries(st.sampled_from(sorted(manifest)) | valid_text, json_values, max_size=3)


@SLOW
@given(
    edits=manifest_edits,
    drop=st.sets(st.sampled_from(sorted(manifest)), max_size=2),
    nest=st.integers(0, 3000),
    digits=st.sampled_from([0, 5000]),
)
def test_bundles_with_hostile_manifests_are_refused_with_bundle_error(
    tmp_path_factory: pytest.TempPathFactory, edits: dict[str, Any], drop: set[str], nest: int, digits: int
) -> None:
    data = {k: v for k, v in {**manifest, **edits}.items() if k not in drop}
    text = json.dumps(data)
    if nest:
        text = text[:-1] + ', "extra": ' + "[" * nest + "]" * nest + "}"
    if digits:
        text = text[:-1] + ', "size": ' + "9" * digits + "}"
    try:
        read_uploaded(tmp_path_factory.mktemp("b"), zipped({"manifest.json": text.encode(), **AVA[1]}))
    except BundleError as exc:
        assert str(exc)


@SLOW
@given(st.data())
def test_damaged_bundle_bytes_are_refused_with_bundle_error(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    good = bytearray(zipped({"manifest.json": AVA[0].to_json().encode(), **AVA[1]}))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(good) - 1))
        good[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    try:
        read_uploaded(tmp_path_factory.mktemp("b"), bytes(good[:cut] if data.draw(st.booleans()) else good))
    except BundleError as exc:
        assert str(exc)


# -- image headers of uploads --------------------------------------------------------------------------------
def encoded(ext: str) -> bytes:
    image = np.full((24, 32, 3), 128, np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


IMAGES = {ext: encoded(ext) for ext in (".png", ".jpg", ".webp")}


@FAST
@given(st.sampled_from(sorted(IMAGES)), st.data())
def test_damaged_image_headers_are_refused_with_fetch_error(ext: str, data: st.DataObject) -> None:
    image = bytearray(IMAGES[ext])
    head = min(len(image), 64)  # the magic and the header that gives the size
    for _ in range(data.draw(st.integers(1, 6))):
        image[data.draw(st.integers(0, head - 1))] = data.draw(st.integers(0, 255))
    image = image[: data.draw(st.integers(0, len(image)))]
    try:
        media_type = check_image_bytes(bytes(image), "upload")
    except FetchError as exc:
        assert str(exc)
    else:
        assert media_type in ("image/png", "image/jpeg", "image/webp")
    try:
        width, height = header_size(bytes(image), "upload")
    except BundleError:
        pass
    else:
        assert width >= 0 and height >= 0 and math.isfinite(width * height)


@FAST
@given(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8 "]),
)
def test_any_bytes_with_any_magic_are_refused_with_fetch_error(tail: bytes, magic: bytes) -> None:
    with pytest.raises(FetchError):
        check_image_bytes(magic + tail, "upload")
