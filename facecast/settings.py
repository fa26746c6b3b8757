"""Every `FACECAST_*` environment variable, in one place: its type, default, meaning and who reads it.

Code reads a variable through its `Setting` (`DATA_DIR.get()`), which parses it and names the variable
in the error when its value is bad. `facecast config` prints the effective values (secrets masked), and
docs/configuration.md is generated from this table (`python -m facecast.settings > docs/configuration.md`;
a test checks that it is current). The two plugins are separate distributions that must run without
facecast, so they read their variables themselves; they are listed here too, for the documentation.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Who reads a variable; the documentation groups by these, in this order.
SERVER = "server"
AVATARS = "avatars"
LIVEKIT = "LiveKit"
PLUGINS = "plugins and examples"
DEVELOPMENT = "development"
GROUPS = (SERVER, AVATARS, LIVEKIT, PLUGINS, DEVELOPMENT)

MASK = "****"
_UNSET: Any = object()


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def positive_whole_number(text: str) -> int:
    value = whole_number(text)
    if value <= 0:
        raise ValueError("is not a positive whole number")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise ValueError("is not a positive number")
    return value


def path(text: str) -> Path:
    return Path(text).expanduser()


def text(value: str) -> str:
    return value


def json_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc}") from None


def networks(raw: str) -> tuple[IPNetwork, ...]:
    out = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            example = '"127.0.0.0/8,10.0.0.0/8"'
            raise ValueError(
                f"{item.strip()!r} is not a network; use comma-separated CIDRs such as {example}"
            ) from None
    return tuple(out)


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return value

    parse.__name__ = "one of " + ", ".join(choices)
    return parse


_KINDS: dict[Callable[[str], Any], str] = {
    whole_number: "integer",
    positive_whole_number: "integer > 0",
    number: "number",
    positive_number: "number > 0",
    path: "path",
    text: "text",
    json_value: "JSON",
    networks: "CIDR list",
}


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: `get()` is its parsed value, or `default` when it is unset or empty."""

    name: str
    parse: Callable[[str], T]
    default: T | None
    help: str
    group: str
    secret: bool = False
    default_text: str | None = None  # the documented default, where it is computed at run time

    def raw(self, environ: Mapping[str, str] | None = None) -> str | None:
        value = (os.environ if environ is None else environ).get(self.name, "").strip()
        return value or None

    def get(self, environ: Mapping[str, str] | None = None, *, default: Any = _UNSET) -> T | None:
        """The parsed value; `default` (else the setting's own) when unset. A bad value raises ValueError
        naming the variable and what is wrong with it."""
        raw = self.raw(environ)
        if raw is None:
            return self.default if default is _UNSET else default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{self.name}={raw!r} {exc}") from None

    @property
    def kind(self) -> str:
        return _KINDS.get(self.parse, getattr(self.parse, "__name__", "text"))

    @property
    def documented_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return "unset" if self.default is None else str(self.default)

    def shown(self, value: Any) -> str:
        """How `facecast config` prints a value: secrets masked, passwords taken out of URLs."""
        if value is None:
            return "(unset)"
        if self.secret:
            return MASK
        if isinstance(value, str) and "://" in value:
            return mask_url_password(value)
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)


def mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:{MASK}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _setting(*args: Any, **kwargs: Any) -> Setting[Any]:
    setting: Setting[Any] = Setting(*args, **kwargs)
    SETTINGS.append(setting)
    return setting


SETTINGS: list[Setting[Any]] = []

