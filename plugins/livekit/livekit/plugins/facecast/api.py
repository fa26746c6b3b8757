"""A small client for the Facecast server's API: the three session calls an avatar session needs, and
the avatar calls that turn a photo (or a `.facecast` bundle) into a server avatar id."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    utils,
)

from .log import logger

# Copies of facecast.protocol's names, so that remote mode needs no facecast install; a test checks that
# they equal the protocol's.
API_PREFIX = "/v1"
CODE_OK = 1000  # the `code` of a successful {code, data, message} response
END_STOPPED = "stopped"
AVATAR_READY, AVATAR_FAILED = "ready", "failed"
AVATAR_STATUSES = ("building", AVATAR_READY, AVATAR_FAILED)
# GET /v1/avatars/{id} while an avatar builds: soon at first (a build takes seconds), then every second.
AVATAR_POLL_FIRST = 0.25
AVATAR_POLL_MAX = 1.0


class FacecastException(Exception):
    """A Facecast avatar cannot be set up as configured (missing credentials, bad options, a response
    that is not what the server should send)."""


class FacecastAPI:
    """`POST /v1/sessions/token` (API key) → session token; `/v1/sessions/start` and `/v1/sessions/stop`
    (Bearer session token); `POST /v1/avatars` and `GET /v1/avatars/{id}` (API key) to build an avatar
    from a photo. Retries connection errors, timeouts, 5xx and 408/429 per `conn_options`."""

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._conn_options = conn_options
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None

    async def create_session_token(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._post(f"{API_PREFIX}/sessions/token", body, {"X-API-KEY": self._api_key})
        if not isinstance(data.get("session_id"), str) or not isinstance(data.get("session_token"), str):
            raise FacecastException("Facecast /v1/sessions/token response lacks session_id/session_token")
        return data

    async def start_session(self, session_token: str) -> dict[str, Any]:
        data = await self._post(f"{API_PREFIX}/sessions/start", {}, self._bearer(session_token))
        if not isinstance(data.get("session_id"), str):
            raise FacecastException("Facecast /v1/sessions/start response lacks session_id")
        return data

    async def stop_session(self, session_token: str, session_id: str, reason: str = END_STOPPED) -> None:
        await self._post(
            f"{API_PREFIX}/sessions/stop",
            {"session_id": session_id, "reason": reason},
            self._bearer(session_token),
        )

    async def create_avatar(
        self,
        *,
        image: str | Path | None = None,
        bundle: str | Path | None = None,
        image_url: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """`POST /v1/avatars` with one of: a local photo (multipart field `image`), a local `.facecast`
        file (field `bundle`) or an http(s) photo URL (JSON `image_url`, fetched by the server). Returns
        the avatar's status: {avatar_id, status ("building" | "ready" | "failed"), progress, stage,
        error}. The server dedupes by content, so the same photo twice gives the same avatar. `timeout`
        (s) replaces conn_options.timeout for this request: an upload may take longer than an API call."""
        if sum(x is not None for x in (image, bundle, image_url)) != 1:
            raise ValueError("give exactly one of image, bundle or image_url")
        headers = {"X-API-KEY": self._api_key}
        if image_url is not None:
            data = await self._request(
                "POST", f"{API_PREFIX}/avatars", headers, body={"image_url": image_url}, timeout=timeout
            )
        else:
            field, path = ("image", Path(image)) if image is not None else ("bundle", Path(bundle or ""))
            try:
                content = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise FacecastException(f"cannot read {path}: {exc.strerror or exc}") from None
            media_type = (
                "application/zip" if field == "bundle" else mimetypes.guess_type(path.name)[0]
            ) or "application/octet-stream"

            def form() -> aiohttp.FormData:
                fd = aiohttp.FormData()
                fd.add_field(field, content, filename=path.name, content_type=media_type)
                return fd

            data = await self._request("POST", f"{API_PREFIX}/avatars", headers, form=form, timeout=timeout)
        return _avatar_status(data, "POST /v1/avatars")

    async def get_avatar(self, avatar_id: str) -> dict[str, Any]:
        """`GET /v1/avatars/{avatar_id}`: the avatar's status, as `create_avatar` returns it."""
        path = f"{API_PREFIX}/avatars/{quote(avatar_id, safe='')}"
        data = await self._request("GET", path, {"X-API-KEY": self._api_key})
        return _avatar_status(data, f"GET {path}")

    async def wait_avatar_ready(
        self,
        status: dict[str, Any],
        *,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> str:
        """Poll an avatar from `create_avatar` until it is ready and return its id. A failed build raises
        FacecastException with the server's reason; no answer within `timeout` s raises APITimeoutError."""
        deadline = time.monotonic() + timeout
        avatar_id = status["avatar_id"]
        interval = AVATAR_POLL_FIRST
        while True:
            if on_progress is not None:
                on_progress(status)
            if status["status"] == AVATAR_READY:
                return avatar_id
            if status["status"] == AVATAR_FAILED:
                reason = status.get("error") or "failed"
                raise FacecastException(f"the Facecast server could not build avatar {avatar_id}: {reason}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError(
                    f"facecast avatar {avatar_id} was not ready after {timeout:.0f} s "
                    f"(last stage: {status.get('stage') or status['status']}); raise avatar_build_timeout"
                )
            await asyncio.sleep(min(interval, remaining))
            interval = min(AVATAR_POLL_MAX, interval * 1.5)
            status = await self.get_avatar(avatar_id)

    async def aclose(self) -> None:
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    @staticmethod
    def _bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        try:
            # inside a job: the job's shared session
            return utils.http_context.http_session()
        except RuntimeError:
            if self._own_session is None:
                self._own_session = aiohttp.ClientSession()
            return self._own_session

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return await self._request("POST", path, headers, body=body)

    async def _request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        body: dict[str, Any] | None = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        url = self._api_url + path
        attempt = 0
        while True:
            try:
                return await self._request_once(method, url, headers, body, form, timeout)
            except (APIConnectionError, APIStatusError) as exc:
                if not exc.retryable or attempt >= self._conn_options.max_retry:
                    raise
                delay = self._conn_options._interval_for_retry(attempt)
                attempt += 1
                logger.warning("facecast %s %s failed (%s), retrying in %.1f s", method, path, exc, delay)
                await asyncio.sleep(delay)

    async def _request_once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any] | None,
        form: Callable[[], aiohttp.FormData] | None,
        timeout_s: float | None,
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._conn_options.timeout)
        # A form is single-use in aiohttp, so each attempt builds its own.
        kwargs: dict[str, Any] = {"data": form()} if form is not None else {}
        if body is not None:
            kwargs["json"] = body
        try:
            async with self._http().request(method, url, headers=headers, timeout=timeout, **kwargs) as resp:
                text = await resp.text()
                status, request_id, reason = resp.status, resp.headers.get("x-request-id"), resp.reason
        except TimeoutError as exc:
            raise APITimeoutError(f"facecast {url}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"facecast {url}: {exc}") from exc
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if status < 400 and isinstance(payload, dict) and payload.get("code") == CODE_OK:
            data = payload.get("data")
            return data if isinstance(data, dict) else {}
        message = payload.get("message") if isinstance(payload, dict) else None
        code = payload.get("code") if isinstance(payload, dict) else None
        if status < 400 and isinstance(code, int) and code >= 4000:
            status = code // 1000 * 100 + code % 100  # the API's codes mirror HTTP statuses: 4029 -> 429
        raise APIStatusError(
            f"facecast {url}: {message or text[:200] or reason}",
            status_code=status,
            body=payload if payload is not None else text,
            request_id=request_id,
        )


def _avatar_status(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Check the shape of an avatar status: {avatar_id, status, progress, stage, error}."""
    if not isinstance(data.get("avatar_id"), str) or data.get("status") not in AVATAR_STATUSES:
        raise FacecastException(f"Facecast {where} response lacks avatar_id/status: {data}")
    return data
