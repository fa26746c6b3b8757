"""Sessions left to time out give their memory back (issue 15, D10): a real `facecast serve` process,
rounds of WebRTC sessions started, connected and then abandoned until the server's idle timeout ends
them, both with a worker process and with sessions in the API process. Before the fix every such session
left ~14 MB resident (the cycles holding its encoder state were never collected on an idle server), so
10 sessions after the first round grew the server by ~140 MB; with it, a few MB each way."""

from __future__ import annotations

import asyncio

import pytest

from facecast.bench.report import Log
from facecast.bench.server import ServerCode, checkout_root
from facecast.bench.soak import AbandonRun, abandon, soak_server

ROUNDS = 3
PER_ROUND = 5
# Measured from the first round on, so that what the first few concurrent sessions leave in the
# allocator's arenas for good (it does not grow with more rounds) is not counted.
MAX_GROWTH_MB = 60.0

pytestmark = pytest.mark.slow


def _abandon(live_workers: int) -> AbandonRun:
    code = ServerCode("this checkout", checkout_root(), ("--live-workers", str(live_workers)))
    quiet = Log(enabled=False)

    async def run() -> AbandonRun:
        async with soak_server(code, quiet) as server:
            return await abandon(server, ROUNDS, PER_ROUND, quiet)

    return asyncio.run(run())


@pytest.mark.parametrize("live_workers", [1, 0], ids=["worker-process", "in-process"])
def test_abandoned_sessions_give_their_memory_back(live_workers: int) -> None:
    run = _abandon(live_workers)
    totals = [round(m.total_mb) for m in (run.baseline, *run.rounds)]
    print(f"\n[memory] live_workers={live_workers}: server RSS per round {totals} MB")
    assert run.live == [0] * ROUNDS, "sessions were still live after their idle timeout"
    assert run.not_idle == 0, "an abandoned session ended otherwise than by its idle timeout"
    assert bool(run.rounds[-1].workers_mb) == bool(live_workers), "the sessions ran in the wrong process"
    growth = run.rounds[-1].total_mb - run.rounds[0].total_mb
    assert growth < MAX_GROWTH_MB, (
        f"{(ROUNDS - 1) * PER_ROUND} abandoned sessions grew the idle server by {growth:.0f} MB ({totals})"
    )