# -- server ----------------------------------------------------------------------------------------------
DATA_DIR = _setting(
    "FACECAST_DATA_DIR",
    path,
    None,
    "Where keys, session records and the SQLite database live.",
    SERVER,
    default_text="$XDG_DATA_HOME/facecast, else ~/.local/share/facecast",
)
DATABASE_URL = _setting(
    "FACECAST_DATABASE_URL",
    text,
    None,
    "`postgresql://...` to share state between servers (`--database-url`); unset: SQLite in the data "
    "directory.",
    SERVER,
)
LIVE_WORKERS = _setting(
    "FACECAST_LIVE_WORKERS",
    whole_number,
    None,
    "Worker processes that run live WebRTC sessions (`--live-workers`); 0 runs them in the server process.",
    SERVER,
    default_text="one per core",
)
MAX_LIVE_SESSIONS = _setting(
    "FACECAST_MAX_LIVE_SESSIONS",
    whole_number,
    None,
    "Live sessions the server admits in all its processes together.",
    SERVER,
    default_text="what the processes hold (2 in-process, 4 per worker)",
)
MAX_SESSION_DURATION = _setting(
    "FACECAST_MAX_SESSION_DURATION", whole_number, 3600, "Seconds a session may last at most.", SERVER
)
DEFAULT_SESSION_DURATION = _setting(
    "FACECAST_DEFAULT_SESSION_DURATION",
    whole_number,
    600,
    "Seconds a session lasts when its token does not ask (capped by the maximum).",
    SERVER,
)
IDLE_TIMEOUT = _setting(
    "FACECAST_IDLE_TIMEOUT",
    whole_number,
    300,
    "Seconds without audio or keep-alive that end a session (`idle`).",
    SERVER,
)
TOKEN_TTL = _setting(
    "FACECAST_TOKEN_TTL", whole_number, 300, "Seconds a minted session token may wait to be started.", SERVER
)
CONNECT_TIMEOUT = _setting(
    "FACECAST_CONNECT_TIMEOUT",
    whole_number,
    60,
    "Seconds a started WebRTC session waits for its peer to connect (`client_gone`).",
    SERVER,
)
MAX_CONCURRENT_PER_KEY = _setting(
    "FACECAST_MAX_CONCURRENT_PER_KEY",
    whole_number,
    4,
    "Concurrent sessions per API key, for keys without their own cap.",
    SERVER,
)
SERVER_LEASE = _setting(
    "FACECAST_SERVER_LEASE",
    positive_number,
    15.0,
    "Seconds a server's lease on its sessions lasts; it renews every third of it, and another server ends "
    "the sessions of one whose lease lapsed (`server_lost`).",
    SERVER,
)
SANDBOX_DURATION = _setting(
    "FACECAST_SANDBOX_DURATION", whole_number, 60, "Seconds a sandbox session lasts.", SERVER
)
ICE_SERVERS = _setting(
    "FACECAST_ICE_SERVERS",
    json_value,
    None,
    'STUN/TURN servers for peers on other networks: a JSON list like `[{"urls": "turn:host:3478", '
    '"username": "u", "credential": "p"}]`.',
    SERVER,
    secret=True,  # TURN credentials
)
MAX_UPLOAD_BYTES = _setting(
    "FACECAST_MAX_UPLOAD_BYTES",
    whole_number,
    20 * 1024 * 1024,
    "Largest photo or bundle upload (`POST /v1/avatars`); bigger is refused (413).",
    SERVER,
)
AVATAR_BUILD_WORKERS = _setting(
    "FACECAST_AVATAR_BUILD_WORKERS", whole_number, 1, "Avatar builds the server runs at once.", SERVER
)
MAX_AVATAR_BUILDS_PER_KEY = _setting(
    "FACECAST_MAX_AVATAR_BUILDS_PER_KEY",
    whole_number,
    2,
    "Avatar builds queued or running per API key (429 past it).",
    SERVER,
)
AVATAR_BUILD_WAIT = _setting(
    "FACECAST_AVATAR_BUILD_WAIT",
    number,
    180.0,
    "Seconds `/v1/sessions/start` waits for the session's avatar to finish building.",
    SERVER,
)

