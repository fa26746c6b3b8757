"""The `facecast` command: render audio files to lip-synced MP4, a one-command demo, the avatar library
(`facecast avatar create|list|info|preview|delete`), and the benchmark suite. User mistakes print one line
to stderr and exit with status 2; `facecast avatar` commands that fail on what they were given (an unknown
avatar, a damaged bundle, a photo without a face) exit with status 1."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from facecast import __version__, settings
from facecast.engine.config import FPS_CHOICES, MAX_LOOKAHEAD_MS

if TYPE_CHECKING:
    import numpy as np

    from facecast.avatars import AvatarLibrary
    from facecast.hosts.file import RenderOptions, RenderReport
    from facecast.server.config import ServerConfig

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line; main() prints it as one line and returns EXIT_USAGE."""


class CommandError(Exception):
    """A `facecast avatar` command failed on what it was given; main() prints it and returns EXIT_ERROR."""


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
        help=f"a built-in avatar, the id of one in the avatar library, or a .facecast file "
        f"(default {DEFAULT_AVATAR}; see `facecast avatar list`)",
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
    render.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="cores to use: tracking, drawing and encoding run in parallel processes (default: all; "
        "1 keeps everything in one process)",
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

    from facecast.hosts.livekit.cli import add_livekit_parsers
    from facecast.server.keys_cli import add_keys_parser

    add_keys_parser(sub)
    add_livekit_parsers(sub)

    _add_avatar_parsers(sub)
    avatars = sub.add_parser("avatars", help="list the avatars (the same as `facecast avatar list`)")
    _add_dir_option(avatars)
    sub.add_parser("bench", help="run benchmarks (`facecast bench --help`)", add_help=False)
    sub.add_parser(
        "config",
        help="print the effective FACECAST_* settings, secrets masked (docs/configuration.md)",
        description="Every FACECAST_* environment variable with its effective value and where it comes "
        "from; exits 1 when one holds a value that does not parse.",
    )
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
        jobs=args.jobs,
        **extra,
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_render(args: argparse.Namespace) -> int:
    if (args.audio is None) == (args.say is None):
        raise UsageError("facecast render: error: give an audio file or --say TEXT (one of them)")
    if args.say is not None:
        return _render_text(args)
    from facecast.hosts.file import render_file

    options = _render_options(args, text=args.text, tracker=args.tracker, lookahead_ms=args.lookahead_ms)
    report = render_file(args.audio, args.output, options)
    _print_report(report)
    if report.transcript_mismatch_frames:
        share = report.transcript_mismatch_frames / max(1, report.speech_frames)
        print(
            f"facecast render: warning: the --text transcript does not match the speech in {args.audio} "
            f"({share:.0%} of its frames); the mouth follows the recognised phones there instead. "
            "Check that the text is what the audio says.",
            file=sys.stderr,
        )
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


# -- facecast avatar ----------------------------------------------------------------------------------------

_PREVIEW_POSES = ("rest", "open (D)", "smile", "blink")


def _add_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="the avatar library folder (default: $FACECAST_AVATARS_DIR or ~/.local/share/facecast/avatars)",
    )


