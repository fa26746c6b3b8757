"""The agent's timed transcript (`lk.transcription`, a delta text stream bound to the avatar's audio
track) reaches the engine while the segment's audio streams in: right words are used, wrong words are
rejected and counted in the worker's stats. The room is the in-memory double of test_livekit_worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from test_livekit_worker import AVATAR, HANG_S, make_session, playout, say  # noqa: F401 (fixture)

from facecast.bench.corpus import SENTENCES, have_flite, synthesize

pytestmark = pytest.mark.skipif(not have_flite(), reason="flite is not installed (apt-get install flite)")


async def _avatar_audio_sid(s: Any) -> str:
    async with asyncio.timeout(HANG_S):
        while True:
            pubs = s.agent.remote_participants.get(AVATAR)
            for p in pubs.track_publications.values() if pubs else ():
                if p.kind == rtc.TrackKind.KIND_AUDIO:
                    return str(p.sid)
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("right", [True, False], ids=["right-words", "wrong-words"])
async def test_transcript_words_reach_the_engine_while_the_audio_streams(
    make_session: Callable[..., Any],  # noqa: F811 (the fixture imported above)
    tmp_path: Any,
    right: bool,
) -> None:
    utt = synthesize(SENTENCES[0], "slt", tmp_path)
    pcm, rate = utt.audio(), utt.sample_rate
    s = await make_session()
    out = s.output(sample_rate=rate)
    head = int(0.3 * rate)
    await say(out, pcm[:head], rate, flush=False)
    sid = await _avatar_audio_sid(s)
    runner = s.avatar.runner
    async with asyncio.timeout(HANG_S):
        while runner is None or runner.last_audio_at is None:  # the segment is open: its audio is in
            await asyncio.sleep(0.01)
            runner = s.avatar.runner
    words = (utt.text if right else "Completely different words about bananas and a cat.").split()
    writer = await s.agent.local_participant.stream_text(
        topic="lk.transcription", attributes={"lk.transcribed_track_id": sid}
    )
    for word in words:
        await writer.write(word + " ")
    await writer.aclose()
    await asyncio.sleep(0.2)  # the words are in the engine before the rest of the audio
    await say(out, pcm[head:], rate)
    await playout(out)
    stats = s.avatar.stats()
    assert stats["speech_frames"] > 0, stats
    if right:
        assert stats["transcript_mismatch_frames"] == 0, stats
    else:
        assert stats["transcript_mismatch_frames"] >= 0.3 * stats["speech_frames"], stats
    assert np.isfinite(stats["engine_ms"])
