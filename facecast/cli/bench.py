"""`facecast bench`: speed, latency, lip-sync quality and memory, measured side by side in one run.

Subcommands: speed · latency · lipsync · memory · all; `facecast bench server ...` (a real `facecast
serve`), `facecast bench livekit ...` (a worker in a real LiveKit room), `facecast bench frames ...`
(one live stream's cost per stage), `facecast bench soak ...` (a server's memory across sessions
abandoned or churned), `facecast bench full` (a FULL conversation's latency), `facecast bench browser`
(A/V sync in Chromium) and `facecast bench portrait` (photo avatars read back by an independent face
tracker) have their own options.
Results print as tables on stdout (Markdown with --markdown); progress goes to stderr, one line per
item. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Add `bench` to the main parser's subparsers, for the help listing: main() passes everything after
    `bench` to this module's main."""
    sub.add_parser("bench", help="run benchmarks (`facecast bench --help`)", add_help=False)


def _parser() -> argparse.ArgumentParser:
    from facecast.bench import COMMANDS

    p = argparse.ArgumentParser(prog="facecast bench", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=COMMANDS, help="which benchmark to run")
    p.add_argument(
        "--full",
        action="store_true",
        help="whole corpus (20 sentences x 4 voices; lipsync: every voice); slower",
    )
    p.add_argument(
        "--avatar", default=None, help="avatar for engine, latency and MP4 runs (default: first built-in)"
    )
    p.add_argument(
        "--voices",
        default=None,
        help="comma-separated voices: flite slt,kal,kal16,awb,rms, espeak:<voice> or festival:<voice> "
        "(lipsync: tuning set)",
    )
    p.add_argument(
        "--held-out-voices",
        default=None,
        help="lipsync: comma-separated held-out voices (default: four of HELD_OUT_VOICES; --full: all)",
    )
    p.add_argument("--sentences", type=int, default=None, help="number of corpus sentences to use")
    p.add_argument("--frames", type=int, default=300, help="frames per render-speed measurement")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where generated speech is cached (default ~/.cache/facecast/bench)",
    )
    p.add_argument("--confusion", action="store_true", help="also print confusion matrices (lipsync)")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:  # the server benchmark has its own subcommands and options
        from facecast.bench.server import main as server_main

        return server_main(argv[1:])
    if argv[:1] == ["livekit"]:  # so has the real-LiveKit-server one
        from facecast.bench.livekit import main as livekit_main

        return livekit_main(argv[1:])
    if argv[:1] == ["frames"]:  # and the per-stage cost of one live stream
        from facecast.bench.frames import main as frames_main

        return frames_main(argv[1:])
    if argv[:1] == ["full"]:  # and the FULL-mode conversation's latency
        from facecast.bench.full import main as full_main

        return full_main(argv[1:])
    if argv[:1] == ["soak"]:  # and sessions churned or abandoned for a while, memory sampled
        from facecast.bench.soak import main as soak_main

        return soak_main(argv[1:])
    if argv[:1] == ["portrait"]:  # and photo avatars read back by an independent face tracker
        from facecast.bench.portrait import main as portrait_main

        return portrait_main(argv[1:])
    if argv[:1] == ["browser"]:  # and the A/V sync one in Chromium
        from facecast.bench.browser import main as browser_main

        return browser_main(argv[1:])
    from facecast.bench import _cpu_note, run_suite
    from facecast.bench.corpus import ALL_VOICES, SynthesiserMissingError, is_espeak, is_festival
    from facecast.bench.report import Log

    parser = _parser()
    args = parser.parse_args(argv)
    for option in (args.voices, args.held_out_voices):
        # Any espeak-ng or festival voice may be named; flite has five.
        unknown = sorted(
            v
            for v in set((option or "").split(",")) - set(ALL_VOICES)
            if v and not is_espeak(v) and not is_festival(v)
        )
        if unknown:
            parser.error(f"unknown voice(s) {', '.join(unknown)}; choose from {', '.join(ALL_VOICES)}")
    log = Log(enabled=not args.quiet)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        tables = run_suite(args, log)
    except (SynthesiserMissingError, ImportError) as exc:  # a missing prerequisite, not a bug: one line
        print(f"facecast bench: {exc}", file=sys.stderr)
        return 2
    header = (
        f"facecast bench {args.command} — {date.today().isoformat()}, Python "
        f"{platform.python_version()}, {_cpu_note()}, {time.perf_counter() - started:.0f} s, "
        # Timings from a loaded machine are inflated; the load average tells the reader.
        f"load average {load_before:.1f} at start / {os.getloadavg()[0]:.1f} at end"
    )
    print(header)
    for t in tables:
        print()
        print(t.markdown() if args.markdown else t.text())
    return 0