def _add_avatar_parsers(sub: Any) -> None:
    from facecast.avatars import ASPECTS, BACKGROUNDS, QUALITIES

    avatar = sub.add_parser(
        "avatar",
        help="create, list, inspect, preview and delete avatars (the avatar library)",
        description="Manage the avatar library: a folder of NAME.facecast bundles. Anything that takes an "
        "avatar (render --avatar, the server, the LiveKit worker, the plugins) accepts a built-in name, the "
        "id of a library avatar, or the path of a .facecast file.",
    )
    actions = avatar.add_subparsers(
        dest="avatar_command", required=True, metavar="ACTION", parser_class=_Parser
    )

    create = actions.add_parser(
        "create",
        help="build an avatar from a photo (or install a .facecast file) into the library",
        description="Build a portrait avatar from a photo of one person facing the camera and save it in "
        "the library as ID.facecast; the first build also installs the face analysis tools (about half a "
        "minute). With --from-bundle, copy a .facecast file into the library instead.",
    )
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--image", metavar="PATH_OR_URL", help="the photo: a PNG/JPEG/WebP file or http(s) URL"
    )
    source.add_argument("--from-bundle", metavar="FILE", help="install this .facecast file into the library")
    create.add_argument(
        "--name",
        metavar="ID",
        help="the avatar's id: 1-64 of a-z 0-9 _ - (required with --image; with --from-bundle it renames)",
    )
    create.add_argument("--display-name", metavar="TEXT", help="the name shown in lists (default: the id)")
    create.add_argument("--description", metavar="TEXT", default="", help="one line for lists")
    create.add_argument(
        "--consent", metavar="TEXT", help="the pictured person's consent (recorded in the bundle)"
    )
    create.add_argument("--license", metavar="TEXT", help="the photo's licence (recorded in the bundle)")
    create.add_argument("--replace", action="store_true", help="overwrite an avatar with the same id")
    create.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    _add_dir_option(create)

    listing = actions.add_parser("list", help="list the built-in avatars and those in the library")
    _add_dir_option(listing)

    info = actions.add_parser(
        "info",
        help="show an avatar's manifest (and check its bundle)",
        description="Read and fully validate an avatar's bundle, then show its manifest. REF is a built-in "
        "name, a library id or a .facecast path.",
    )
    info.add_argument("ref", metavar="REF", help="built-in name, library id, or .facecast path")
    info.add_argument("--json", action="store_true", help="print manifest.json instead")
    _add_dir_option(info)

    preview = actions.add_parser(
        "preview",
        help="render a few frames of an avatar (rest, open mouth, smile, blink) into a PNG",
    )
    preview.add_argument("ref", metavar="REF", help="built-in name, library id, or .facecast path")
    preview.add_argument("-o", "--output", metavar="OUT.png", help="PNG to write (default: REF-preview.png)")
    preview.add_argument("--aspect", default="1:1", choices=list(ASPECTS), help="aspect ratio (default 1:1)")
    preview.add_argument(
        "--quality", default="medium", choices=list(QUALITIES), help="frame size (default medium)"
    )
    preview.add_argument(
        "--background", default="scene", choices=list(BACKGROUNDS), help="background (default scene)"
    )
    _add_dir_option(preview)

    setup = actions.add_parser(
        "setup-face-tools",
        help="install the face analysis tools that photo avatars need (once per machine)",
        description="Create the face analysis virtualenv (mediapipe, in its own environment) now rather "
        "than on the first photo build: from PyPI, or offline from a folder of wheels.",
    )
    setup.add_argument(
        "--wheels",
        metavar="DIR",
        help="install only from the wheels in DIR, without a package index (default: "
        "$FACECAST_FACE_TOOLS_WHEELS; unset: PyPI)",
    )
    setup.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    delete = actions.add_parser("delete", help="delete an avatar from the library")
    delete.add_argument("id", metavar="ID", help="the library avatar to delete")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _add_dir_option(delete)


def _run_avatar_command(args: argparse.Namespace) -> int:
    """`facecast avatar ...` and `facecast avatars`; what the user gave being wrong exits EXIT_ERROR."""
    from facecast.avatars import AvatarLibrary

    action = "list" if args.command == "avatars" else args.avatar_command
    if action == "setup-face-tools":
        return _cmd_setup_face_tools(args)
    library = AvatarLibrary(args.dir)
    try:
        if action == "create":
            return _cmd_avatar_create(args, library)
        if action == "info":
            return _cmd_avatar_info(args, library)
        if action == "preview":
            return _cmd_avatar_preview(args, library)
        if action == "delete":
            return _cmd_avatar_delete(args, library)
        return _cmd_avatar_list(library)
    except (ValueError, LookupError, OSError) as exc:  # BundleError, AvatarNotFoundError, FetchError, ...
        raise CommandError(_one_line(exc)) from None


