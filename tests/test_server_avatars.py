"""Avatars through the API, on a real server over loopback HTTP: bundle uploads, photo uploads and URLs
built in the background, the SSRF policy, per-key ownership, deletion, previews, sessions that use them,
crash recovery, and the `avatars` table in SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import http.server
import io
import ipaddress
import json
import re
import sqlite3
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psycopg
import pytest
import skimage
from pg import postgres_server, postgres_url  # noqa: F401  (fixtures)
from server_harness import RunningServer, running_server

from facecast import protocol as p
from facecast.avatars.bundle import read_bundle, write_bundle
from facecast.avatars.fetch import FetchPolicy
from facecast.avatars.procedural import bundle_from_style
from facecast.server.avatars import RESTARTED_ERROR, SHUTDOWN_ERROR
from facecast.server.config import AvatarSettings
from facecast.server.store import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    AvatarRecord,
    ContextRecord,
    Store,
    new_avatar_id,
    open_store,
)

IMAGES = Path(skimage.__file__).parent / "data"
ASTRONAUT = IMAGES / "astronaut.png"  # one face, facing the camera
COFFEE = IMAGES / "coffee.png"  # a cup of coffee: no face
AVATAR_ID = re.compile(r"av_[0-9a-f]{12}")
BUILD_TIMEOUT_S = 240.0  # the first build ever installs the face analysis tools (~30 s)
LOOPBACK = FetchPolicy(allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))


# -- helpers ----------------------------------------------------------------------------------------------
def bundle_bytes(tmp_path: Path, style: str = "noah") -> bytes:
    manifest, files = bundle_from_style(style)
    return write_bundle(tmp_path / f"{style}.facecast", manifest, files).read_bytes()


def upload(
    server: RunningServer, key: str, field: str, data: bytes, **form: str
) -> tuple[int, dict[str, Any]]:
    with server.client() as http:
        r = http.post(
            "/v1/avatars",
            headers={"X-API-KEY": key},
            files={field: ("upload.bin", data, "application/octet-stream")},
            data=form,
        )
    return r.status_code, r.json()


def post_url(server: RunningServer, key: str, url: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    with server.client() as http:
        r = http.post("/v1/avatars", headers={"X-API-KEY": key}, json={"image_url": url, **extra})
    return r.status_code, r.json()


def get(server: RunningServer, path: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    with server.client() as http:
        r = http.get(path, headers={"X-API-KEY": key} if key else {})
    return r.status_code, r.json()


def delete(server: RunningServer, avatar_id: str, key: str) -> tuple[int, dict[str, Any]]:
    with server.client() as http:
        r = http.delete(f"/v1/avatars/{avatar_id}", headers={"X-API-KEY": key})
    return r.status_code, r.json()


def mint(server: RunningServer, key: str, **body: Any) -> tuple[int, dict[str, Any]]:
    body.setdefault("video_settings", {"quality": "low"})
    with server.client() as http:
        r = http.post("/v1/sessions/token", headers={"X-API-KEY": key}, json=body)
    return r.status_code, r.json()


def start(server: RunningServer, token: str) -> tuple[int, dict[str, Any]]:
    with server.client(timeout=BUILD_TIMEOUT_S) as http:
        r = http.post("/v1/sessions/start", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json()


def stop(server: RunningServer, token: str) -> None:
    with server.client() as http:
        assert http.post("/v1/sessions/stop", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def wait_built(server: RunningServer, avatar_id: str, key: str, timeout: float = BUILD_TIMEOUT_S) -> dict:
    """Poll GET /v1/avatars/{id} until the build is over; the last item seen."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[str, float]] = []
    while True:
        status, body = get(server, f"/v1/avatars/{avatar_id}", key)
        assert status == 200, body
        item = body["data"]
        if item["status"] != p.AVATAR_BUILDING:
            return item
        seen.append((item["stage"], item["progress"]))
        assert [f for _, f in seen] == sorted(f for _, f in seen), f"progress went backwards: {seen}"
        if time.monotonic() > deadline:
            raise AssertionError(f"avatar {avatar_id} still building after {timeout} s: {seen[-3:]}")
        time.sleep(0.1)


def wait_jobs_done(server: RunningServer, timeout: float = BUILD_TIMEOUT_S) -> None:
    """Until this server runs no build (a deleted avatar's build finishes in the background)."""
    deadline = time.monotonic() + timeout
    while server.app.state.avatars._jobs:
        if time.monotonic() > deadline:
            raise AssertionError("builds still running")
        time.sleep(0.05)


