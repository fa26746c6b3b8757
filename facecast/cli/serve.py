"""`facecast serve` and `facecast demo`: run the server (the server extra)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facecast import __version__, settings
from facecast.cli.common import UsageError

if TYPE_CHECKING:
    from facecast.server.config import ServerConfig
    from facecast.server.store import Store

FULL_EXTRA_MODULES = ("pipecat", "openai", "onnxruntime")


def _add_server_options(p: argparse.ArgumentParser, *, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port, help=f"TCP port (default {default_port})")
    p.add_argument(
        "--data-dir",
        help="where keys and session records live (default: $FACECAST_DATA_DIR or ~/.local/share/facecast)",
    )
    p.add_argument(
        "--database-url",
        default=settings.DATABASE_URL.get(),
        help="postgresql://... to share state between servers (default: SQLite in the data directory)",
    )
    p.add_argument(
        "--live-workers",
        type=int,
        metavar="N",
        help="worker processes that run live WebRTC sessions (default: $FACECAST_LIVE_WORKERS, else one "
        "per core); 0 runs them in the server process",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def add_parsers(sub: Any) -> None:
    """Add `demo` and `serve` to the main parser's subparsers."""
    demo = sub.add_parser(
        "demo",
        help="start the server on localhost with a dev key and open-in-browser URL (embedded defaults)",
    )
    _add_server_options(demo, default_port=8080)
    serve = sub.add_parser("serve", help="run the Facecast server (session API, WebRTC, LITE WebSocket)")
    _add_server_options(serve, default_port=8080)
    serve.add_argument(
        "--public-url",
        help="how clients reach this server, e.g. https://avatars.example.com (behind a proxy)",
    )
    serve.add_argument(
        "--ice-servers",
        metavar="JSON",
        help='STUN/TURN list, e.g. \'[{"urls": "turn:turn.example.com:3478", "username": "u", '
        '"credential": "p"}]\' (default: $FACECAST_ICE_SERVERS)',
    )
    serve.add_argument(
        "--livekit-url",
        metavar="URL",
        help="a LiveKit server for LiveAvatar-style rooms, e.g. wss://lk.example.com (default: "
        "$FACECAST_LIVEKIT_URL); needs --livekit-api-key and --livekit-api-secret",
    )
    serve.add_argument("--livekit-api-key", metavar="KEY", help="default: $FACECAST_LIVEKIT_API_KEY")
    serve.add_argument(
        "--livekit-api-secret",
        metavar="SECRET",
        help="default: $FACECAST_LIVEKIT_API_SECRET (prefer the variable: flags show in `ps`)",
    )


def _server_config(args: argparse.Namespace) -> ServerConfig:
    from pathlib import Path

    from facecast.server.config import Limits, LiveKitSettings, ServerConfig, parse_ice_servers

    ice = ServerConfig.ice_servers_from_env()
    if getattr(args, "ice_servers", None):
        try:
            ice = parse_ice_servers(json.loads(args.ice_servers))
        except json.JSONDecodeError as exc:
            raise UsageError(f"facecast: error: --ice-servers is not valid JSON: {exc}") from None
    try:
        livekit = LiveKitSettings.from_env(
            getattr(args, "livekit_url", None),
            getattr(args, "livekit_api_key", None),
            getattr(args, "livekit_api_secret", None),
        )
    except ValueError as exc:
        raise UsageError(f"facecast: error: {exc}") from None
    if args.live_workers is not None and args.live_workers < 0:
        raise UsageError("facecast: error: --live-workers cannot be negative; use 0 for no worker processes")
    try:
        live_workers = (
            args.live_workers if args.live_workers is not None else ServerConfig.live_workers_from_env()
        )
    except ValueError as exc:
        raise UsageError(f"facecast: error: {exc}") from None
    return ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        database_url=args.database_url,
        public_url=getattr(args, "public_url", None),
        ice_servers=ice,
        limits=ServerConfig.limits_from_env(Limits()),
        livekit=livekit,
        live_workers=live_workers,
    )


@dataclass(frozen=True)
class FullModeOffer:
    """What `facecast demo` says about FULL mode: `page_fragment` (added to the page's `#key=...`) opens
    the page in FULL mode when a language model is configured; without one, `text` says how to set one up."""

    text: str
    page_fragment: str | None = None


def full_mode_offer(store: Store, dev_key: str) -> FullModeOffer:
    """FULL mode (the user talks, the server holds the conversation) when a language model is configured:
    the server's default, else the dev key's newest LLM configuration."""
    import importlib.util

    from facecast.server.store import LlmConfigRecord

    if any(importlib.util.find_spec(name) is None for name in FULL_EXTRA_MODULES):
        return FullModeOffer(
            "FULL mode (talk with it) needs the conversation extra: pip install 'facecast[full]'"
        )
    if settings.LLM_BASE_URL.get() and settings.LLM_MODEL.get():
        return FullModeOffer(
            f"FULL mode (talk with it; the server's LLM {settings.LLM_MODEL.get()})", "&mode=FULL"
        )
    key = store.authenticate_key(dev_key)
    configs = store.list_owned(LlmConfigRecord, key.id) if key is not None else []
    if configs:
        config = configs[-1]
        assert isinstance(config, LlmConfigRecord)
        return FullModeOffer(
            f"FULL mode (talk with it; LLM configuration {config.display_name!r})",
            f"&mode=FULL&llm={config.id}",
        )
    return FullModeOffer(
        "FULL mode (talk with it) needs a language model: restart with "
        f"{settings.LLM_BASE_URL.name}=http://127.0.0.1:11434/v1 {settings.LLM_MODEL.name}=llama3.2 (any "
        f"OpenAI-compatible endpoint; {settings.LLM_API_KEY.name} too if it needs a key), or create an LLM "
        "configuration for the dev key with POST /v1/llm_configurations (docs/full-mode.md)"
    )


def run(args: argparse.Namespace, *, demo: bool) -> int:
    """`facecast serve`, or `facecast demo` (demo: a dev key, and a free port if the one asked is taken)."""
    from facecast.server.auth import default_data_dir
    from facecast.server.run import serve
    from facecast.server.store import ensure_dev_key, open_store

    config = _server_config(args)
    dev_key: str | None = None
    full_offer: FullModeOffer | None = None
    if demo:
        data_dir = config.data_dir or default_data_dir()
        store = open_store(config.database_url, data_dir)
        try:
            dev_key = ensure_dev_key(store, data_dir)
            full_offer = full_mode_offer(store, dev_key)
        finally:
            store.close()

    def ready(url: str) -> None:
        print(f"Facecast {__version__} is listening on {url}")
        if dev_key is not None:
            page_url = f"{url}/#key={dev_key}"
            print(f"  open {page_url}")
            if full_offer is not None and full_offer.page_fragment is not None:
                print(f"  {full_offer.text}: open {page_url}{full_offer.page_fragment}")
            elif full_offer is not None:
                print(f"  {full_offer.text}")
            print(f"  dev API key: {dev_key}")
        print(f"  API docs: {url}/docs    metrics: {url}/metrics    Ctrl-C stops it")
        sys.stdout.flush()

    serve(config, fallback_to_free_port=demo, on_ready=ready, log_level=args.log_level)
    return 0
