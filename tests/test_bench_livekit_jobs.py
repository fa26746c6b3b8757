"""`facecast bench livekit --jobs`: the table's per-session figures (the run itself needs livekit-server)."""

from __future__ import annotations

from facecast.bench.livekit_jobs import JobsRun, jobs_table


def test_per_session_figures_count_the_sessions_reached() -> None:
    processes = JobsRun("process", 4, reached=3, rss_before_mb=1000.0, rss_mb=1600.0, cpu_idle_pct=60.0)
    processes.job_process_rss_mb = [400.0, 500.0, 450.0]
    threads = JobsRun("thread", 4, reached=4, rss_before_mb=400.0, rss_mb=600.0, cpu_idle_pct=80.0)
    none = JobsRun("thread", 4)
    table = jobs_table([processes, threads, none], 8.0)
    assert table.headers[1:] == ["jobs as processes", "jobs as threads", "jobs as threads"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["RSS MB per session reached (over before)"] == ["200.0", "50.0", "-"]
    assert rows["CPU % idle, per session"] == ["20.0", "20.0", "-"]
    assert rows["RSS MB of a process running an avatar, mean"] == ["450.0", "-", "-"]
