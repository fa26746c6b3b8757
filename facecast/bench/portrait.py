"""`facecast bench portrait`: photo avatars talking, read back by an independent face tracker.

Held-out speech (flite voices, the lip-sync corpus) is rendered to MP4 with portrait avatars built from
public-domain photos; MediaPipe Face Mesh (in the face-tools virtualenv, video mode, reading the MP4
itself) finds the lips in every frame, and its inner-lip gap (÷ face height) is the mouth opening. It is
compared with the truth openness from the synthesizer's phone timings (Pearson correlation, and the A/V
offset: the lag that maximises the cross-correlation, + = the mouth moves after the sound) and with the
engine's own openness for that frame (`--params`), which isolates the renderer from the lip tracking.
Render time is per 512×512 frame of varied face states, in the rendering thread's CPU time.

`--sweep` renders only held jaw openings (0 to 1 in tenths) and prints what the tracker reads for each:
where it reads the drawn mouth short, without speech and its timing in the way. `--photos` takes image
files as well as the bench's own photos (faces the portrait was not tuned on).

`--against TREE` measures a second source tree (a temporary checkout of main) in the same run: each
tree builds its own bundles and renders in its own processes, from the code in this file, so both are
measured the same way; timing rounds alternate A B B A so that both see the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FPS = 30
SIZE = 512
# Photos that installed packages ship, public domain or CC0 (docs/portraits.md records the licences).
PHOTOS: tuple[str, ...] = ("astronaut", "hopper", "camera")
# States for the image strip: rest, m/b/p, AA, EE, OO, L (tongue), F/V, a full blink.
STRIP_STATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("rest", {}),
    ("m/b/p", {"mouth": {"closed": 1.0, "viseme": "A"}}),
    ("AA", {"mouth": {"open": 1.0, "teeth": 0.8, "viseme": "D"}}),
    ("EE", {"mouth": {"open": 0.35, "width": 0.9, "teeth": 1.0, "viseme": "B"}}),
    ("OO", {"mouth": {"open": 0.45, "round": 1.0, "viseme": "F"}}),
    ("L", {"mouth": {"open": 0.55, "tongue": 1.0, "teeth": 0.6, "viseme": "H"}}),
    ("F/V", {"mouth": {"open": 0.1, "bite": 1.0, "viseme": "G"}}),
    ("blink", {"blink": 1.0}),
)
# `--sweep`: the jaw opened in steps, each held long enough for the tracker (video mode) to settle, the
# lips neither spread nor rounded; the reading is the median over the last SWEEP_READ frames of a step.
SWEEP_LEVELS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
SWEEP_HOLD, SWEEP_READ = 12, 6
INNER_LIP_PAIRS = ((82, 87), (13, 14), (312, 317))  # upper and lower inner lip, mid and either side
FOREHEAD, CHIN = 10, 152


def photo_path(name: str) -> Path:
    """Where a bench photo lies: scikit-image's data (astronaut, camera) or matplotlib's sample data in
    the face-tools virtualenv (Grace Hopper)."""
    if name in ("astronaut", "camera"):
        import importlib.util

        spec = importlib.util.find_spec("skimage")
        if spec is None or spec.origin is None:
            raise ImportError("the bench photos come from scikit-image: pip install scikit-image")
        return Path(spec.origin).parent / "data" / f"{name}.png"
    if name == "hopper":
        from facecast.avatars.faces import ensure_face_tools

        venv = ensure_face_tools().parent.parent
        found = glob.glob(
            str(venv / "lib/python3*/site-packages/matplotlib/mpl-data/sample_data/grace_hopper.jpg")
        )
        if not found:
            raise FileNotFoundError(f"grace_hopper.jpg is not in matplotlib's sample data under {venv}")
        return Path(found[0])
    raise ValueError(f"unknown bench photo {name!r}; choose from {', '.join(PHOTOS)}")


def photos_from(spec: str) -> dict[str, str]:
    """{name: path} for `--photos`: bench photo names, or image files named by their stem."""
    items = spec.split(",")
    unknown = [item for item in items if item not in PHOTOS and not Path(item).is_file()]
    if unknown:
        known = ", ".join(PHOTOS)
        raise ValueError(f"{', '.join(unknown)}: neither a bench photo ({known}) nor an image file")
    photos = {}
    for item in items:
        name = item if item in PHOTOS else Path(item).stem
        if name in photos:
            raise ValueError(f"two photos named {name!r} in --photos; rename one of the files")
        photos[name] = str(photo_path(item)) if item in PHOTOS else str(Path(item).resolve())
    return photos


# ---- what runs in each tree's processes --------------------------------------------------------------


def _child(job: dict[str, Any]) -> dict[str, Any]:
    """One job for the tree on sys.path: build bundles, render MP4s, time frames or draw a strip."""
    import cv2

    cv2.setNumThreads(1)
    kind = job["kind"]
    if kind == "build":
        from facecast.avatars.build import build_avatar
        from facecast.avatars.library import AvatarLibrary

        library = AvatarLibrary(Path(job["dir"]))
        out: dict[str, Any] = {}
        for name, path in job["photos"].items():
            try:
                build_avatar(Path(path).read_bytes(), name=name, library=library, replace=True)
                out[name] = {"bundle": str(Path(job["dir"]) / f"{name}.facecast")}
            except Exception as exc:  # the table shows why a tree cannot build a photo
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
    if kind == "render":
        from facecast.hosts.file import RenderOptions, render_file

        for item in job["items"]:
            options = RenderOptions(
                avatar=item["bundle"],
                fps=FPS,
                text=item["text"],
                params_path=item["params"],
                progress=False,
                jobs=1,
            )
            render_file(item["wav"], item["mp4"], options)
        return {}
    from facecast.avatars.kinds import open_bundle, renderer_from_bundle

    renderer = renderer_from_bundle(open_bundle(Path(job["bundle"])), aspect="1:1", quality="high")
    if kind == "speed":
        from facecast.bench.runs import varied_states

        states = varied_states(job["frames"] + 20, seed=job["seed"])
        for s in states[:20]:  # warm caches and lazy set-up
            renderer.render(s)
        times = []
        for s in states[20:]:
            t0 = time.thread_time()
            renderer.render(s)
            times.append(time.thread_time() - t0)
        return {"times": times}
    if kind == "strip":
        from facecast.engine.types import FaceState, MouthParams

        tiles = []
        for _, spec in STRIP_STATES:
            mouth = MouthParams(**spec.get("mouth", {}))
            frame = renderer.render(FaceState(mouth=mouth, blink=spec.get("blink", 0.0)))
            tiles.append(frame[..., :3])
        np.save(job["out"], np.stack(tiles))
        return {}
    if kind == "sweep":
        import av

        from facecast.engine.types import FaceState, MouthParams
        from facecast.hosts.file import X264_CRF, X264_PRESET

        with av.open(job["out"], "w", format="mp4") as container:
            stream = container.add_stream(
                "libx264", rate=FPS, options={"preset": X264_PRESET, "crf": str(X264_CRF)}
            )
            stream.width, stream.height, stream.pix_fmt = renderer.width, renderer.height, "yuv420p"
            for level in SWEEP_LEVELS:
                frame = renderer.render(FaceState(mouth=MouthParams(open=level, viseme="D")))
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., :3]), format="rgb24")
                for _ in range(SWEEP_HOLD):
                    container.mux(stream.encode(picture))
            container.mux(stream.encode(None))
        return {}
    raise ValueError(f"unknown job {kind!r}")


@dataclass(frozen=True)
class Tree:
    label: str
    root: Path

    def run(self, job: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
        env = dict(os.environ)
        paths = [str(self.root), str(self.root / "plugins/livekit"), str(self.root / "plugins/pipecat/src")]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(job, f)
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", f.name],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        finally:
            os.unlink(f.name)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} tree, {job['kind']} job failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the independent tracker -----------------------------------------------------------------------


def track_videos(videos: Sequence[Path]) -> list[np.ndarray]:
    """MediaPipe landmarks (n_frames, 478, 2) per video, NaN where it found no face."""
    from facecast.avatars.faces import _subprocess_env, ensure_face_tools

    python = ensure_face_tools()
    tool = Path(__file__).with_name("_mouth_track_tool.py")
    outs = [v.with_suffix(".landmarks.npz") for v in videos]
    cmd = [str(python), "-I", str(tool)]
    for v, o in zip(videos, outs, strict=True):
        cmd += ["--video", str(v), "--out", str(o)]
    with tempfile.TemporaryDirectory(prefix="facecast-track-") as tmp:
        env = _subprocess_env()
        env["MPLCONFIGDIR"] = tmp
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600 + 30 * len(videos))
    if proc.returncode != 0:
        raise RuntimeError(f"the face tracker failed: {proc.stderr[-2000:]}")
    result = []
    for o in outs:
        with np.load(o) as data:
            result.append(np.array(data["landmarks"]))
    return result


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap ÷ face height per frame, from tracked landmarks; frames without a face are filled in
    from their neighbours."""
    gaps = [np.linalg.norm(landmarks[:, lo] - landmarks[:, up], axis=1) for up, lo in INNER_LIP_PAIRS]
    height = np.linalg.norm(landmarks[:, CHIN] - landmarks[:, FOREHEAD], axis=1)
    opening = np.mean(gaps, axis=0) / height
    found = np.isfinite(opening)
    if not found.any():
        return np.zeros(len(opening))
    idx = np.arange(len(opening))
    return np.interp(idx, idx[found], opening[found])


