"""The session API of a Facecast server over HTTP: mint a session token, start, offer, stop, read stats.

Requests are checked with the server's own models (`facecast.server.schemas`, pure pydantic) before they
are sent, so a bad field fails here with the server's wording; answers are `{code, data, message}` and a
refusal raises `ServerError` with the server's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from facecast import protocol as p
from facecast.server.schemas import TokenRequest

DEFAULT_TIMEOUT_S = 30.0


class ServerError(RuntimeError):
    """The server refused a request (or did not answer in its own shape); the message is the server's."""

    def __init__(self, request: str, status: int, code: int | None, message: str, body: Any = None) -> None:
        super().__init__(f"{request}: HTTP {status}: {message}")
        self.request, self.status, self.code, self.message = request, status, code, message
        self.body = body  # the answer as parsed (a dict in the server's shape, or the text)


@dataclass(frozen=True)
class MintedSession:
    """`POST /v1/sessions/token`'s answer: the session and the bearer token that controls it."""

    session_id: str
    session_token: str


@dataclass(frozen=True)
class WebRTCDetails:
    """Where and how a WebRTC session takes its client's offer."""

    offer_url: str
    ice_servers: tuple[Mapping[str, Any], ...] = ()
    data_channel_label: str = p.DATA_CHANNEL_LABEL
    data_channel_id: int = 0

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> WebRTCDetails:
        channel = data.get("data_channel") or {}
        return cls(
            offer_url=data["offer_url"],
            ice_servers=tuple(data.get("ice_servers") or ()),
            data_channel_label=channel.get("label", p.DATA_CHANNEL_LABEL),
            data_channel_id=int(channel.get("id", 0)),
        )


@dataclass(frozen=True)
class StartedSession:
    """`POST /v1/sessions/start`'s answer. `webrtc` is None for a LiveKit session; `data` is all of it."""

    session_id: str
    session_token: str
    ws_url: str | None
    webrtc: WebRTCDetails | None
    idle_timeout: float | None
    data: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_data(cls, session_token: str, data: Mapping[str, Any]) -> StartedSession:
        """From the answer's `data` and the token that started the session."""
        webrtc, idle = data.get("webrtc"), data.get("idle_timeout")
        return cls(
            session_id=data["session_id"],
            session_token=session_token,
            ws_url=data.get("ws_url"),
            webrtc=WebRTCDetails.from_data(webrtc) if webrtc else None,
            idle_timeout=float(idle) if idle is not None else None,
            data=data,
        )


class LiteClient:
    """One Facecast server's session API, with one API key (for minting and reading sessions)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        http: aiohttp.ClientSession | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """`http`: a session to share (the caller closes it); by default the client makes and closes one."""
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http = http
        self._own_http = http is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP session, made on first use (it needs a running event loop)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> LiteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the session API ------------------------------------------------------------------------------
    async def mint(self, request: TokenRequest | Mapping[str, Any] | None = None) -> MintedSession:
        """`POST /v1/sessions/token` with the API key. A mapping is checked as a `TokenRequest` first
        (pydantic's ValidationError names the bad field); only the fields given are sent."""
        if not isinstance(request, TokenRequest):
            request = TokenRequest.model_validate(dict(request or {}))
        body = request.model_dump(mode="json", exclude_unset=True)
        data = await self.request("POST", "/sessions/token", body, api_key=True)
        return MintedSession(data["session_id"], data["session_token"])

    async def start(self, minted: MintedSession) -> StartedSession:
        """`POST /v1/sessions/start`: the session goes live (its idle video starts)."""
        data = await self.request("POST", "/sessions/start", token=minted.session_token)
        return StartedSession.from_data(minted.session_token, data)

    async def offer(self, started: StartedSession, sdp: str) -> tuple[str, str]:
        """Send the client's WebRTC offer; the answer's (sdp, type)."""
        if started.webrtc is None:
            raise ValueError(f"session {started.session_id} is not a WebRTC session: it has no offer URL")
        body = {"sdp": sdp, "type": "offer"}
        data = await self.request("POST", started.webrtc.offer_url, body, token=started.session_token)
        return data["sdp"], data["type"]

    async def stop(self, session: MintedSession | StartedSession) -> str:
        """`POST /v1/sessions/stop` (idempotent); the session's end reason."""
        data = await self.request(
            "POST", "/sessions/stop", {"session_id": session.session_id}, token=session.session_token
        )
        return str(data["end_reason"])

    async def keep_alive(self, session: MintedSession | StartedSession) -> None:
        """`POST /v1/sessions/keep-alive`: reset the session's idle timer."""
        await self.request("POST", "/sessions/keep-alive", token=session.session_token)

    async def session(self, session_id: str) -> dict[str, Any]:
        """`GET /v1/sessions/{id}` with the API key: the session's record, stats included."""
        return await self.request("GET", f"/sessions/{session_id}", api_key=True)

    async def stats(self, session_id: str) -> dict[str, Any]:
        """The session's stats (empty before it started)."""
        return dict((await self.session(session_id)).get("stats") or {})

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        api_key: bool = False,
    ) -> Any:
        """One call: `path` under /v1 (or a full URL), authorised by the bearer `token` or the API key;
        the answer's `data`."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}{p.API_PREFIX}{path}"
        headers: dict[str, str] = {}
        if api_key:
            if self.api_key is None:
                raise ValueError(f"{method} {path} needs an API key: give LiteClient(api_key=...)")
            headers["X-API-KEY"] = self.api_key
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        name = f"{method} {path}"
        async with self.http.request(method, url, json=body, headers=headers) as response:
            text = await response.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        if not isinstance(payload, dict):
            raise ServerError(
                name, response.status, None, f"not a Facecast answer: {payload!r:.200}", payload
            )
        if response.status >= 400 or payload.get("code") != p.CODE_OK:
            code, message = payload.get("code"), str(payload.get("message"))
            raise ServerError(name, response.status, code, message, payload)
        return payload.get("data")
