"""`facecast bench frames`: what one live WebRTC stream costs per frame, stage by stage.

A speaking and an idle stream of N frames are driven the way the WebRTC host drives them (1/fps of speech
pushed per frame, one frame pulled; idle frames carry silence), and every stage is timed on its own:
intake, mouth tracking, animation (the rest of the engine's step), render, colour conversion to I420,
VP8 encode (the tuned encoder the WebRTC host uses), Opus encode (aiortc's, 20 ms packets) and RTP
packetisation + SRTP protection + a UDP send on loopback (aiortc's RtpPacket and the libsrtp session its
DTLS transport uses). Everything runs on one thread and is timed in that thread's CPU time, so % of a
core is mean ms/frame × fps / 10; other load on the machine inflates it less than wall time (but still
does, through shared caches: compare trees with --against rather than with figures from another run).

`--against TREE` measures a second source tree (e.g. a temporary checkout of main) in the same run:
each tree runs in its own process, the two taking turns every 30 frames (A B B A …) so that both see
the same load, and the table prints both and their ratio. The code that measures is this file, loaded
from this tree for both, so both trees are measured the same way; it uses only interfaces both have.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
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
# CPU time of this thread, not wall time: on a shared machine a stage's wall time includes waiting for a
# core, its CPU time is what it costs.
CLOCK = time.thread_time
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
            t0 = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += CLOCK() - t0

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


def _speech_chunks(utterances: Sequence[tuple[np.ndarray, int]]) -> Iterator[tuple[np.ndarray, int, bool]]:
    """Per frame: (input audio to push, its rate, whether the segment ends after it), cycling through
    the utterances back to back for ever."""
    while True:
        for pcm, rate in utterances:
            n = -(-len(pcm) * FPS // rate)
            for i in range(n):
                a, b = i * rate // FPS, min(len(pcm), (i + 1) * rate // FPS)
                yield pcm[a:b], rate, i == n - 1


class StreamRunner:
    """One live stream (speaking when `speech` is given, else idle) driven frame by frame, each stage
    timed: an engine, the avatar's renderer, the WebRTC host's encoders and an RTP send path."""

    _tracking = _Stopwatch()  # the tracker is timed where the engine calls it: one patch per process
    _patched = 0
    _original_mouth: Callable[..., Any] | None = None

    def __init__(self, avatar: str, speech: Sequence[tuple[np.ndarray, int]] | None) -> None:
        import cv2
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        from facecast.avatars import load_renderer
        from facecast.engine import Engine, EngineConfig
        from facecast.hosts import live, webrtc

        cv2.setNumThreads(1)
        self._renderer = load_renderer(avatar, aspect="1:1", quality="high")
        if (self._renderer.width, self._renderer.height) != (SIZE, SIZE):
            raise ValueError(f"avatar {avatar} does not render {SIZE}x{SIZE}")
        # As the live core sets it up (a tree from before STILL_PX draws every frame).
        still_px = getattr(live, "STILL_PX", 0.0)
        if still_px and hasattr(self._renderer, "still_px"):
            self._renderer.still_px = still_px
        self._config = EngineConfig(fps=FPS, out_rate=OUT_RATE)
        self._engine = Engine(None, self._config)  # rendered separately, so that render is its own stage
        # The encoders the WebRTC host's senders get (tune_encoders), and its RGB → VideoFrame conversion.
        self._video_encoder = webrtc._tuned_get_encoder(
            RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=96)
        )
        self._audio_encoder = webrtc._tuned_get_encoder(
            RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
        )
        self._to_frame = getattr(webrtc, "i420_frame", None)
        self._video_time_base = webrtc.VIDEO_TIME_BASE
        self._video_rtp, self._audio_rtp = _RtpSender(96, 1), _RtpSender(111, 2)
        self._chunks = _speech_chunks(speech) if speech else None
        self._pending = np.zeros(0, np.int16)
        self._audio_pts = 0
        self._index = 0
        self.times = StreamTimes()
        self._patch_tracker()

    @classmethod
    def _patch_tracker(cls) -> None:
        from facecast.engine import tracker

        if cls._patched == 0:
            cls._original_mouth = tracker.SegmentTrack.mouth
            tracker.SegmentTrack.mouth = cls._tracking.wrap(cls._original_mouth)  # type: ignore[method-assign]
        cls._patched += 1

    def close(self) -> None:
        from facecast.engine import tracker

        cls = type(self)
        cls._patched -= 1
        if cls._patched == 0:
            tracker.SegmentTrack.mouth = cls._original_mouth  # type: ignore[method-assign]
        self._video_rtp.close()
        self._audio_rtp.close()

    def run(self, frames: int) -> None:
        for _ in range(frames):
            self._frame()

    def _frame(self) -> None:
        import av
        import cv2

        clock, st, index = CLOCK, self.times.stages, self._index
        self._tracking.take()
        t0 = clock()
        if self._chunks is not None:
            pcm, rate, last = next(self._chunks)
            self._engine.push_audio(pcm, rate)
            if last:
                self._engine.end_segment()
        t1 = clock()
        pair = self._engine.next_frame(render=False)
        t2 = clock()
        image = self._renderer.render(pair.meta.state)
        t3 = clock()
        if self._to_frame is not None:
            frame = self._to_frame(image)
        else:  # a tree from before i420_frame: the video track's own conversion
            code = cv2.COLOR_RGBA2YUV_I420 if image.shape[2] == 4 else cv2.COLOR_RGB2YUV_I420
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, code), format="yuv420p")
        frame.pts = index * VIDEO_CLOCK // FPS
        frame.time_base = self._video_time_base
        t4 = clock()
        payloads, timestamp = self._video_encoder.encode(frame)
        t5 = clock()
        self._video_rtp.send(payloads, timestamp)
        t6 = clock()
        # Audio as the WebRTC host's audio track: silence when idle, re-chunked into 20 ms frames.
        rate = self._config.out_rate
        samples = (
            pair.audio if pair.audio is not None else np.zeros(self._config.frame_samples(index), np.int16)
        )
        self._pending = np.concatenate([self._pending, samples])
        chunk = rate // AUDIO_FRAMES_PER_S
        opus_s = rtp_audio_s = 0.0
        while len(self._pending) >= chunk:
            piece, self._pending = self._pending[:chunk], self._pending[chunk:]
            a0 = clock()
            audio_frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="s16", layout="mono")
            audio_frame.sample_rate = rate
            audio_frame.pts = self._audio_pts
            audio_frame.time_base = Fraction(1, rate)
            self._audio_pts += chunk
            packets, audio_ts = self._audio_encoder.encode(audio_frame)
            a1 = clock()
            self._audio_rtp.send(packets, audio_ts)
            opus_s += a1 - a0
            rtp_audio_s += clock() - a1
        track_s = self._tracking.take()
        st["intake"].append(t1 - t0)
        st["tracking"].append(track_s)
        st["animation"].append(t2 - t1 - track_s)
        st["render"].append(t3 - t2)
        st["colour"].append(t4 - t3)
        st["encode"].append(t5 - t4)
        st["opus"].append(opus_s)
        st["rtp"].append(t6 - t5 + rtp_audio_s)
        self.times.video_bytes.append(sum(len(p) for p in payloads))
        self.times.speech_frames += pair.audio is not None
        self._video_rtp.drain()
        self._audio_rtp.drain()
        self._index += 1


WARM_FRAMES = 30  # the first frames pay for lazy set-up (codec open, recogniser start): not counted


def measure_stream(avatar: str, frames: int, speech: Sequence[tuple[np.ndarray, int]] | None) -> StreamTimes:
    """Time `frames` frames of one stream after WARM_FRAMES untimed ones."""
    runner = StreamRunner(avatar, speech)
    try:
        runner.run(WARM_FRAMES)
        runner.times = StreamTimes()
        runner.run(frames)
    finally:
        runner.close()
    return runner.times


KINDS = ("speaking", "idle")


def serve(avatar: str, speech: Sequence[tuple[np.ndarray, int]]) -> None:
    """A child process of `--against`: both streams warmed up, then `KIND N` on stdin runs N frames of
    one of them (answering `ok`), `end` prints every timing as JSON."""
    runners = {"speaking": StreamRunner(avatar, speech), "idle": StreamRunner(avatar, None)}
    for r in runners.values():
        r.run(WARM_FRAMES)
        r.times = StreamTimes()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words == ["end"]:
            break
        runners[words[0]].run(int(words[1]))
        print("ok", flush=True)
    print(json.dumps({k: r.times.to_json() for k, r in runners.items()}), flush=True)
    for r in runners.values():
        r.close()


# -- the command --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facecast bench frames", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300, help="timed frames per stream (default 300)")
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
    p.add_argument("--voice", default="slt", help="flite voice of the speech (default slt)")
    p.add_argument("--sentences", type=int, default=3, help="corpus sentences spoken in a loop")
    p.add_argument("--cache-dir", type=Path, default=None, help="where generated speech is cached")
    p.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _child_code(tree: Path) -> str:
    """Python for a child process: `tree` first on the path, then this file's serve()."""
    here = Path(__file__).resolve()
    return (
        "import json, sys, importlib.util\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        "import numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('facecast_bench_frames', {str(here)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "args = json.loads(sys.stdin.readline())\n"
        "mod.serve(args['avatar'], [(np.load(p).astype(np.int16), r) for p, r in args['speech']])\n"
    )


class _TreeProcess:
    """A child process measuring one source tree, told block by block what to run."""

    def __init__(self, tree: Path, avatar: str, speech_files: list[tuple[str, int]]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
        self.tree = tree
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _child_code(tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._send(json.dumps({"avatar": avatar, "speech": speech_files}))
        self._expect("ready")

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def _expect(self, word: str) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith(word):
            self._proc.kill()
            raise RuntimeError(
                f"measuring {self.tree} failed (exit {self._proc.wait()}); see its error above"
            )
        return line

    def run(self, kind: str, frames: int) -> None:
        self._send(f"{kind} {frames}")
        self._expect("ok")

    def finish(self) -> dict[str, StreamTimes]:
        self._send("end")
        data = json.loads(self._expect("{"))
        self._proc.wait()
        return {k: StreamTimes.from_json(v) for k, v in data.items()}


BLOCK_FRAMES = 30  # frames one tree runs before the other takes its turn: both see the same load


def compare_trees(
    trees: dict[str, Path], avatar: str, frames: int, speech_files: list[tuple[str, int]], log: Any
) -> dict[str, dict[str, StreamTimes]]:
    """Both trees' streams in interleaved blocks (A B B A …), each tree in its own process."""
    procs = {label: _TreeProcess(tree, avatar, speech_files) for label, tree in trees.items()}
    try:
        order = list(procs)
        blocks = -(-frames // BLOCK_FRAMES)
        for b in range(blocks):
            n = min(BLOCK_FRAMES, frames - b * BLOCK_FRAMES)
            for kind in KINDS:
                for label in order if b % 2 == 0 else order[::-1]:
                    procs[label].run(kind, n)
            if (b + 1) % max(1, blocks // 4) == 0:
                log(f"{avatar}: {min(frames, (b + 1) * BLOCK_FRAMES)}/{frames} frames per stream and tree")
        return {label: p.finish() for label, p in procs.items()}
    finally:
        for p in procs.values():
            p._proc.kill()


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
        f"{sp.frames} timed frames per stream ({sp.speech_frames} of the speaking one play speech); "
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
            log(f"{avatar}: {args.frames} frames per stream")
            results = {
                kind: measure_stream(avatar, args.frames, speech if kind == "speaking" else None)
                for kind in KINDS
            }
            tables.append(stage_table(avatar, results))
    else:
        if not (args.against / "facecast" / "engine").is_dir():
            print(f"facecast bench frames: {args.against} is not a facecast source tree", file=sys.stderr)
            return 2
        here = Path(__file__).resolve().parents[2]
        with tempfile.TemporaryDirectory(prefix="facecast-frames-") as tmp:
            files = []
            for i, (pcm, rate) in enumerate(speech):
                path = Path(tmp) / f"speech{i}.npy"
                np.save(path, pcm)
                files.append((str(path), rate))
            for avatar in avatars:
                runs = compare_trees({"new": here, "old": args.against}, avatar, args.frames, files, log)
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
