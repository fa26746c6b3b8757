"""A small client for the Facecast server's session API (the three calls an avatar session needs)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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

CODE_OK = 1000  # the `code` of a successful {code, data, message} response


class FacecastException(Exception):
    """A Facecast avatar cannot be set up as configured (missing credentials, bad options, a response
    that is not what the server should send)."""


class FacecastAPI:
    """`POST /v1/sessions/token` (API key) → session token; `/v1/sessions/start` and `/v1/sessions/stop`
    (Bearer session token). Retries connection errors, timeouts, 5xx and 408/429 per `conn_options`."""

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
        data = await self._post("/v1/sessions/token", body, {"X-API-KEY": self._api_key})
        if not isinstance(data.get("session_id"), str) or not isinstance(data.get("session_token"), str):
            raise FacecastException("Facecast /v1/sessions/token response lacks session_id/session_token")
        return data

    async def start_session(self, session_token: str) -> dict[str, Any]:
        data = await self._post("/v1/sessions/start", {}, self._bearer(session_token))
        if not isinstance(data.get("session_id"), str):
            raise FacecastException("Facecast /v1/sessions/start response lacks session_id")
        return data

    async def stop_session(self, session_token: str, session_id: str, reason: str = "stopped") -> None:
        await self._post(
            "/v1/sessions/stop", {"session_id": session_id, "reason": reason}, self._bearer(session_token)
        )

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
        url = self._api_url + path
        attempt = 0
        while True:
            try:
                return await self._post_once(url, body, headers)
            except (APIConnectionError, APIStatusError) as exc:
                if not exc.retryable or attempt >= self._conn_options.max_retry:
                    raise
                delay = self._conn_options._interval_for_retry(attempt)
                attempt += 1
                logger.warning("facecast %s failed (%s), retrying in %.1f s", path, exc, delay)
                await asyncio.sleep(delay)

    async def _post_once(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._conn_options.timeout)
        try:
            async with self._http().post(url, json=body, headers=headers, timeout=timeout) as resp:
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
