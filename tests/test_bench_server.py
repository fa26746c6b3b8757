"""`facecast bench server sessions`: frames counted without decoding, the report's maths, the server's
process tree and the baseline checkout."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from facecast.bench import proctree
from facecast.bench import server as bench
from facecast.bench.report import Log
from facecast.client.rtpcount import Arrivals, count_frames, frame_gaps

PERIOD = 1 / 30


def test_frame_gaps_finds_the_stall() -> None:
    times = [i * PERIOD for i in range(30)] + [29 * PERIOD + 0.2 + i * PERIOD for i in range(10)]
    gaps = frame_gaps(times, PERIOD)
    assert gaps.frames == 40
    assert gaps.largest_s == pytest.approx(0.2)
    assert gaps.over_two_periods == 1
    steady = frame_gaps([i * PERIOD for i in range(30)], PERIOD)
    assert steady.over_two_periods == 0 and steady.largest_s == pytest.approx(PERIOD)
    assert math.isnan(frame_gaps([1.0], PERIOD).largest_s)


def test_arrivals_between_is_half_open() -> None:
    arrivals = Arrivals()
    for i in range(10):
        arrivals.add(float(i), i * 3000)
    assert arrivals.between(2.0, 5.0) == [2.0, 3.0, 4.0]


async def _loopback_counted(seconds: float) -> tuple[Arrivals, Arrivals, list[bool]]:
    """aiortc's own test-pattern tracks sent over loopback to a peer that counts instead of decoding."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    config = RTCConfiguration(iceServers=[])
    sender, receiver = RTCPeerConnection(config), RTCPeerConnection(config)
    sender.addTrack(VideoStreamTrack())
    sender.addTrack(AudioStreamTrack())
    video, audio = Arrivals(), Arrivals()
    first = asyncio.Event()
    count_frames(receiver.addTransceiver("video", direction="recvonly").receiver, video, first.set)
    count_frames(receiver.addTransceiver("audio", direction="recvonly").receiver, audio)
    tracks = []
    receiver.on("track", tracks.append)
    try:
        await receiver.setLocalDescription(await receiver.createOffer())
        await sender.setRemoteDescription(receiver.localDescription)
        await sender.setLocalDescription(await sender.createAnswer())
        await receiver.setRemoteDescription(sender.localDescription)
        await asyncio.wait_for(first.wait(), 10)
        await asyncio.sleep(seconds)
        # Nothing was decoded: the tracks' queues stayed empty.
        decoded = [not track._queue.empty() for track in tracks]
    finally:
        await receiver.close()
        await sender.close()
    return video, audio, decoded


def test_counting_receiver_counts_frames_and_decodes_none() -> None:
    video, audio, decoded = asyncio.run(_loopback_counted(1.5))
    assert len(video.times) >= 30  # 30 fps for >= 1.5 s, less start-up
    steps = {b - a for a, b in zip(video.rtp_timestamps, video.rtp_timestamps[1:], strict=False)}
    # One complete frame per 90 kHz / 30 fps timestamp (+-1 from aiortc's rounding), none counted twice.
    assert steps <= {2999, 3000, 3001}
    assert len(audio.times) >= 50  # 20 ms packets
    assert decoded == [False, False]
    # The idle decoder threads ended with their receivers.
    assert not [t for t in threading.enumerate() if t.name in ("video-decoder", "audio-decoder")]


def _snapshot(wall: float, cpu: float, client: float, stats: list[dict[str, float]]) -> bench.Snapshot:
    return bench.Snapshot(stats, cpu, client, wall)


def _stats(sent: int, dropped: int, encoded: int, duration: float) -> dict[str, float]:
    return {
        "frames_sent": sent,
        "frames_dropped": dropped,
        "video_frames_sent": encoded,
        "duration_s": duration,
        "render_ms": 5.0,
        "encode_ms": 3.0,
    }


