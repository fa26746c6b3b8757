"""Avatars made through the API: photo uploads and URLs built into portrait avatars in the background,
ready-made bundles installed at once, and the checks that let a session use one.

Every avatar made here belongs to the API key that made it: its record (store.AvatarRecord) carries the
key id, and its bundle lives in the server's library, `<data_dir>/avatars/<avatar_id>.facecast`. Servers
sharing a database must share the data directory too, or a server cannot render another's avatars.

Builds run off the request path in a small thread pool (`build_avatar` spends its time in a subprocess and
numpy) and report their progress into the store, so any server sharing the database can answer a poll.
A build only turns its avatar `ready` with a conditional update: an avatar deleted (or failed by a
shutdown) while it was building stays gone, and the bundle the build wrote is removed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from facecast import protocol as p
from facecast.avatars import ASPECTS, QUALITIES, AvatarInfo, AvatarLibrary, list_avatars
from facecast.avatars.bundle import MAX_TEXT_CHARS, BundleError, read_bundle
from facecast.avatars.fetch import FetchError, check_image_bytes, fetch_image
from facecast.avatars.kinds import renderer_from_bundle
from facecast.avatars.style import style_names
from facecast.server.config import AvatarSettings
from facecast.server.errors import ApiError
from facecast.server.store import ApiKey, AvatarRecord, Store, new_avatar_id

log = logging.getLogger(__name__)

RESTARTED_ERROR = "server restarted during the build; upload again"
SHUTDOWN_ERROR = "the server shut down before the build finished; upload again"
SHUTDOWN_WAIT_S = 20.0  # how long a shutdown waits for a running build before abandoning it
PROGRESS_EVERY_S = 0.25  # progress is written at most this often (and on every change of stage)
POLL_S = 0.25  # how often a start waiting for a build looks at the store
MAX_URL_CHARS = 2048
MAX_DISPLAY_NAME_CHARS = 200  # what a bundle manifest allows
UPLOADED_IMAGE = "the uploaded image"
UPLOADED_BUNDLE = "the uploaded bundle"
STAGE_QUEUED = "queued"
STAGE_DONE = "done"
STAGE_FAILED = "failed"


def clean_display_name(name: str | None) -> str | None:
    """A display name from a request: trimmed, one line, at most 200 characters; None if empty."""
    if name is None:
        return None
    name = name.strip()
    if not name:
        return None
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise ApiError(
            400, p.CODE_BAD_REQUEST, f"name is longer than {MAX_DISPLAY_NAME_CHARS} characters; shorten it"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ApiError(400, p.CODE_BAD_REQUEST, "name must be one line of text without control characters")
    return name


def clean_consent(consent: str | None) -> str | None:
    """The likeness owner's consent note, stored in the bundle's manifest; None if empty."""
    if consent is None or not consent.strip():
        return None
    if len(consent) > MAX_TEXT_CHARS:
        raise ApiError(400, p.CODE_BAD_REQUEST, f"consent is longer than {MAX_TEXT_CHARS} characters")
    return consent


def check_image_url(url: str) -> str:
    """The cheap synchronous check of an `image_url`: an http(s) URL with a host and nothing odd. Where it
    points (loopback, private networks) is checked when it is fetched, in the build."""
    if not url or len(url) > MAX_URL_CHARS:
        raise ApiError(
            400, p.CODE_BAD_REQUEST, f"image_url must be an http(s) URL of 1-{MAX_URL_CHARS} chars"
        )
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ApiError(
            400, p.CODE_BAD_REQUEST, "image_url contains spaces or control characters; percent-encode them"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise ApiError(400, p.CODE_BAD_REQUEST, f"image_url is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}: URLs are" if scheme else "a URL without a scheme is"
        raise ApiError(
            400, p.CODE_BAD_REQUEST, f"image_url: {shown} not supported; give an http:// or https:// URL"
        )
    if "@" in parts.netloc:
        raise ApiError(
            400,
            p.CODE_BAD_REQUEST,
            "image_url: URLs with a user name or password (user:pass@host) are refused",
        )
    if not parts.hostname:
        raise ApiError(400, p.CODE_BAD_REQUEST, "image_url has no host; give a full http(s) URL")
    return url


def builtin_item(info: AvatarInfo) -> dict[str, Any]:
    """How the API shows a built-in avatar."""
    return {
        "avatar_id": info.name,
        "name": info.display_name,
        "description": info.description,
        "kind": info.kind,
        "builtin": True,
        "status": p.AVATAR_READY,
        "aspect_ratios": list(ASPECTS),
        "qualities": list(QUALITIES),
        "preview_url": f"/v1/avatars/{info.name}/preview.png",
    }


def avatar_item(record: AvatarRecord) -> dict[str, Any]:
    """How the API shows an avatar made through it (its preview needs the owner's X-API-KEY)."""
    ready = record.status == p.AVATAR_READY
    return {
        "avatar_id": record.avatar_id,
        "name": record.display_name,
        "description": "",
        "kind": record.kind,
        "builtin": False,
        "status": record.status,
        "progress": round(record.progress, 3),
        "stage": record.stage,
        "error": record.error,
        "source": record.source,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "aspect_ratios": list(ASPECTS),
        "qualities": list(QUALITIES),
        "preview_url": f"/v1/avatars/{record.avatar_id}/preview.png" if ready else None,
    }


@dataclass(frozen=True)
class _Job:
    avatar_id: str
    data: bytes | None  # the photo, or None to fetch `url`
    url: str | None
    display_name: str
    consent: str | None


class _ProgressWriter:
    """build_avatar's progress callback: into the store, at most every PROGRESS_EVERY_S or on a new stage."""

    def __init__(self, store: Store, avatar_id: str) -> None:
        self._store = store
        self._avatar_id = avatar_id
        self._stage = ""
        self._written_at = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._stage and now - self._written_at < PROGRESS_EVERY_S:
            return
        self._stage, self._written_at = stage, now
        try:
            self._store.update_avatar(
                self._avatar_id,
                if_status=p.AVATAR_BUILDING,
                stage=stage[:200],
                progress=min(1.0, max(0.0, float(fraction))),
            )
        except Exception:  # progress is informative: a store hiccup must not fail the build
            log.warning("could not record the progress of avatar %s", self._avatar_id, exc_info=True)


class AvatarService:
    """This server's avatars: creation, the build pool, listing, deletion, and the checks for sessions."""

    def __init__(
        self, store: Store, library: AvatarLibrary, settings: AvatarSettings, server_id: str
    ) -> None:
        self.store = store
        self.library = library
        self.settings = settings
        self.server_id = server_id
        self.fetch_policy = settings.resolved_fetch_policy()  # a bad FACECAST_FETCH_* fails the start
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._jobs: dict[str, concurrent.futures.Future[None]] = {}
        self._closed = False
        self.builds_total = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    def open(self) -> list[str]:
        """Recover from a crash: builds this server left running are failed now (and any bundle they
        wrote removed). Returns their ids."""
        failed = self.store.fail_building_avatars(RESTARTED_ERROR, time.time(), server=self.server_id)
        for avatar_id in failed:
            self._remove_bundle(avatar_id)
        if failed:
            log.warning("marked %d avatar build(s) left running by a previous run as failed", len(failed))
        return failed

    def close(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Shutdown: queued builds are cancelled (and marked failed), the running ones get `wait_s` to
        finish. Blocking: call it in a thread."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            jobs = dict(self._jobs)
        if executor is None:
            return
        executor.shutdown(wait=False, cancel_futures=True)
        running = [f for f in jobs.values() if not f.cancelled()]
        _, still = concurrent.futures.wait(running, timeout=wait_s)
        for avatar_id, future in jobs.items():
            if future.cancelled() or future in still:
                self.store.update_avatar(
                    avatar_id,
                    if_status=p.AVATAR_BUILDING,
                    status=p.AVATAR_FAILED,
                    stage=STAGE_FAILED,
                    error=SHUTDOWN_ERROR,
                )
        if still:
            # The thread cannot be interrupted inside build_avatar; it finds its avatar failed when it
            # finishes, and removes what it wrote.
            log.warning("%d avatar build(s) still running at shutdown were abandoned", len(still))
        else:
            executor.shutdown(wait=True)  # every job is done: this only joins the idle threads

    @property
    def pending_builds(self) -> int:
        """Builds queued or running in this server."""
        with self._lock:
            return len(self._jobs)

    # -- views ------------------------------------------------------------------------------------------
    @staticmethod
    def builtins() -> list[AvatarInfo]:
        return list_avatars()

    def list_items(self, key: ApiKey | None) -> list[dict[str, Any]]:
        items = [builtin_item(info) for info in self.builtins()]
        if key is not None:
            items += [avatar_item(record) for record in self.store.list_avatars(key.id)]
        return items

    def own(self, key_id: str, avatar_id: str) -> AvatarRecord:
        """The key's avatar; 404 for unknown ids and other keys' avatars alike."""
        record = self.store.get_avatar(avatar_id)
        if record is None or record.owner != key_id:
            raise ApiError(
                404,
                p.CODE_NOT_FOUND,
                f"unknown avatar_id {avatar_id!r}; GET /v1/avatars lists the available ones",
            )
        return record

    def item(self, key: ApiKey, avatar_id: str) -> dict[str, Any]:
        for info in self.builtins():
            if info.name == avatar_id:
                return builtin_item(info)
        return avatar_item(self.own(key.id, avatar_id))

    # -- creating ---------------------------------------------------------------------------------------
    def _new_record(
        self,
        key: ApiKey,
        *,
        display_name: str | None,
        kind: str,
        status: str,
        source: str,
        sha256: str | None,
    ) -> AvatarRecord:
        now = time.time()
        avatar_id = new_avatar_id()
        ready = status == p.AVATAR_READY
        return AvatarRecord(
            avatar_id=avatar_id,
            owner=key.id,
            display_name=display_name or avatar_id,
            kind=kind,
            status=status,
            progress=1.0 if ready else 0.0,
            stage=STAGE_DONE if ready else STAGE_QUEUED,
            error=None,
            source=source,
            source_sha256=sha256,
            created_at=now,
            updated_at=now,
            server=self.server_id,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ApiError(503, p.CODE_INTERNAL, "the server is shutting down")

    def _insert_build(self, record: AvatarRecord) -> AvatarRecord:
        """Store a new build; the key's avatar of the same bytes instead if it has one (never two builds of
        one photo, even for uploads at the same instant)."""
        cap = self.settings.max_building_per_key
        stored = self.store.insert_avatar(record, max_building=cap, unique_source=True)
        if stored is None:
            raise ApiError(
                429,
                p.CODE_LIMIT,
                f"this API key already has {cap} avatar build(s) in progress, its limit is {cap}; wait for "
                "one to finish (GET /v1/avatars/{avatar_id}) and try again",
            )
        return stored

    def create_from_image(
        self, key: ApiKey, data: bytes, *, display_name: str | None, consent: str | None
    ) -> tuple[AvatarRecord, bool]:
        """A build of an uploaded photo; (record, True) for a new build, (existing, False) when this key
        already has a building or ready avatar of the same bytes. Blocking (decodes the image)."""
        self._check_open()
        try:
            check_image_bytes(data, UPLOADED_IMAGE)
        except FetchError as exc:
            raise ApiError(400, p.CODE_BAD_REQUEST, str(exc)) from None
        record = self._new_record(
            key,
            display_name=display_name,
            kind="portrait",
            status=p.AVATAR_BUILDING,
            source=p.AVATAR_SOURCE_UPLOAD,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        stored = self._insert_build(record)
        if stored is not record:
            return stored, False
        self._submit(_Job(record.avatar_id, data, None, record.display_name, consent))
        return record, True

    def create_from_url(
        self, key: ApiKey, url: str, *, display_name: str | None, consent: str | None
    ) -> AvatarRecord:
        """A build of the photo at `url`, fetched by the build under the server's fetch policy."""
        self._check_open()
        check_image_url(url)
        record = self._new_record(
            key,
            display_name=display_name,
            kind="portrait",
            status=p.AVATAR_BUILDING,
            source=p.AVATAR_SOURCE_URL,
            sha256=None,
        )
        self._insert_build(record)
        self._submit(_Job(record.avatar_id, None, url, record.display_name, consent))
        return record

    def create_from_bundle(
        self, key: ApiKey, data: bytes, *, display_name: str | None, consent: str | None
    ) -> tuple[AvatarRecord, bool]:
        """Install an uploaded `.facecast` bundle under a new id: ready at once, nothing to build.
        Blocking (validates the whole bundle)."""
        self._check_open()
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self.store.avatar_by_source(key.id, sha256)
        if existing is not None:
            return existing, False
        self.library.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=self.library.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                bundle = read_bundle(tmp)
                renderer_from_bundle(bundle, quality="low")  # one this server cannot render is refused now
            except BundleError as exc:
                raise ApiError(400, p.CODE_BAD_REQUEST, str(exc).replace(tmp, UPLOADED_BUNDLE)) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        manifest = bundle.manifest
        record = self._new_record(
            key,
            display_name=display_name or manifest.display_name,
            kind=manifest.kind,
            status=p.AVATAR_READY,
            source=p.AVATAR_SOURCE_BUNDLE,
            sha256=sha256,
        )
        renamed = dataclasses.replace(
            manifest,
            name=record.avatar_id,
            display_name=record.display_name,
            consent=consent if consent is not None else manifest.consent,
        )
        try:
            self.library.save(renamed, dict(bundle.files))
        except BundleError as exc:
            raise ApiError(400, p.CODE_BAD_REQUEST, f"{UPLOADED_BUNDLE}: {exc}") from None
        try:
            stored = self.store.insert_avatar(record, unique_source=True)
        except BaseException:
            self._remove_bundle(record.avatar_id)
            raise
        if stored is not record:  # the same bundle, uploaded again meanwhile
            self._remove_bundle(record.avatar_id)
            assert stored is not None
            return stored, False
        return record, True

    def delete(self, key: ApiKey, avatar_id: str) -> AvatarRecord:
        if avatar_id in style_names():
            raise ApiError(403, p.CODE_FORBIDDEN, f"{avatar_id!r} is a built-in avatar and cannot be deleted")
        record = self.own(key.id, avatar_id)
        self.store.delete_avatar(avatar_id)
        self._remove_bundle(avatar_id)  # a build still running removes what it writes when it finishes
        with self._lock:
            job = self._jobs.get(avatar_id)
        if job is not None:
            job.cancel()  # a queued build never runs
        return record

    # -- sessions ---------------------------------------------------------------------------------------
    def check_usable(self, key_id: str, avatar_id: str) -> AvatarRecord:
        """At mint: the key's avatar, building or ready; 400 with the build's error if it failed."""
        record = self.own(key_id, avatar_id)
        if record.status == p.AVATAR_FAILED:
            raise ApiError(
                400, p.CODE_BAD_REQUEST, f"avatar {avatar_id} failed to build: {record.error}; upload again"
            )
        return record

    async def wait_ready(self, key_id: str, avatar_id: str, timeout_s: float) -> AvatarRecord:
        """At start: the key's avatar once ready, waiting up to `timeout_s` while it builds (on any server
        sharing the database). 404 if it was deleted, 400 if the build failed, 409 past the wait."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.own(key_id, avatar_id)
            if record.status == p.AVATAR_READY:
                return record
            if record.status == p.AVATAR_FAILED:
                raise ApiError(
                    400,
                    p.CODE_BAD_REQUEST,
                    f"avatar {avatar_id} failed to build: {record.error}; upload again",
                )
            if self._closed:
                raise ApiError(503, p.CODE_INTERNAL, "the server is shutting down")
            if time.monotonic() >= deadline:
                raise ApiError(
                    409,
                    p.CODE_CONFLICT,
                    f"avatar {avatar_id} is still building ({record.stage}, {record.progress:.0%}) after "
                    f"{timeout_s:g} s; call /v1/sessions/start again later",
                )
            await asyncio.sleep(POLL_S)

    # -- building ---------------------------------------------------------------------------------------
    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise ApiError(503, p.CODE_INTERNAL, "the server is shutting down")
            if self._executor is None:
                # Threads start on the first build, so a server that never builds runs none.
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.settings.build_workers, thread_name_prefix="facecast-build"
                )
            future = self._executor.submit(self._run, job)
            self._jobs[job.avatar_id] = future
        future.add_done_callback(lambda _: self._forget(job.avatar_id))

    def _forget(self, avatar_id: str) -> None:
        with self._lock:
            self._jobs.pop(avatar_id, None)

    def _run(self, job: _Job) -> None:
        avatar_id = job.avatar_id
        if self._closed:  # picked up just as the server began to stop
            self.store.update_avatar(
                avatar_id,
                if_status=p.AVATAR_BUILDING,
                status=p.AVATAR_FAILED,
                stage=STAGE_FAILED,
                error=SHUTDOWN_ERROR,
            )
            return
        if not self.store.update_avatar(avatar_id, if_status=p.AVATAR_BUILDING, stage="starting"):
            return  # deleted while it was queued
        with self._lock:
            self.builds_total += 1
        progress = _ProgressWriter(self.store, avatar_id)
        where = UPLOADED_IMAGE
        error: str | None = None
        try:
            data = job.data
            if data is None:
                assert job.url is not None
                where = job.url
                progress("fetching the image", 0.0)
                data = fetch_image(job.url, self.fetch_policy).data
            from facecast.avatars.build import build_avatar  # the portrait tools load on the first build

            build_avatar(
                data,
                name=avatar_id,
                library=self.library,
                display_name=job.display_name,
                consent=job.consent,
                fetch_policy=self.fetch_policy,
                progress=progress,
            )
        except ImportError as exc:
            log.error("avatar build %s: portrait building is unavailable: %s", avatar_id, exc)
            error = f"building avatars from photos is not available on this server ({exc})"
        except (ValueError, RuntimeError) as exc:  # user errors; FaceAnalysisError when the tools fail
            error = str(exc)
            if where != UPLOADED_IMAGE:
                error = error.replace(UPLOADED_IMAGE, f"the image at {where}")
            if not isinstance(exc, ValueError):
                log.error("avatar build %s failed: %s", avatar_id, exc)
        except Exception as exc:
            log.exception("avatar build %s failed unexpectedly", avatar_id)
            error = f"the build failed unexpectedly ({type(exc).__name__}); try again or use another photo"
        if error is None and self.store.update_avatar(
            avatar_id, if_status=p.AVATAR_BUILDING, status=p.AVATAR_READY, progress=1.0, stage=STAGE_DONE
        ):
            log.info("avatar %s built", avatar_id)
            return
        if error is not None:
            self.store.update_avatar(
                avatar_id,
                if_status=p.AVATAR_BUILDING,
                status=p.AVATAR_FAILED,
                stage=STAGE_FAILED,
                error=error,
            )
        # Failed, or deleted (or failed by a shutdown) while building: nothing may stay in the library.
        current = self.store.get_avatar(avatar_id)
        if current is None or current.status != p.AVATAR_READY:
            self._remove_bundle(avatar_id)

    def _remove_bundle(self, avatar_id: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.library.path(avatar_id).unlink(missing_ok=True)
