"""One BLAS thread where live sessions and offline renders run.

An engine runs on one thread, and a host gets its parallelism from processes: the server's worker pool,
LiveKit's job processes, the offline render's helpers. numpy's OpenBLAS starts a thread per core in
every process that imports it and wakes them for the engine's larger matrix products (the mel filter
bank, the mouth classifier); after each product they spin waiting for more, taking cores from the other
sessions' frames. Measured on a 2-core machine (numpy 2.4, OpenBLAS 0.3.31): `facecast bench server
sessions --levels 4 --hold 8 --idle 6`, 4 speaking sessions got 7.7 frames/s each at 190 % server CPU,
30 frames/s at 96 % with one BLAS thread per process; `facecast bench speed`, an offline render on both
cores went from 8.5× to 16.3× real time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# Set in the environment, the user's own choice of BLAS threads wins.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _chosen_by_user() -> bool:
    return any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES)


def single_threaded_blas() -> None:
    """Limit this process's BLAS libraries to one thread for good, unless the environment says how many
    to use. It changes the whole process: for hosts that own theirs (a server worker, a job process),
    not for a library imported into someone else's."""
    if _chosen_by_user():
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread while the block runs (a bounded job in a caller's process, e.g. an offline
    render), the previous limits after; unless the environment says how many to use."""
    if _chosen_by_user():
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
