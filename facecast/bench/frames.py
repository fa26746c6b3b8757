"""`facecast bench frames`: what one live WebRTC stream costs per frame, stage by stage.

A speaking and an idle stream of N frames are driven the way the WebRTC host drives them (1/fps of speech
pushed per frame, one frame pulled; idle frames carry silence), and every stage is timed on its own:
intake, mouth tracking, animation (the rest of the engine's step), render, colour conversion to I420,
VP8 encode (the tuned encoder the WebRTC host uses), Opus encode (aiortc's, 20 ms packets) and RTP
packetisation + SRTP protection + a UDP send on loopback (aiortc's RtpPacket and the libsrtp session its
DTLS transport uses). Everything runs on one thread, so % of a core is mean ms/frame × fps / 10.

`--against TREE` measures a second source tree (e.g. a temporary checkout of main) in the same run:
each tree runs in its own process, in alternating rounds (A B B A …), and the table prints both and
their ratio. The code that measures is this file, loaded from this tree for both, so both trees are
measured the same way; it uses only interfaces both have.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

FPS = 30
SIZE = 512
AUDIO_FRAMES_PER_S = 50  # 20 ms: one Opus packet each, as the WebRTC host's audio track sends
VIDEO_CLOCK = 90000
OUT_RATE = 48000  # the server's WebRTC sessions render audio at Opus's rate

# Stage names in table order, each with what it covers.
STAGES: tuple[tuple[str, str], ...] = (
    ("intake", "push_audio: decode, resample, buffer"),
    ("tracking", "the engine's mouth tracker (SegmentTrack.mouth)"),
    ("animation", "rest of the engine step: animator, clock, frame metadata"),
    ("render", "renderer.render(state)"),
    ("colour", "RGB → I420 + VideoFrame (as the WebRTC video track)"),
    ("encode", "VP8, the WebRTC host's tuned encoder (+ aiortc's payload split)"),
    ("opus", "the WebRTC host's Opus encoder, 20 ms packets"),
    ("rtp", "RTP packets + SRTP protect + UDP send, audio and video"),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)


@dataclass
class StreamTimes:
    """Seconds spent per frame in each stage, plus the encoded video size, for one stream."""

    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGE_NAMES})
    video_bytes: list[int] = field(default_factory=list)
    speech_frames: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"stages": self.stages, "video_bytes": self.video_bytes, "speech_frames": self.speech_frames}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamTimes:
        return cls(data["stages"], data["video_bytes"], data["speech_frames"])

    def extend(self, other: StreamTimes) -> None:
        for s in STAGE_NAMES:
            self.stages[s].extend(other.stages[s])
        self.video_bytes.extend(other.video_bytes)
        self.speech_frames += other.speech_frames

    @property
    def frames(self) -> int:
        return len(self.stages["render"])


class _Stopwatch:
    """Accumulates time into the current frame's slot of one stage."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0

        return timed

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value


class _RtpSender:
    """aiortc's send path for one stream below the encoder: RtpPacket with the header extensions aiortc
    sets, serialised, SRTP-protected (the first profile aiortc offers), sent over UDP on loopback."""

    def __init__(self, payload_type: int, ssrc: int) -> None:
        from aiortc.rtcdtlstransport import SRTP_PROFILES
        from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
        from aiortc.rtp import HeaderExtensionsMap
        from pylibsrtp import Policy, Session

        profile = SRTP_PROFILES[0]
        key = bytes(range(profile.key_length + profile.salt_length))
        policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        self._srtp = Session(policy)
        self._extensions = HeaderExtensionsMap()
        self._extensions.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                    RTCRtpHeaderExtensionParameters(
                        id=2, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                    ),
                ]
            )
        )
        self._payload_type, self._ssrc, self._sequence = payload_type, ssrc, 0
        self._sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sink.bind(("127.0.0.1", 0))
        self._sink.setblocking(False)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._address = self._sink.getsockname()

    def send(self, payloads: Sequence[bytes], timestamp: int) -> None:
        from aiortc import clock
        from aiortc.rtp import RtpPacket

        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=self._payload_type, sequence_number=self._sequence, timestamp=timestamp
            )
            packet.ssrc = self._ssrc
            packet.payload = payload
            packet.marker = int(i == len(payloads) - 1)
            packet.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
            packet.extensions.mid = "0"
            data = self._srtp.protect(packet.serialize(self._extensions))
            # A full loopback buffer drops the datagram; the send's cost was still paid.
            with contextlib.suppress(BlockingIOError):
                self._socket.sendto(data, self._address)
            self._sequence = (self._sequence + 1) & 0xFFFF

    def drain(self) -> None:
        """Empty the loopback receiver (outside the timed stages): the receiver is not the server."""
        while True:
            try:
                self._sink.recv(65536)
            except BlockingIOError:
                return

    def close(self) -> None:
        self._socket.close()
        self._sink.close()


