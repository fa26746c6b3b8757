"""Giving an ended session's memory back, in the API process and in each worker process.

A session's peer connection, codecs and engine form reference cycles (aiortc's objects point at one
another and at their event callbacks), so they outlive the session until the cyclic garbage collector
runs. CPython runs it after enough new container objects, which an idle server never allocates: the
libvpx/Opus encoder state, frame buffers and renderer caches those cycles hold stayed resident. Measured
with `facecast bench soak abandon` (docs/reliability.md, "Memory and soak"): 8 rounds of 20 abandoned
sessions took an idle server from ~150 MB to over 1 GB, and malloc_trim alone returned nothing because
nothing had been freed. So after sessions end, a full collection runs, then malloc_trim hands the freed
pages of glibc's arenas back to the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable

# Sessions often end together (a burst of idle timeouts, a worker's shutdown): one release for them
# all, not one each. A full collection scans every tracked object, tens of ms on a loaded core.
RELEASE_DELAY_S = 0.5


# glibc's mallopt parameter, and the size from which it serves an allocation with its own mmap: above
# the frame-sized buffers (a 768x768 RGB image is 1.7 MB), so frames are reused inside the heaps. Served
# by mmap, each is page-faulted in and unmapped again: a 768 KB copy cost 0.56 ms instead of 0.02 ms
# (docs/reliability.md, Memory and soak).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # else not glibc


_GLIBC = _glibc()
_MALLOC_TRIM: Callable[[int], int] | None = _GLIBC.malloc_trim if _GLIBC is not None else None


def fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES. Left alone, glibc starts at 128 KB and raises
    it to the largest block freed (up to 32 MB), so where a buffer lives changes as the process runs.
    With the sessions' garbage collected and trimmed when they end (MemoryReleaser), `facecast bench
    soak abandon` stays flat at this threshold with worker processes, as at 256 KB (where every frame
    had its own mmap and paid for it in page faults), and ~8 MB higher with sessions in one process.
    MALLOC_MMAP_THRESHOLD_ in the environment wins."""
    if _GLIBC is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _GLIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def trim_malloc() -> None:
    """Hand pages glibc's arenas hold free back to the OS (a no-op off glibc). ctypes releases the GIL
    for the call, so it may run in a thread while the event loop goes on."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def freeze_long_lived() -> None:
    """Move every object alive now (modules, warmed-up caches) out of the collector's sight, so the full
    collection after a session ends scans only what sessions made since: on the 2-core build machine
    a full collection of a server's ~90,000 objects takes 100-150 ms, long enough to stall the frames of
    every session live in that process; after this, well under 10 ms. For a process that serves
    sessions (`facecast serve`, a worker process), once set up; objects frozen are still freed when
    their last reference goes."""
    gc.collect()
    gc.freeze()


async def release_freed_memory() -> None:
    """Free what ended sessions left in reference cycles, then return the freed pages to the OS. The
    collection runs on the event loop's thread: finalizers of asyncio and aiortc objects must not run
    on another thread."""
    gc.collect()
    await asyncio.to_thread(trim_malloc)


class MemoryReleaser:
    """Runs `release_freed_memory` RELEASE_DELAY_S after a `request()`, once for all the requests made
    meanwhile; owned by whoever ends sessions (the session manager, a worker process), which closes it."""

    def __init__(self, delay_s: float = RELEASE_DELAY_S) -> None:
        self._delay_s = delay_s
        self._task: asyncio.Task[None] | None = None
        self._requested = False
        self.releases = 0  # how many ran: bursts of requests coalesce

    def request(self) -> None:
        self._requested = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._release_soon(), name="facecast-memory-release"
            )

    async def _release_soon(self) -> None:
        # Requests made while waiting are served by this release; one made while it runs, by the next.
        while self._requested:
            await asyncio.sleep(self._delay_s)
            self._requested = False
            await release_freed_memory()
            self.releases += 1

    async def aclose(self) -> None:
        """Cancel a pending release; the process is going away or has nothing left to free."""
        self._requested = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
