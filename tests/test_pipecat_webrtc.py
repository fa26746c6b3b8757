"""FacecastVideoService → SmallWebRTCTransport → an aiortc peer: steady video, audio in sync with it.

The peer lines the two tracks up by the RTCP sender reports, as a browser does. The avatar is a marker
renderer (white while speaking) and the speech a tone, so both onsets are exact. The ±40 ms target is
what `python -m pipecat_facecast.bench` reports; this test only guards against the tracks drifting
apart by frames (queues building up on one side), which is what broken pacing looks like.

A shared machine can hold the whole process up (a CI host once stalled it for half a second, which
both tracks took together); the session measures its event loop's longest stall, and the bounds
allow that much on top, so only what the avatar and transport did themselves fails the test.
"""

from __future__ import annotations

from pipecat_facecast.bench import webrtc_session

UTTERANCES = 3
FPS = 30


async def test_peer_receives_steady_video_and_audio_in_sync() -> None:
    run = await webrtc_session(utterances=UTTERANCES, speech_s=0.6, pause_s=0.8, fps=FPS, warmup_s=1.0)
    bound_ms = 3 * 1000 / FPS + run.max_loop_stall_ms

    # Every utterance reached the peer on both tracks, and its picture started with its sound.
    assert len(run.av_offsets_ms) == UTTERANCES
    assert all(abs(offset) < bound_ms for offset in run.av_offsets_ms), run
    # Video went on through speech and silence alike (~4.2 s at 30 fps), without holes.
    assert run.video_frames >= 0.8 * FPS * UTTERANCES * (0.6 + 0.8)
    assert run.max_video_gap_ms < bound_ms, run
