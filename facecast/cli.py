"""The `facecast` command: render audio files to lip-synced MP4, a one-command demo, avatar listing, and
the benchmark suite. User mistakes print one line to stderr and exit with status 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from facecast import __version__
from facecast.engine.config import FPS_CHOICES, MAX_LOOKAHEAD_MS

if TYPE_CHECKING:
    from facecast.hosts.file import RenderOptions, RenderReport
    from facecast.server.config import ServerConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line; main() prints it as one line and returns EXIT_USAGE."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # Raise instead of exiting so main() returns a status (callable from tests and scripts), and
        # print one line rather than the whole usage block.
        raise UsageError(f"{self.prog}: error: {message}")


def _add_look_options(p: argparse.ArgumentParser, *, with_background: bool) -> None:
    from facecast.avatars import ASPECTS, BACKGROUNDS, DEFAULT_AVATAR, QUALITIES

    aspects, qualities, backgrounds = list(ASPECTS), list(QUALITIES), list(BACKGROUNDS)
    p.add_argument(
        "--avatar",
        default=DEFAULT_AVATAR,
        help=f"built-in avatar (default {DEFAULT_AVATAR}; see `facecast avatars`)",
    )
    p.add_argument("--fps", type=int, default=30, choices=FPS_CHOICES, help="video frame rate (default 30)")
    p.add_argument("--aspect", default="1:1", choices=aspects, help="frame aspect ratio (default 1:1)")
    p.add_argument("--quality", default="high", choices=qualities, help="frame size preset (default high)")
    if with_background:
        # MP4 has no alpha channel, so transparent is refused with a hint rather than hidden.
        p.add_argument(
            "--background",
            default="scene",
            choices=backgrounds,
            help="scene, or green for chroma keying (default scene)",
        )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _add_server_options(p: argparse.ArgumentParser, *, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port, help=f"TCP port (default {default_port})")
    p.add_argument(
        "--data-dir",
        help="where keys and session records live (default: $FACECAST_DATA_DIR or ~/.local/share/facecast)",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("FACECAST_DATABASE_URL"),
        help="postgresql://... to share state between servers (default: SQLite in the data directory)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="facecast", description="Self-hosted real-time talking avatars, on a CPU.")
    parser.add_argument("--version", action="version", version=f"facecast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    render = sub.add_parser("render", help="render an audio file (or text, with --say) to a lip-synced MP4")
    render.add_argument(
        "audio", nargs="?", help="speech audio file (WAV, MP3, OGG, FLAC, or any file FFmpeg reads)"
    )
    render.add_argument(
        "--say", metavar="TEXT", help="speak TEXT with the built-in espeak-ng voice instead of reading a file"
    )
    render.add_argument("--voice", default="en-us", help="espeak-ng voice for --say (default en-us)")
    render.add_argument("-o", "--output", required=True, help="MP4 file to write")
    _add_look_options(render, with_background=True)
    render.add_argument("--text", help="transcript of the audio; enables forced alignment (more accurate)")
    render.add_argument("--params", metavar="FILE", help="also write per-frame parameters (JSONL)")
    render.add_argument(
        "--tracker",
        default="auto",
        choices=("auto", "phones", "energy"),
        help="mouth tracker: auto (phones for English), phones, or energy (any language)",
    )
    render.add_argument(
        "--lookahead-ms",
        type=int,
        metavar="N",
        help=f"analysis look-ahead, 0..{MAX_LOOKAHEAD_MS} ms (default: the engine's)",
    )

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

    from facecast.hosts.livekit.cli import add_livekit_parsers
    from facecast.server.keys_cli import add_keys_parser

    add_keys_parser(sub)
    add_livekit_parsers(sub)

    sub.add_parser("avatars", help="list the built-in avatars")
    sub.add_parser("bench", help="run benchmarks (`facecast bench --help`)", add_help=False)
    return parser


def _print_report(report: RenderReport) -> None:
    print(
        f"wrote {report.out_path}: {report.frames} frames, {report.duration_s:.2f} s, "
        f"{report.width}x{report.height}, rendered in {report.wall_s:.2f} s "
        f"({report.realtime_factor:.1f}x realtime)"
    )
    if report.params_path is not None:
        print(f"wrote {report.params_path}: {report.frames} lines of per-frame parameters")


def _render_options(args: argparse.Namespace, **extra: Any) -> RenderOptions:
    """The options of `render` (look, clock, outputs) for both its sources, plus source-specific ones."""
    from facecast.hosts.file import RenderOptions

    return RenderOptions(
        avatar=args.avatar,
        fps=args.fps,
        aspect=args.aspect,
        quality=args.quality,
        background=args.background,
        params_path=args.params,
        progress=not args.quiet,
        **extra,
    )


def _cmd_render(args: argparse.Namespace) -> int:
    if (args.audio is None) == (args.say is None):
        raise UsageError("facecast render: error: give an audio file or --say TEXT (one of them)")
    if args.say is not None:
        return _render_text(args)
    from facecast.hosts.file import render_file

    options = _render_options(args, text=args.text, tracker=args.tracker, lookahead_ms=args.lookahead_ms)
    report = render_file(args.audio, args.output, options)
    _print_report(report)
    return 0


def _render_text(args: argparse.Namespace) -> int:
    from facecast.hosts.file import render_pcm
    from facecast.tts import EspeakTTS

    started = time.perf_counter()
    speech = EspeakTTS(voice=args.voice).synthesize_timed(args.say)  # espeak-ng reports its phones
    options = _render_options(args, text=args.say, tracker=args.tracker, lookahead_ms=args.lookahead_ms)
    report = render_pcm(
        speech.audio, speech.sample_rate, args.output, options, phones=speech.phones, started=started
    )
    _print_report(report)
    return 0


def _server_config(args: argparse.Namespace) -> ServerConfig:
    from pathlib import Path

    from facecast.server.config import Limits, ServerConfig, parse_ice_servers

    ice = ServerConfig.ice_servers_from_env()
    if getattr(args, "ice_servers", None):
        try:
            ice = parse_ice_servers(json.loads(args.ice_servers))
        except json.JSONDecodeError as exc:
            raise UsageError(f"facecast: error: --ice-servers is not valid JSON: {exc}") from None
    return ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        database_url=args.database_url,
        public_url=getattr(args, "public_url", None),
        ice_servers=ice,
        limits=ServerConfig.limits_from_env(Limits()),
    )


def _cmd_serve(args: argparse.Namespace, *, demo: bool) -> int:
    from facecast.server.auth import default_data_dir
    from facecast.server.run import serve
    from facecast.server.store import ensure_dev_key, open_store

    config = _server_config(args)
    dev_key = None
    if demo:
        data_dir = config.data_dir or default_data_dir()
        store = open_store(config.database_url, data_dir)
        try:
            dev_key = ensure_dev_key(store, data_dir)
        finally:
            store.close()

    def ready(url: str) -> None:
        print(f"Facecast {__version__} is listening on {url}")
        if dev_key is not None:
            print(f"  open {url}/#key={dev_key}")
            print(f"  dev API key: {dev_key}")
        print(f"  API docs: {url}/docs    metrics: {url}/metrics    Ctrl-C stops it")
        sys.stdout.flush()

    serve(config, fallback_to_free_port=demo, on_ready=ready, log_level=args.log_level)
    return 0


def _cmd_avatars() -> int:
    from facecast.avatars import list_avatars

    avatars = list_avatars()
    width = max(len(a.name) for a in avatars)
    for a in avatars:
        print(f"{a.name:<{width}}  {a.kind:<10}  {a.description}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from facecast.hosts.file import MediaError
    from facecast.server.store import StoreError
    from facecast.tts import TTSError

    # ValueError covers option validation in EngineConfig and the avatar loader.
    return (MediaError, StoreError, TTSError, ValueError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["bench"]:
            # The benchmark suite owns its options; everything after `bench` is passed through.
            from facecast.bench import main as bench_main

            return bench_main(args_list[1:])
        args = build_parser().parse_args(args_list)
        if args.command == "render":
            return _cmd_render(args)
        if args.command in ("demo", "serve"):
            return _cmd_serve(args, demo=args.command == "demo")
        if args.command in ("worker", "say"):
            from facecast.hosts.livekit import cli as livekit_cli

            run = livekit_cli.run_worker_command if args.command == "worker" else livekit_cli.run_say_command
            try:
                return run(args)
            except ImportError as exc:
                raise UsageError(
                    f"facecast {args.command} needs the LiveKit extra: "
                    f"pip install 'facecast[livekit]' ({exc})"
                ) from None
        if args.command == "keys":
            from facecast.server.keys_cli import run_keys

            return run_keys(args)
        return _cmd_avatars()
    except KeyboardInterrupt:
        print("facecast: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except _user_errors() as exc:
        print(f"facecast: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
