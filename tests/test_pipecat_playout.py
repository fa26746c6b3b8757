"""ImagePacer: images go to the output transport no faster than it draws them (pure, on given times)."""

from __future__ import annotations

import numpy as np
from pipecat_facecast._playout import ImagePacer

FPS = 30
PERIOD = 1 / FPS


def test_a_steady_stream_goes_through_whatever_its_jitter() -> None:
    pacer = ImagePacer(FPS)
    jitter = np.random.default_rng(1).uniform(-0.45, 0.45, 300) * PERIOD
    times = 10.0 + np.arange(300) * PERIOD + jitter
    assert all(pacer.admit(float(t)) for t in times)


def test_a_burst_leaves_at_most_one_image_ahead_and_the_next_early_one_drains_it() -> None:
    pacer = ImagePacer(FPS)
    for k in range(10):
        assert pacer.admit(10.0 + k * PERIOD)
    # The loop was held up for 0.3 s: nine frames arrive within 9 ms.
    held = 10.0 + 9 * PERIOD + 0.3
    admitted = [pacer.admit(held + 0.001 * k) for k in range(9)]
    assert admitted == [True, True] + [False] * 7  # one image ahead of the transport's pace
    # The stream goes on at its pace and every image passes, but for the first that comes early: it
    # would be a second image ahead, and refusing it brings the transport's queue back to pace.
    later = held + 0.009 + PERIOD * np.arange(1, 31)
    later[10] -= 0.3 * PERIOD
    assert [k for k, t in enumerate(later) if not pacer.admit(float(t))] == [10]
    later = later[-1] + PERIOD * np.arange(1, 31)
    later[10] -= 0.3 * PERIOD
    assert all(pacer.admit(float(t)) for t in later)  # back to pace: early frames pass again
