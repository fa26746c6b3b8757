"""Speech for the real-room tests: the flite sentence as 24 kHz LiveKit audio frames, and the figures a
viewer measured, printed so a test run shows them (`pytest -s`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
from livekit import rtc

from facecast.avatars import load_renderer

RATE = 24000
FRAME = RATE // 50  # 20 ms, as TTS plugins send
AVATAR_QUALITY = "low"  # 256×256: the tests check behaviour, the bench measures 512×512


def to_24k(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return samples.astype(np.int16)
    resampler = rtc.AudioResampler(rate, RATE, num_channels=1)
    frames = resampler.push(rtc.AudioFrame(samples.astype(np.int16).tobytes(), rate, 1, len(samples)))
    frames += resampler.flush()
    return np.concatenate([np.frombuffer(bytes(f.data), np.int16) for f in frames])


def frames(pcm: np.ndarray) -> list[rtc.AudioFrame]:
    return [
        rtc.AudioFrame(pcm[i : i + FRAME].tobytes(), RATE, 1, len(pcm[i : i + FRAME]))
        for i in range(0, len(pcm), FRAME)
    ]


async def stream(pcm: np.ndarray) -> AsyncIterator[rtc.AudioFrame]:
    for frame in frames(pcm):
        yield frame


def mouth_box(avatar: str = "ava", aspect: str = "1:1") -> tuple[int, int, int, int]:
    return load_renderer(avatar, aspect=aspect, quality=AVATAR_QUALITY).mouth_box()
