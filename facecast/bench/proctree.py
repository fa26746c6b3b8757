"""CPU time and resident memory of a process and all its descendants, as a benchmark measures a server
that may run its sessions in worker processes. psutil where it is installed, /proc otherwise (Linux)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TreeSample:
    cpu_s: float  # user + system of every live process in the tree, plus children the root has reaped
    rss_bytes: int  # summed: pages shared between forked processes count once per process
    processes: int
    threads: int
    cpu_by_pid: dict[int, float] = field(default_factory=dict)


def cpu_between(a: TreeSample, b: TreeSample) -> float:
    """CPU seconds the tree used from `a` to `b`, process by process: a process that started in between
    counts from zero, and one that ended in between drops out without taking its earlier time with it
    (its time in the window is lost unless its parent reaped it)."""
    return sum(cpu - a.cpu_by_pid.get(pid, 0.0) for pid, cpu in b.cpu_by_pid.items())


def sample_tree(pid: int) -> TreeSample:
    try:
        import psutil
    except ImportError:
        return _sample_proc(pid)
    root = psutil.Process(pid)
    procs = [root]
    with contextlib.suppress(psutil.NoSuchProcess):  # the root ended: it alone, as last read
        procs += root.children(recursive=True)
    rss = threads = 0
    by_pid: dict[int, float] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                t = proc.cpu_times()
                cpu = t.user + t.system
                if proc is root:  # a worker process that ended and was waited for keeps counting
                    cpu += t.children_user + t.children_system
                rss += proc.memory_info().rss
                threads += proc.num_threads()
            by_pid[proc.pid] = cpu
        except psutil.NoSuchProcess:  # ended between the listing and the read
            continue
    return TreeSample(sum(by_pid.values()), rss, len(by_pid), threads, by_pid)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the state on (the command name may hold spaces and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _sample_proc(pid: int) -> TreeSample:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    tree = {pid}
    grew = True
    while grew:  # descendants at any depth
        new = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    rss = threads = 0
    by_pid: dict[int, float] = {}
    for member in tree:
        fields = _stat(member)
        if fields is None:
            continue
        # Counted from the state field (stat field 3): utime 14, stime 15, cutime 16, cstime 17,
        # num_threads 20, rss 24 (pages).
        ticks = int(fields[11]) + int(fields[12])
        if member == pid:
            ticks += int(fields[13]) + int(fields[14])
        by_pid[member] = ticks / _TICKS
        threads += int(fields[17])
        rss += int(fields[21]) * _PAGE
    return TreeSample(sum(by_pid.values()), rss, len(by_pid), threads, by_pid)
