"""`facecast render`: an audio file, or text spoken by espeak-ng (--say), to a lip-synced MP4."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from facecast.argtypes import positive_int
from facecast.cli.common import UsageError
from facecast.engine.config import FPS_CHOICES, MAX_LOOKAHEAD_MS

if TYPE_CHECKING:
    from facecast.hosts.file import RenderOptions, RenderReport


def _add_look_options(p: argparse.ArgumentParser, *, with_background: bool) -> None:
    from facecast.avatars import ASPECTS, BACKGROUNDS, QUALITIES, Look

    aspects, qualities, backgrounds = list(ASPECTS), list(QUALITIES), list(BACKGROUNDS)
    default = Look()
    p.add_argument(
        "--avatar",
        default=default.avatar,
        help=f"a built-in avatar, the id of one in the avatar library, or a .facecast file "
        f"(default {default.avatar}; see `facecast avatar list`)",
    )
    p.add_argument(
        "--fps",
        type=int,
        default=default.fps,
        choices=FPS_CHOICES,
        help=f"video frame rate (default {default.fps})",
    )
    p.add_argument(
        "--aspect",
        default=default.aspect,
        choices=aspects,
        help=f"frame aspect ratio (default {default.aspect})",
    )
    p.add_argument(
        "--quality",
        default=default.quality,
        choices=qualities,
        help=f"frame size preset (default {default.quality})",
    )
    if with_background:
        # MP4 has no alpha channel, so transparent is refused with a hint rather than hidden.
        p.add_argument(
            "--background",
            default=default.background,
            choices=backgrounds,
            help=f"{default.background}, or green for chroma keying (default {default.background})",
        )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def add_parser(sub: Any) -> None:
    """Add `render` to the main parser's subparsers."""
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
    from facecast.avatars import Look
    from facecast.hosts.file import RenderOptions

    look = Look(args.avatar, args.aspect, args.quality, args.background, args.fps)
    return RenderOptions(
        **look.to_dict(),
        params_path=args.params,
        progress=not args.quiet,
        jobs=args.jobs,
        **extra,
    )


def run(args: argparse.Namespace) -> int:
    """`facecast render`: an audio file or --say TEXT to an MP4."""
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
