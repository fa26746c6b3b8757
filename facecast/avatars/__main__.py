"""Avatar tools: `python -m facecast.avatars sheet OUT.png` writes a contact sheet of the built-in
characters; `python -m facecast.avatars bench [--avatar REF ...]` prints render ms/frame on one core;
`python -m facecast.avatars clip OUT.webp --avatar REF` writes a short looping close-up of an avatar
speaking (an animated WebP, for the docs)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from facecast.avatars import AvatarLibrary, list_avatars, load_bundle, load_renderer
from facecast.engine.types import FaceState, MouthParams
from facecast.engine.visemes import TARGETS, VISEME_INDEX, mouth_from_row

# Mouth shapes shown on the contact sheet, with a little head motion so the sheet shows the parallax too.
_SHEET = (
    ("X", {}),
    ("A", {"head_yaw": -5.0, "head_roll": -3.0}),
    ("B", {"smile": 0.6}),
    ("D", {"head_yaw": 4.0, "brow": 0.7}),
    ("F", {"head_pitch": 4.0, "gaze_x": -0.6}),
    ("G", {"head_roll": 3.0, "blink": 0.6}),
)


def contact_sheet(tile: int = 200, avatars: list[str] | None = None) -> np.ndarray:
    """Rows of avatars × columns of mouth shapes, RGB. `avatars`: references (default: the built-ins)."""
    rows = []
    library = AvatarLibrary()
    for ref in avatars or [info.name for info in list_avatars()]:
        r = load_renderer(ref, quality="high", library=library)
        display_name = load_bundle(ref, library).manifest.display_name
        tiles = []
        for v, pose in _SHEET:
            frame = r.render(FaceState(mouth=mouth_from_row(TARGETS[VISEME_INDEX[v]], v), **pose))
            # Head and shoulders, so the mouth shapes are visible at thumbnail size.
            h, w = frame.shape[:2]
            crop = frame[round(0.08 * h) : round(0.86 * h), round(0.11 * w) : round(0.89 * w)]
            small = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)
            label = f"{display_name}  {v}"
            cv2.rectangle(small, (0, 0), (tile, 20), (250, 250, 250), -1)
            cv2.putText(small, label, (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
            tiles.append(small)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def _states(n: int, seed: int = 0) -> list[FaceState]:
    rng = np.random.default_rng(seed)
    return [
        FaceState(
            mouth=MouthParams(*(float(v) for v in rng.uniform(0.0, 1.0, 7))),
            head_yaw=float(rng.uniform(-8, 8)),
            head_pitch=float(rng.uniform(-6, 6)),
            head_roll=float(rng.uniform(-5, 5)),
            gaze_x=float(rng.uniform(-1, 1)),
            gaze_y=float(rng.uniform(-1, 1)),
            blink=float(rng.choice([0.0, 0.0, 0.5, 1.0])),
            breath=float(rng.uniform(-1, 1)),
            brow=float(rng.uniform(0, 1)),
            smile=float(rng.uniform(0, 1)),
        )
        for _ in range(n)
    ]


def bench(frames: int = 300, repeats: int = 3, avatars: list[str] | None = None) -> None:
    """Render time per frame on one core: median over `frames` varied states, best of `repeats` runs.

    Thread CPU time and best-of-runs keep other load on the machine from inflating the numbers.
    `avatars`: built-in names, library ids or .facecast paths (default: the built-ins)."""
    cv2.setNumThreads(1)
    states = _states(frames)
    library = AvatarLibrary()
    names = avatars or [info.name for info in list_avatars()]
    for aspect, quality in (("1:1", "high"), ("4:3", "very_high")):
        for name in names:
            for background in ("scene", "transparent"):
                r = load_renderer(
                    name, aspect=aspect, quality=quality, background=background, library=library
                )
                for s in states[:100]:  # warm-up: caches, CPU clock
                    r.render(s)
                medians = []
                for _ in range(repeats):
                    times = []
                    for s in states:
                        t0 = time.thread_time()
                        r.render(s)
                        times.append(time.thread_time() - t0)
                    medians.append(float(np.median(times)) * 1e3)
                runs = ", ".join(f"{m:.3f}" for m in medians)
                size = f"{r.width}x{r.height}"
                best = min(medians)
                print(
                    f"{Path(name).stem:5s} {size} {background:11s} median {best:.3f} ms/frame (runs: {runs})"
                )


CLIP_TEXT = "Bob may open the window, then we will see the boats."  # m/b/p closures, open vowels, F/V


def clip(
    out: Path, avatar: str, text: str = CLIP_TEXT, size: int = 240, fps: int = 15, quality: int = 60
) -> int:
    """Speak `text` (espeak-ng) with `avatar` through the whole pipeline (engine, renderer, MP4), then
    write the lower half of the face, closer up, as a looping animated WebP; returns its size in bytes."""
    import av

    from facecast.hosts.file import RenderOptions, render_pcm
    from facecast.tts import EspeakTTS

    speech = EspeakTTS().synthesize_timed(text)
    with tempfile.TemporaryDirectory(prefix="facecast-clip-") as tmp:
        video = Path(tmp) / "clip.mp4"
        options = RenderOptions(avatar=avatar, fps=30, text=text, progress=False, jobs=1)
        render_pcm(speech.audio, speech.sample_rate, video, options, phones=speech.phones)
        with av.open(str(video)) as src, av.open(str(out), "w", format="webp", options={"loop": "0"}) as dst:
            stream = dst.add_stream("libwebp_anim", rate=fps)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = {"quality": str(quality)}
            for i, frame in enumerate(src.decode(video=0)):
                if i % round(30 / fps):
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                # Nose to chin and the jaw's corners: where the mouth, lips and jaw move.
                side = round(0.4 * h)
                top, left = round(0.34 * h), (w - side) // 2
                small = cv2.resize(
                    rgb[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA
                )
                for packet in stream.encode(av.VideoFrame.from_ndarray(small, format="rgb24")):
                    dst.mux(packet)
            for packet in stream.encode():
                dst.mux(packet)
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m facecast.avatars")
    sub = parser.add_subparsers(dest="command", required=True)
    sheet = sub.add_parser("sheet", help="write a contact sheet PNG of the built-in avatars")
    sheet.add_argument("out")
    sheet.add_argument("--tile", type=int, default=200)
    sheet.add_argument(
        "--avatar", action="append", help="avatar to show (repeatable; default: the built-ins)"
    )
    b = sub.add_parser("bench", help="print render ms/frame on one core")
    b.add_argument("--frames", type=int, default=300)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--avatar", action="append", help="avatar to measure (repeatable; default: the built-ins)")
    c = sub.add_parser("clip", help="write a short looping close-up of an avatar speaking (animated WebP)")
    c.add_argument("out", type=Path)
    c.add_argument("--avatar", required=True, help="built-in name, library id or .facecast path")
    c.add_argument("--say", default=CLIP_TEXT, help="what it says (espeak-ng)")
    c.add_argument("--size", type=int, default=240, help="side of the square clip in pixels")
    c.add_argument("--fps", type=int, default=15)
    c.add_argument("--quality", type=int, default=60, help="WebP quality, 0-100")
    args = parser.parse_args()
    if args.command == "clip":
        size = clip(args.out, args.avatar, args.say, args.size, args.fps, args.quality)
        print(f"wrote {args.out} ({size / 1024:.0f} KiB)")
    elif args.command == "sheet":
        img = contact_sheet(args.tile, args.avatar)
        cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    else:
        bench(args.frames, args.repeats, args.avatar)


if __name__ == "__main__":
    main()
