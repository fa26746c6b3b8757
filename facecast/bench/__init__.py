"""Benchmarks and lip-sync metrics: speed, latency, lip-sync quality and memory measured side by side in one
run (run_suite), and the server, LiveKit, per-stage, soak, FULL-mode, browser and portrait benchmarks in
their own modules. The `facecast bench` command line is facecast.cli.bench; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from facecast.bench.report import Log, Table

if TYPE_CHECKING:
    from facecast.bench.corpus import Utterance

COMMANDS = ("speed", "latency", "lipsync", "memory", "all")
# Default subset: keeps `all` within a few minutes on a 2-core machine; --full uses everything.
SUBSET_SENTENCES = 5
SUBSET_VOICES = ("slt", "kal16")
# lipsync's default subset: three tuning voices (two flite, one espeak-ng) and four held-out ones (two
# espeak-ng, two festival).
LIPSYNC_SUBSET = ("slt", "kal16", "espeak:en-us")
LIPSYNC_HELD_OUT_SUBSET = (
    "espeak:en-gb-scotland",
    "espeak:en-us-nyc+m3",
    "festival:ked_diphone",
    "festival:cmu_us_slt_arctic_hts",
)


def _lipsync_sets(
    args: argparse.Namespace, n_sent: int, log: Log
) -> tuple[dict[str, list[Utterance]], list[str]]:
    """Tuning voices x corpus sentences and held-out voices x held-out sentences, and notes for the table
    (default festival voices that are not installed are left out and said so; named ones must exist)."""
    from facecast.bench.corpus import (
        FESTIVAL_INSTALL,
        HELD_OUT_SENTENCES,
        HELD_OUT_VOICES,
        SENTENCES,
        TUNING_VOICES,
        build_corpus,
        have_festival_voice,
        is_festival,
    )

    tuning = (
        tuple(args.voices.split(",")) if args.voices else (TUNING_VOICES if args.full else LIPSYNC_SUBSET)
    )
    notes: list[str] = []
    if args.held_out_voices:
        held_out = tuple(args.held_out_voices.split(","))
    else:
        held_out = HELD_OUT_VOICES if args.full else LIPSYNC_HELD_OUT_SUBSET
        absent = [v for v in held_out if is_festival(v) and not have_festival_voice(v)]
        if absent:
            held_out = tuple(v for v in held_out if v not in absent)
            notes.append(
                f"held-out voices left out, not installed: {', '.join(absent)} (`{FESTIVAL_INSTALL}`)"
            )
            log(f"lipsync: {notes[-1]}")
    n_held = min(len(HELD_OUT_SENTENCES), n_sent)
    log(f"lipsync held-out: {n_held} held-out sentences x {len(held_out)} voices ({', '.join(held_out)})")
    sets = {
        "tuning": build_corpus(tuning, SENTENCES[:n_sent], args.cache_dir),
        "held-out": build_corpus(held_out, HELD_OUT_SENTENCES[:n_held], args.cache_dir),
    }
    return sets, notes


def _cpu_note() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores" + (f" ({model})" if model else "")


def run_suite(args: argparse.Namespace, log: Log) -> list[Table]:
    """The tables of `facecast bench speed|latency|lipsync|memory|all` (args: facecast.cli.bench's parser)."""
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
        sets, notes = _lipsync_sets(args, n_sent, log)
        table, scores = runs.lipsync(sets, log)
        table.notes.extend(notes)
        tables.append(table)
        if args.confusion:
            tables.extend(runs.confusion_table(s, label) for label, s in scores.items())
        mp4_utts = utts if args.full else utts[:: max(1, len(utts) // 4)]
        tables.append(runs.mp4_offsets(mp4_utts, avatar, log))
    if "memory" in want:
        tables.append(runs.memory(utts[0], avatar, log))
    return tables