def test_window_figures_from_counters_and_arrivals() -> None:
    a = _snapshot(100.0, 10.0, 1.0, [_stats(0, 0, 0, 20.0), _stats(0, 0, 0, 20.0)])
    # Session 1 on time; session 2's pacer released 270 of 300 frames, 30 of them undrawn, 10 more lost.
    b = _snapshot(110.0, 16.0, 1.5, [_stats(300, 0, 300, 30.0), _stats(270, 30, 230, 30.0)])
    steady, stalled = Arrivals(), Arrivals()
    for i in range(300):
        steady.add(100.0 + i * PERIOD, i * 3000)
    for i in range(150):  # half the frames, then a 2 s stall, before and after the window
        stalled.add(100.0 + i * PERIOD, i * 3000)
    stalled.add(107.0, 0)
    stalled.add(111.0, 0)
    w = bench.window_figures(a, b, [steady, stalled])
    assert w.server_cpu_pct == pytest.approx(60.0)
    assert w.client_cpu_pct == pytest.approx(5.0)
    assert w.fps_mean == pytest.approx((30.0 + 15.1) / 2)
    assert w.fps_min == pytest.approx(15.1)
    assert (w.not_drawn, w.lost) == (30, 270 - 30 - 230 - bench.ENCODER_QUEUE_FRAMES)
    assert w.fell_behind_s == pytest.approx(1.0)
    assert w.largest_gap_ms == pytest.approx(7000.0 - 149 * PERIOD * 1000)
    assert w.long_gaps == 1
    assert w.dropped_pct == pytest.approx(100.0 * (30 + 8 + 29) / 600)
    assert w.cpu_ms_per_frame == pytest.approx(6000.0 / 570)  # 6 s of server CPU over 570 frames


def test_window_figures_read_the_live_core_stats_names() -> None:
    def live(frames: int, dropped: int, lost: int, duration: float) -> dict[str, float]:
        return {
            "frames": frames,
            "frames_dropped": dropped,
            "frames_lost_in_queue": lost,
            "video_frames_sent": 0,  # counted apart from the queue's losses: not used to derive them
            "duration_s": duration,
            "engine_ms": 4.0,
        }

    a = _snapshot(0.0, 0.0, 0.0, [live(0, 0, 0, 0.0)])
    b = _snapshot(10.0, 0.0, 0.0, [live(300, 6, 3, 10.0)])
    w = bench.window_figures(a, b, [Arrivals()])
    assert (w.not_drawn, w.lost, w.engine_ms) == (6, 3, 4.0)
    with pytest.raises(KeyError, match="frames, frames_sent"):
        bench.window_figures(a, _snapshot(10.0, 0.0, 0.0, [{"duration_s": 10.0}]), [Arrivals()])


def test_window_figures_count_a_silent_client_as_one_long_gap() -> None:
    a = _snapshot(0.0, 0.0, 0.0, [_stats(0, 0, 0, 0.0)])
    b = _snapshot(10.0, 0.0, 0.0, [_stats(300, 0, 300, 10.0)])
    w = bench.window_figures(a, b, [Arrivals()])
    assert w.fps_mean == 0.0
    assert w.largest_gap_ms == pytest.approx(10000.0)


def test_pixel_check_moving_mouth_and_black_frames() -> None:
    idle = [(float(t), 0.0, 0.1) for t in range(10, 20)]
    speech = [(float(t), 0.0, 2.0 if t % 2 else 0.1) for t in range(10)]
    check = bench.pixel_check(speech + idle, [120.0] * 20, (0.0, 10.0), (10.0, 20.0))
    assert check.moving_speaking_pct == pytest.approx(50.0)
    assert check.moving_idle_pct == 0.0
    assert check.luma == pytest.approx(120.0)
    assert check.ok
    assert not bench.pixel_check(speech + idle, [0.0] * 20, (0.0, 10.0), (10.0, 20.0)).ok
    still = [(float(t), 0.0, 0.1) for t in range(10)]
    assert not bench.pixel_check(still + idle, [120.0] * 20, (0.0, 10.0), (10.0, 20.0)).ok