def _mp4_video_times_and_audio_shift(
    path: Path, wav_audio: np.ndarray, rate: int
) -> tuple[np.ndarray, float]:
    """Display times of the MP4's frames, and where the input audio starts in its audio track."""
    import av
    from scipy.signal import resample_poly

    from facecast.bench.runs import _audio_shift_s

    check_rate = 8000
    times: list[float] = []
    chunks: list[np.ndarray] = []
    audio_start: float | None = None
    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=check_rate)
        for frame in c.decode(audio=0):
            if audio_start is None:
                audio_start = float(frame.time)
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    source = resample_poly(wav_audio.astype(np.float64) / 32768.0, check_rate, rate)
    return np.array(times), _audio_shift_s(np.concatenate(chunks), audio_start or 0.0, source, check_rate)


@dataclass
class Scores:
    truth_corr: list[float]
    engine_corr: list[float]
    ceiling: list[float]  # the engine's own openness vs the truth: what no renderer can beat
    offsets_ms: list[float]
    found: list[float]

    def row(self) -> tuple[float, float, float, float, float, float]:
        off = np.array(self.offsets_ms)
        return (
            float(np.mean(self.truth_corr)),
            float(np.mean(self.engine_corr)),
            float(np.mean(self.ceiling)),
            float(np.median(off)),
            float(np.max(np.abs(off))),
            float(np.mean(self.found)),
        )