def _cmd_setup_face_tools(args: argparse.Namespace) -> int:
    from facecast.avatars.faces import FaceAnalysisError, ensure_face_tools, tools_dir

    progress = BuildProgress(enabled=not args.quiet)
    try:
        python = ensure_face_tools(progress, wheels=args.wheels)
    except FaceAnalysisError as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.close()
    print(f"face analysis tools ready in {tools_dir()} ({python})")
    return 0


def _cmd_config() -> int:
    rows = settings.effective()
    _table([["variable", "source", "value"], *([s.name, source, shown] for s, shown, source in rows)])
    return EXIT_ERROR if any(shown.startswith("invalid: ") for _, shown, _ in rows) else 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    if n < 1000_000:
        return f"{n / 1000:.1f} kB"
    return f"{n / 1000_000:.1f} MB"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip())


def _cmd_avatar_list(library: AvatarLibrary) -> int:
    from facecast.avatars import DEFAULT_AVATAR, list_avatars

    rows = [["ID", "KIND", "DISPLAY NAME", "SIZE", "DESCRIPTION"]]
    for a in list_avatars():
        size = "built-in (default)" if a.name == DEFAULT_AVATAR else "built-in"
        rows.append([a.name, a.kind, a.display_name, size, a.description])
    entries = library.entries()
    for e in entries:
        m = e.manifest
        rows.append(
            [
                e.path.name.removesuffix(".facecast"),
                m.kind,
                m.display_name,
                _size(e.size_bytes),
                m.description,
            ]
        )
    _table(rows)
    readable = {e.path.name for e in entries}
    damaged = [i for i in library.ids() if library.path(i).name not in readable]
    for avatar_id in damaged:
        print(
            f"facecast: warning: {library.path(avatar_id)} is damaged; "
            f"`facecast avatar info {avatar_id}` says why",
            file=sys.stderr,
        )
    print(f"\nlibrary: {library.root} ({len(entries)} avatar{'' if len(entries) == 1 else 's'})")
    return 0


def _cmd_avatar_info(args: argparse.Namespace, library: AvatarLibrary) -> int:
    from facecast.avatars import load_bundle
    from facecast.avatars.style import style_names

    bundle = load_bundle(args.ref, library)
    m = bundle.manifest
    if args.json:
        sys.stdout.write(m.to_json())
        return 0
    if args.ref in style_names():
        source = "built-in"
    else:
        source = f"{bundle.path} ({_size(bundle.path.stat().st_size)})"
    fields = [
        ("id", m.name),
        ("display name", m.display_name),
        ("kind", m.kind),
        ("description", m.description or "-"),
        ("bundle", source),
        ("frame", f"{m.frame.width}x{m.frame.height}"),
        ("created", m.created_at),
        ("facecast version", m.facecast_version),
        ("format version", str(m.format_version)),
        ("license", m.license or "-"),
        ("consent", m.consent or "-"),
    ]
    if m.extra:
        fields.append(("extra", ", ".join(sorted(m.extra))))
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        print(f"{key + ':':<{width}} {value}")
    print(f"assets ({len(m.assets)}, {_size(sum(a.size for a in m.assets.values()))}):")
    name_w = max((len(n) for n in m.assets), default=0)
    for name, a in sorted(m.assets.items()):
        print(f"  {name:<{name_w}}  {_size(a.size):>9}  {a.media_type:<18}  sha256 {a.sha256[:12]}")
    return 0