LLM_BASE_URL = _setting(
    "FACECAST_LLM_BASE_URL",
    text,
    None,
    "FULL mode's default LLM: an OpenAI-compatible endpoint, e.g. `http://127.0.0.1:11434/v1` (Ollama); "
    "used when a token names no `llm_configuration_id`.",
    SERVER,
)
LLM_MODEL = _setting("FACECAST_LLM_MODEL", text, None, "The model of FULL mode's default LLM.", SERVER)
LLM_API_KEY = _setting(
    "FACECAST_LLM_API_KEY",
    text,
    None,
    "The key of FULL mode's default LLM, if it needs one.",
    SERVER,
    secret=True,
)
SECRETS_KEY = _setting(
    "FACECAST_SECRETS_KEY",
    text,
    None,
    "The Fernet key `/v1/secrets` values are encrypted with at rest; servers sharing a database share it.",
    SERVER,
    secret=True,
    default_text="`secrets.key` in the data dir, made on first use",
)

# -- avatars ---------------------------------------------------------------------------------------------
AVATARS_DIR = _setting(
    "FACECAST_AVATARS_DIR",
    path,
    None,
    "The avatar library (`facecast avatar create` writes here).",
    AVATARS,
    default_text="$XDG_DATA_HOME/facecast/avatars, else ~/.local/share/facecast/avatars",
)
FETCH_ALLOW_NETWORKS = _setting(
    "FACECAST_FETCH_ALLOW_NETWORKS",
    networks,
    (),
    "Networks an avatar image URL may resolve to besides public addresses, e.g. `10.0.0.0/8`.",
    AVATARS,
    default_text="none (loopback and private addresses are refused)",
)
FETCH_MAX_BYTES = _setting(
    "FACECAST_FETCH_MAX_BYTES",
    positive_whole_number,
    None,
    "Largest image fetched from a URL.",
    AVATARS,
    default_text="20 MiB",
)
FETCH_TIMEOUT_S = _setting(
    "FACECAST_FETCH_TIMEOUT_S",
    positive_number,
    None,
    "Seconds an image fetch may take.",
    AVATARS,
    default_text="15",
)
FACE_TOOLS_DIR = _setting(
    "FACECAST_FACE_TOOLS_DIR",
    path,
    None,
    "The face analysis virtualenv (MediaPipe) that photo builds use.",
    AVATARS,
    default_text="$XDG_CACHE_HOME/facecast/face-tools/mediapipe-0.10.21-py3.X",
)
FACE_TOOLS_WHEELS = _setting(
    "FACECAST_FACE_TOOLS_WHEELS",
    path,
    None,
    "A folder of wheels to install the face analysis tools from, offline (`setup-face-tools --wheels`).",
    AVATARS,
    default_text="unset: PyPI or pip's configured index",
)

# -- LiveKit ---------------------------------------------------------------------------------------------
LIVEKIT_URL = _setting(
    "FACECAST_LIVEKIT_URL",
    text,
    None,
    "A LiveKit server the Facecast server may use for rooms (`--livekit-url`); needs the key and secret.",
    LIVEKIT,
)
LIVEKIT_API_KEY = _setting(
    "FACECAST_LIVEKIT_API_KEY", text, None, "That LiveKit server's API key (`--livekit-api-key`).", LIVEKIT
)
LIVEKIT_API_SECRET = _setting(
    "FACECAST_LIVEKIT_API_SECRET",
    text,
    None,
    "That LiveKit server's API secret (`--livekit-api-secret`).",
    LIVEKIT,
    secret=True,
)
# The LiveKit SDK's own credentials, which the server falls back to for minting room tokens: LiveKit
# documents them, so they are read here but left out of Facecast's table.
LIVEKIT_SDK_API_KEY: Setting[str] = Setting(
    "LIVEKIT_API_KEY", text, None, "LiveKit's API key (the SDK's variable).", LIVEKIT
)
LIVEKIT_SDK_API_SECRET: Setting[str] = Setting(
    "LIVEKIT_API_SECRET", text, None, "LiveKit's API secret (the SDK's variable).", LIVEKIT, secret=True
)

