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
from typing import TYPE_CHECKING

from facecast.bench.corpus import ALL_VOICES, FliteMissingError, is_espeak
from facecast.bench.report import Log, Table

if TYPE_CHECKING:
    from facecast.bench.corpus import Utterance

COMMANDS = ("speed", "latency", "lipsync", "memory", "all")
# Default subset: keeps `all` within a few minutes on a 2-core machine; --full uses everything.
SUBSET_SENTENCES = 5
SUBSET_VOICES = ("slt", "kal16")
# lipsync's default subset: three tuning voices (two flite, one espeak-ng) and three held-out ones.
LIPSYNC_SUBSET = ("slt", "kal16", "espeak:en-us")
LIPSYNC_HELD_OUT_SUBSET = ("espeak:en-gb-scotland", "espeak:en-029+f2", "espeak:en-us-nyc+m3")


def _parser() -> argparse.ArgumentParser:
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
        help="comma-separated voices: flite slt,kal,kal16,awb,rms or espeak:<voice> (lipsync: tuning set)",
    )
    p.add_argument(
        "--held-out-voices",
        default=None,
        help="lipsync: comma-separated held-out voices (default: three of HELD_OUT_VOICES; --full: all)",
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
    parser = _parser()
    args = parser.parse_args(argv)
    for option in (args.voices, args.held_out_voices):
        # Any espeak-ng voice may be named; flite has five.
        unknown = sorted(
            v for v in set((option or "").split(",")) - set(ALL_VOICES) if v and not is_espeak(v)
        )
        if unknown:
            parser.error(f"unknown voice(s) {', '.join(unknown)}; choose from {', '.join(ALL_VOICES)}")
    log = Log(enabled=not args.quiet)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        tables = _run(args, log)
    except (FliteMissingError, ImportError) as exc:  # a missing prerequisite, not a bug: one line
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


def _lipsync_sets(args: argparse.Namespace, n_sent: int, log: Log) -> dict[str, list[Utterance]]:
    """Tuning voices x corpus sentences and held-out voices x held-out sentences."""
    from facecast.bench.corpus import (
        HELD_OUT_SENTENCES,
        HELD_OUT_VOICES,
        SENTENCES,
        TUNING_VOICES,
        build_corpus,
    )

    tuning = (
        tuple(args.voices.split(",")) if args.voices else (TUNING_VOICES if args.full else LIPSYNC_SUBSET)
    )
    held_out = (
        tuple(args.held_out_voices.split(","))
        if args.held_out_voices
        else (HELD_OUT_VOICES if args.full else LIPSYNC_HELD_OUT_SUBSET)
    )
    n_held = min(len(HELD_OUT_SENTENCES), n_sent)
    log(f"lipsync held-out: {n_held} held-out sentences x {len(held_out)} voices ({', '.join(held_out)})")
    return {
        "tuning": build_corpus(tuning, SENTENCES[:n_sent], args.cache_dir),
        "held-out": build_corpus(held_out, HELD_OUT_SENTENCES[:n_held], args.cache_dir),
    }


def _cpu_note() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores" + (f" ({model})" if model else "")


def _run(args: argparse.Namespace, log: Log) -> list[Table]:
    from facecast.bench import runs
    from facecast.bench.corpus import SENTENCES, VOICES, build_corpus

    want = {args.command} if args.command != "all" else set(COMMANDS) - {"all"}
    voices = tuple(args.voices.split(",")) if args.voices else (VOICES if args.full else SUBSET_VOICES)
    n_sent = args.sentences or (len(SENTENCES) if args.full else SUBSET_SENTENCES)
    log(f"corpus: {n_sent} sentences x {len(voices)} voices ({', '.join(voices)})")
    utts = build_corpus(voices, SENTENCES[:n_sent], args.cache_dir)
    avatar = args.avatar or runs.avatar_names()[0]
    tables: list[Table] = []
    if "speed" in want:
        names = runs.avatar_names() if args.full or args.avatar is None else [avatar]
        tables.append(runs.render_speed(names, args.frames, log))
        tables.append(runs.engine_speed(utts, avatar, log))
        tables.append(runs.file_speed(utts, avatar, log))
    if "latency" in want:
        tables.extend(runs.latency(utts, avatar, log))
    if "lipsync" in want:
        table, scores = runs.lipsync(_lipsync_sets(args, n_sent, log), log)
        tables.append(table)
        if args.confusion:
            tables.extend(runs.confusion_table(s, label) for label, s in scores.items())
        mp4_utts = utts if args.full else utts[:: max(1, len(utts) // 4)]
        tables.append(runs.mp4_offsets(mp4_utts, avatar, log))
    if "memory" in want:
        tables.append(runs.memory(utts[0], avatar, log))
    return tables
