"""`facecast worker` and `facecast say`: the LiveKit commands (the livekit extra).

Credentials come from --url / --api-key / --api-secret, else LIVEKIT_URL / LIVEKIT_API_KEY /
LIVEKIT_API_SECRET. Missing ones raise ValueError, which the main CLI prints as a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
from typing import Any

from facecast.engine.config import FPS_CHOICES
from facecast.hosts.livekit.names import DEFAULT_AGENT_NAME, DEFAULT_AVATAR_IDENTITY, DEFAULT_SENDER_IDENTITY


def _add_credentials(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="LiveKit server URL (default: $LIVEKIT_URL)")
    p.add_argument("--api-key", help="LiveKit API key (default: $LIVEKIT_API_KEY)")
    p.add_argument("--api-secret", help="LiveKit API secret (default: $LIVEKIT_API_SECRET)")


def add_livekit_parsers(subparsers: Any) -> None:
    """Add `worker` and `say` to the main CLI's subparsers (the object `add_subparsers()` returns)."""
    from facecast.avatars import ASPECTS, DEFAULT_AVATAR, QUALITIES

    worker = subparsers.add_parser(
        "worker",
        help="serve avatars to LiveKit rooms (register for explicit agent dispatch)",
        description="Register with a LiveKit server as an avatar worker. Dispatch avatars to rooms with "
        "the agent name; the dispatch metadata (JSON) may set avatar (a built-in name or an id in this "
        "worker's avatar library), aspect, quality, fps, max_duration_s, agent_identity, avatar_identity, "
        "avatar_name.",
    )
    worker.add_argument(
        "--agent-name",
        default=DEFAULT_AGENT_NAME,
        help=f"name to dispatch avatars by (default {DEFAULT_AGENT_NAME})",
    )
    _add_credentials(worker)
    worker.add_argument(
        "--avatar",
        default=DEFAULT_AVATAR,
        help=f"default avatar: a built-in name, an id in the avatar library ($FACECAST_AVATARS_DIR, see "
        f"`facecast avatar list`) or a .facecast path (default {DEFAULT_AVATAR})",
    )
    worker.add_argument("--aspect", default="1:1", choices=list(ASPECTS), help="default aspect (default 1:1)")
    worker.add_argument(
        "--quality", default="high", choices=list(QUALITIES), help="default frame size (default high)"
    )
    worker.add_argument(
        "--fps", type=int, default=30, choices=FPS_CHOICES, help="video frame rate (default 30)"
    )
    worker.add_argument(
        "--max-duration",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="default maximum session length (default 3600)",
    )
    worker.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        metavar="N",
        help="report this worker full at N running avatars (default: full at 70%% of the machine's CPU)",
    )
    worker.add_argument(
        "--http-port",
        type=int,
        default=None,
        metavar="PORT",
        help="port of the worker's health-check HTTP server (default 8081; 0: any free port). "
        "Workers sharing a machine need distinct ports",
    )
    worker.add_argument("--dev", action="store_true", help="development mode (no process pre-warming)")

    say = subparsers.add_parser(
        "say",
        help="stream an audio file to an avatar in a LiveKit room",
        description="Join a room and stream an audio file to the avatar over lk.audio_stream, as an agent "
        "would; returns when the avatar has played it. Ctrl+C interrupts the avatar.",
    )
    say.add_argument("audio", help="speech audio file (WAV, MP3, or any file FFmpeg reads)")
    say.add_argument("--room", required=True, help="LiveKit room name")
    say.add_argument(
        "--to",
        default=DEFAULT_AVATAR_IDENTITY,
        metavar="IDENTITY",
        help=f"the avatar's participant identity (default {DEFAULT_AVATAR_IDENTITY})",
    )
    say.add_argument(
        "--identity",
        default=DEFAULT_SENDER_IDENTITY,
        help=f"this sender's identity; the avatar must follow it (default {DEFAULT_SENDER_IDENTITY})",
    )
    _add_credentials(say)


def _credential(value: str | None, env: str, option: str) -> str:
    resolved = value or os.environ.get(env, "")
    if not resolved:
        raise ValueError(f"{env} is not set (pass {option} or set the {env} environment variable)")
    return resolved


def run_worker_command(args: argparse.Namespace) -> int:
    """`facecast worker`: blocks until SIGINT/SIGTERM."""
    import logging

    from facecast.hosts.livekit.dispatch import AvatarJob, run_agent_server
    from facecast.hosts.livekit.generator import check_avatar

    check_avatar(args.avatar)
    if args.max_duration <= 0:
        raise ValueError("--max-duration must be positive")
    if args.max_sessions is not None and args.max_sessions < 1:
        raise ValueError("--max-sessions must be at least 1")
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        raise ValueError("--http-port must be between 0 and 65535")
    url = _credential(args.url, "LIVEKIT_URL", "--url")
    key = _credential(args.api_key, "LIVEKIT_API_KEY", "--api-key")
    secret = _credential(args.api_secret, "LIVEKIT_API_SECRET", "--api-secret")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    defaults = AvatarJob(
        avatar=args.avatar,
        aspect=args.aspect,
        quality=args.quality,
        fps=args.fps,
        max_duration_s=args.max_duration,
    )
    print(f"facecast worker: registering as {args.agent_name!r} at {url}")
    try:
        run_agent_server(
            args.agent_name,
            defaults=defaults,
            url=url,
            api_key=key,
            api_secret=secret,
            max_sessions=args.max_sessions,
            http_port=args.http_port,
            devmode=args.dev,
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        port = args.http_port if args.http_port is not None else ("any free port" if args.dev else 8081)
        print(
            f"facecast worker: the health-check HTTP port ({port}) is in use, by another worker on this "
            f"machine? Give each worker its own --http-port (0: any free port). ({exc})",
            file=sys.stderr,
        )
        return 1
    return 0


def run_say_command(args: argparse.Namespace) -> int:
    """`facecast say`: prints what the avatar reported and returns 0 once it has played the file."""
    from facecast.hosts.livekit.say import say_file
    from facecast.hosts.livekit.tokens import mint_sender_token

    url = _credential(args.url, "LIVEKIT_URL", "--url")
    key = _credential(args.api_key, "LIVEKIT_API_KEY", "--api-key")
    secret = _credential(args.api_secret, "LIVEKIT_API_SECRET", "--api-secret")
    token = mint_sender_token(key, secret, room=args.room, identity=args.identity)
    from livekit import rtc

    try:
        result = asyncio.run(say_file(url, token, args.audio, args.to))
    except (TimeoutError, ConnectionError, rtc.ConnectError) as exc:
        print(f"facecast say: {exc}", file=sys.stderr)
        return 1
    state = "interrupted" if result.get("interrupted") else "played"
    print(f"{state} {result['playback_position']:.2f} s of {result['duration_s']:.2f} s")
    return 0