def library_files(server: RunningServer) -> list[str]:
    root = Path(server.config.data_dir or "") / "avatars"
    return sorted(f.name for f in root.glob("*")) if root.is_dir() else []


def decodes_as_image(png: bytes) -> tuple[int, ...]:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return tuple(image.shape)


@pytest.fixture
def image_server() -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving the test photos; its base URL."""

    class Photos(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            if name not in (ASTRONAUT.name, COFFEE.name):
                self.send_error(404)
                return
            data = (IMAGES / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Photos)
    thread = threading.Thread(target=httpd.serve_forever, name="photo-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def crafted_bundle(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip written entry by entry, with none of write_bundle's checks."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return out.getvalue()


def manifest_and_style(**changes: Any) -> list[tuple[str, bytes]]:
    manifest, files = bundle_from_style("ava")
    data = json.loads(manifest.to_json())
    data.update(changes)
    return [("manifest.json", json.dumps(data).encode()), ("style.toml", files["style.toml"])]


# -- bundles: ready at once -------------------------------------------------------------------------------
def test_bundle_upload_list_preview_session_delete(server: RunningServer, key: str, tmp_path: Path) -> None:
    data = bundle_bytes(tmp_path)
    status, body = upload(server, key, "bundle", data, name="Noah, my copy", consent="it is a cartoon")
    assert status == 201, body
    item = body["data"]
    avatar_id = item["avatar_id"]
    assert AVATAR_ID.fullmatch(avatar_id)
    assert item["status"] == p.AVATAR_READY and item["progress"] == 1.0 and item["stage"] == "done"
    assert (item["kind"], item["builtin"], item["source"], item["name"]) == (
        "procedural", False, p.AVATAR_SOURCE_BUNDLE, "Noah, my copy"
    )  # fmt: skip
    assert item["preview_url"] == f"/v1/avatars/{avatar_id}/preview.png" and item["error"] is None
    # Stored under the server's id, with the consent given at upload.
    stored = read_bundle(server.app.state.avatars.library.path(avatar_id)).manifest
    assert (stored.name, stored.display_name, stored.consent) == (
        avatar_id,
        "Noah, my copy",
        "it is a cartoon",
    )

    # The same bytes from the same key: the same avatar, not a second copy.
    again_status, again = upload(server, key, "bundle", data)
    assert again_status == 200 and again["data"]["avatar_id"] == avatar_id
    assert library_files(server) == [f"{avatar_id}.facecast"]

    # Listed with the key (after the built-ins), not without; GET one gives the same item.
    _, listed = get(server, "/v1/avatars", key)
    ids = [a["avatar_id"] for a in listed["data"]["avatars"]]
    assert ids[:4] == ["ava", "leo", "mira", "noah"] and ids[4:] == [avatar_id]
    assert listed["data"]["avatars"][-1] == get(server, f"/v1/avatars/{avatar_id}", key)[1]["data"]
    _, public = get(server, "/v1/avatars")
    assert [a["avatar_id"] for a in public["data"]["avatars"]] == ["ava", "leo", "mira", "noah"]
    assert all(a["builtin"] and a["status"] == p.AVATAR_READY for a in public["data"]["avatars"])

    with server.client() as http:
        preview = http.get(item["preview_url"], headers={"X-API-KEY": key})
        anonymous = http.get(item["preview_url"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert decodes_as_image(preview.content)[2] == 3
    assert anonymous.status_code == 404 and "X-API-KEY" in anonymous.json()["message"]

    # A session with it: minted, started (LITE, no WebRTC needed for the API to accept it), stopped.
    status, minted = mint(server, key, avatar_id=avatar_id)
    assert status == 200, minted
    token = minted["data"]["session_token"]
    status, started = start(server, token)
    assert status == 200, started
    assert server.session(minted["data"]["session_id"]).avatar_id == avatar_id
    stop(server, token)

    status, deleted = delete(server, avatar_id, key)
    assert status == 200 and deleted["data"] == {"avatar_id": avatar_id, "deleted": True}
    assert get(server, f"/v1/avatars/{avatar_id}", key)[0] == 404
    assert delete(server, avatar_id, key)[0] == 404
    assert library_files(server) == []
    status, refused = mint(server, key, avatar_id=avatar_id)
    assert status == 404 and "/v1/avatars" in refused["message"]


def test_other_keys_cannot_see_use_or_delete_an_avatar(
    server: RunningServer, key: str, tmp_path: Path
) -> None:
    avatar_id = upload(server, key, "bundle", bundle_bytes(tmp_path))[1]["data"]["avatar_id"]
    other = server.store.create_key("stranger")[1]
    status, body = get(server, f"/v1/avatars/{avatar_id}", other)
    assert status == 404 and body["code"] == p.CODE_NOT_FOUND
    assert delete(server, avatar_id, other)[0] == 404
    assert mint(server, other, avatar_id=avatar_id)[0] == 404
    _, listed = get(server, "/v1/avatars", other)
    assert avatar_id not in [a["avatar_id"] for a in listed["data"]["avatars"]]
    with server.client() as http:
        assert (
            http.get(f"/v1/avatars/{avatar_id}/preview.png", headers={"X-API-KEY": other}).status_code == 404
        )
    # Still there for its owner.
    assert get(server, f"/v1/avatars/{avatar_id}", key)[1]["data"]["status"] == p.AVATAR_READY


def test_builtins_are_listed_readable_and_not_deletable(server: RunningServer, key: str) -> None:
    status, body = get(server, "/v1/avatars/mira", key)
    assert status == 200
    assert body["data"] == {
        "avatar_id": "mira",
        "name": body["data"]["name"],
        "description": body["data"]["description"],
        "kind": "procedural",
        "builtin": True,
        "status": p.AVATAR_READY,
        "aspect_ratios": body["data"]["aspect_ratios"],
        "qualities": body["data"]["qualities"],
        "preview_url": "/v1/avatars/mira/preview.png",
    }
    status, refused = delete(server, "mira", key)
    assert status == 403 and "built-in" in refused["message"]
    assert get(server, "/v1/avatars/nobody", key)[0] == 404
    with server.client() as http:
        missing_key = http.get("/v1/avatars/mira")
        wrong_key = http.get("/v1/avatars", headers={"X-API-KEY": "fck_nope"})
        preview = http.get("/v1/avatars/mira/preview.png")  # built-in previews stay public
    assert missing_key.status_code == 401 and wrong_key.status_code == 401
    assert preview.status_code == 200 and decodes_as_image(preview.content)[2] == 3


# -- bad uploads ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ([*manifest_and_style(), ("../evil.txt", b"boo")], "'../evil.txt'"),  # zip slip
        (manifest_and_style(format_version=99), "newer Facecast"),
        ([("style.toml", b"")], "no manifest.json"),
    ],
)
def test_bad_bundles_are_refused_with_the_reason(
    server: RunningServer, key: str, entries: list[tuple[str, bytes]], needle: str
) -> None:
    status, body = upload(server, key, "bundle", crafted_bundle(entries))
    assert status == 400, body
    assert needle in body["message"] and "the uploaded bundle" in body["message"]
    assert ".tmp" not in body["message"]  # the server's temporary path is not shown
    assert library_files(server) == []


def test_bad_upload_forms(server: RunningServer, key: str, tmp_path: Path) -> None:
    status, body = upload(server, key, "image", b"hello, I am not a photo")
    assert status == 400 and "not a PNG, JPEG or WebP" in body["message"], body
    assert upload(server, key, "image", b"")[0] == 400
    assert upload(server, key, "picture", ASTRONAUT.read_bytes())[0] == 400
    with server.client() as http:
        both = http.post(
            "/v1/avatars",
            headers={"X-API-KEY": key},
            files={
                "image": ("a.png", ASTRONAUT.read_bytes()),
                "bundle": ("b.facecast", bundle_bytes(tmp_path)),
            },
        )
        text_image = http.post(  # multipart, but the image is a text field
            "/v1/avatars", headers={"X-API-KEY": key}, data={"image": "abc"}, files={"consent": (None, "ok")}
        )
        plain = http.post("/v1/avatars", headers={"X-API-KEY": key}, content=b"hi")
        no_key = http.post("/v1/avatars", files={"image": ("a.png", ASTRONAUT.read_bytes())})
        long_name = http.post(
            "/v1/avatars",
            headers={"X-API-KEY": key},
            files={"bundle": ("b.facecast", bundle_bytes(tmp_path))},
            data={"name": "x" * 201},
        )
    assert both.status_code == 400 and "exactly one file" in both.json()["message"]
    assert text_image.status_code == 400 and "file part" in text_image.json()["message"]
    assert plain.status_code == 415
    assert no_key.status_code == 401
    assert long_name.status_code == 400 and "name" in long_name.json()["message"]
    assert server.store.list_avatars(server.store.authenticate_key(key).id) == []  # type: ignore[union-attr]


def test_uploads_over_the_limit_are_refused(tmp_path: Path) -> None:
    limit = 50_000
    with running_server(
        tmp_path, avatars=AvatarSettings(max_upload_bytes=limit, fetch_policy=FetchPolicy())
    ) as server:
        key = server.store.create_key("big")[1]
        photo = ASTRONAUT.read_bytes()
        assert len(photo) > limit
        status, body = upload(server, key, "image", photo)
        assert status == 413 and "FACECAST_MAX_UPLOAD_BYTES" in body["message"], body

        # Without a Content-Length (chunked): counted while it streams in.
        boundary = "facecastboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def chunks() -> Iterator[bytes]:
            yield head
            for i in range(0, len(photo), 16384):
                yield photo[i : i + 16384]
            yield tail

        with server.client() as http:
            r = http.post(
                "/v1/avatars",
                headers={"X-API-KEY": key, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                content=chunks(),
            )
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert r.status_code == 413, r.text
        # A small one still goes through.
        small = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
        assert upload(server, key, "image", small)[0] == 202


# -- URLs: the SSRF policy --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "//example.com/a.png", "http://u:p@example.com/a"],
)
def test_image_urls_that_are_not_http_are_refused_at_once(server: RunningServer, key: str, url: str) -> None:
    status, body = post_url(server, key, url)
    assert status == 400 and "image_url" in body["message"], body
    status, body = mint(server, key, avatar_image_url=url)
    assert status == 400 and "image_url" in body["message"], body
    assert server.store.list_avatars(server.store.authenticate_key(key).id) == []  # type: ignore[union-attr]


def test_json_body_is_checked(server: RunningServer, key: str) -> None:
    status, body = post_url(server, key, "https://example.com/a.png", avatar="x")
    assert status == 400 and "avatar" in body["message"]
    with server.client() as http:
        r = http.post(
            "/v1/avatars", headers={"X-API-KEY": key, "Content-Type": "application/json"}, content=b"{nope"
        )
    assert r.status_code == 400


def test_loopback_url_fails_the_build_under_the_default_policy(server: RunningServer, key: str) -> None:
    # The server's own address: a request forgery attempt. The request is accepted, the build refuses it.
    status, body = post_url(server, key, f"{server.url}/v1/avatars/ava/preview.png", name="me")
    assert status == 202, body
    assert body["data"]["status"] == p.AVATAR_BUILDING and body["data"]["stage"] == "queued"
    assert body["data"]["progress"] == 0.0 and body["data"]["source"] == p.AVATAR_SOURCE_URL
    item = wait_built(server, body["data"]["avatar_id"], key, timeout=30)
    assert item["status"] == p.AVATAR_FAILED and "loopback" in item["error"], item
    assert item["stage"] == "failed" and item["preview_url"] is None
    assert library_files(server) == []
    status, refused = mint(server, key, avatar_id=item["avatar_id"])
    assert status == 400 and "loopback" in refused["message"]


def test_session_with_avatar_image_url(server: RunningServer, key: str) -> None:
    url = f"{server.url}/v1/avatars/ava/preview.png"
    status, body = mint(server, key, avatar_id="ava", avatar_image_url=url)
    assert status == 400 and "not both" in body["message"]
    status, body = mint(server, key, is_sandbox=True, avatar_image_url=url)
    assert status == 400 and "sandbox" in body["message"]
    status, minted = mint(server, key, avatar_image_url=url)
    assert status == 200, minted
    session_id = minted["data"]["session_id"]
    avatar_id = server.session(session_id).avatar_id
    assert AVATAR_ID.fullmatch(avatar_id)
    _, listed = get(server, "/v1/avatars", key)
    assert avatar_id in [a["avatar_id"] for a in listed["data"]["avatars"]]
    # /start waits for the build, which the default policy fails: the session can never start.
    status, started = start(server, minted["data"]["session_token"])
    assert status == 400 and "loopback" in started["message"], started
    record = server.wait_ended(session_id)
    assert record.end_reason == p.END_ERROR


def test_livekit_sessions_take_avatars_made_here(server: RunningServer, key: str, tmp_path: Path) -> None:
    """Minting is accepted; the worker rendering them in a room is tested with the plugin against this
    server (tests/test_livekit_plugin.py, remote mode with an uploaded bundle and a photo)."""
    avatar_id = upload(server, key, "bundle", bundle_bytes(tmp_path))[1]["data"]["avatar_id"]
    livekit = {"livekit_url": "ws://lk:7880", "livekit_room": "r", "livekit_worker_token": "t"}
    status, body = mint(server, key, avatar_id=avatar_id, transport="livekit", livekit_config=livekit)
    assert status == 200, body
    assert server.session(body["data"]["session_id"]).avatar_id == avatar_id


def test_session_cap_discards_the_avatar_it_would_have_built(tmp_path: Path) -> None:
    from facecast.server.config import Limits

    with running_server(tmp_path, limits=Limits(max_concurrent_per_key=1)) as server:
        key = server.store.create_key("one")[1]
        assert mint(server, key)[0] == 200
        status, body = mint(server, key, avatar_image_url="https://example.com/a.png")
        assert status == 429, body
        assert server.store.list_avatars(server.store.authenticate_key(key).id) == []  # type: ignore[union-attr]


# -- photo builds -----------------------------------------------------------------------------------------
def test_photo_upload_builds_a_portrait(server: RunningServer, key: str) -> None:
    photo = ASTRONAUT.read_bytes()
    status, body = upload(server, key, "image", photo, name="Eileen")
    assert status == 202, body
    queued = body["data"]
    avatar_id = queued["avatar_id"]
    assert AVATAR_ID.fullmatch(avatar_id)
    assert (queued["status"], queued["progress"], queued["stage"]) == (p.AVATAR_BUILDING, 0.0, "queued")
    assert (queued["kind"], queued["source"], queued["name"]) == (
        "portrait",
        p.AVATAR_SOURCE_UPLOAD,
        "Eileen",
    )
    again_status, again = upload(server, key, "image", photo)  # the same photo while it builds
    assert again_status == 200 and again["data"]["avatar_id"] == avatar_id

    item = wait_built(server, avatar_id, key)
    assert item["status"] == p.AVATAR_READY, item
    wait_jobs_done(server)  # the job is forgotten just after it records the result
    with server.client() as http:
        metrics = http.get("/metrics").text
    assert "facecast_avatar_builds_total 1" in metrics and "facecast_avatar_builds_pending 0" in metrics
    assert (item["progress"], item["stage"], item["error"]) == (1.0, "done", None)
    assert item["preview_url"] == f"/v1/avatars/{avatar_id}/preview.png"
    assert library_files(server) == [f"{avatar_id}.facecast"]
    assert read_bundle(server.app.state.avatars.library.path(avatar_id)).manifest.kind == "portrait"
    assert upload(server, key, "image", photo)[1]["data"]["avatar_id"] == avatar_id  # and once ready
    status, minted = mint(server, key, avatar_id=avatar_id)
    assert status == 200, minted

    with server.client() as http:
        preview = http.get(item["preview_url"], headers={"X-API-KEY": key})
    assert preview.status_code == 200 and decodes_as_image(preview.content)[2] == 3
    status, started = start(server, minted["data"]["session_token"])
    assert status == 200, started
    stop(server, minted["data"]["session_token"])


def test_photo_without_a_face_fails_the_build(server: RunningServer, key: str) -> None:
    status, body = upload(server, key, "image", COFFEE.read_bytes())
    assert status == 202, body
    item = wait_built(server, body["data"]["avatar_id"], key)
    assert item["status"] == p.AVATAR_FAILED and "no face" in item["error"], item
    assert library_files(server) == []
    # A failed build does not hold the bytes: uploading them again tries again.
    status, again = upload(server, key, "image", COFFEE.read_bytes())
    assert status == 202 and again["data"]["avatar_id"] != item["avatar_id"]
    wait_built(server, again["data"]["avatar_id"], key)


def test_url_build_with_loopback_allowed(tmp_path: Path, image_server: str) -> None:
    settings = AvatarSettings(fetch_policy=LOOPBACK)
    with running_server(tmp_path, avatars=settings) as server:
        key = server.store.create_key("urls")[1]
        status, body = post_url(
            server, key, f"{image_server}/{ASTRONAUT.name}", consent="NASA, public domain"
        )
        assert status == 202, body
        item = wait_built(server, body["data"]["avatar_id"], key)
        assert item["status"] == p.AVATAR_READY and item["source"] == p.AVATAR_SOURCE_URL, item
        manifest = read_bundle(server.app.state.avatars.library.path(item["avatar_id"])).manifest
        assert manifest.consent == "NASA, public domain"
        # A URL without a face: the message names the URL, not "the uploaded image".
        status, body = post_url(server, key, f"{image_server}/{COFFEE.name}")
        failed = wait_built(server, body["data"]["avatar_id"], key)
        assert failed["status"] == p.AVATAR_FAILED and f"{image_server}/{COFFEE.name}" in failed["error"]
        status, body = post_url(server, key, f"{image_server}/missing.png")
        missing = wait_built(server, body["data"]["avatar_id"], key)
        assert missing["status"] == p.AVATAR_FAILED and "404" in missing["error"]


def test_builds_per_key_are_capped(tmp_path: Path) -> None:
    settings = AvatarSettings(max_building_per_key=1, fetch_policy=FetchPolicy())
    with running_server(tmp_path, avatars=settings) as server:
        key, other = server.store.create_key("a")[1], server.store.create_key("b")[1]
        status, first = upload(server, key, "image", ASTRONAUT.read_bytes())
        assert status == 202
        status, body = upload(server, key, "image", COFFEE.read_bytes())
        assert status == 429 and body["code"] == p.CODE_LIMIT, body
        assert upload(server, other, "image", COFFEE.read_bytes())[0] == 202  # another key's cap
        wait_built(server, first["data"]["avatar_id"], key)
        assert upload(server, key, "image", COFFEE.read_bytes())[0] == 202  # a slot is free again


def test_start_gives_up_waiting_after_the_configured_time(tmp_path: Path) -> None:
    settings = AvatarSettings(build_wait_s=0.0, fetch_policy=FetchPolicy())
    with running_server(tmp_path, avatars=settings) as server:
        key = server.store.create_key("waits")[1]
        avatar_id = upload(server, key, "image", ASTRONAUT.read_bytes())[1]["data"]["avatar_id"]
        status, minted = mint(server, key, avatar_id=avatar_id)  # a building avatar is accepted
        assert status == 200, minted
        token = minted["data"]["session_token"]
        status, body = start(server, token)
        assert status == 409 and "still building" in body["message"], body
        assert server.session(minted["data"]["session_id"]).state == p.STATE_CREATED  # may start later
        wait_built(server, avatar_id, key)
        status, body = start(server, token)
        assert status == 200, body
        stop(server, token)


def test_start_waits_for_the_build_then_starts(server: RunningServer, key: str) -> None:
    avatar_id = upload(server, key, "image", ASTRONAUT.read_bytes())[1]["data"]["avatar_id"]
    minted = mint(server, key, avatar_id=avatar_id)[1]["data"]
    status, body = start(server, minted["session_token"])  # returns once the build is over
    assert server.store.get_avatar(avatar_id).status == p.AVATAR_READY  # type: ignore[union-attr]
    assert status == 200, body
    assert server.app.state.manager.live[minted["session_id"]].record.avatar_id == avatar_id
    stop(server, minted["session_token"])


def test_deleting_while_building_discards_the_result(server: RunningServer, key: str) -> None:
    avatar_id = upload(server, key, "image", ASTRONAUT.read_bytes())[1]["data"]["avatar_id"]
    assert delete(server, avatar_id, key)[0] == 200
    assert get(server, f"/v1/avatars/{avatar_id}", key)[0] == 404
    wait_jobs_done(server)
    assert get(server, f"/v1/avatars/{avatar_id}", key)[0] == 404
    assert library_files(server) == []


def test_shutdown_cancels_queued_builds_and_leaves_no_thread(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    settings = AvatarSettings(build_workers=1, max_building_per_key=3, fetch_policy=FetchPolicy())
    with running_server(tmp_path, store=store, avatars=settings) as server:
        key = server.store.create_key("bye")[1]
        running = upload(server, key, "image", ASTRONAUT.read_bytes())[1]["data"]["avatar_id"]
        queued = upload(server, key, "image", COFFEE.read_bytes())[1]["data"]["avatar_id"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("facecast-build")]
    first, second = store.get_avatar(running), store.get_avatar(queued)
    assert first is not None and second is not None
    assert first.status in (p.AVATAR_READY, p.AVATAR_FAILED) and second.status == p.AVATAR_FAILED
    assert second.error == SHUTDOWN_ERROR
    store.close()


def test_restart_fails_builds_this_server_left_running(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    key, secret = store.create_key("crash")
    mine, theirs = avatar_record(key.id, server="test-server"), avatar_record(key.id, server="elsewhere")
    for record in (mine, theirs):
        store.insert_avatar(record)
    library = tmp_path / "avatars"
    library.mkdir()
    (library / f"{mine.avatar_id}.facecast").write_bytes(b"half-written")
    with running_server(tmp_path, store=store) as server:
        item = get(server, f"/v1/avatars/{mine.avatar_id}", secret)[1]["data"]
        assert (item["status"], item["error"]) == (p.AVATAR_FAILED, RESTARTED_ERROR)
        assert (
            get(server, f"/v1/avatars/{theirs.avatar_id}", secret)[1]["data"]["status"] == p.AVATAR_BUILDING
        )
        assert library_files(server) == []
    store.close()


# -- the store --------------------------------------------------------------------------------------------
def avatar_record(
    owner: str, *, server: str | None = "s1", created_at: float = 1000.0, **changes: Any
) -> AvatarRecord:
    record = AvatarRecord(
        avatar_id=new_avatar_id(),
        owner=owner,
        display_name="Me",
        kind="portrait",
        status=p.AVATAR_BUILDING,
        progress=0.0,
        stage="queued",
        error=None,
        source=p.AVATAR_SOURCE_UPLOAD,
        source_sha256="ab" * 32,
        created_at=created_at,
        updated_at=created_at,
        server=server,
    )
    return dataclasses.replace(record, **changes)


@pytest.fixture(params=("sqlite", "postgres"))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/db/facecast.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(url, tmp_path)
    yield opened
    opened.close()


def test_store_avatars(store: Store) -> None:
    key, _ = store.create_key("a")
    other, _ = store.create_key("b")
    first = avatar_record(key.id, created_at=1.0)
    second = avatar_record(key.id, created_at=2.0, source_sha256="cd" * 32, status=p.AVATAR_READY)
    theirs = avatar_record(other.id, created_at=3.0)
    for record in (first, second, theirs):
        assert store.insert_avatar(record)
    assert store.get_avatar(first.avatar_id) == first
    assert store.get_avatar("av_000000000000") is None
    assert store.list_avatars(key.id) == [first, second]
    assert store.count_building(key.id) == 1
    assert store.avatar_by_source(key.id, "ab" * 32) == first
    assert store.avatar_by_source(other.id, "cd" * 32) is None  # another key's bytes are its own

    # Conditional updates: a finished build cannot revive a failed (or deleted) avatar.
    assert store.update_avatar(first.avatar_id, if_status=p.AVATAR_BUILDING, progress=0.5, stage="analysing")
    got = store.get_avatar(first.avatar_id)
    assert got is not None and (got.progress, got.stage) == (0.5, "analysing") and got.updated_at > 1.0
    assert store.update_avatar(first.avatar_id, status=p.AVATAR_FAILED, error="no face")
    assert not store.update_avatar(first.avatar_id, if_status=p.AVATAR_BUILDING, status=p.AVATAR_READY)
    assert store.avatar_by_source(key.id, "ab" * 32) is None  # failed ones do not dedupe
    with pytest.raises(ValueError, match="cannot change"):
        store.update_avatar(first.avatar_id, owner=other.id)
    with pytest.raises(ValueError, match="unknown avatar status"):
        store.update_avatar(first.avatar_id, status="exploded")
    with pytest.raises(ValueError, match="unknown avatar field"):
        store.update_avatar(first.avatar_id, colour="red")

    assert store.delete_avatar(first.avatar_id) and not store.delete_avatar(first.avatar_id)
    assert not store.update_avatar(first.avatar_id, stage="late")
    assert store.list_avatars(key.id) == [second]


def test_store_caps_builds_per_key(store: Store) -> None:
    key, _ = store.create_key("a")
    assert store.insert_avatar(avatar_record(key.id), max_building=2)
    assert store.insert_avatar(avatar_record(key.id), max_building=2)
    assert not store.insert_avatar(avatar_record(key.id), max_building=2)
    assert store.insert_avatar(avatar_record(key.id, status=p.AVATAR_READY))  # no cap: not a build
    assert store.count_building(key.id) == 2


def test_store_keeps_one_avatar_per_source(store: Store) -> None:
    key, _ = store.create_key("a")
    first = avatar_record(key.id)
    assert store.insert_avatar(first, unique_source=True) == first
    again = avatar_record(key.id)  # the same bytes: the first is returned and nothing is stored
    assert store.insert_avatar(again, unique_source=True, max_building=1) == first
    assert store.list_avatars(key.id) == [first]
    store.update_avatar(first.avatar_id, status=p.AVATAR_FAILED, error="no face")
    assert store.insert_avatar(again, unique_source=True) == again  # a failed build is tried afresh


def test_identical_uploads_at_the_same_instant_store_one_avatar(url: str, tmp_path: Path) -> None:
    """Two servers (connections) on one database, four threads each, one photo: one avatar."""
    stores = [open_store(url, tmp_path) for _ in range(2)]
    key, _ = stores[0].create_key("racer")
    start = threading.Barrier(8)
    stored: list[AvatarRecord | None] = []

    def upload_once(store: Store) -> None:
        record = avatar_record(key.id)
        start.wait()
        stored.append(store.insert_avatar(record, max_building=8, unique_source=True))

    threads = [threading.Thread(target=upload_once, args=(stores[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        (only,) = stores[0].list_avatars(key.id)
        assert [record.avatar_id if record else None for record in stored] == [only.avatar_id] * 8
    finally:
        for store in stores:
            store.close()


def test_store_fails_builds_left_running(store: Store) -> None:
    key, _ = store.create_key("a")
    mine, theirs = avatar_record(key.id, server="s1"), avatar_record(key.id, server="s2")
    ready = avatar_record(key.id, server="s1", status=p.AVATAR_READY)
    for record in (mine, theirs, ready):
        store.insert_avatar(record)
    assert store.fail_building_avatars("restarted", 5.0, server="s1") == [mine.avatar_id]
    failed = store.get_avatar(mine.avatar_id)
    assert failed is not None and (failed.status, failed.error, failed.updated_at) == (
        p.AVATAR_FAILED,
        "restarted",
        5.0,
    )
    assert store.get_avatar(ready.avatar_id) == ready
    assert store.fail_building_avatars("all", 6.0) == [theirs.avatar_id]


def test_schema_1_databases_are_migrated(url: str, tmp_path: Path) -> None:
    """A database made by an old release (schema 1) gains the avatars, servers and FULL-mode tables, keeps
    its keys."""
    assert SCHEMA_VERSION == 4
    statements = [statement for statement in _MIGRATIONS[0]]
    if url.startswith("sqlite:"):
        path = tmp_path / "db" / "facecast.db"
        path.parent.mkdir(parents=True)
        conn = sqlite3.connect(path)
        for statement in statements:
            conn.execute(statement.format(real="REAL", bool="INTEGER", json="TEXT"))
        conn.execute("INSERT INTO api_keys VALUES ('key_1', 'old', 'fck_old', 'hash', 1.0, NULL, NULL)")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("CREATE TABLE facecast_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for statement in statements:
                pg.execute(statement.format(real="DOUBLE PRECISION", bool="BOOLEAN", json="JSONB"))
            pg.execute("INSERT INTO api_keys VALUES ('key_1', 'old', 'fck_old', 'hash', 1.0, NULL, NULL)")
            pg.execute("INSERT INTO facecast_meta VALUES ('schema_version', '1')")
    migrated = open_store(url, tmp_path)
    try:
        assert [k.id for k in migrated.list_keys()] == ["key_1"]
        record = avatar_record("key_1")
        assert migrated.insert_avatar(record) and migrated.get_avatar(record.avatar_id) == record
        migrated.renew_lease("server-a", 1.0, 15.0)  # the servers table (schema 3)
        context = ContextRecord("ctx_1", "key_1", "old", "be brief", "hello", 1.0, 1.0)
        migrated.insert_owned(context)  # the FULL-mode tables (schema 4)
        assert migrated.get_owned(ContextRecord, "key_1", "ctx_1") == context
    finally:
        migrated.close()
    if url.startswith("sqlite:"):
        with sqlite3.connect(tmp_path / "db" / "facecast.db") as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()
    else:
        with psycopg.connect(url) as pg:
            row = pg.execute("SELECT value FROM facecast_meta WHERE name = 'schema_version'").fetchone()
            assert row == (str(SCHEMA_VERSION),)


def test_server_on_postgres_serves_avatars(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    """Two servers sharing a database and a data directory: an avatar uploaded to one is used on the other."""
    store_a, store_b = open_store(postgres_url, tmp_path), open_store(postgres_url, tmp_path)
    _, key = store_a.create_key("shared")
    shared = tmp_path / "data"
    with (
        running_server(shared, store=store_a, server_id="a") as a,
        running_server(shared, store=store_b, server_id="b") as b,
    ):
        avatar_id = upload(a, key, "bundle", bundle_bytes(tmp_path, "leo"))[1]["data"]["avatar_id"]
        assert get(b, f"/v1/avatars/{avatar_id}", key)[1]["data"]["status"] == p.AVATAR_READY
        status, minted = mint(b, key, avatar_id=avatar_id)
        assert status == 200, minted
        assert start(b, minted["data"]["session_token"])[0] == 200
        stop(b, minted["data"]["session_token"])
        assert delete(b, avatar_id, key)[0] == 200
        assert get(a, f"/v1/avatars/{avatar_id}", key)[0] == 404
    store_a.close()
    store_b.close()