# -- plugins and examples (read by the plugins themselves) -----------------------------------------------
API_URL = _setting(
    "FACECAST_API_URL",
    text,
    "http://localhost:8080",
    "The Facecast server the LiveKit plugin's remote mode and the examples call.",
    PLUGINS,
)
API_KEY = _setting(
    "FACECAST_API_KEY",
    text,
    None,
    "The API key they call it with (`facecast keys create`).",
    PLUGINS,
    secret=True,
)
AVATAR = _setting(
    "FACECAST_AVATAR", text, "ava", "The avatar the LiveKit plugin and examples use by default.", PLUGINS
)
MODE = _setting(
    "FACECAST_MODE",
    one_of("remote", "local"),
    "remote",
    "examples/livekit/agent.py: render on a server (remote) or in the agent (local).",
    PLUGINS,
)

# -- development -----------------------------------------------------------------------------------------
SENDER_REPORTS = _setting(
    "FACECAST_SENDER_REPORTS",
    one_of("media-clock", "aiortc"),
    "media-clock",
    "`aiortc` keeps aiortc's own RTCP sender reports and no video hold (to compare, `facecast bench "
    "browser`).",
    DEVELOPMENT,
)
LIVE_ENGINE_THREAD = _setting(
    "FACECAST_LIVE_ENGINE_THREAD",
    one_of("own", "loop"),
    "loop",
    "Where a server's worker process runs each live session's engine: its event `loop`, or an `own` "
    "thread per session (to compare, `facecast bench server sessions`; docs/benchmarks.md § Engine on "
    "the loop).",
    DEVELOPMENT,
)
LIVEKIT_SERVER = _setting(
    "FACECAST_LIVEKIT_SERVER",
    path,
    None,
    "A `livekit-server` binary for the tests and `facecast bench livekit` (`scripts/livekit-server`).",
    DEVELOPMENT,
    default_text="the cached build, else livekit-server on PATH",
)
TEST_POSTGRES_URL = _setting(
    "FACECAST_TEST_POSTGRES_URL",
    text,
    None,
    "A PostgreSQL server for the store tests (they drop what they create); unset: a throwaway server.",
    DEVELOPMENT,
)

TEST_LLM_URL = _setting(
    "FACECAST_TEST_LLM_URL",
    text,
    None,
    "An OpenAI-compatible endpoint for the opt-in FULL-mode test against a real LLM.",
    DEVELOPMENT,
)
TEST_LLM_MODEL = _setting(
    "FACECAST_TEST_LLM_MODEL", text, None, "The model for that test.", DEVELOPMENT, default_text="gpt-4o-mini"
)
TEST_LLM_KEY = _setting(
    "FACECAST_TEST_LLM_KEY", text, None, "Its key, if it needs one.", DEVELOPMENT, secret=True
)


def by_name(name: str) -> Setting[Any]:
    for setting in SETTINGS:
        if setting.name == name:
            return setting
    raise KeyError(f"{name} is not a Facecast setting (see docs/configuration.md)")


def effective(environ: Mapping[str, str] | None = None) -> list[tuple[Setting[Any], str, str]]:
    """(setting, value as shown, source) for every setting; a bad value shows as `invalid: ...`."""
    rows = []
    for setting in SETTINGS:
        source = "environment" if setting.raw(environ) is not None else "default"
        try:
            value = setting.get(environ)
        except ValueError as exc:
            rows.append((setting, f"invalid: {exc}", source))
            continue
        shown = setting.shown(value) if source == "environment" else setting.documented_default
        rows.append((setting, shown, source))
    return rows


def markdown() -> str:
    """docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        "Every `FACECAST_*` environment variable. An unset or empty variable takes its default; a bad",
        "value stops the command with a message that names the variable. Command-line flags, where there",
        "are any, win over the environment. `facecast config` prints the effective values, secrets masked.",
        "",
        "Generated from `facecast/settings.py` by `python -m facecast.settings > docs/configuration.md`;",
        "`tests/test_settings.py` checks that this page is current.",
    ]
    for group in GROUPS:
        lines += ["", f"## {group[0].upper()}{group[1:]}", "", "| variable | type | default | meaning |"]
        lines.append("| --- | --- | --- | --- |")
        for s in (s for s in SETTINGS if s.group == group):
            kind = s.kind + (", secret" if s.secret else "")
            lines.append(f"| `{s.name}` | {kind} | {s.documented_default} | {s.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
