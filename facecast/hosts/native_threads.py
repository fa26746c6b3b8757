"""One thread for the native libraries' own pools where live sessions and offline renders run.

An engine runs on one thread, and a host gets its parallelism from processes: the server's worker pool,
LiveKit's job processes, the offline render's helpers. numpy's OpenBLAS and OpenCV each start a pool
of a thread per core in every process and wake it for larger operations (OpenBLAS: the engine's mel
filter bank and mouth classifier; OpenCV: colour conversion, resizing, the portrait's remap); after each
the threads spin waiting for more, taking cores from the other sessions' frames. Measured on a 2-core
machine (numpy 2.4 with OpenBLAS 0.3.31, OpenCV 4.14), `facecast bench server sessions --levels 4,8
--hold 8 --idle 6 --rounds 2`: with both pools, 4 speaking sessions got 7.7 frames/s each at 190 % server
CPU; with one BLAS thread, 30 frames/s at 96 %; with one OpenCV thread as well, 8 sessions cost 15 % of
a core each speaking instead of 18 %, 7.4 % idle instead of 10.3 %. An offline render on both cores
(`render_pcm`, jobs 2, the limit on and off in turn) went from 6.3× to 8.8× real time with one BLAS
thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# Set in the environment, the user's own choice of threads wins.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
OPENCV_THREAD_VARIABLE = "OPENCV_FOR_THREADS_NUM"


def _blas_chosen_by_user() -> bool:
    return any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES)


def limit_native_threads() -> None:
    """One BLAS thread and one OpenCV thread in this process for good, each unless the environment says
    how many to use. It changes the whole process: for hosts that own theirs (a server worker, a job
    process), not for a library imported into someone else's."""
    if not _blas_chosen_by_user():
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    if not os.environ.get(OPENCV_THREAD_VARIABLE):
        import cv2

        cv2.setNumThreads(1)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread while the block runs (a bounded job in a caller's process, e.g. an offline
    render), the previous limits after; unless the environment says how many to use."""
    if _blas_chosen_by_user():
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