def _score(items: Sequence[dict[str, Any]], utts: dict[str, Any], landmarks: Sequence[np.ndarray]) -> Scores:
    from facecast.bench import metrics

    s = Scores([], [], [], [], [])
    for item, lm in zip(items, landmarks, strict=True):
        u = utts[item["uid"]]
        times, shift = _mp4_video_times_and_audio_shift(Path(item["mp4"]), u.audio(), u.sample_rate)
        if len(times) != len(lm):
            raise RuntimeError(f"{item['mp4']}: {len(times)} frames decoded, {len(lm)} tracked")
        opening = mouth_opening(lm)
        truth = metrics.sample_track(u.truth.open, times + 0.5 / FPS - shift, u.truth.rate_hz, 0.0)
        with open(item["params"], encoding="utf-8") as f:
            engine = np.array([json.loads(line)["open"] * (1 - json.loads(line)["closed"]) for line in f])
        s.truth_corr.append(metrics.pearson(truth, opening))
        s.engine_corr.append(metrics.pearson(engine[: len(opening)], opening[: len(engine)]))
        s.ceiling.append(metrics.pearson(engine[: len(truth)], truth[: len(engine)]))
        s.offsets_ms.append(metrics.av_offset_ms(truth, opening, FPS))
        s.found.append(float(np.isfinite(lm[:, 0, 0]).mean()))
    return s


# ---- the run ------------------------------------------------------------------------------------------


