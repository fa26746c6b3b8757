"""The `facecast` command: render audio files to lip-synced MP4, a one-command demo, avatar listing, and
the benchmark suite. User mistakes print one line to stderr and exit with status 2."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from facecast import __version__
from facecast.engine.config import FPS_CHOICES, MAX_LOOKAHEAD_MS

if TYPE_CHECKING:
    from facecast.hosts.file import RenderOptions, RenderReport

EXIT_USAGE = 2
DEMO_TEXT = (
    "Hello! I am {name}, a talking avatar. I run on your own computer, with no cloud and no special "
    "hardware. Nice to meet you!"
)


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="facecast", description="Self-hosted real-time talking avatars, on a CPU.")
    parser.add_argument("--version", action="version", version=f"facecast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    render = sub.add_parser("render", help="render an audio file to a lip-synced MP4")
    render.add_argument("audio", help="speech audio file (WAV, MP3, OGG, FLAC, or any file FFmpeg reads)")
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

    demo = sub.add_parser("demo", help="speak a sentence with espeak-ng and render it to MP4")
    demo.add_argument("-o", "--output", default="demo.mp4", help="MP4 file to write (default demo.mp4)")
    _add_look_options(demo, with_background=True)
    demo.add_argument("--text", help="what the avatar says")
    demo.add_argument("--voice", default="en-us", help="espeak-ng voice (default en-us)")
    demo.add_argument("--params", metavar="FILE", help="also write per-frame parameters (JSONL)")

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
    """The options `render` and `demo` share (look, clock, outputs), plus command-specific ones."""
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
    from facecast.hosts.file import render_file

    options = _render_options(args, text=args.text, tracker=args.tracker, lookahead_ms=args.lookahead_ms)
    report = render_file(args.audio, args.output, options)
    _print_report(report)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from facecast.avatars import load_style
    from facecast.hosts.file import render_pcm
    from facecast.tts import EspeakTTS

    started = time.perf_counter()
    text = args.text or DEMO_TEXT.format(name=load_style(args.avatar).display_name)
    tts = EspeakTTS(voice=args.voice)
    speech = tts.synthesize_timed(text)  # espeak-ng reports its phones: exact lip-sync
    options = _render_options(args, text=text)
    report = render_pcm(
        speech.audio, speech.sample_rate, args.output, options, phones=speech.phones, started=started
    )
    _print_report(report)
    print(f"demo video: {report.out_path.resolve()}")
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
    from facecast.tts import TTSError

    # ValueError covers option validation in EngineConfig and the avatar loader.
    return (MediaError, TTSError, ValueError, FileNotFoundError)


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
        if args.command == "demo":
            return _cmd_demo(args)
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