def _speech_chunks(
    utterances: Sequence[tuple[np.ndarray, int]], frames: int, fps: int
) -> Iterator[tuple[np.ndarray | None, int, bool]]:
    """Per frame: (input audio to push or None, its rate, whether the segment ends after it), cycling
    through the utterances back to back for `frames` frames."""
    produced = 0
    while produced < frames:
        for pcm, rate in utterances:
            n = -(-len(pcm) * fps // rate)
            for i in range(n):
                if produced >= frames:
                    return
                a, b = i * rate // fps, min(len(pcm), (i + 1) * rate // fps)
                yield pcm[a:b], rate, i == n - 1
                produced += 1


def measure_stream(
    avatar: str,
    frames: int,
    speech: Sequence[tuple[np.ndarray, int]] | None,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> StreamTimes:
    """Drive one engine + encoders for `frames` frames (speaking when `speech` is given, else idle)
    and time each stage per frame. Everything on one thread, OpenCV included."""
    import av
    import cv2
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from facecast.avatars import load_renderer
    from facecast.engine import Engine, EngineConfig
    from facecast.engine import tracker as tracker_module
    from facecast.hosts import webrtc

    cv2.setNumThreads(1)
    renderer = load_renderer(avatar, aspect="1:1", quality="high")
    if (renderer.width, renderer.height) != (SIZE, SIZE):
        raise ValueError(f"avatar {avatar} renders {renderer.width}x{renderer.height}, not {SIZE}x{SIZE}")
    config = EngineConfig(fps=FPS, out_rate=OUT_RATE)
    engine = Engine(None, config)  # rendered separately, so that render is its own stage
    tracking = _Stopwatch()
    original_mouth = tracker_module.SegmentTrack.mouth
    tracker_module.SegmentTrack.mouth = tracking.wrap(original_mouth)  # type: ignore[method-assign]
    # The encoders the WebRTC host's senders get (tune_encoders), and its RGB → VideoFrame conversion.
    video_encoder = webrtc._tuned_get_encoder(
        RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=96)
    )
    audio_encoder = webrtc._tuned_get_encoder(
        RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    )
    to_frame = getattr(webrtc, "i420_frame", None)
    video_rtp, audio_rtp = _RtpSender(96, 1), _RtpSender(111, 2)
    out_rate = config.out_rate
    chunk = out_rate // AUDIO_FRAMES_PER_S
    pending = np.zeros(0, np.int16)
    audio_pts = 0
    time_base = Fraction(1, out_rate)
    colour_code = cv2.COLOR_RGBA2YUV_I420 if renderer.channels == 4 else cv2.COLOR_RGB2YUV_I420
    times = StreamTimes()
    st = times.stages
    chunks = _speech_chunks(speech, frames, FPS) if speech else iter(())
    clock = time.perf_counter
    report_every = max(1, frames // 4)
    try:
        for index in range(frames):
            t0 = clock()
            pushed = next(chunks, None)
            if pushed is not None:
                pcm, rate, last = pushed
                engine.push_audio(pcm, rate)
                if last:
                    engine.end_segment()
            t1 = clock()
            pair = engine.next_frame(render=False)
            t2 = clock()
            image = renderer.render(pair.meta.state)
            t3 = clock()
            if to_frame is not None:
                frame = to_frame(image)
            else:  # a tree from before i420_frame: the video track's own conversion
                frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, colour_code), format="yuv420p")
            frame.pts = index * VIDEO_CLOCK // FPS
            frame.time_base = webrtc.VIDEO_TIME_BASE
            t4 = clock()
            payloads, timestamp = video_encoder.encode(frame)
            t5 = clock()
            video_rtp.send(payloads, timestamp)
            t6 = clock()
            # Audio as the WebRTC host's audio track: silence when idle, re-chunked into 20 ms frames.
            samples = (
                pair.audio if pair.audio is not None else np.zeros(config.frame_samples(index), np.int16)
            )
            pending = np.concatenate([pending, samples])
            opus_s = rtp_audio_s = 0.0
            while len(pending) >= chunk:
                piece, pending = pending[:chunk], pending[chunk:]
                a0 = clock()
                audio_frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="s16", layout="mono")
                audio_frame.sample_rate = out_rate
                audio_frame.pts = audio_pts
                audio_frame.time_base = time_base
                audio_pts += chunk
                packets, audio_ts = audio_encoder.encode(audio_frame)
                a1 = clock()
                audio_rtp.send(packets, audio_ts)
                opus_s += a1 - a0
                rtp_audio_s += clock() - a1
            track_s = tracking.take()
            st["intake"].append(t1 - t0)
            st["tracking"].append(track_s)
            st["animation"].append(t2 - t1 - track_s)
            st["render"].append(t3 - t2)
            st["colour"].append(t4 - t3)
            st["encode"].append(t5 - t4)
            st["opus"].append(opus_s)
            st["rtp"].append(t6 - t5 + rtp_audio_s)
            times.video_bytes.append(sum(len(p) for p in payloads))
            video_rtp.drain()
            audio_rtp.drain()
            times.speech_frames += pair.audio is not None
            if log is not None and (index + 1) % report_every == 0:
                log(f"{label}: {index + 1}/{frames} frames")
    finally:
        tracker_module.SegmentTrack.mouth = original_mouth  # type: ignore[method-assign]
        video_rtp.close()
        audio_rtp.close()
    return times


