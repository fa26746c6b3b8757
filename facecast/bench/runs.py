"""The benchmarks: speed, latency, lip-sync quality and memory. Each returns result tables.

Everything runs on one thread (`cv2.setNumThreads(1)`) so that per-core figures are per core.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facecast.bench import metrics
from facecast.bench.corpus import Utterance, synthesiser
from facecast.bench.harness import Score, make_engine, run_utterance
from facecast.bench.report import Log, Table
from facecast.engine.types import FaceState, MouthParams

if TYPE_CHECKING:
    from facecast.avatars import ProceduralRenderer

FPS = 30
LOOKAHEAD_SWEEP = (0, 50, 100, 120, 150, 200)


@dataclass(frozen=True)
class Mode:
    """One way of tracking the mouth: a tracker setting, whether the transcript is given, and
    whether audio arrives in real-time chunks (streaming) or all at once (offline)."""

    label: str
    tracker: str
    with_text: bool
    streaming: bool
    wrong_text: bool = False  # the text of another sentence: must be detected and rejected
    timed_words: bool = False  # each word with its times instead of the text (voices that time words)


LIPSYNC_MODES: tuple[Mode, ...] = (
    Mode("phones / streaming", "phones", False, True),
    Mode("phones / offline", "phones", False, False),
    Mode("words / streaming", "phones", True, True),
    Mode("alignment / offline", "phones", True, False),
    Mode("energy / streaming", "energy", False, True),
    Mode("energy / offline", "energy", False, False),
)
# What the lip-sync table reports per voice set (offline phones and energy equal their streaming rows).
LIPSYNC_TABLE_MODES: tuple[Mode, ...] = (
    LIPSYNC_MODES[0],
    LIPSYNC_MODES[2],
    LIPSYNC_MODES[3],
    LIPSYNC_MODES[4],
    Mode("timed words / streaming", "phones", True, True, timed_words=True),
    Mode("wrong words / streaming", "phones", True, True, wrong_text=True),
    Mode("wrong words / offline", "phones", True, False, wrong_text=True),
)


def _quiet_cv2() -> None:
    import cv2

    cv2.setNumThreads(1)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def varied_states(n: int, seed: int = 0) -> list[FaceState]:
    """FaceStates spanning what a renderer meets: every mouth shape, head motion, blinks, listening."""
    rng = np.random.default_rng(seed)
    states = []
    for i in range(n):
        r = rng.random(16)
        closed = float(r[3] > 0.8)
        mouth = MouthParams(
            open=0.0 if closed else float(r[0]),
            width=float(r[1]),
            round=float(r[2] * r[2]),
            closed=closed,
            teeth=float(r[4]),
            tongue=float(r[5] * (r[5] > 0.7)),
            bite=float(r[6] * (r[6] > 0.85)),
            viseme="A" if closed else "C",
        )
        states.append(
            FaceState(
                mouth=mouth,
                head_yaw=float(r[7] * 16 - 8),
                head_pitch=float(r[8] * 12 - 6),
                head_roll=float(r[9] * 10 - 5),
                gaze_x=float(r[10] * 2 - 1),
                gaze_y=float(r[11] * 2 - 1),
                blink=float(r[12] if r[12] > 0.85 else 0.0),
                breath=float(r[13] * 2 - 1),
                brow=float(r[14] * 0.5),
                smile=float(r[15] * 0.6),
                speaking=i % 3 != 0,
                listening=i % 3 == 0,
            )
        )
    return states


def avatar_names() -> list[str]:
    """Built-in avatars, the default first."""
    from facecast.avatars import list_avatars

    return [a.name for a in list_avatars()]


def _load_renderer(name: str, quality: str = "high") -> ProceduralRenderer:
    from facecast.avatars import load_renderer

    return load_renderer(name, aspect="1:1", quality=quality)


def render_speed(avatars: Sequence[str], frames: int, log: Log) -> Table:
    """Median render time per frame, one thread, over varied FaceStates."""
    _quiet_cv2()
    from facecast.avatars import QUALITIES

    table = Table(
        "Render speed (one thread, median over varied FaceStates)",
        ["avatar", "quality", "size", "ms/frame", "p95 ms", "frames/s/core"],
    )
    states = varied_states(frames)
    for name in avatars:
        for quality in QUALITIES:
            try:
                renderer = _load_renderer(name, quality)
            except (ValueError, KeyError) as exc:
                log(f"render {name}/{quality}: skipped ({exc})")
                continue
            for s in states[:10]:  # warm caches and lazy tables before timing
                renderer.render(s)
            times = np.empty(len(states))
            for i, s in enumerate(states):
                t0 = time.perf_counter()
                renderer.render(s)
                times[i] = time.perf_counter() - t0
            med = _ms(float(np.median(times)))
            table.add(
                name,
                quality,
                f"{renderer.width}x{renderer.height}",
                med,
                _ms(float(np.percentile(times, 95))),
                1000.0 / med,
            )
            log(f"render {name}/{quality}: {med:.2f} ms/frame")
    table.notes.append("target: built-in render <= 1.5 ms/frame at 512x512, one core")
    return table


def engine_speed(utts: Sequence[Utterance], avatar: str, log: Log) -> Table:
    """Whole-engine cost (intake, tracking, animation, render) per second of audio and per frame."""
    _quiet_cv2()
    table = Table(
        f"Engine speed (one thread, avatar {avatar}, tracking + animation + render)",
        ["mode", "ms per s of audio", "ms/frame", "p95 ms/frame", "frames/s/core", "x realtime"],
    )
    audio_s = sum(u.duration for u in utts)
    for mode in (m for m in LIPSYNC_MODES if m.tracker != "energy" or m.streaming):
        renderer = _load_renderer(avatar)
        # One engine for the whole run: models load once, as in a long-lived session.
        engine = make_engine(tracker=mode.tracker, fps=FPS, renderer=renderer)
        run_utterance(
            utts[0], streaming=mode.streaming, text=utts[0].text if mode.with_text else None, engine=engine
        )
        steps: list[np.ndarray] = []
        t0 = time.perf_counter()
        for u in utts:
            track = run_utterance(
                u, streaming=mode.streaming, text=u.text if mode.with_text else None, engine=engine
            )
            steps.append(track.step_s)
        wall = time.perf_counter() - t0
        all_steps = np.concatenate(steps)
        # Offline, the push does its analysis before the first pull: count it via total wall time.
        per_frame = _ms(wall) / len(all_steps)
        table.add(
            mode.label,
            _ms(wall) / audio_s,
            per_frame,
            _ms(float(np.percentile(all_steps, 95))),
            1000.0 / per_frame,
            audio_s / wall,
        )
        log(f"engine {mode.label}: {per_frame:.2f} ms/frame")
    table.notes.append(
        f"{len(utts)} utterances, {audio_s:.1f} s of audio at {FPS} fps; "
        "frames include idle frames around each utterance"
    )
    table.notes.append("target: engine total <= 4 ms/frame")
    return table


def file_speed(utts: Sequence[Utterance], avatar: str, log: Log) -> Table:
    """Offline MP4 rendering (decode, analysis, render, H.264+AAC encode) against real time."""
    import soundfile as sf

    from facecast.hosts.file import RenderOptions, render_file
    from facecast.hosts.render_pool import default_jobs

    _quiet_cv2()
    table = Table(
        "Offline MP4 render (render_file, whole job)",
        ["avatar", "tracker", "jobs", "audio s", "wall s", "x realtime"],
    )
    cores = default_jobs()
    with tempfile.TemporaryDirectory(prefix="facecast-bench-") as tmp:
        # One long file so that fixed costs (model load, encoder start) weigh as they do on real jobs.
        wav = Path(tmp) / "long.wav"
        rate = 16000
        pcm = np.concatenate([u.audio() for u in utts if u.sample_rate == rate])
        sf.write(str(wav), pcm, rate, subtype="PCM_16")
        for tracker in ("phones", "energy"):
            # One process (the engine draws, a thread encodes) against every core (the default).
            for jobs in dict.fromkeys((1, cores)):
                options = RenderOptions(avatar=avatar, fps=FPS, tracker=tracker, progress=False, jobs=jobs)
                rep = render_file(wav, Path(tmp) / f"long-{tracker}-{jobs}.mp4", options)
                table.add(avatar, tracker, jobs, len(pcm) / rate, rep.wall_s, rep.realtime_factor)
                log(f"render_file {tracker}, {jobs} jobs: {rep.realtime_factor:.1f}x realtime")
    table.notes.append("target: offline render >= 20x real time")
    table.notes.append(f"jobs {cores}: all cores (the default); the output is byte-identical to jobs 1")
    return table


def latency(utts: Sequence[Utterance], avatar: str, log: Log) -> tuple[Table, Table]:
    """Audio-to-mouth latency (look-ahead + processing per step) and the look-ahead sweep."""
    _quiet_cv2()
    lat = Table(
        "Audio-to-mouth latency (streaming, phones, one thread)",
        ["look-ahead ms", "processing p50 ms", "processing p95 ms", "total p50 ms", "total p95 ms"],
    )
    sweep = Table(
        "Look-ahead sweep (streaming, phones, headless)",
        ["look-ahead ms", "viseme acc", "open corr", "m/b/p recall", "mouth lag ms", "frames"],
    )
    renderer = _load_renderer(avatar)
    for la in LOOKAHEAD_SWEEP:
        score = Score()
        try:
            for u in utts:
                score.add(u, run_utterance(u, tracker="phones", streaming=True, lookahead_ms=la, fps=FPS))
        except Exception as exc:  # one broken setting must not hide the others; the row says why
            sweep.add(la, f"failed: {type(exc).__name__}: {exc}", "-", "-", "-", "-")
            log(f"look-ahead {la} ms: FAILED {type(exc).__name__}: {exc}")
            continue
        sweep.add(la, score.accuracy, score.open_corr, score.closure_recall, score.lag_ms, score.frames)
        log(f"look-ahead {la} ms: acc {score.accuracy:.3f} corr {score.open_corr:.3f}")
    # Processing per step of a live host: push 1/fps of audio + pull one rendered frame.
    engine = make_engine(tracker="phones", fps=FPS, renderer=renderer)
    steps = np.concatenate([run_utterance(u, streaming=True, engine=engine).step_s for u in utts])
    p50, p95 = _ms(float(np.percentile(steps, 50))), _ms(float(np.percentile(steps, 95)))
    from facecast.engine.config import DEFAULT_LOOKAHEAD_MS

    for la in sorted({DEFAULT_LOOKAHEAD_MS, *LOOKAHEAD_SWEEP}):
        lat.add(la, p50, p95, la + p50, la + p95)
    log(f"latency: processing p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    lat.notes.append(
        f"processing = push {1000 // FPS} ms of audio + pull one rendered frame ({avatar}); "
        f"default look-ahead {DEFAULT_LOOKAHEAD_MS} ms; target total <= 150 ms"
    )
    lat.notes.append("a host adds its own transport/jitter buffering on top")
    return lat, sweep


def lipsync(
    sets: dict[str, Sequence[Utterance]], log: Log, modes: Sequence[Mode] = LIPSYNC_TABLE_MODES
) -> tuple[Table, dict[str, Score]]:
    """Each mode on each voice set (tuning, held-out), frame-weighted over the set's utterances."""
    table = Table(
        "Lip-sync quality vs the synthesisers' own phone timings (frame-weighted per voice set)",
        [
            "mode",
            "set",
            "viseme acc",
            "open corr",
            "m/b/p recall",
            "mouth lag ms",
            "frames",
            "mouth source",
            "text rejected",
        ],
    )
    scores: dict[str, Score] = {}
    for mode in modes:
        for set_name, all_utts in sets.items():
            utts = [u for u in all_utts if u.words] if mode.timed_words else list(all_utts)
            if not utts:
                continue
            label = set_name if len(utts) == len(all_utts) else f"{set_name}, voices with word times"
            score = Score()
            # A set spoken by more than one synthesiser also gets a row per synthesiser.
            by_synth = {synthesiser(u.voice): Score() for u in utts}
            for i, u in enumerate(utts):
                track = run_utterance(
                    u,
                    tracker=mode.tracker,
                    streaming=mode.streaming,
                    fps=FPS,
                    text=_text_for(utts, i, mode.wrong_text)
                    if mode.with_text and not mode.timed_words
                    else None,
                    words=u.words if mode.timed_words else (),
                )
                score.add(u, track)
                by_synth[synthesiser(u.voice)].add(u, track)
            rows = {label: score}
            if len(by_synth) > 1:
                rows |= {f"{label}: {name}": s for name, s in by_synth.items()}
            for row_name, row in rows.items():
                _lipsync_row(table, mode, row_name, row, log)
            scores[f"{mode.label} ({label})"] = score
    table.notes.append(
        "targets on held-out voices: streaming audio only acc >= 0.75, corr >= 0.85, m/b/p >= 0.90; "
        "with the words >= 0.88 / 0.92 / 0.95"
    )
    table.notes.append(
        "words = the sentence's text given with its first audio (no times); timed words = each word "
        "with its start and end as its synthesiser reports them (espeak-ng's word events, festival's Word "
        "relation; flite times none), given with the first audio, as a TTS with word timestamps does; "
        "wrong words = another sentence's text, which should be rejected (text rejected = frames flagged "
        "transcript_mismatch)"
    )
    table.notes.append("mouth lag = median lag of engine openness behind truth openness (+ = late)")
    return table, scores


