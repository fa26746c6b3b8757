"""Server settings: every limit a session runs under, with the embedded defaults `facecast demo` uses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecast import settings
from facecast.avatars.fetch import FetchPolicy


def _env_int(name: str, default: int) -> int:
    value = settings.by_name(name).get(default=default)
    assert value is not None
    return int(value)


def _env_optional_int(name: str, default: int | None) -> int | None:
    value = settings.by_name(name).get(default=default)
    return None if value is None else int(value)


# Speaking 512x512@30 VP8 sessions one process holds without dropping frames, measured with `facecast
# bench server sessions` on the 2-core build machine (docs/benchmarks.md): the server process alone (one
# GIL, REST and signalling too) holds 2; a worker process, one core, holds 4.
IN_PROCESS_LIVE_SESSIONS = 2
LIVE_SESSIONS_PER_WORKER = 4


@dataclass(frozen=True)
class Limits:
    """Per-session and per-key limits. Times are seconds."""

    max_session_duration: int = 3600  # hard ceiling; a token body may ask for less, never more
    default_session_duration: int = 600
    idle_timeout: int = 300  # no audio and no keep-alive for this long ends the session
    token_ttl: int = 300  # a minted token must be started within this
    connect_timeout: int = 60  # a started WebRTC session whose peer never connects ends as client_gone
    max_concurrent_per_key: int = 4  # for keys without their own cap
    # Live sessions this server admits, in all its worker processes together; None: what its processes
    # hold (ServerConfig.live_capacity).
    max_live_sessions: int | None = None
    sandbox_duration: int = 60
    sandbox_avatar: str = "ava"
    max_audio_chunk_s: float = 10.0  # one agent.speak message carries at most this much audio
    max_queued_speech_s: float = 120.0  # speech accepted ahead of playback
    # A server renews its lease on its sessions every third of this; past it without a renewal, any
    # server sharing the database ends them as server_lost (the owner was killed or cut off).
    server_lease_s: float = 15.0

    def __post_init__(self) -> None:
        for name in (
            "max_session_duration",
            "default_session_duration",
            "idle_timeout",
            "token_ttl",
            "max_live_sessions",
            "server_lease_s",
        ):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive, got {getattr(self, name)}")
        if self.default_session_duration > self.max_session_duration:
            raise ValueError("default_session_duration cannot exceed max_session_duration")


def _env_float(name: str, default: float) -> float:
    return float(settings.by_name(name).get(default=default))


@dataclass(frozen=True)
class AvatarSettings:
    """Avatars made through the API (`POST /v1/avatars`, `avatar_image_url`): uploads and builds."""

    max_upload_bytes: int = 20 * 1024 * 1024  # a photo or bundle upload; a bigger body is refused (413)
    build_workers: int = 1  # builds run at once by this server (each is mostly a subprocess and numpy)
    max_building_per_key: int = 2  # builds queued or running per API key (429 past it)
    build_wait_s: float = 180.0  # /v1/sessions/start waits this long for the session's avatar to build
    # Where `image_url` may be fetched from; None: FetchPolicy.from_env() (FACECAST_FETCH_ALLOW_NETWORKS,
    # FACECAST_FETCH_MAX_BYTES, FACECAST_FETCH_TIMEOUT_S), which refuses loopback and private addresses.
    fetch_policy: FetchPolicy | None = None

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "build_workers", "max_building_per_key"):
            if getattr(self, name) <= 0:
                raise ValueError(f"avatar setting {name} must be positive, got {getattr(self, name)}")
        if self.build_wait_s < 0:
            raise ValueError(f"avatar setting build_wait_s cannot be negative, got {self.build_wait_s}")

    @staticmethod
    def from_env() -> AvatarSettings:
        """FACECAST_MAX_UPLOAD_BYTES, FACECAST_AVATAR_BUILD_WORKERS, FACECAST_MAX_AVATAR_BUILDS_PER_KEY,
        FACECAST_AVATAR_BUILD_WAIT (seconds); unset ones keep their defaults."""
        base = AvatarSettings()
        return AvatarSettings(
            max_upload_bytes=_env_int("FACECAST_MAX_UPLOAD_BYTES", base.max_upload_bytes),
            build_workers=_env_int("FACECAST_AVATAR_BUILD_WORKERS", base.build_workers),
            max_building_per_key=_env_int("FACECAST_MAX_AVATAR_BUILDS_PER_KEY", base.max_building_per_key),
            build_wait_s=_env_float("FACECAST_AVATAR_BUILD_WAIT", base.build_wait_s),
        )

    def resolved_fetch_policy(self) -> FetchPolicy:
        return self.fetch_policy if self.fetch_policy is not None else FetchPolicy.from_env()


@dataclass(frozen=True)
class LiveKitSettings:
    """A LiveKit server this Facecast server may use: with one, a LITE session that brings no
    `livekit_config` gets a room made for it (LiveAvatar's shape: `/start` answers `livekit_url` and
    tokens for the user's frontend and the agent), and `transport: livekit` sessions can have their
    avatar's token minted here. `url` is what the avatar worker and the clients connect to."""

    url: str | None = None
    api_key: str | None = None
    api_secret: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("url", "api_key", "api_secret") if getattr(self, name)]
        if given and len(given) != 3:
            missing = sorted({"url", "api_key", "api_secret"} - set(given))
            names = [f"FACECAST_LIVEKIT_{m.upper()} (--livekit-{m.replace('_', '-')})" for m in missing]
            raise ValueError(
                "a LiveKit server needs its URL, API key and API secret together; missing " + ", ".join(names)
            )
        if self.url and not self.url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"LiveKit URL {self.url!r} must start with ws://, wss://, http:// or https://")

    @property
    def configured(self) -> bool:
        return bool(self.url and self.api_key and self.api_secret)

    @property
    def ws_url(self) -> str:
        """The URL as LiveKit clients take it (ws:// or wss://)."""
        url = self.url or ""
        return "ws" + url[4:] if url.startswith("http") else url

    @staticmethod
    def from_env(
        url: str | None = None, api_key: str | None = None, api_secret: str | None = None
    ) -> LiveKitSettings:
        """FACECAST_LIVEKIT_URL, FACECAST_LIVEKIT_API_KEY, FACECAST_LIVEKIT_API_SECRET; arguments given
        (the `facecast serve --livekit-*` flags) win over the environment."""
        return LiveKitSettings(
            url=url or settings.LIVEKIT_URL.get(),
            api_key=api_key or settings.LIVEKIT_API_KEY.get(),
            api_secret=api_secret or settings.LIVEKIT_API_SECRET.get(),
        )


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path | None = None  # None: facecast.server.auth.default_data_dir()
    database_url: str | None = None  # None: SQLite in the data directory; or postgresql://...
    public_url: str | None = None  # how clients reach this server (behind a proxy); None: from the request
    ice_servers: tuple[dict[str, Any], ...] = ()  # STUN/TURN for peers on other networks
    limits: Limits = field(default_factory=Limits)
    server_id: str | None = None  # names this process's sessions in a shared database; None: derived
    # Read from the environment by default, so `facecast serve` honours the FACECAST_* avatar variables.
    avatars: AvatarSettings = field(default_factory=AvatarSettings.from_env)
    # None: no LiveKit server known (FACECAST_LIVEKIT_* are read by `facecast serve`, see LiveKitSettings).
    livekit: LiveKitSettings = field(default_factory=LiveKitSettings)
    # Worker processes that run the WebRTC sessions (engine, encoder, peer); 0: this process runs them.
    # `facecast serve` defaults to one per core (live_workers_from_env); embedding and tests to 0.
    live_workers: int = 0

    def __post_init__(self) -> None:
        if self.live_workers < 0:
            raise ValueError(f"live_workers cannot be negative, got {self.live_workers}")

    @property
    def live_capacity(self) -> int:
        """Live sessions admitted: FACECAST_MAX_LIVE_SESSIONS when set, else what the processes hold."""
        if self.limits.max_live_sessions is not None:
            return self.limits.max_live_sessions
        if self.live_workers:
            return LIVE_SESSIONS_PER_WORKER * self.live_workers
        return IN_PROCESS_LIVE_SESSIONS

    @staticmethod
    def live_workers_from_env() -> int:
        """`FACECAST_LIVE_WORKERS`: worker processes for live sessions; default one per core, 0 runs them
        in the server process."""
        workers = _env_int("FACECAST_LIVE_WORKERS", os.cpu_count() or 1)
        if workers < 0:
            raise ValueError(
                f"FACECAST_LIVE_WORKERS={workers} cannot be negative; use 0 for no worker processes"
            )
        return workers

    @staticmethod
    def ice_servers_from_env() -> tuple[dict[str, Any], ...]:
        """`FACECAST_ICE_SERVERS`: a JSON list like
        `[{"urls": "turn:turn.example.com:3478", "username": "u", "credential": "p"}]`."""
        servers = settings.ICE_SERVERS.get()
        return () if servers is None else parse_ice_servers(servers)

    @staticmethod
    def limits_from_env(base: Limits | None = None) -> Limits:
        base = base or Limits()
        return Limits(
            max_session_duration=_env_int("FACECAST_MAX_SESSION_DURATION", base.max_session_duration),
            default_session_duration=min(
                _env_int("FACECAST_DEFAULT_SESSION_DURATION", base.default_session_duration),
                _env_int("FACECAST_MAX_SESSION_DURATION", base.max_session_duration),
            ),
            idle_timeout=_env_int("FACECAST_IDLE_TIMEOUT", base.idle_timeout),
            token_ttl=_env_int("FACECAST_TOKEN_TTL", base.token_ttl),
            connect_timeout=_env_int("FACECAST_CONNECT_TIMEOUT", base.connect_timeout),
            max_concurrent_per_key=_env_int("FACECAST_MAX_CONCURRENT_PER_KEY", base.max_concurrent_per_key),
            max_live_sessions=_env_optional_int("FACECAST_MAX_LIVE_SESSIONS", base.max_live_sessions),
            sandbox_duration=_env_int("FACECAST_SANDBOX_DURATION", base.sandbox_duration),
            sandbox_avatar=base.sandbox_avatar,
            max_audio_chunk_s=base.max_audio_chunk_s,
            max_queued_speech_s=base.max_queued_speech_s,
            server_lease_s=_env_float("FACECAST_SERVER_LEASE", base.server_lease_s),
        )


def parse_ice_servers(servers: Any) -> tuple[dict[str, Any], ...]:
    """Validate an RTCIceServer-shaped list (the browser's own format)."""
    if not isinstance(servers, list):
        raise ValueError("ICE servers must be a JSON list of {urls, username?, credential?} objects")
    out = []
    for entry in servers:
        if not isinstance(entry, dict) or "urls" not in entry:
            raise ValueError(f"ICE server entry {entry!r} needs a 'urls' field")
        urls = entry["urls"]
        if isinstance(urls, str):
            urls = [urls]
        if not urls or not all(
            isinstance(u, str) and u.split(":", 1)[0] in ("stun", "turn", "turns") for u in urls
        ):
            raise ValueError(f"ICE server urls {entry['urls']!r} must be stun:, turn: or turns: URLs")
        clean: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            if key in entry:
                clean[key] = str(entry[key])
        out.append(clean)
    return tuple(out)