def measure(
    avatar: str, frames: int, speech: Sequence[tuple[np.ndarray, int]], log: Callable[[str], None] | None
) -> dict[str, StreamTimes]:
    warm = min(30, frames)  # first frames pay for lazy set-up (codec open, recogniser start)
    out = {}
    for kind, source in (("speaking", speech), ("idle", None)):
        measure_stream(avatar, warm, source)
        out[kind] = measure_stream(avatar, frames, source, log, f"{avatar} {kind}")
    return out


# -- the command --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecast bench frames", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300, help="frames per stream and round (default 300)")
    p.add_argument(
        "--avatar",
        action="append",
        default=None,
        help="avatar name or .facecast bundle; repeat for several (default: the first built-in)",
    )
    p.add_argument(
        "--against",
        type=Path,
        default=None,
        help="another source tree (e.g. a git worktree of main) measured side by side in this run",
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree with --against")
    p.add_argument("--voice", default="slt", help="flite voice of the speech (default slt)")
    p.add_argument("--sentences", type=int, default=3, help="corpus sentences spoken in a loop")
    p.add_argument("--cache-dir", type=Path, default=None, help="where generated speech is cached")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _child_code(tree: Path) -> str:
    """Python for a child process: `tree` first on the path, this file's measure(), JSON out."""
    here = Path(__file__).resolve()
    return (
        "import json, sys, importlib.util\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        "import numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('facecast_bench_frames', {str(here)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "args = json.loads(sys.stdin.readline())\n"
        "speech = [(np.load(p).astype(np.int16), r) for p, r in args['speech']]\n"
        "log = lambda m: print(m, file=sys.stderr, flush=True)\n"
        "out = mod.measure(args['avatar'], args['frames'], speech, None if args['quiet'] else log)\n"
        "print(json.dumps({k: v.to_json() for k, v in out.items()}))\n"
    )


def _run_tree(
    tree: Path, avatar: str, frames: int, speech_files: list[tuple[str, int]], quiet: bool
) -> dict[str, StreamTimes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    request = json.dumps({"avatar": avatar, "frames": frames, "speech": speech_files, "quiet": quiet})
    proc = subprocess.run(
        [sys.executable, "-c", _child_code(tree)],
        input=request + "\n",
        stdout=subprocess.PIPE,
        stderr=None if not quiet else subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip()[-2000:]
        raise RuntimeError(f"measuring {tree} failed (exit {proc.returncode}) {tail}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: StreamTimes.from_json(v) for k, v in data.items()}


def _stats(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median ms, p95 ms, % of a core at FPS) of per-frame seconds."""
    arr = np.asarray(samples, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float(np.median(arr)), float(np.percentile(arr, 95)), float(arr.mean()) * FPS / 10.0


def _total(times: StreamTimes) -> list[float]:
    return list(np.sum([times.stages[s] for s in STAGE_NAMES], axis=0))


def stage_table(avatar: str, results: dict[str, StreamTimes]) -> Any:
    from facecast.bench.report import Table

    table = Table(
        f"Per-stage frame cost ({avatar}, {SIZE}x{SIZE}@{FPS} VP8, one thread)",
        ["stage", "speaking ms", "p95 ms", "% core", "idle ms", "p95 ms", "% core"],
    )
    for name, _ in (*STAGES, ("total", "")):
        cells: list[object] = [name]
        for kind in ("speaking", "idle"):
            t = results[kind]
            cells.extend(_stats(_total(t) if name == "total" else t.stages[name]))
        table.add(*cells)
    _notes(table, results)
    return table


def compare_table(avatar: str, new: dict[str, StreamTimes], old: dict[str, StreamTimes]) -> Any:
    from facecast.bench.report import Table

    table = Table(
        f"Per-stage frame cost, this tree vs --against ({avatar}, {SIZE}x{SIZE}@{FPS} VP8, one thread)",
        ["stage", "stream", "old ms", "new ms", "new/old", "old % core", "new % core", "new p95 ms"],
    )
    for name, _ in (*STAGES, ("total", "")):
        for kind in ("speaking", "idle"):
            o = _stats(_total(old[kind]) if name == "total" else old[kind].stages[name])
            n = _stats(_total(new[kind]) if name == "total" else new[kind].stages[name])
            ratio = n[0] / o[0] if o[0] > 0 else float("nan")  # of the medians: robust to a noisy machine
            table.add(name, kind, o[0], n[0], f"{ratio:.2f}x", o[2], n[2], n[1])
    _notes(table, new)
    for kind in ("speaking", "idle"):
        ob, nb = np.mean(old[kind].video_bytes), np.mean(new[kind].video_bytes)
        table.notes.append(f"{kind}: VP8 bytes/frame old {ob:.0f}, new {nb:.0f}")
    return table


def _notes(table: Any, results: dict[str, StreamTimes]) -> None:
    sp = results["speaking"]
    table.notes.append(
        f"{sp.frames} frames per stream ({sp.speech_frames} speaking, rest between utterances); "
        f"ms = median per frame; % core = mean ms x {FPS} fps / 10; new/old = ratio of the medians"
    )
    table.notes.append("; ".join(f"{n}: {what}" for n, what in STAGES))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from facecast.bench.corpus import SENTENCES, FliteMissingError, build_corpus
    from facecast.bench.report import Log

    log = Log(enabled=not args.quiet)
    try:
        utts = build_corpus((args.voice,), SENTENCES[: args.sentences], args.cache_dir)
    except FliteMissingError as exc:
        print(f"facecast bench frames: {exc}", file=sys.stderr)
        return 2
    speech = [(u.audio(), u.sample_rate) for u in utts]
    avatars = args.avatar or [_default_avatar()]
    tables = []
    if args.against is None:
        for avatar in avatars:
            tables.append(stage_table(avatar, measure(avatar, args.frames, speech, log)))
    else:
        if not (args.against / "facecast" / "engine").is_dir():
            print(f"facecast bench frames: {args.against} is not a facecast source tree", file=sys.stderr)
            return 2
        here = Path(__file__).resolve().parents[2]
        import tempfile

        with tempfile.TemporaryDirectory(prefix="facecast-frames-") as tmp:
            files = []
            for i, (pcm, rate) in enumerate(speech):
                path = Path(tmp) / f"speech{i}.npy"
                np.save(path, pcm)
                files.append((str(path), rate))
            for avatar in avatars:
                runs: dict[str, dict[str, StreamTimes]] = {}
                order = [("new", here), ("old", args.against)]
                for r in range(args.rounds):
                    for label, tree in order if r % 2 == 0 else order[::-1]:
                        log(f"{avatar}: round {r + 1}/{args.rounds}, {label} tree {tree}")
                        got = _run_tree(tree, avatar, args.frames, files, args.quiet)
                        if label not in runs:
                            runs[label] = got
                        else:
                            for kind in got:
                                runs[label][kind].extend(got[kind])
                tables.append(compare_table(avatar, runs["new"], runs["old"]))
    load = os.getloadavg()
    print(f"facecast bench frames — {os.cpu_count()} cores, load average {load[0]:.1f} at end")
    for t in tables:
        print()
        print(t.markdown() if args.markdown else t.text())
    return 0


def _default_avatar() -> str:
    from facecast.avatars import list_avatars

    return list_avatars()[0].name