def _lipsync_row(table: Table, mode: Mode, set_name: str, score: Score, log: Log) -> None:
    src = ", ".join(
        f"{k} {_percent(v / max(1, score.frames))}"
        for k, v in sorted(score.sources.items(), key=lambda kv: -kv[1])
    )
    rejected = _percent(score.mismatch_frames / max(1, score.frames)) if mode.with_text else "-"
    table.add(
        mode.label,
        set_name,
        score.accuracy,
        score.open_corr,
        score.closure_recall,
        score.lag_ms,
        score.frames,
        src,
        rejected,
    )
    log(
        f"lipsync {mode.label} ({set_name}): acc {score.accuracy:.3f} corr {score.open_corr:.3f} "
        f"m/b/p {score.closure_recall:.3f} rejected {rejected}"
    )


def _text_for(utts: Sequence[Utterance], i: int, wrong: bool = False) -> str:
    if not wrong:
        return utts[i].text
    # Another sentence of the set (the same voice's next one, never the same text).
    others = [u.text for u in utts if u.text != utts[i].text]
    return others[i % len(others)] if others else "Completely different words about bananas."


def _percent(fraction: float) -> str:
    return "<1%" if 0 < fraction < 0.005 else f"{fraction:.0%}"


def confusion_table(score: Score, label: str) -> Table:
    from facecast.engine.types import VISEMES

    table = Table(
        f"Confusion ({label}): rows truth, columns engine, % of the truth row", ["truth", *VISEMES, "frames"]
    )
    cm = score.confusion
    for i, v in enumerate(VISEMES):
        n = int(cm[i].sum())
        table.add(v, *(f"{100 * c / n:.0f}" if n else "-" for c in cm[i]), n)
    return table


