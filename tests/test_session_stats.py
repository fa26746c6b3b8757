"""A session's stats: the live core's LiveStats under the names every host uses, and what the transport
and the process add, as the API, /metrics and the stored record show them."""

from __future__ import annotations

from facecast.hosts.live import LiveStats
from facecast.server.session_stats import LIVE_STAT_NAMES, SessionStats


def test_the_live_core_stats_and_the_transport_are_one_flat_record() -> None:
    live = LiveStats(started_at=10.0, first_frame_at=10.25, frames=90, speech_frames=40, segments=2)
    stats = SessionStats(12.34567, live, worker_pid=4321, transport={"video_frames_sent": 88})
    out = stats.as_dict()
    assert out["duration_s"] == 12.346 and out["worker_pid"] == 4321
    assert (out["frames"], out["speech_frames"], out["segments"]) == (90, 40, 2)
    assert out["time_to_first_frame_ms"] == 250.0 and out["video_frames_sent"] == 88
    assert set(out) == LIVE_STAT_NAMES | {"duration_s", "worker_pid", "video_frames_sent"}


def test_a_room_session_that_never_started_has_no_live_counters() -> None:
    stats = SessionStats(
        1.0, None, transport={"state": "created"}, livekit={"room": "r", "agent_identity": None}
    )
    out = stats.with_conversation({"llm_ms": 5.0}).as_dict()
    assert not LIVE_STAT_NAMES & set(out)
    assert out["livekit"] == {"room": "r", "agent_identity": None} and out["conversation"] == {"llm_ms": 5.0}
    assert out["state"] == "created" and out["worker_pid"] is None