def test_level_table_prints_both_columns_and_their_ratio() -> None:
    old = bench.LevelRun("main", 4, reached=4, rss_first_mb=150.0, rss_mb=300.0, ttff_s=[0.2, 0.3])
    new = bench.LevelRun("this checkout", 4, reached=4, rss_first_mb=150.0, rss_mb=210.0, ttff_s=[0.1])
    table = bench.level_table(4, [[old], [new]], 10.0, 5.0)
    assert table.headers == ["", "main", "this checkout", "this checkout / main"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["server RSS MB per further session"] == ["50.0", "20.0", "0.40x"]
    assert rows["time to first frame ms, median"] == ["250.0", "100.0", "0.40x"]
    assert rows["sessions reached"] == ["4", "4", "1.00x"]
    assert bench.level_table(4, [[new]], 10.0, 5.0).headers == ["", "this checkout"]
    # Rounds: the median of each figure; pixel checks that passed are counted.
    again = bench.LevelRun("this checkout", 4, reached=3, rss_first_mb=150.0, rss_mb=240.0, ttff_s=[0.3])
    third = bench.LevelRun("this checkout", 4, reached=4, rss_first_mb=150.0, rss_mb=450.0, ttff_s=[0.2])
    rows = {row[0]: row[1:] for row in bench.level_table(4, [[new, again, third]], 10.0, 5.0).rows}
    assert rows["server RSS MB per further session"] == ["30.0"]
    assert rows["time to first frame ms, median"] == ["200.0"]
    assert rows["sampled session: pixels ok, rounds"] == ["0"]
    assert rows["sessions reached"] == ["4"]


_BUSY_CHILD = (
    "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
)


def test_process_tree_sums_descendants_with_and_without_psutil() -> None:
    parent = textwrap.dedent(
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {_BUSY_CHILD!r}])
        time.sleep(30)
        """
    )
    root = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 20
        while (s := proctree.sample_tree(root.pid)).processes < 2 or s.cpu_s < 0.3:
            assert time.monotonic() < deadline, f"the child never burnt its CPU: {s}"
            time.sleep(0.1)
        with_psutil, from_proc = proctree.sample_tree(root.pid), proctree._sample_proc(root.pid)
        assert with_psutil.processes == from_proc.processes == 2
        assert from_proc.cpu_s == pytest.approx(with_psutil.cpu_s, abs=0.05)
        assert from_proc.rss_bytes == pytest.approx(with_psutil.rss_bytes, rel=0.1)
        assert from_proc.threads == with_psutil.threads
    finally:
        import psutil

        for proc in [*psutil.Process(root.pid).children(recursive=True), psutil.Process(root.pid)]:
            proc.kill()
        root.wait()


def test_baseline_checkout_is_a_temporary_worktree() -> None:
    repo = bench.checkout_root()
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True).returncode:
        pytest.skip("not run from a git checkout")
    with bench.baseline_checkout("HEAD", Log(enabled=False)) as path:
        assert (path / "facecast" / "bench" / "server.py").is_file()
        listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True)
        assert str(path) in listed.stdout
    assert not path.exists()
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True)
    assert str(path) not in listed.stdout
    with pytest.raises(bench.SetupError, match="no-such-ref"), bench.baseline_checkout("no-such-ref", Log()):
        pass


def test_cpu_between_follows_processes_that_come_and_go() -> None:
    a = proctree.TreeSample(6.0, 0, 2, 2, {1: 1.0, 2: 5.0})
    b = proctree.TreeSample(2.5, 0, 2, 2, {1: 2.0, 3: 0.5})  # 2 ended, 3 started: the total fell
    assert proctree.cpu_between(a, b) == pytest.approx(1.5)


def test_record_lateness_counts_records_late_against_their_frames() -> None:
    on_time, late = Arrivals(), Arrivals()
    for frame in range(30):
        on_time.add(100.0 + frame / bench.FPS, frame)
        # Frame 20 comes 60 ms late (and the ones after it on time again).
        late.add(200.0 + frame / bench.FPS + (0.06 if frame == 20 else 0.0), frame)
    p95, worst = bench.record_lateness_ms([on_time], 100.0, 102.0)
    assert p95 == pytest.approx(0.0, abs=0.01) and worst == pytest.approx(0.0, abs=0.01)
    p95, worst = bench.record_lateness_ms([on_time, late], 0.0, 300.0)
    assert worst == pytest.approx(60.0, abs=0.01) and p95 < worst
    assert all(math.isnan(v) for v in bench.record_lateness_ms([on_time], 0.0, 1.0))  # none inside


def test_level_table_of_track_only_sessions_reports_records() -> None:
    run = bench.LevelRun("this checkout", 8, reached=8, track_only=True, lateness_ms=(12.0, 40.0))
    table = bench.level_table(8, [[run]], 10.0, 5.0)
    rows = {row[0]: row[1:] for row in table.rows}
    assert "track-only" in table.title
    assert rows["record lateness ms, p95"] == ["12.0"] and rows["record lateness ms, max"] == ["40.0"]
    assert "delivered records/s per session, mean" in rows
    assert not any(name.startswith(("sampled session", "server: encode")) for name in rows)


def test_window_figures_skip_a_session_that_ended_in_the_window() -> None:
    a = _snapshot(0.0, 0.0, 0.0, [_stats(0, 0, 0, 0.0), _stats(0, 0, 0, 0.0)])
    b = _snapshot(10.0, 0.0, 0.0, [_stats(300, 0, 300, 10.0), {}])  # the second one's record: no stats
    w = bench.window_figures(a, b, [Arrivals(), Arrivals()])
    assert w.not_drawn == 0 and w.dropped_pct == pytest.approx(0.0, abs=0.5)
    assert w.cpu_ms_per_frame == pytest.approx(0.0)  # the snapshots' server CPU did not move