# --- A/V offset measured in the MP4's pixels -------------------------------------------------------


def _decode_mp4(
    path: Path, box: tuple[int, int, int, int], out_rate: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Video frame times, mouth opening from pixels per frame, audio samples and their start time."""
    import av

    times, opening = [], []
    chunks: list[np.ndarray] = []
    audio_start: float | None = None
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            times.append(float(frame.time))
            opening.append(metrics.mouth_open_from_pixels(frame.to_ndarray(format="gray"), box))
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
        for frame in c.decode(audio=0):
            if audio_start is None:
                audio_start = float(frame.time)
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.array(times), np.array(opening), np.concatenate(chunks), audio_start or 0.0


def _audio_shift_s(mp4_audio: np.ndarray, mp4_start: float, source: np.ndarray, rate: int) -> float:
    """Where the input audio starts on the MP4's timeline (FFT cross-correlation, ±0.5 s)."""
    from scipy.signal import correlate

    max_lag = rate // 2
    corr = correlate(mp4_audio, source, mode="full", method="fft")
    zero = len(source) - 1
    window = corr[zero - max_lag : zero + max_lag + 1]
    return mp4_start + (int(np.argmax(window)) - max_lag) / rate


@dataclass(frozen=True)
class Mp4Sync:
    offset_ms: float  # + = the mouth in the pixels moves after the sound
    pixel_corr: float  # Pearson of the pixel mouth opening with truth openness, unshifted
    audio_shift_ms: float  # where the input audio starts in the MP4's audio track


def mp4_sync(utt: Utterance, path: Path, box: tuple[int, int, int, int], fps: int) -> Mp4Sync:
    """A/V sync of an MP4 made from `utt`, measured from its pixels and its own audio track."""
    from scipy.signal import resample_poly

    check_rate = 8000  # plenty to locate speech to well under a millisecond
    times, opening, mp4_audio, a_start = _decode_mp4(path, box, check_rate)
    source = resample_poly(utt.audio().astype(np.float64) / 32768.0, check_rate, utt.sample_rate)
    shift = _audio_shift_s(mp4_audio, a_start, source, check_rate)
    # Truth at each video frame's display centre, mapped back to input time.
    truth = metrics.sample_track(utt.truth.open, times + 0.5 / fps - shift, utt.truth.rate_hz, 0.0)
    return Mp4Sync(
        offset_ms=metrics.av_offset_ms(truth, opening, fps),
        pixel_corr=metrics.pearson(truth, opening),
        audio_shift_ms=_ms(shift),
    )


def mp4_offsets(
    utts: Sequence[Utterance], avatar: str, log: Log, modes: Sequence[Mode] = LIPSYNC_MODES
) -> Table:
    """Render each utterance to MP4 with render_file, read the mouth opening back from the pixels and
    cross-correlate it with the truth openness placed where the MP4's audio plays the input."""
    from facecast.hosts.file import RenderOptions, render_file

    _quiet_cv2()
    table = Table(
        "A/V offset in the MP4 (mouth opening from pixels vs truth openness)",
        ["mode", "offset median ms", "max abs offset ms", "pixel open corr", "audio shift ms", "files"],
    )
    box = _load_renderer(avatar).mouth_box()
    with tempfile.TemporaryDirectory(prefix="facecast-bench-") as tmp:
        for mode in (m for m in modes if not m.streaming):  # render_file is the offline host
            offsets, corrs, shifts = [], [], []
            for u in utts:
                out = Path(tmp) / f"{u.voice}-{mode.tracker}-{int(mode.with_text)}.mp4"
                options = RenderOptions(
                    avatar=avatar,
                    fps=FPS,
                    tracker=mode.tracker,
                    text=u.text if mode.with_text else None,
                    progress=False,
                )
                render_file(u.wav_path, out, options)
                sync = mp4_sync(u, out, box, FPS)
                offsets.append(sync.offset_ms)
                corrs.append(sync.pixel_corr)
                shifts.append(sync.audio_shift_ms)
            arr = np.array(offsets)
            table.add(
                mode.label,
                float(np.median(arr)),
                float(np.max(np.abs(arr))),
                float(np.mean(corrs)),
                float(np.median(shifts)),
                len(offsets),
            )
            log(f"mp4 {mode.label}: offset median {np.median(arr):+.1f} ms over {len(arr)} files")
    table.notes.append("positive offset = the mouth moves after the sound; target |offset| <= 20 ms")
    table.notes.append("audio shift = where the input audio sits in the MP4's audio track (0 = in place)")
    return table


# --- memory ------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


def memory_child(wav: str, text: str, avatar: str, count: int) -> dict[str, float]:
    """Runs in a fresh process: RSS before any engine, after the first, and after `count`, each engine
    having tracked and rendered one utterance so that its buffers exist."""
    import soundfile as sf

    pcm, rate = sf.read(wav, dtype="int16")
    _quiet_cv2()
    base = _rss_mb()
    engines = []
    rss = []
    for _ in range(count):
        eng = make_engine(tracker="phones", fps=FPS, renderer=_load_renderer(avatar))
        eng.push_audio(pcm, rate)
        eng.end_segment()
        while eng.pending_speech:
            eng.next_frame()
        engines.append(eng)
        rss.append(_rss_mb())
    return {"base": base, "first": rss[0], "last": rss[-1], "count": float(count)}


def memory(utt: Utterance, avatar: str, log: Log, count: int = 10) -> Table:
    code = (
        "import json,sys; from facecast.bench.runs import memory_child; "
        "print(json.dumps(memory_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(utt.wav_path), utt.text, avatar, str(count)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark failed: {proc.stderr.strip()[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    per = (r["last"] - r["first"]) / (count - 1)
    table = Table(
        f"Resident memory ({count} engines in one process, avatar {avatar}, phones tracker)",
        [
            "process before engines MB",
            "after first engine MB",
            f"after {count} MB",
            "first engine MB",
            "each further engine MB",
        ],
    )
    table.add(r["base"], r["first"], r["last"], r["first"] - r["base"], per)
    table.notes.append("first engine includes shared model loading; target: <= 60 MB per engine")
    log(f"memory: {per:.1f} MB per further engine")
    return table