def _strip_image(rows: Sequence[tuple[str, np.ndarray]], path: Path) -> None:
    """One row of tiles per (label, tiles) with the state names above and the label at the left."""
    import cv2

    tile = 200
    names = [n for n, _ in STRIP_STATES]
    label_w, head_h = 90, 24
    out = np.full((head_h + tile * len(rows), label_w + tile * len(names), 3), 255, np.uint8)
    for j, n in enumerate(names):
        cv2.putText(
            out, n, (label_w + j * tile + 8, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA
        )
    for i, (label, tiles) in enumerate(rows):
        y = head_h + i * tile
        for k, line in enumerate(label.split("\n")):
            cv2.putText(
                out, line, (6, y + 90 + 20 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
            )
        for j, t in enumerate(tiles):
            # The mouth and eyes, closer than the full frame, where the differences are.
            h = t.shape[0]
            top, left, side = int(0.24 * h), int(0.27 * h), int(0.46 * h)
            crop = t[top : top + side, left : left + side]
            out[y : y + tile, label_w + j * tile : label_w + (j + 1) * tile] = cv2.resize(
                crop, (tile, tile), interpolation=cv2.INTER_CUBIC
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])


def run(args: argparse.Namespace, photos: dict[str, str], log: Any) -> list[Any]:
    """The tables for `args`, over `photos` (from photos_from)."""
    from facecast.bench.corpus import SENTENCES, build_corpus
    from facecast.bench.report import Table

    trees = [Tree("new", Path(__file__).resolve().parents[2])]
    if args.against:
        trees.append(Tree("old", Path(args.against).resolve()))
    if args.sweep:
        return [_sweep(trees, photos, log)]
    voices = tuple(args.voices.split(","))
    utts = build_corpus(voices, SENTENCES[-args.sentences :], args.cache_dir)  # the corpus's last sentences
    by_uid = {u.uid: u for u in utts}
    tables = []
    with tempfile.TemporaryDirectory(prefix="facecast-bench-portrait-") as tmp:
        built: dict[str, dict[str, Any]] = {}
        for tree in trees:
            folder = Path(tmp) / tree.label
            folder.mkdir()
            built[tree.label] = tree.run({"kind": "build", "dir": str(folder), "photos": photos})
            log(f"{tree.label}: built {', '.join(k for k, v in built[tree.label].items() if 'bundle' in v)}")
        quality = Table(
            "Portrait lip-sync read by an independent tracker (MediaPipe Face Mesh on the MP4)",
            [
                "tree",
                "photo",
                "corr with truth",
                "corr with engine",
                "engine vs truth",
                "A/V offset median ms",
                "max abs ms",
                "face found",
            ],
        )
        speed = Table(
            f"Portrait render time per {SIZE}×{SIZE} frame, one core (thread CPU time, varied states)",
            ["photo", *(f"{t.label} median ms" for t in trees), *(["new / old"] if len(trees) > 1 else [])],
        )
        strips: list[tuple[str, np.ndarray]] = []
        for photo in photos:
            medians = []
            for tree in trees:
                entry = built[tree.label][photo]
                if "bundle" not in entry:
                    quality.add(tree.label, photo, entry["error"][:60], "", "", "", "", "")
                    continue
                items = [
                    {
                        "uid": u.uid,
                        "wav": str(u.wav_path),
                        "text": u.text,
                        "bundle": entry["bundle"],
                        "mp4": str(Path(tmp) / f"{tree.label}-{photo}-{u.uid}.mp4"),
                        "params": str(Path(tmp) / f"{tree.label}-{photo}-{u.uid}.jsonl"),
                    }
                    for u in utts
                ]
                tree.run({"kind": "render", "items": items})
                landmarks = track_videos([Path(i["mp4"]) for i in items])
                scores = _score(items, by_uid, landmarks)
                quality.add(tree.label, photo, *scores.row())
                log(f"{tree.label} {photo}: corr with truth {scores.row()[0]:.3f} over {len(items)} files")
                if args.strip:
                    out = Path(tmp) / f"strip-{tree.label}-{photo}.npy"
                    tree.run({"kind": "strip", "bundle": entry["bundle"], "out": str(out)})
                    strips.append((f"{photo}\n{tree.label}", np.load(out)))
            ok = [t for t in trees if "bundle" in built[t.label][photo]]
            if ok:
                times: dict[str, list[float]] = {t.label: [] for t in ok}
                order = ok + ok[::-1]  # A B B A: both see the same load
                for r, tree in enumerate(order * 2):
                    job = {"kind": "speed", "bundle": built[tree.label][photo]["bundle"]}
                    job |= {"frames": args.frames // 4, "seed": r}
                    times[tree.label].extend(tree.run(job)["times"])
                medians = [
                    float(np.median(times[t.label])) * 1000 if t in ok else float("nan") for t in trees
                ]
                ratio = (
                    [medians[0] / medians[1]]
                    if len(trees) > 1 and len(ok) == 2
                    else ([float("nan")] if len(trees) > 1 else [])
                )
                speed.add(photo, *medians, *ratio)
        quality.notes.append(
            f"{len(utts)} utterances per photo ({', '.join(voices)}; "
            f"the corpus's last {args.sentences} sentences), "
            "rendered with the transcript (forced alignment), 30 fps"
        )
        quality.notes.append(
            "opening = MediaPipe inner-lip gap ÷ face height; corr = Pearson, mean over files; "
            "+ offset = the mouth moves after the sound (target |offset| <= 20 ms)"
        )
        quality.notes.append(
            "corr with engine: with the openness the engine asked the renderer for (--params); "
            "engine vs truth: that openness against the truth, the ceiling for corr with truth"
        )
        tables += [quality, speed]
        if args.strip:
            _strip_image(strips, Path(args.strip))
            log(f"wrote {args.strip}")
    return tables


def _sweep(trees: Sequence[Tree], photos: dict[str, str], log: Any) -> Any:
    """The tracker's reading of held jaw openings (`--sweep`): where it reads the drawn mouth short."""
    from facecast.bench import metrics
    from facecast.bench.report import Table

    table = Table(
        "Mouth opening read by the tracker (inner-lip gap ÷ face height, ×100) per drawn `open`",
        ["tree", "photo", *(f"{level:g}" for level in SWEEP_LEVELS), "corr"],
    )
    with tempfile.TemporaryDirectory(prefix="facecast-bench-sweep-") as tmp:
        for tree in trees:
            folder = Path(tmp) / tree.label
            folder.mkdir()
            built = tree.run({"kind": "build", "dir": str(folder), "photos": photos})
            for photo, entry in built.items():
                if "bundle" not in entry:
                    table.add(tree.label, photo, entry["error"][:60], *[""] * len(SWEEP_LEVELS))
                    continue
                video = folder / f"{photo}-sweep.mp4"
                tree.run({"kind": "sweep", "bundle": entry["bundle"], "out": str(video)})
                opening = mouth_opening(track_videos([video])[0])
                held = opening.reshape(len(SWEEP_LEVELS), SWEEP_HOLD)[:, -SWEEP_READ:]
                readings = np.median(held, axis=1)
                corr = metrics.pearson(np.array(SWEEP_LEVELS), readings)
                table.add(tree.label, photo, *(f"{100 * r:.1f}" for r in readings), f"{corr:.3f}")
                log(f"{tree.label} {photo}: sweep corr {corr:.3f}")
    table.notes.append(
        f"each level held {SWEEP_HOLD} frames (viseme D, lips neither spread nor rounded), "
        f"median of its last {SWEEP_READ}; corr = Pearson of the readings with the levels"
    )
    return table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecast bench portrait", description=__doc__.splitlines()[0])
    p.add_argument("--against", type=Path, default=None, help="a second source tree to measure (e.g. main)")
    p.add_argument(
        "--photos",
        default=",".join(PHOTOS),
        help=f"comma-separated: {', '.join(PHOTOS)}, or paths to image files (named by their stem)",
    )
    p.add_argument("--voices", default="slt,kal16,awb", help="comma-separated flite voices")
    p.add_argument("--sentences", type=int, default=4, help="how many of the corpus's last sentences")
    p.add_argument("--frames", type=int, default=200, help="frames per render-time measurement")
    p.add_argument(
        "--strip", type=Path, default=None, help="also write a before/after image strip (.png or .jpg)"
    )
    p.add_argument(
        "--sweep", action="store_true", help="only the tracker's reading of held jaw openings, per photo"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="where generated speech is cached")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str]) -> int:
    from facecast.bench.report import Log

    args = _parser().parse_args(argv)
    try:
        photos = photos_from(args.photos)  # checked before any work starts
    except ValueError as exc:
        print(f"facecast bench portrait: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    tables = run(args, photos, Log(enabled=not args.quiet))
    elapsed = time.perf_counter() - started
    print(f"facecast bench portrait — {elapsed:.0f} s, load average {os.getloadavg()[0]:.1f}")
    for t in tables:
        print()
        print(t.markdown() if args.markdown else t.text())
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    with open(sys.argv[2], encoding="utf-8") as f:
        job_spec = json.load(f)
    with contextlib.redirect_stdout(sys.stderr):  # the result is the last stdout line, nothing else
        result = _child(job_spec)
    print(json.dumps(result))
