"""A bounded soak (issue 15): a real `facecast serve` process (its default worker processes) under
sessions churned for a while, two at a time, each connected over WebRTC and the LITE WebSocket, speaking
three utterances, then stopped or (one in four) abandoned. Every session must work, the audio must stay
with the video, and once nothing is live the server's memory must be back within 50 MB of where it was
after the first session. `facecast bench soak churn` runs the same for an hour (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from facecast.bench.corpus import have_flite
from facecast.bench.report import Log
from facecast.bench.server import ServerCode, checkout_root, load_speech
from facecast.bench.soak import (
    ABANDON_EVERY,
    MAX_GROWTH_MB,
    UTTERANCES_PER_SESSION,
    ChurnRun,
    churn,
    soak_server,
)

DURATION_S = 45.0
CONCURRENT = 2
SAMPLE_S = 3.0
# Audio and video come from one clock, so at the client they stay together but for what a loaded machine
# delays (jitter is filtered out: av_drift_ms takes the least lateness of each stream). Generous for a
# noisy 2-core machine; a pacer that sends one stream faster or slower than real time gains seconds over
# a session.
MAX_DRIFT_MS = 1000.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_flite(), reason="flite is not installed (apt-get install flite)"),
]


def test_soak_sessions_churned_and_speaking(tmp_path: Path) -> None:
    speech = load_speech(tmp_path)
    quiet = Log(enabled=False)
    code = ServerCode("this checkout", checkout_root())

    async def soak() -> ChurnRun:
        async with soak_server(code, quiet) as server:
            return await churn(server, speech, DURATION_S, CONCURRENT, SAMPLE_S, quiet)

    run = asyncio.run(soak())
    print(
        f"\n[soak] {run.started} sessions, {run.utterances} utterances, RSS {run.baseline.total_mb:.0f} -> "
        f"{run.after.total_mb:.0f} MB, worst A/V drift {run.worst_drift_ms:.0f} ms"
    )
    assert run.failures == []
    assert run.speech_errors == 0
    assert run.started >= 2 * CONCURRENT, "too few sessions to call it churn"
    assert run.utterances == UTTERANCES_PER_SESSION * run.started
    assert run.abandoned == run.started // ABANDON_EVERY  # sessions 3, 7, 11, ...
    assert run.stopped + run.abandoned == run.started
    assert run.live_after == 0, "sessions stayed live after every client had gone"
    assert run.samples and all(s.memory.workers_mb for s in run.samples)
    drifts = [s.worst_drift_ms for s in run.samples if not math.isnan(s.worst_drift_ms)]
    assert drifts, "no sample caught a session speaking"
    assert max(drifts) < MAX_DRIFT_MS
    assert run.growth_mb < MAX_GROWTH_MB, f"idle RSS grew {run.growth_mb:.0f} MB over the soak"
