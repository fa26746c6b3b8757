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
# lipsync's default subset: three tuning voices (two flite, one espeak-ng) and three held-out ones.
LIPSYNC_SUBSET = ("slt", "kal16", "espeak:en-us")
LIPSYNC_HELD_OUT_SUBSET = ("espeak:en-gb-scotland", "espeak:en-029+f2", "espeak:en-us-nyc+m3")


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
        table, scores = runs.lipsync(_lipsync_sets(args, n_sent, log), log)
        tables.append(table)
        if args.confusion:
            tables.extend(runs.confusion_table(s, label) for label, s in scores.items())
        mp4_utts = utts if args.full else utts[:: max(1, len(utts) // 4)]
        tables.append(runs.mp4_offsets(mp4_utts, avatar, log))
    if "memory" in want:
        tables.append(runs.memory(utts[0], avatar, log))
    return tables
