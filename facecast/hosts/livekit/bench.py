"""Benchmark one LiveKit avatar worker session over the in-memory room double (no LiveKit server, no
encoding): `python -m facecast.hosts.livekit.bench`, from a source checkout (the double is
tests/livekit_room.py).

Measures, with the real agent-side DataStreamAudioOutput and the real worker:
- audio in -> first speech video frame out, inside the worker: from the first audio frame of an utterance
  reaching the runner to the capture of the first video frame that plays it (the mouth for that frame is
  decided from the audio), for a sender that streams faster than real time (TTS) and one that streams at
  real time;
- interrupt -> speech stopped: speech heard on the published audio track after the worker handled
  lk.clear_buffer, and the agent's wait from sending the clear to receiving playback_finished;
- CPU of the session while speaking and while idle: the engine thread alone, and the whole process
  (engine, runner, audio/video sources, the room double and the agent side).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import DataStreamAudioOutput

from facecast.hosts.livekit.tokens import mint_worker_token
from facecast.hosts.livekit.worker import RoomAvatar
from facecast.tts import EspeakTTS

TESTS_DIR = Path(__file__).resolve().parents[3] / "tests"
ROOM, AGENT, AVATAR = "bench", "agent", "facecast-avatar"
SENTENCES = (
    "Hello there, my name is Ava and I can help you plan your trip.",
    "The weather in Lisbon is sunny, with a light breeze from the ocean.",
    "Would you like me to book a table for two at eight o'clock?",
    "Please hold on for a moment while I look that up for you.",
    "Thanks for calling, and have a wonderful evening.",
)


class _Heard:
    """Speech samples played out on the avatar's audio track, read back in 10 ms chunks."""

    def __init__(self, track: Any, rate: int) -> None:
        self._stream = rtc.AudioStream.from_track(track=track, sample_rate=rate, num_channels=1)
        self.chunks: list[tuple[float, int]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._stream:
            samples = np.frombuffer(bytes(event.frame.data), np.int16)
            self.chunks.append((time.monotonic(), int(np.count_nonzero(np.abs(samples) > 50))))

    def speech(self, after: float = 0.0) -> int:
        return sum(n for t, n in self.chunks if t > after)

    async def aclose(self) -> None:
        self._task.cancel()
        await self._stream.aclose()


async def _send(out: DataStreamAudioOutput, pcm: np.ndarray, rate: int, *, realtime: bool) -> None:
    step = rate // 50  # 20 ms frames, as an AgentSession sends TTS audio
    started = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), step)):
        chunk = pcm[i : i + step]
        await out.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
        if realtime:
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.02 - time.monotonic()))


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms (n={len(values)})"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(TESTS_DIR))
    try:
        from livekit_room import URL, MemoryServer
    except ImportError:
        raise SystemExit("the benchmark needs tests/livekit_room.py: run it from a source checkout") from None

    tts = EspeakTTS()
    speech = [(tts.synthesize(text), tts.sample_rate) for text in SENTENCES]
    server = MemoryServer()
    agent = await server.connect(AGENT, ROOM, kind="agent")
    token = mint_worker_token(
        server.api_key, server.api_secret, room=ROOM, identity=AVATAR, name="Avatar", agent_identity=AGENT
    )
    avatar = RoomAvatar(
        URL, token, avatar=args.avatar, aspect=args.aspect, quality=args.quality, fps=args.fps,
        room=server.new_room(),  # type: ignore[arg-type]
    )  # fmt: skip
    await avatar.start()
    runner = avatar.runner
    assert runner is not None
    out = DataStreamAudioOutput(
        agent,  # type: ignore[arg-type]
        destination_identity=AVATAR,
        wait_remote_track=rtc.TrackKind.KIND_VIDEO,
        wait_playback_start=True,
    )
    assert runner.audio_publication is not None
    heard = _Heard(runner.audio_publication.track, runner.generator.sample_rate)
    results: dict[str, Any] = {"size": f"{runner.generator.width}x{runner.generator.height}@{args.fps}"}

    async def utterance(i: int, *, realtime: bool) -> None:
        pcm, rate = speech[i % len(speech)]
        await _send(out, pcm, rate, realtime=realtime)
        out.flush()
        await out.wait_for_playout()

    await utterance(0, realtime=False)  # warm-up: recogniser, renderer caches
    for mode in ("burst", "realtime"):
        before = len(runner.audio_to_lips_s)
        for i in range(args.utterances):
            await utterance(i, realtime=mode == "realtime")
        results[f"audio_to_lips_{mode}"] = runner.audio_to_lips_s[before:]

    after_clear: list[float] = []
    answer: list[float] = []
    long_pcm = np.concatenate([s for s, r in speech if r == speech[0][1]])
    for _ in range(args.interrupts):
        sending = asyncio.create_task(_send(out, long_pcm, speech[0][1], realtime=False))
        start = heard.speech()
        while heard.speech() - start < 0.8 * runner.generator.sample_rate:
            await asyncio.sleep(0.01)
        await sending
        sent_at = time.monotonic()
        out.clear_buffer()
        await out.wait_for_playout()
        answer.append(time.monotonic() - sent_at)
        out.flush()
        handled = server.rpcs("lk.clear_buffer")[-1].handled_at or sent_at
        await asyncio.sleep(0.3)  # let anything still queued reach the track
        after_clear.append(heard.speech(after=handled) / runner.generator.sample_rate)
    results["speech_after_clear"] = after_clear
    results["clear_to_finished"] = answer

    async def cpu_window(seconds: float, speaking: bool) -> tuple[float, float]:
        proc, engine, started = time.process_time(), runner.generator.cpu_s, time.monotonic()
        i = 0
        while time.monotonic() - started < seconds:
            if speaking:
                await utterance(i, realtime=False)
                i += 1
            else:
                await asyncio.sleep(0.1)
        wall = time.monotonic() - started
        return (time.process_time() - proc) / wall, (runner.generator.cpu_s - engine) / wall

    results["cpu_speaking"] = await cpu_window(args.seconds, True)
    results["cpu_idle"] = await cpu_window(args.seconds / 2, False)
    results["stats"] = avatar.stats()
    await heard.aclose()
    await avatar.aclose()
    await agent.disconnect()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m facecast.hosts.livekit.bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--avatar", default="ava")
    p.add_argument("--aspect", default="1:1")
    p.add_argument("--quality", default="high")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--utterances", type=int, default=5, help="per latency measurement")
    p.add_argument("--interrupts", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="CPU window while speaking (idle: half)")
    args = p.parse_args(argv)
    r = asyncio.run(run(args))
    frame_ms = 1000 / args.fps
    print(f"LiveKit worker session, {r['size']}, over the in-memory room double (no encoding)")
    print(f"  audio in -> first speech frame out, TTS-speed sender: {_ms(r['audio_to_lips_burst'])}")
    print(f"  audio in -> first speech frame out, real-time sender: {_ms(r['audio_to_lips_realtime'])}")
    heard = r["speech_after_clear"]
    print(
        f"  speech heard after the clear was handled: max {max(heard) * 1000:.0f} ms "
        f"(budget {2 * frame_ms:.0f} ms = 2 frames)"
    )
    print(f"  agent: clear sent -> playback_finished received: {_ms(r['clear_to_finished'])}")
    for label, (proc, engine) in (("speaking", r["cpu_speaking"]), ("idle", r["cpu_idle"])):
        print(f"  CPU {label}: engine thread {engine * 100:.0f}% of a core, whole process {proc * 100:.0f}%")
    stats = r["stats"]
    print(
        f"  frames {stats['frames']} (speech {stats['speech_frames']}, undrawn {stats['dropped_frames']}), "
        f"segments {stats['segments']}, interrupts {stats['interrupts']}, "
        f"playback_finished sent {stats['playback_finished_sent']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