def preview_sheet(
    ref: str, *, aspect: str, quality: str, background: str, library: AvatarLibrary
) -> np.ndarray:
    """The avatar at rest, saying "D" (mouth open), smiling and blinking, side by side with labels;
    RGB, or RGBA with a transparent background."""
    import cv2
    import numpy as np

    from facecast.avatars import load_renderer
    from facecast.engine.types import FaceState
    from facecast.engine.visemes import TARGETS, VISEME_INDEX, mouth_from_row

    renderer = load_renderer(ref, aspect=aspect, quality=quality, background=background, library=library)
    states = (
        FaceState(),
        FaceState(mouth=mouth_from_row(TARGETS[VISEME_INDEX["D"]], "D")),
        FaceState(smile=0.9),
        FaceState(blink=1.0),
    )
    tiles = []
    band = max(18, renderer.height // 18)
    for label, state in zip(_PREVIEW_POSES, states, strict=True):
        frame = renderer.render(state)
        channels = frame.shape[2]
        top = np.full((band, frame.shape[1], channels), 250, np.uint8)
        scale = band / 42
        cv2.putText(
            top,
            label,
            (6, round(band * 0.72)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (40, 40, 40, 255)[:channels],
            1,
            cv2.LINE_AA,
        )
        tiles.append(np.concatenate([top, frame], axis=0))
    return np.concatenate(tiles, axis=1)


def _cmd_avatar_preview(args: argparse.Namespace, library: AvatarLibrary) -> int:
    import cv2

    from facecast.avatars.bundle import SUFFIX

    stem = Path(args.ref).name.removesuffix(SUFFIX) or "avatar"
    out = Path(args.output) if args.output else Path(f"{stem}-preview.png")
    if not out.parent.is_dir():
        raise CommandError(f"cannot write {out}: directory {out.parent} does not exist")
    sheet = preview_sheet(
        args.ref, aspect=args.aspect, quality=args.quality, background=args.background, library=library
    )
    code = cv2.COLOR_RGBA2BGRA if sheet.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, code))
    if not ok:
        raise CommandError(f"could not encode {out} as PNG")
    out.write_bytes(png.tobytes())
    size = f"{sheet.shape[1]}x{sheet.shape[0]}"
    print(f"wrote {out}: {args.ref} ({', '.join(_PREVIEW_POSES)}), {size}")
    return 0


