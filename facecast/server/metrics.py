"""Prometheus text exposition of the server's sessions: totals by end reason, and one series per live
session for the figures users watch (first-frame time, frames sent and dropped, encode and render cost,
audio-to-video latency)."""

from __future__ import annotations

import resource
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facecast.server.pool import LivePool
    from facecast.server.sessions import SessionManager

# worker description key -> (metric name, help)
WORKER_SERIES: dict[str, tuple[str, str]] = {
    "sessions": ("facecast_live_worker_sessions", "Live sessions in the worker process"),
    "rss_bytes": ("facecast_live_worker_resident_memory_bytes", "Resident memory of the worker process"),
    "idle_rss_bytes": (
        "facecast_live_worker_idle_resident_memory_bytes",
        "Resident memory of the worker process when it was ready, before any session",
    ),
    "rss_per_session_bytes": (
        "facecast_live_worker_memory_per_session_bytes",
        "Resident memory of the worker process above its idle size, per live session",
    ),
}

# stat key -> (metric name, help)
SESSION_SERIES: dict[str, tuple[str, str]] = {
    "frames": ("facecast_session_frames", "Frames released to the transport"),
    "frames_dropped": ("facecast_session_frames_dropped", "Frames not drawn because production ran late"),
    "engine_ms": (
        "facecast_session_engine_ms",
        "Mean engine time per frame: tracking, animation, render (ms)",
    ),
    "encode_ms": ("facecast_session_encode_ms", "Mean video encode time per frame (ms)"),
    "audio_to_video_latency_ms": (
        "facecast_session_audio_to_video_latency_ms",
        "Median time from when an utterance could first play to the release of its first frame (ms)",
    ),
    "time_to_first_frame_ms": (
        "facecast_session_time_to_first_frame_ms",
        "Start request to the first frame released to the transport (ms)",
    ),
    "duration_s": ("facecast_session_duration_seconds", "Seconds since the session started"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize()


def _pool_lines(pool: LivePool) -> list[str]:
    lines = [
        "# HELP facecast_live_workers Worker processes running live sessions",
        "# TYPE facecast_live_workers gauge",
        f"facecast_live_workers {len(pool.alive())}",
        "# HELP facecast_live_workers_replaced_total Worker processes started after one exited",
        "# TYPE facecast_live_workers_replaced_total counter",
        f"facecast_live_workers_replaced_total {pool.replaced}",
    ]
    workers = pool.describe()
    for key, (name, help_text) in WORKER_SERIES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for worker in workers:
            if worker[key] is not None:
                lines.append(f'{name}{{worker="{worker["worker"]}",pid="{worker["pid"]}"}} {worker[key]}')
    return lines


async def render_metrics(manager: SessionManager) -> str:
    lines = [
        "# HELP facecast_live_sessions Sessions running on this server",
        "# TYPE facecast_live_sessions gauge",
        f"facecast_live_sessions {len(manager.live)}",
        "# HELP facecast_sessions_started_total Sessions started on this server",
        "# TYPE facecast_sessions_started_total counter",
        f"facecast_sessions_started_total {manager.started_total}",
        "# HELP facecast_sessions_ended_total Sessions ended on this server, by reason",
        "# TYPE facecast_sessions_ended_total counter",
    ]
    for reason, count in sorted(manager.ended_total.items()):
        lines.append(f'facecast_sessions_ended_total{{reason="{_escape(reason)}"}} {count}')
    avatars = manager.avatars
    lines += [
        "# HELP facecast_avatar_builds_total Avatar builds this server has run",
        "# TYPE facecast_avatar_builds_total counter",
        f"facecast_avatar_builds_total {avatars.builds_total}",
        "# HELP facecast_avatar_builds_pending Avatar builds queued or running on this server",
        "# TYPE facecast_avatar_builds_pending gauge",
        f"facecast_avatar_builds_pending {avatars.pending_builds}",
    ]
    rss = _rss_bytes()
    if rss is not None:
        lines += [
            "# HELP facecast_process_resident_memory_bytes Resident memory of the server process",
            "# TYPE facecast_process_resident_memory_bytes gauge",
            f"facecast_process_resident_memory_bytes {rss}",
        ]
    lines += [
        "# HELP facecast_process_peak_resident_memory_bytes Peak resident memory of the server process",
        "# TYPE facecast_process_peak_resident_memory_bytes gauge",
        f"facecast_process_peak_resident_memory_bytes {_peak_rss_bytes()}",
    ]
    if manager.pool is not None:
        lines += _pool_lines(manager.pool)
    per_session = {}
    for session in list(manager.live.values()):
        per_session[session.id] = (await session.stats()).as_dict()
    for key, (name, help_text) in SESSION_SERIES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for session_id, stats in per_session.items():
            value = stats.get(key)
            if value is not None:
                lines.append(f'{name}{{session_id="{_escape(session_id)}"}} {value}')
    return "\n".join(lines) + "\n"