def _cmd_avatar_delete(args: argparse.Namespace, library: AvatarLibrary) -> int:
    from facecast.avatars import AvatarNotFoundError
    from facecast.avatars.style import style_names

    avatar_id = args.id
    if avatar_id in style_names():
        raise CommandError(f"{avatar_id!r} is a built-in avatar and cannot be deleted")
    path = library.path(avatar_id)  # checks the id
    if avatar_id not in library:
        raise AvatarNotFoundError(
            f"no avatar {avatar_id!r} in {library.root}; `facecast avatar list` shows them"
        )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"facecast avatar delete: error: add --yes to delete {path} without asking")
        answer = input(f"delete {avatar_id} ({path})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return EXIT_ERROR
    if not library.delete(avatar_id):
        raise AvatarNotFoundError(f"no avatar {avatar_id!r} in {library.root}")
    print(f"deleted {avatar_id} ({path})")
    return 0


class BuildProgress:
    """build_avatar's progress on stderr. On a terminal one redrawn line (percentage, bar, stage); elsewhere
    a plain line at each stage change, so that logs stay short."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage: str | None = None
        self._drawn = 0
        self._last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        pct = round(100 * min(1.0, max(0.0, fraction)))
        if self.tty:
            now = time.monotonic()
            if stage == self._stage and now - self._last < 0.1 and pct < 100:
                return
            self._stage, self._last = stage, now
            filled = pct * 24 // 100
            line = f"{pct:3d}% [{'#' * filled}{'-' * (24 - filled)}] {stage}"
            self.stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        elif stage != self._stage:
            self._stage = stage
            self.stream.write(f"{pct:3d}% {stage}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line (call once, when the build ends either way)."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0


def _cmd_avatar_create(args: argparse.Namespace, library: AvatarLibrary) -> int:
    if args.from_bundle is not None:
        return _install_bundle(args, library)
    if not args.name:
        raise UsageError("facecast avatar create: error: --image needs --name ID (the avatar's id)")
    from facecast.avatars.build import build_avatar
    from facecast.avatars.faces import FaceAnalysisError
    from facecast.avatars.fetch import FetchPolicy

    progress = BuildProgress(enabled=not args.quiet)
    try:
        manifest = build_avatar(
            args.image,
            name=args.name,
            library=library,
            display_name=args.display_name,
            description=args.description,
            consent=args.consent,
            license=args.license,
            replace=args.replace,
            fetch_policy=FetchPolicy.from_env(),
            progress=progress,
        )
    except FaceAnalysisError as exc:
        raise CommandError(_one_line(exc)) from None
    finally:
        progress.close()
    for note in (*manifest.extra.get("build_changes", ()), *manifest.extra.get("build_warnings", ())):
        print(f"note: {note}", file=sys.stderr)
    _print_created(manifest.name, manifest.kind, manifest.display_name, library)
    return 0


def _install_bundle(args: argparse.Namespace, library: AvatarLibrary) -> int:
    import dataclasses

    from facecast.avatars.kinds import open_bundle

    if args.consent is not None or args.license is not None or args.description:
        raise UsageError(
            "facecast avatar create: error: --consent, --license and --description are the bundle's own; "
            "they cannot be changed with --from-bundle"
        )
    path = Path(args.from_bundle).expanduser()
    if not path.is_file():
        raise CommandError(f"no bundle file at {path}")
    bundle = open_bundle(path)
    manifest = bundle.manifest
    changes = {k: v for k, v in (("name", args.name), ("display_name", args.display_name)) if v}
    if changes:
        manifest = dataclasses.replace(manifest, **changes)
    library.save(manifest, dict(bundle.files), replace=args.replace)
    _print_created(manifest.name, manifest.kind, manifest.display_name, library)
    return 0


def _print_created(avatar_id: str, kind: str, display_name: str, library: AvatarLibrary) -> None:
    print(f"created {avatar_id} ({kind}, {display_name!r}): {library.path(avatar_id)}")


def _user_errors() -> tuple[type[BaseException], ...]:
    from facecast.hosts.file import MediaError
    from facecast.tts import TTSError

    # ValueError covers option validation in EngineConfig and the avatar loader.
    errors: list[type[BaseException]] = [MediaError, TTSError, ValueError, OSError]
    try:
        from facecast.server.store import StoreError
    except ModuleNotFoundError:  # without the server extra there is no store to fail
        pass
    else:
        errors.append(StoreError)
    return tuple(errors)


# The top-level modules each extra installs: a command that fails to import one names the extra to install.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "server": ("fastapi", "starlette", "pydantic", "uvicorn", "aiortc", "psycopg", "multipart"),
    "livekit": ("livekit",),
    "bench": ("scipy", "psutil", "httpx", "fastapi", "uvicorn", "aiortc", "psycopg"),
}


@contextlib.contextmanager
def needs_extra(extra: str, command: str) -> Iterator[None]:
    """Turn a missing module of `extra` into a UsageError that says what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in EXTRA_MODULES[extra]:
            raise
        raise UsageError(
            f"facecast {command} needs the {extra} extra ({missing} is not installed): "
            f"pip install 'facecast[{extra}]' (from a source checkout: pip install '.[{extra}]')"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["bench"]:
            # The benchmark suite owns its options; everything after `bench` is passed through.
            with needs_extra("bench", "bench"):
                from facecast.bench import main as bench_main

                return bench_main(args_list[1:])
        args = build_parser().parse_args(args_list)
        if args.command == "render":
            return _cmd_render(args)
        if args.command in ("demo", "serve"):
            with needs_extra("server", args.command):
                return _cmd_serve(args, demo=args.command == "demo")
        if args.command in ("worker", "say"):
            from facecast.hosts.livekit import cli as livekit_cli

            run = livekit_cli.run_worker_command if args.command == "worker" else livekit_cli.run_say_command
            with needs_extra("livekit", args.command):
                rc = run(args)
            if args.command == "say":
                # livekit rtc 1.1.21 sometimes aborts the process (a Rust panic that cannot unwind) in its
                # atexit FFI dispose, after the room is already closed; `say` has nothing left to finalise.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
            return rc
        if args.command == "config":
            return _cmd_config()
        if args.command == "keys":
            from facecast.server.keys_cli import run_keys

            with needs_extra("server", "keys"):
                return run_keys(args)
        return _run_avatar_command(args)
    except KeyboardInterrupt:
        print("facecast: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"facecast: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except _user_errors() as exc:
        print(f"facecast: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
